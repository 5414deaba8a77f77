"""ANN benchmark at 1M entities: per index configuration, build time, size, RSS, recall@10 against exact search and
ms/query (a batch of queries, and one query at a time) at 2 and 1 threads; prints every row and the
recall/latency frontier.

    python -m bench.retrieval --data lowrank                            # 1M entities x 2,000 queries at dim 384
    python -m bench.retrieval --entities 200000 --index "HNSW32|efSearch=256" --index "HNSW32|efSearch=512"

Entities are unit vectors at the encoder's dimension: ``--data lowrank`` draws them from a ``latent_dim``-dimensional
Gaussian projected to ``dim`` plus small isotropic noise (closer to real embeddings, whose intrinsic dimension is
far below 384), ``random`` isotropically. Each query is a random entity plus Gaussian noise (``--noise``),
renormalised. ``--data real`` reads real encoder vectors (``--vectors``, a ``.npy`` of KB name vectors, e.g. the
``es`` rows of stores) and replicates them to ``--entities`` rows: the real rows first, then copies of them
plus ``N(0, spread^2 / dim)`` noise per coordinate, renormalised (``--spread`` 0.3: a copy's cosine to its original
is about 0.96, above the 0.86 median of a real name's nearest other name); its queries are real query vectors
(``--query-vectors``, e.g. the ``ms`` rows of mentions), else entities plus noise as above::

    python -m bench.retrieval --data real --vectors names.npy --query-vectors mentions.npy --entities 1000000

The exact top-10 is a brute-force matmul over the entity table (``faiss.knn``, no index copy).

Each ``--index`` is ``"FACTORY|search params"`` (a FAISS factory string or a preset name of
:data:`retrieval.factory.INDEX_PRESETS`, built through :func:`retrieval.factory.build_lang_index`); a factory named
more than once is built once and searched with each parameter set, in order (a parameter a set does not name
keeps the value the one before it set). Timings: ``batch`` is wall time of all queries
in one ``search`` call divided by their number (throughput); ``single`` is the mean wall time of
``--latency-queries`` one-query calls (latency); ``cpu`` is the process CPU time of the batch per query, which on a
machine shared with other work says what the search itself cost (FAISS's OpenMP threads wait passively here, so
no spinning is counted): ``cpu / threads`` is the batch figure an idle machine would approach. ``bytes`` is the
serialised index; ``added_rss_mb`` the process's resident memory after the build minus before it. Run it as a module
from the repository root (``bench/retrieval.py`` shares its name with the ``retrieval`` package). Writes
``bench/results/retrieval.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before FAISS loads OpenMP: CPU time counts work, not spinning

import logging  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402
import faiss  # noqa: E402
import numpy as np  # noqa: E402
from xel.precompute.store import atomic_write_json  # noqa: E402
from xel.retrieval.bench import pareto_frontier, parse_spec  # noqa: E402
from xel.retrieval.factory import build_lang_index  # noqa: E402
from xel.retrieval.index import RetrievalError  # noqa: E402

log = logging.getLogger("bench.retrieval")
K = 10
DEFAULT_INDEXES = (
    "IVF1024,PQ96x4fs,RFlat|nprobe=256,k_factor_rf=32", "IVF1024,PQ96x4fs,RFlat|nprobe=512,k_factor_rf=32",
    "PCAR64,PQ64x4fs,RFlat|k_factor_rf=4", "PCAR64,PQ64x4fs,RFlat|k_factor_rf=8",
    "PCAR64,PQ64x4fs,RFlat|k_factor_rf=16",
    "PCAR64,IVF1024,PQ64x4fs,RFlat|nprobe=256,k_factor_rf=8", "PCAR64,IVF1024,PQ64x4fs,RFlat|nprobe=384,k_factor_rf=8",
    "PCAR64,IVF1024,PQ64x4fs,RFlat|nprobe=512,k_factor_rf=8", "PCAR64,IVF1024,PQ64x4fs,RFlat|nprobe=768,k_factor_rf=8",
    "PCAR64,HNSW32,RFlat|efSearch=256,k_factor_rf=4", "PCAR64,HNSW32,RFlat|efSearch=512,k_factor_rf=4",
)


@dataclass(frozen=True)
class BenchConfig:
    entities: int = 1_000_000
    queries: int = 2_000
    dim: int = 384
    data: str = "random"
    vectors: str | None = None  # --data real: the real vectors (.npy) to replicate
    query_vectors: str | None = None  # --data real: real query vectors (.npy)
    spread: float = 0.3
    latent_dim: int = 48
    noise: float = 0.05
    indexes: tuple[str, ...] = DEFAULT_INDEXES
    threads: tuple[int, ...] = (2, 1)
    train_rows: int = 100_000
    latency_queries: int = 200
    seed: int = 0
    out: str = "bench/results/retrieval.json"


def make_data(cfg: BenchConfig, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """``(entities [n, dim], queries [q, dim])``, unit float32, generated ``chunk`` rows at a time so that the peak
    memory is the table itself plus one chunk."""
    rng = np.random.default_rng(cfg.seed)
    if cfg.data == "real":
        return real_data(cfg, rng, chunk)
    projection = rng.standard_normal((cfg.latent_dim, cfg.dim), dtype=np.float32)
    base = np.empty((cfg.entities, cfg.dim), np.float32)
    for start in range(0, cfg.entities, chunk):
        rows = min(chunk, cfg.entities - start)
        if cfg.data == "lowrank":
            block = rng.standard_normal((rows, cfg.latent_dim), dtype=np.float32) @ projection
            block += 0.1 * np.sqrt(cfg.latent_dim) * rng.standard_normal((rows, cfg.dim), dtype=np.float32)
        else:
            block = rng.standard_normal((rows, cfg.dim), dtype=np.float32)
        base[start:start + rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
    queries = base[rng.integers(0, cfg.entities, cfg.queries)]
    queries += cfg.noise * rng.standard_normal(queries.shape, dtype=np.float32)
    return base, queries / np.linalg.norm(queries, axis=1, keepdims=True)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def real_data(cfg: BenchConfig, rng: np.random.Generator, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """``--data real``: the real vectors, then perturbed copies of them up to ``cfg.entities`` rows; the real
    queries (the first ``cfg.queries``), or perturbed entities (see the module docstring)."""
    if not cfg.vectors:
        raise RetrievalError("--data real needs --vectors FILE.npy (real encoder vectors of KB names)")
    real = unit(np.load(cfg.vectors))
    if real.ndim != 2 or real.shape[1] != cfg.dim:
        raise RetrievalError(f"--vectors {cfg.vectors}: shape {real.shape}, expected [n, {cfg.dim}] (--dim)")
    base = np.empty((cfg.entities, cfg.dim), np.float32)
    base[: min(len(real), cfg.entities)] = real[: cfg.entities]
    for start in range(len(real), cfg.entities, chunk):
        rows = min(chunk, cfg.entities - start)
        block = real[np.arange(start, start + rows) % len(real)]
        block = block + cfg.spread / np.sqrt(cfg.dim) * rng.standard_normal((rows, cfg.dim), dtype=np.float32)
        base[start:start + rows] = unit(block)
    if cfg.query_vectors:
        queries = unit(np.load(cfg.query_vectors))[: cfg.queries]
        if queries.shape[1] != cfg.dim:
            raise RetrievalError(f"--query-vectors {cfg.query_vectors}: dim {queries.shape[1]}, expected {cfg.dim}")
        return base, queries
    queries = base[rng.integers(0, cfg.entities, cfg.queries)]
    return base, unit(queries + cfg.noise * rng.standard_normal(queries.shape, dtype=np.float32))


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """The exact top-``k`` rows by inner product, by brute force."""
    _, rows = faiss.knn(queries, base, k, metric=faiss.METRIC_INNER_PRODUCT)
    return rows


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(found, exact)]))


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_search(index: faiss.Index, queries: np.ndarray, latency_queries: int) -> tuple[np.ndarray, dict]:
    """The batch's top-k rows and its timings: batch wall and CPU ms/query, then single-query wall ms/query."""
    wall, cpu = time.perf_counter(), time.process_time()
    _, rows = index.search(queries, K)
    batch_ms = 1000 * (time.perf_counter() - wall) / len(queries)
    cpu_ms = 1000 * (time.process_time() - cpu) / len(queries)
    single = queries[:latency_queries]
    wall = time.perf_counter()
    for q in single:
        index.search(q[None], K)
    single_ms = 1000 * (time.perf_counter() - wall) / len(single)
    return rows, {"ms_per_query_batch": round(batch_ms, 4), "cpu_ms_per_query_batch": round(cpu_ms, 4),
                  "ms_per_query_single": round(single_ms, 4)}


def measure(factory: str, param_sets: list[str], base: np.ndarray, queries: np.ndarray, exact: np.ndarray,
            cfg: BenchConfig) -> list[dict]:
    """Build ``factory`` once over ``base``, then search with each parameter set at each thread count."""
    rss_before = rss_mb()
    start = time.perf_counter()
    index = build_lang_index(base, factory, seed=cfg.seed, train_rows=cfg.train_rows)
    build_s = time.perf_counter() - start
    added_mb = rss_mb() - rss_before
    with tempfile.TemporaryDirectory(prefix="xel-bench-retrieval-") as tmp:
        faiss.write_index(index, str(Path(tmp) / "index.faiss"))
        size = (Path(tmp) / "index.faiss").stat().st_size
    log.info("%s built in %.1f s, %d bytes, +%.0f MB RSS", factory, build_s, size, added_mb)
    rows = []
    space = faiss.ParameterSpace()
    for params in param_sets:
        if params:
            try:
                space.set_index_parameters(index, params)
            except RuntimeError as e:
                raise RetrievalError(f"search parameters {params!r} do not apply to {factory!r} ({e})") from None
        for threads in cfg.threads:
            faiss.omp_set_num_threads(threads)
            found, timings = timed_search(index, queries, cfg.latency_queries)
            rows.append({"factory": factory, "search": params, "threads": threads, "build_s": round(build_s, 2),
                         "bytes": size, "added_rss_mb": round(added_mb, 1), **timings,
                         "recall_at_10": round(recall_at_k(found, exact), 4)})
            log.info("%s %s threads=%d: %s recall@10 %.4f", factory, params or "-", threads, timings,
                     rows[-1]["recall_at_10"])
    del index
    return rows


def frontier(results: list[dict], threads: int) -> list[dict]:
    """The rows at ``threads`` that no other row there beats on both recall@10 and batch ms/query."""
    return pareto_frontier([r for r in results if r["threads"] == threads], lambda r: r["recall_at_10"],
                           lambda r: r["ms_per_query_batch"])


def run(cfg: BenchConfig) -> dict:
    base, queries = make_data(cfg)
    start = time.perf_counter()
    exact = exact_topk(base, queries)
    exact_s = time.perf_counter() - start
    log.info("exact top-%d of %d queries over %d entities: %.1f s", K, len(queries), len(base), exact_s)
    by_factory: dict[str, list[str]] = {}
    for spec in cfg.indexes:
        factory, params = parse_spec(spec)
        by_factory.setdefault(factory, []).append(params)
    report = {
        "config": asdict(cfg),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "faiss": faiss.__version__},
        "exact_ms_per_query_batch": round(1000 * exact_s / len(queries), 4),
        "results": [],
    }
    for factory, param_sets in by_factory.items():
        report["results"] += measure(factory, param_sets, base, queries, exact, cfg)
        report["frontier"] = {str(t): frontier(report["results"], t) for t in cfg.threads}
        report["peak_rss_mb"] = round(rss_mb("VmHWM"), 1)
        report["machine"]["load_average"] = os.getloadavg()
        atomic_write_json(cfg.out, report)  # after every factory: a long run stopped midway keeps what it measured
    return report


COLUMNS = (("factory", 29), ("search", 26), ("threads", 7), ("build_s", 7), ("bytes", 13), ("added_rss_mb", 12),
           ("ms_per_query_batch", 18), ("cpu_ms_per_query_batch", 22), ("ms_per_query_single", 19),
           ("recall_at_10", 12))


def format_rows(rows: list[dict]) -> str:
    lines = [" ".join(f"{c:>{w}}" for c, w in COLUMNS)]
    for r in rows:
        lines.append(" ".join(f"{(r[c] if r[c] != '' else '-')!s:>{w}}" for c, w in COLUMNS))
    return "\n".join(lines)


def format_report(report: dict) -> str:
    parts = [format_rows(report["results"])]
    for threads, rows in sorted(report["frontier"].items(), key=lambda item: -int(item[0])):
        parts.append(f"\nrecall@10 / batch ms-per-query frontier at {threads} thread(s): no other row has as high a "
                     "recall at no more ms/query")
        parts.append(format_rows(rows))
    parts.append(f"\nexact (brute force): {report['exact_ms_per_query_batch']} ms/query batch; "
                 f"peak RSS {report['peak_rss_mb']:,.0f} MB; load average at the end "
                 f"{', '.join(f'{x:.1f}' for x in report['machine']['load_average'])}")
    return "\n".join(parts)


def _ints(ctx, param, value: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}; a comma-separated list of integers is required") from None
    if any(v < 1 for v in values):
        raise click.BadParameter(f"{value!r}; every value must be >= 1")
    return values


@click.command()
@click.option("--entities", default=BenchConfig.entities, show_default=True)
@click.option("--queries", default=BenchConfig.queries, show_default=True)
@click.option("--dim", default=BenchConfig.dim, show_default=True, help="multilingual-e5-small's hidden size")
@click.option("--data", type=click.Choice(["random", "lowrank", "real"]), default=BenchConfig.data,
              show_default=True)
@click.option("--vectors", type=click.Path(dir_okay=False, exists=True), help="--data real: KB name vectors (.npy)")
@click.option("--query-vectors", type=click.Path(dir_okay=False, exists=True),
              help="--data real: real query vectors (.npy)  [default: perturbed entities]")
@click.option("--spread", default=BenchConfig.spread, show_default=True,
              help="--data real: noise of the replicated rows, N(0, spread^2 / dim) per coordinate")
@click.option("--noise", default=BenchConfig.noise, show_default=True,
              help="query = entity + noise * N(0, I), renormalised")
@click.option("--index", "indexes", multiple=True, default=DEFAULT_INDEXES, show_default=True,
              help='"FACTORY|search params" (repeatable): a FAISS factory string or preset name, e.g. '
              '"PCAR64,PQ64x4fs,RFlat|k_factor_rf=8" or "HNSW32|efSearch=256"')
@click.option("--threads", default="2,1", show_default=True, callback=_ints, help="FAISS thread counts to time")
@click.option("--train-rows", default=BenchConfig.train_rows, show_default=True, help="IVF/PQ/PCA training sample")
@click.option("--latency-queries", default=BenchConfig.latency_queries, show_default=True,
              help="queries timed one at a time")
@click.option("--seed", default=BenchConfig.seed, show_default=True)
@click.option("--out", default=BenchConfig.out, show_default=True)
def main(entities, queries, dim, data, vectors, query_vectors, spread, noise, indexes, threads, train_rows,
         latency_queries, seed, out) -> None:
    """Recall@10 vs exact, build time, size and ms/query of FAISS index configurations; the frontier."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name, value in (("--entities", entities), ("--queries", queries), ("--dim", dim),
                        ("--latency-queries", latency_queries)):
        if value < 1:
            raise click.BadParameter(f"{value}; must be >= 1", param_hint=name)
    cfg = BenchConfig(entities=entities, queries=queries, dim=dim, data=data, vectors=vectors,
                      query_vectors=query_vectors, spread=spread, noise=noise, indexes=tuple(indexes),
                      threads=threads, train_rows=train_rows, latency_queries=latency_queries, seed=seed, out=out)
    try:
        report = run(cfg)
    except RetrievalError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{entities:,} entities x {queries:,} queries, dim {dim}, {data} data, {os.cpu_count()} CPUs")
    click.echo(format_report(report))
    click.echo(f"-> {Path(out)}")


if __name__ == "__main__":
    main()
