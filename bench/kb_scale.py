"""Linking against millions of entities in bounded memory: the whole pipeline at 1M / 3M / 6M entities (``e2e``),
and per index configuration, peak RSS while building and linking 10k mentions (``run``).

    python bench/kb_scale.py e2e --entities 1000000 --work /work/scale-data [--no-encode] [--keep]
    python bench/kb_scale.py run [--entities 2000000] [--queries 10000] [--dim 384] [--work /tmp/xel-kb-scale]
    python bench/kb_scale.py tokens --data DIR     # subwords per KB text with the real tokenizer

``e2e`` writes a synthetic KB of ``--entities`` entries (two-word names from seeded syllables, a short
description, Zipf-like ``links``) and 10k mentions of random entries (5% NIL), builds the tiny random test
encoder (``tests/tiny.py``), and runs each step as its own process, in its own session, sampled every 0.5 s
for each process's peak private memory (``RssAnon``; :class:`bench.soak.Sampler`: the step's own process is
``driver``, Ray's encoder actors ``actor``, Ray's other processes ``ray``): ``xel-precompute`` through a local
Ray (``--no-encode``: the store is written directly by :func:`write_store_directly`, for sizes whose encoding
does not fit the time at hand), ``xel-nn build`` (``--index``, default ``IVF4096,SQ8``, exact re-ranking),
``xel-nn candidates``, ``xel-nn eval``, one epoch of ``xel-train`` and ``xel-link`` of the 10k mentions with
that run (encoded in-process; the index searched with the candidates' parameters); wall time and the size on
disk of each step's output. Writes ``bench/results/kb-scale-e2e-<entities>.json`` (``--steps`` reruns some steps of a
``--keep`` run and keeps the others' figures) and prints a table.

``run`` writes a store of random low-rank entity features (a 48-dim latent projected to ``--dim`` plus noise, fp16,
the way real encoder features cluster; mentions are entities plus noise), computes the exact top-10 once by
streaming the store, then runs each configuration in a fresh process (``one``), so that each peak RSS
(``VmHWM``) is that configuration's alone: the index built shard by shard from the store, loaded as
``xel-nn`` loads it (compressed types re-rank their shortlist against the store's fp16 rows), and the 10k
mentions linked in one batch. The 6M figure is ``fixed + (6M / entities) x (peak - fixed)``, where ``fixed`` is
the peak of a process that loads the same libraries and the queries but no ids and no index (measured
here too): the rest grows with the entity count.
Writes ``bench/results/kb-scale.json`` and prints a table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xel.precompute.shards import shard_path, write_shard  # noqa: E402
from xel.precompute.store import MANIFEST, open_store, write_manifest  # noqa: E402

CONFIGS = [
    "IVF1024,PQ48|nprobe=128,rerank=8",
    "IVF1024,PQ48|nprobe=256,rerank=16",
    "IVF1024,SQ8|nprobe=256,rerank=4",
    "Flat",
]


def write_store(root: Path, entities: int, queries: int, dim: int, shard: int = 65536, seed: int = 0) -> Path:
    """Shard by shard, never the whole table in memory."""
    if (root / MANIFEST).is_file():
        return root
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(48, dim)).astype(np.float32) / np.sqrt(48)
    kinds = {}
    picks = np.sort(rng.choice(entities, size=queries, replace=False))
    query_rows = []
    for kind, n in (("es", entities),):
        shards = []
        for i, start in enumerate(range(0, n, shard)):
            rows = min(shard, n - start)
            chunk_rng = np.random.default_rng([seed, i])
            feats = chunk_rng.normal(size=(rows, 48)).astype(np.float32) @ mix
            feats += 0.5 * chunk_rng.normal(size=(rows, dim)).astype(np.float32) / np.sqrt(dim)
            inside = picks[(picks >= start) & (picks < start + rows)] - start
            query_rows.append(feats[inside])
            ids = [f"Q{start + j}" for j in range(rows)]
            checksum = write_shard(shard_path(root, kind, i), kind=kind, start=start, ids=ids, langs=["en"] * rows,
                                   features=feats, input_hash="kb-scale")
            shards.append({"path": f"{kind}/shard-{i:05d}.h5", "rows": rows, "checksum": checksum})
        kinds[kind] = shards
    q = np.concatenate(query_rows)
    q += 0.5 * rng.normal(size=q.shape).astype(np.float32) / np.sqrt(dim)  # a mention is its entity plus noise
    mids = [f"m{i}" for i in range(len(q))]
    checksum = write_shard(shard_path(root, "ms", 0), kind="ms", start=0, ids=mids, langs=["en"] * len(q),
                           features=q, input_hash="kb-scale")
    kinds["ms"] = [{"path": "ms/shard-00000.h5", "rows": len(q), "checksum": checksum}]
    # random features: no encoder ran; "fp32" is the dtype of the numbers they were drawn in
    write_manifest(root, encoder={"name": "random-lowrank", "fingerprint": "kb-scale"}, model=None, layer=-1,
                   max_length=512, prefix="", dtype="fp32", dim=dim, shards=kinds)
    return root


def peak_rss_mb() -> float:
    from xel.retrieval.bench import peak_rss_mb as peak

    return peak()


@click.group()
def main() -> None:
    """Large-KB benchmark (see the module docstring)."""


@main.command()
@click.option("--entities", default=2_000_000, show_default=True)
@click.option("--queries", default=10_000, show_default=True)
@click.option("--dim", default=384, show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=Path("/tmp/xel-kb-scale"), show_default=True)
@click.option("--config", "configs", multiple=True, default=CONFIGS, show_default=True)
@click.option("--out", "out_json", type=click.Path(path_type=Path, dir_okay=False),
              default=ROOT / "bench" / "results" / "kb-scale.json", show_default=True)
def run(entities: int, queries: int, dim: int, work: Path, configs: tuple[str, ...], out_json: Path) -> None:
    """Write the store, compute the exact answer, run every configuration in its own process."""
    from xel.retrieval.bench import exact_topk
    from xel.retrieval.vectors import unit_rows

    store_dir = work / f"store-{entities}-{dim}"
    t0 = time.perf_counter()
    write_store(store_dir, entities, queries, dim)
    print(f"store {store_dir}: {entities:,} x {dim} in {time.perf_counter() - t0:.0f} s", flush=True)
    truth_file = store_dir / "truth.json"
    if not truth_file.is_file():
        store = open_store(store_dir)
        t0 = time.perf_counter()
        q = unit_rows(store, "ms", np.arange(store.count("ms")))
        truth_file.write_text(json.dumps(exact_topk(store, "es", "en", q, 10)))
        print(f"exact top-10 of {len(q):,} queries streamed in {time.perf_counter() - t0:.0f} s", flush=True)
    fixed = json.loads(subprocess.run([sys.executable, __file__, "ids-only", "--store", str(store_dir)],
                                      capture_output=True, text=True, check=True).stdout)["peak_rss_mb"]
    rows = []
    for spec in configs:
        proc = subprocess.run([sys.executable, __file__, "one", "--store", str(store_dir), "--config", spec],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{spec}: failed\n{proc.stderr[-2000:]}", flush=True)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["rss_6m_mb"] = fixed + (6_000_000 / entities) * (row["peak_rss_mb"] - fixed)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"entities": entities, "queries": queries, "dim": dim, "cpus": os.cpu_count(),
              "fixed_rss_mb": fixed, "rows": rows}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{entities:,} entities x {dim}, {queries:,} mentions, k=10; ids-only process peak {fixed:,.0f} MB")
    print(f"{'index':<18} {'params':<20} {'build s':>8} {'index MB':>9} {'peak RSS MB':>12} {'6M est. MB':>11} "
          f"{'queries/s':>10} {'recall@10':>10}")
    for r in rows:
        print(f"{r['factory']:<18} {r['params'] or '-':<20} {r['build_s']:>8.0f} {r['bytes'] / 2**20:>9,.0f} "
              f"{r['peak_rss_mb']:>12,.0f} {r['rss_6m_mb']:>11,.0f} {r['queries_per_s']:>10,.0f} {r['recall']:>10.4f}")
    print(f"wrote {out_json}")


@main.command(name="ids-only")
@click.option("--store", "store_dir", type=click.Path(path_type=Path), required=True)
def ids_only(store_dir: Path) -> None:
    """The part of a configuration's peak that does not grow with the KB: the same libraries and the queries."""
    import xel.retrieval.bench  # noqa: F401  (faiss, numpy: what every configuration's process loads)
    from xel.retrieval.vectors import unit_rows

    store = open_store(store_dir)
    unit_rows(store, "ms", np.arange(store.count("ms")))
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


@main.command()
@click.option("--store", "store_dir", type=click.Path(path_type=Path), required=True)
@click.option("--config", "spec", required=True)
def one(store_dir: Path, spec: str) -> None:
    """Build, load and link in this process; print one JSON line."""
    import tempfile

    from xel.retrieval.build import build_index
    from xel.retrieval.index_files import open_index_and_store
    from xel.retrieval.vectors import unit_rows

    factory, _, params = spec.partition("|")
    store = open_store(store_dir)
    truth = json.loads((store_dir / "truth.json").read_text())
    with tempfile.TemporaryDirectory(prefix="xel-kb-scale-", dir=store_dir.parent) as tmp:
        t0 = time.perf_counter()
        build_index(store, Path(tmp) / "index", factory=factory)
        build_s = time.perf_counter() - t0
        size = (Path(tmp) / "index" / "index-en.faiss").stat().st_size
        index, _ = open_index_and_store(Path(tmp) / "index", store_dir)
        index.set_search_params(params or None)
        q = unit_rows(store, "ms", np.arange(store.count("ms")))
        t0 = time.perf_counter()
        _, got = index.langs["en"].search(q, 10)
        search_s = time.perf_counter() - t0
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)]))
    print(json.dumps({"factory": factory, "params": params, "build_s": round(build_s, 1), "bytes": size,
                      "queries_per_s": round(len(q) / search_s, 1), "recall": round(recall, 4),
                      "peak_rss_mb": round(peak_rss_mb(), 1)}))


# ------------------------------------------------------------------------------------------- the real run (e2e)

SYLLABLES = ("ka ro mel vin tu sa lo ber gan di na tor phi lex mar quin zo ra li en dor ha ve sti bel cor "
             "dan el fa gor hi jo kal lum mo nor os pra rin sel tam ul vor wen yar zel").split()
KINDS_OF = ("river", "town", "painter", "footballer", "album", "company", "mountain", "novel", "bridge", "village",
            "politician", "species of beetle", "church", "film", "lake", "railway station", "poet", "ship")
REGIONS = ("Ostvania", "Kelmar", "the Varo valley", "Durnesia", "Lower Quintel", "Salomir", "the Hathen coast",
           "Brevonia", "Tamsel county", "Orland")
TEMPLATES = ("{} was mentioned in the report.", "Yesterday {} made the news again.", "We talked about {} for hours.",
             "According to the archive, {} is older than expected.", "The guide pointed at {} on the map.")


def _word(rng, lo: int, hi: int) -> str:
    return "".join(rng.choices(SYLLABLES, k=rng.randint(lo, hi))).title()


def entity_name(rng) -> str:
    return f"{_word(rng, 1, 3)} {_word(rng, 2, 3)}"


def write_kb_data(data: Path, entities: int, mentions: int, seed: int = 0) -> None:
    """``kb.jsonl`` of ``entities`` seeded entries (a two-word name from syllables, a short description, a
    Zipf-like ``links``) and ``mentions.jsonl`` of ``mentions`` mentions of random entries, 5 per document, the
    name or its second word in a template sentence, 5% NIL (a name drawn afresh). Streamed: nothing held."""
    import random

    data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    golds = sorted(rng.sample(range(entities), mentions))
    order = list(range(mentions))
    rng.shuffle(order)
    names_of: dict[int, str] = {}
    wanted = set(golds)
    with open(data / "kb.jsonl", "w", encoding="utf-8") as f:
        for i in range(entities):
            name = entity_name(rng)
            if i in wanted:
                names_of[i] = name
            desc = (f"{rng.choice(KINDS_OF)} in {rng.choice(REGIONS)}, known since {rng.randint(1200, 2020)}"
                    if rng.random() < 0.9 else None)
            f.write(json.dumps({"id": f"Q{i}", "name": name, "description": desc, "lang": "en",
                                "links": int(rng.paretovariate(1.2))}) + "\n")
    with open(data / "mentions.jsonl", "w", encoding="utf-8") as f:
        for j, pick in enumerate(order):
            nil = rng.random() < 0.05
            name = entity_name(rng) if nil else names_of[golds[pick]]
            surface = name.split(" ", 1)[1] if rng.random() < 0.3 else name
            template = rng.choice(TEMPLATES)
            sentence = template.format(surface)
            start = template.index("{}")
            f.write(json.dumps({"id": f"doc{j // 5}:{j}", "lang": "en", "sentence": sentence, "start": start,
                                "end": start + len(surface), "context": None,
                                "gold": None if nil else f"Q{golds[pick]}"}) + "\n")


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


E2E_STEPS = ("data", "precompute", "index", "candidates", "nn-eval", "train", "link")
WRITTEN_DIM = 32  # the tiny model's hidden size, so that written and encoded stores cost the same downstream


def write_store_directly(data: Path, store: Path, shard_size: int, seed: int = 0) -> None:
    """A finished store for ``data`` without an encoder (``--no-encode``): real shards, manifest and inputs
    through :mod:`precompute.store`, features drawn per row from a seeded low-rank generator (``ms``/``mc``: the
    gold's ``es``/``ec`` plus noise; NIL mentions: noise), row hashes of each row's kind and text. Shard by
    shard: one shard of features and ids in memory."""
    import hashlib
    import shutil

    from xel.precompute.store import read_jsonl

    rng = np.random.default_rng(seed)
    mix = {kind: rng.normal(size=(8, WRITTEN_DIM)).astype(np.float32) for kind in ("es", "ec")}

    def vectors(kind: str, start: int, n: int) -> np.ndarray:
        r = np.random.default_rng([seed, start, ord(kind[1])])
        return (r.normal(size=(n, 8)) @ mix[kind] + 0.3 * r.normal(size=(n, WRITTEN_DIM))).astype(np.float32)

    def write_kind(kind: str, records: list[dict], feats: np.ndarray, start: int, index: int, text: str) -> dict:
        ids = [str(r["id"]) for r in records]
        hashes = [hashlib.sha256(f"{kind}\x1f{r.get(text) or r.get('name')}".encode()).hexdigest() for r in records]
        checksum = write_shard(shard_path(store, kind, index), kind=kind, start=start, ids=ids,
                               langs=[str(r["lang"]) for r in records], features=feats, input_hash="kb-scale",
                               row_hashes=hashes)
        return {"path": f"{kind}/shard-{index:05d}.h5", "rows": len(ids), "checksum": checksum}

    shards: dict[str, list[dict]] = {"es": [], "ec": [], "ms": [], "mc": []}
    golds = {str(m["gold"]) for m in read_jsonl(data / "mentions.jsonl") if m.get("gold") is not None}
    gold_vectors: dict[str, dict[str, np.ndarray]] = {"es": {}, "ec": {}}
    chunk: list[dict] = []
    start = 0

    def flush() -> None:
        nonlocal start, chunk
        for kind, text in (("es", "name"), ("ec", "description")):
            feats = vectors(kind, start, len(chunk))
            gold_vectors[kind].update((r["id"], feats[i]) for i, r in enumerate(chunk) if r["id"] in golds)
            shards[kind].append(write_kind(kind, chunk, feats, start, len(shards[kind]), text))
        start, chunk = start + len(chunk), []

    for r in read_jsonl(data / "kb.jsonl"):
        chunk.append(r)
        if len(chunk) == shard_size:
            flush()
    if chunk:
        flush()
    mentions = list(read_jsonl(data / "mentions.jsonl"))
    for kind, base in (("ms", "es"), ("mc", "ec")):
        nil = vectors(base, 2**40, len(mentions))
        feats = np.stack([gold_vectors[base][m["gold"]] if m.get("gold") is not None else nil[i]
                          for i, m in enumerate(mentions)])
        feats += 0.3 * np.random.default_rng([seed, ord(kind[1])]).normal(size=feats.shape).astype(np.float32)
        shards[kind].append(write_kind(kind, mentions, feats, 0, 0, "sentence"))
    (store / "inputs").mkdir(parents=True, exist_ok=True)
    for name in ("kb.jsonl", "mentions.jsonl"):
        shutil.copyfile(data / name, store / "inputs" / name)
    write_manifest(store, encoder={"name": "kb-scale-written", "fingerprint": "kb-scale-written"}, model=None,
                   layer=-1, max_length=64, prefix="", dtype="fp32", dim=WRITTEN_DIM, shards=shards)


def write_result(out_json: Path, entities: int, mentions: int, spec: str, shard_size: int, data: Path,
                 results: dict[str, dict[str, Any]], metrics: Path | None = None) -> dict[str, Any]:
    nn = json.loads(metrics.read_text()) if metrics is not None and metrics.is_file() else {}
    steps = [results[s] for s in E2E_STEPS if s in results]
    result = {"entities": entities, "mentions": mentions, "index": spec, "shard_size": shard_size,
              "cpus": os.cpu_count(), "kb_mb": round((data / "kb.jsonl").stat().st_size / 2**20, 1),
              "steps": steps, "nn_micro": nn.get("all", {}).get("micro"),
              "peak_mb_any_process": max(max(s["peak_mb"].values()) for s in steps)}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def measured_step(name: str, cmd: list[str], out: Path, log_dir: Path, env: dict[str, str],
                  stop_after: float | None = None) -> dict[str, Any]:
    """Run ``cmd`` in its own session; peak RSS per process of the session (:class:`bench.soak.Sampler`), wall
    time, and the size of ``out`` afterwards. A failure stops the run with the tail of its log. With
    ``stop_after`` seconds the step is stopped then (SIGTERM to its session) and reported as ``stopped``, with
    the shards it finished."""
    import signal

    from bench.soak import Sampler

    log_path = log_dir / f"{name}.log"
    t0 = time.perf_counter()
    stopped = False
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        sampler = Sampler(proc.pid, interval=0.5)
        sampler.start()
        try:
            code = proc.wait(timeout=stop_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            code, stopped = proc.wait(), True
    sampler.stop.set()
    sampler.join()
    seconds = time.perf_counter() - t0
    if code != 0 and not stopped:
        raise SystemExit(f"{name} failed ({code}); {log_path}:\n{log_path.read_text()[-3000:]}")
    peaks = sampler.peaks_mb()
    row = {"step": name, "seconds": round(seconds, 1), "disk_mb": round(dir_mb(out), 1),
           "peak_mb": {k: round(v, 1) for k, v in sorted(peaks.items())}}
    if stopped:
        row["stopped"] = {"after_s": stop_after,
                          "shards_done": {k.name: len(list(k.glob("shard-*.h5"))) for k in out.glob("[em][sc]")}}
    return row


@main.command()
@click.option("--entities", default=1_000_000, show_default=True)
@click.option("--mentions", default=10_000, show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=Path("/tmp/xel-kb-scale-e2e"), show_default=True)
@click.option("--index", "spec", default="IVF4096,SQ8|nprobe=64", show_default=True,
              help="factory|search params of the index (docs/results.md: the best compressed configuration)")
@click.option("--shard-size", default=65536, show_default=True)
@click.option("--keep/--no-keep", default=False, help="keep the data, store and index after measuring")
@click.option("--steps", default=",".join(E2E_STEPS), show_default=True,
              help="steps to run (the others' outputs must be in --work from an earlier --keep run)")
@click.option("--threads", default=1, show_default=True,
              help="CPU threads per process (actors: --cpus-per-actor); 1 avoids the collapse of OpenMP thread "
                   "teams on an oversubscribed machine")
@click.option("--actors", default=2, show_default=True, help="xel-precompute encoder actors")
@click.option("--stop-after", type=float, default=None,
              help="stop the precompute step after this many seconds and report what it did (the peaks so far)")
@click.option("--encode/--no-encode", default=True, show_default=True,
              help="--no-encode: the precompute step writes the store directly (write_store_directly), for sizes "
                   "whose encoding does not fit the time at hand; every later step is the same")
@click.option("--out", "out_json", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="[default: bench/results/kb-scale-e2e-<entities>.json]")
def e2e(entities: int, mentions: int, work: Path, spec: str, shard_size: int, keep: bool, steps: str,
        threads: int, actors: int, stop_after: float | None, encode: bool, out_json: Path | None) -> None:
    """The whole pipeline on a synthetic KB, each step a fresh process measured from outside: data, the tiny
    model through xel-precompute (local Ray), xel-nn build, candidates and eval, one epoch of xel-train."""
    import shutil
    import tempfile

    from tests.tiny import build_tiny_model

    factory, _, params = spec.partition("|")
    run_dir = work / f"e2e-{entities}"
    run_dir.mkdir(parents=True, exist_ok=True)
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    ray_tmp = tempfile.mkdtemp(prefix="xel-e2e-ray-")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, TQDM_DISABLE="1", HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled",
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
    wanted = steps.split(",")
    unknown = [s for s in wanted if s not in E2E_STEPS]
    if unknown:
        raise click.BadParameter(f"{unknown}; allowed: {list(E2E_STEPS)}", param_hint="--steps")
    out_json = out_json or ROOT / "bench" / "results" / f"kb-scale-e2e-{entities}.json"
    earlier = json.loads(out_json.read_text()) if out_json.is_file() else {}
    done = {s["step"]: s for s in earlier.get("steps", []) if s["step"] not in wanted}
    bin_dir = Path(sys.executable).parent
    data, store, index = run_dir / "data", run_dir / "h5", run_dir / "index"
    results = dict(done)
    if "data" in wanted:
        t0 = time.perf_counter()
        write_kb_data(data, entities, mentions)
        results["data"] = {"step": "data", "seconds": round(time.perf_counter() - t0, 1),
                           "disk_mb": round(dir_mb(data), 1), "peak_mb": {"driver": round(peak_rss_mb(), 1)}}
        print(json.dumps(results["data"]), flush=True)
    model = run_dir / "model" if (run_dir / "model").is_dir() else build_tiny_model(run_dir / "model")
    search = ["--search-params", params] if params else []
    plan = [
        ("precompute", [bin_dir / "xel-precompute", "--data", data, "--model", model, "--out", store,
                        "--kinds", "ms,mc,es,ec", "--shard-size", str(shard_size), "--actors", str(actors),
                        "--cpus-per-actor", str(threads)], store),
        ("index", [bin_dir / "xel-nn", "build", "--features", store, "--out", index, "--index", factory,
                   "--overwrite"], index),
        ("candidates", [bin_dir / "xel-nn", "candidates", "--features", store, "--index", index,
                        "--out", run_dir / "cands", "--k", "30", *search], run_dir / "cands"),
        ("nn-eval", [bin_dir / "xel-nn", "eval", "--features", store, "--index", index, "--out", run_dir / "nn",
                     "--candidates", run_dir / "cands" / "candidates.jsonl", *search], run_dir / "nn"),
        ("train", [bin_dir / "xel-train", "--features", store, "--candidates",
                   run_dir / "cands" / "candidates.jsonl", "--epochs", "1", "--no-plots", "--threads",
                   str(threads), "--out", run_dir / "train", "--overwrite"], run_dir / "train"),
        ("link", [bin_dir / "xel-link", "--model", run_dir / "train", "--index", index, "--in",
                  data / "mentions.jsonl", "--out", run_dir / "link" / "links.jsonl", "--no-progress"],
         run_dir / "link"),
    ]
    try:
        if "precompute" in wanted and not encode:
            wanted.remove("precompute")
            t0 = time.perf_counter()
            write_store_directly(data, store, shard_size)
            results["precompute"] = {"step": "precompute", "written": True,
                                     "seconds": round(time.perf_counter() - t0, 1), "disk_mb": round(dir_mb(store), 1),
                                     "peak_mb": {"driver": round(peak_rss_mb(), 1)}}
            print(json.dumps(results["precompute"]), flush=True)
        (run_dir / "link").mkdir(exist_ok=True)
        for name, cmd, out in plan:
            if name in wanted:
                results[name] = measured_step(name, [str(c) for c in cmd], out, logs, env,
                                              stop_after if name == "precompute" else None)
                print(json.dumps(results[name]), flush=True)
                write_result(out_json, entities, mentions, spec, shard_size, data, results)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    result = write_result(out_json, entities, mentions, spec, shard_size, data, results,
                          run_dir / "nn" / "metrics.json")
    print(f"\n{entities:,} entities, {mentions:,} mentions, index {spec}; peak private memory (RssAnon) MB")
    print(f"{'step':<11} {'seconds':>8} {'disk MB':>9} {'driver':>8} {'actor':>8} {'ray':>8} {'total':>8}")
    for s in result["steps"]:
        p = s["peak_mb"]
        print(f"{s['step']:<11} {s['seconds']:>8.1f} {s['disk_mb']:>9.1f} {p.get('driver', 0):>8.0f} "
              f"{p.get('actor', 0):>8.0f} {p.get('ray', 0):>8.0f} {p.get('total', p.get('driver', 0)):>8.0f}")
    print(f"wrote {out_json}")
    if not keep:
        shutil.rmtree(run_dir)


@main.command()
@click.argument("results", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def table(results: tuple[Path, ...]) -> None:
    """The markdown table of ``e2e`` result files in docs/results.md (default: the 1M, 3M and 6M ones in
    bench/results)."""
    paths = results or tuple(path for n in (1_000_000, 3_000_000, 6_000_000)
                             if (path := ROOT / "bench" / "results" / f"kb-scale-e2e-{n}.json").is_file())
    print("| KB | step | wall s | disk MB | driver MB | actors MB | Ray MB | all MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for path in paths:
        result = json.loads(path.read_text())
        size = f"{result['entities'] / 1e6:g}M"
        for s in result["steps"]:
            p = s["peak_mb"]
            print(f"| {size} | {s['step']} | {s['seconds']:,.0f} | {s['disk_mb']:,.0f} | {p.get('driver', 0):,.0f} | "
                  f"{p.get('actor', 0):,.0f} | {p.get('ray', 0):,.0f} | {p.get('total', p.get('driver', 0)):,.0f} |")


@main.command()
@click.option("--data", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="a directory with kb.jsonl (e.g. an e2e run's data/)")
@click.option("--model", type=click.Path(path_type=Path, file_okay=False),
              default=ROOT / "models" / "multilingual-e5-small", show_default=True)
@click.option("--rows", default=20_000, show_default=True, help="KB entries to tokenize (the first N)")
def tokens(data: Path, model: Path, rows: int) -> None:
    """Mean subwords per ``es`` text (prefix + name) and ``ec`` text (prefix + description, or the name) with
    ``model``'s tokenizer, special tokens included: what the plan for a GPU cluster counts tokens with."""
    from itertools import islice

    from transformers import AutoTokenizer
    from xel.precompute.identity import default_prefix
    from xel.precompute.store import read_jsonl

    tok = AutoTokenizer.from_pretrained(model)
    prefix = default_prefix(model)
    records = list(islice(read_jsonl(data / "kb.jsonl"), rows))
    counts = {}
    for kind, texts in (("es", [r["name"] for r in records]),
                        ("ec", [r.get("description") or r["name"] for r in records])):
        counts[kind] = float(np.mean([len(x) for x in tok([prefix + t for t in texts])["input_ids"]]))
    print(json.dumps({"model": str(model), "prefix": prefix, "rows": len(records),
                      "tokens_per_text": {k: round(v, 2) for k, v in counts.items()}}))


if __name__ == "__main__":
    main()
