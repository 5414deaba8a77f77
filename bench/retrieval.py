"""Index benchmark: build time, size, ms/query and recall@10 vs exact for Flat, HNSW and IVF-PQ.

    python -m bench.retrieval                              # 1M entities x 100k queries at dim 384
    python -m bench.retrieval --entities 200000 --queries 2000

Entities are random unit vectors at the encoder's dimension (``--data lowrank`` draws them from a
``latent_dim``-dimensional Gaussian projected to ``dim`` plus small isotropic noise instead, closer to real
embeddings, whose intrinsic dimension is far below 384); each query is a random entity plus Gaussian noise
(``--noise``), renormalised, so it has a true nearest neighbour. Exact top-10 comes from the Flat index.
HNSW is swept over ``--ef-search`` values; the IVF-PQ string is re-ranked exactly (``RFlat``) and swept over
``--nprobe``. Run it as a module from the repository root (``bench/retrieval.py`` shares its name with the
``retrieval`` package). Writes ``bench/results/retrieval.json`` and prints a table.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import faiss
import numpy as np

from precompute.store import atomic_write_json
from retrieval.factory import build_lang_index
from retrieval.vectors import l2_normalise

log = logging.getLogger("bench.retrieval")
K = 10


@dataclass(frozen=True)
class BenchConfig:
    entities: int = 1_000_000
    queries: int = 100_000
    dim: int = 384
    data: str = "random"
    latent_dim: int = 48
    noise: float = 0.05
    hnsw: str = "HNSW32"
    ef_search: tuple[int, ...] = (32, 64, 128, 256, 512)
    ivfpq: str = "IVF1024,PQ96x4fs,RFlat"
    train_rows: int = 30_000
    nprobe: tuple[int, ...] = (64, 128, 256, 512)
    k_factor_rf: int = 32
    latency_queries: int = 200
    seed: int = 0
    out: str = "bench/results/retrieval.json"


def make_data(cfg: BenchConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(cfg.seed)
    if cfg.data == "lowrank":
        projection = rng.standard_normal((cfg.latent_dim, cfg.dim), dtype=np.float32)
        base = rng.standard_normal((cfg.entities, cfg.latent_dim), dtype=np.float32) @ projection
        base += 0.1 * np.sqrt(cfg.latent_dim) * rng.standard_normal((cfg.entities, cfg.dim), dtype=np.float32)
    else:
        base = rng.standard_normal((cfg.entities, cfg.dim), dtype=np.float32)
    base = l2_normalise(base)
    picks = rng.integers(0, cfg.entities, cfg.queries)
    queries = base[picks] + cfg.noise * rng.standard_normal((cfg.queries, cfg.dim), dtype=np.float32)
    return base, l2_normalise(queries)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(found, exact)]))


def timed_search(index: faiss.Index, queries: np.ndarray, latency_queries: int) -> tuple[np.ndarray, float, float]:
    """``(rows, batch ms/query, single-query ms/query)``: all queries in one call, then one at a time."""
    start = time.perf_counter()
    _, rows = index.search(queries, K)
    batch_ms = 1000 * (time.perf_counter() - start) / len(queries)
    start = time.perf_counter()
    for q in queries[:latency_queries]:
        index.search(q[None], K)
    single_ms = 1000 * (time.perf_counter() - start) / min(latency_queries, len(queries))
    return rows, batch_ms, single_ms


def measure(name: str, factory: str, base: np.ndarray, queries: np.ndarray, exact: np.ndarray | None,
            cfg: BenchConfig, sweep: list[tuple[str, str]]) -> tuple[list[dict], np.ndarray]:
    start = time.perf_counter()
    index = build_lang_index(base, factory, seed=cfg.seed, train_rows=cfg.train_rows)
    build_s = time.perf_counter() - start
    size = int(faiss.serialize_index(index).size)
    log.info("%s built in %.1fs, %d bytes", factory, build_s, size)
    rows_out, rows = [], None
    space = faiss.ParameterSpace()
    for label, params in sweep or [("", "")]:
        if params:
            space.set_index_parameters(index, params)
        rows, batch_ms, single_ms = timed_search(index, queries, cfg.latency_queries)
        recall = 1.0 if exact is None else recall_at_k(rows, exact)
        rows_out.append({
            "index": name, "factory": factory, "search": label, "build_s": round(build_s, 2), "bytes": size,
            "ms_per_query_batch": round(batch_ms, 4), "ms_per_query_single": round(single_ms, 4),
            "recall_at_10": round(recall, 4),
        })
        log.info("%s %s: %.3f ms/q batch, %.3f ms/q single, recall@10 %.4f", factory, label, batch_ms, single_ms,
                 recall)
    return rows_out, rows


def run(cfg: BenchConfig) -> list[dict]:
    base, queries = make_data(cfg)
    results, exact = measure("exact", "Flat", base, queries, None, cfg, [])
    hnsw, _ = measure("hnsw", cfg.hnsw, base, queries, exact, cfg,
                      [(f"efSearch={ef}", f"efSearch={ef}") for ef in cfg.ef_search])
    ivf, _ = measure("ivfpq", cfg.ivfpq, base, queries, exact, cfg,
                     [(f"nprobe={p},k_factor_rf={cfg.k_factor_rf}", f"nprobe={p},k_factor_rf={cfg.k_factor_rf}")
                      for p in cfg.nprobe])
    results += hnsw + ivf
    atomic_write_json(cfg.out, {
        "config": asdict(cfg), "machine": {"cpus": faiss.omp_get_max_threads(), "platform": platform.platform(),
                                           "faiss": faiss.__version__},
        "results": results,
    })
    return results


def format_results(results: list[dict]) -> str:
    cols = ("factory", "search", "build_s", "bytes", "ms_per_query_batch", "ms_per_query_single", "recall_at_10")
    widths = (20, 26, 9, 13, 19, 20, 13)
    lines = ["".join(f"{c:>{w}}" for c, w in zip(cols, widths))]
    for r in results:
        lines.append("".join(f"{r[c]!s:>{w}}" for c, w in zip(cols, widths)))
    return "\n".join(lines)


def _ints(ctx, param, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}; a comma-separated list of integers is required") from None


@click.command()
@click.option("--entities", default=1_000_000, show_default=True)
@click.option("--queries", default=100_000, show_default=True)
@click.option("--dim", default=384, show_default=True, help="multilingual-e5-small's hidden size")
@click.option("--data", type=click.Choice(["random", "lowrank"]), default="random", show_default=True)
@click.option("--noise", default=0.05, show_default=True, help="query = entity + noise * N(0, I), renormalised")
@click.option("--hnsw", default="HNSW32", show_default=True)
@click.option("--ef-search", default="32,64,128,256,512", show_default=True, callback=_ints)
@click.option("--ivfpq", default="IVF1024,PQ96x4fs,RFlat", show_default=True)
@click.option("--nprobe", default="64,128,256,512", show_default=True, callback=_ints)
@click.option("--train-rows", default=30_000, show_default=True, help="IVF/PQ training sample")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default="bench/results/retrieval.json", show_default=True)
def main(entities, queries, dim, data, noise, hnsw, ef_search, ivfpq, nprobe, train_rows, seed, out) -> None:
    """Benchmark Flat vs HNSW vs IVF-PQ (+ exact re-ranking) on random unit vectors."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name, value in (("--entities", entities), ("--queries", queries), ("--dim", dim)):
        if value < 1:
            raise click.BadParameter(f"{value}; must be >= 1", param_hint=name)
    cfg = BenchConfig(entities=entities, queries=queries, dim=dim, data=data, noise=noise, hnsw=hnsw,
                      ef_search=ef_search, ivfpq=ivfpq, nprobe=nprobe, train_rows=train_rows, seed=seed,
                      out=out)
    results = run(cfg)
    click.echo(f"{entities} entities x {queries} queries, dim {dim}, {data} data, "
               f"{faiss.omp_get_max_threads()} threads")
    click.echo(format_results(results))
    click.echo(f"-> {Path(out)}")


if __name__ == "__main__":
    main()
