"""Linking against millions of entities in bounded memory: per index configuration, peak RSS while building and
linking 10k mentions, recall@10 against exact search, and queries/s; extrapolated to 6M entities.

    python bench/kb_scale.py [--entities 2000000] [--queries 10000] [--dim 384] [--work /tmp/xel-kb-scale]

It writes a store of random low-rank entity features (a 48-dim latent projected to ``--dim`` plus noise, fp16,
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

import click
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from precompute.store import MANIFEST, open_store, shard_path, write_manifest, write_shard  # noqa: E402

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
    from retrieval.bench import peak_rss_mb as peak

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
    from retrieval.bench import exact_topk
    from retrieval.vectors import unit_rows

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
    import retrieval.bench  # noqa: F401  (faiss, numpy: what every configuration's process loads)
    from retrieval.vectors import unit_rows

    store = open_store(store_dir)
    unit_rows(store, "ms", np.arange(store.count("ms")))
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


@main.command()
@click.option("--store", "store_dir", type=click.Path(path_type=Path), required=True)
@click.option("--config", "spec", required=True)
def one(store_dir: Path, spec: str) -> None:
    """Build, load and link in this process; print one JSON line."""
    import tempfile

    from retrieval.build import build_index
    from retrieval.index_files import open_index_and_store
    from retrieval.vectors import unit_rows

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


if __name__ == "__main__":
    main()
