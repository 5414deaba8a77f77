"""``xel-nn bench``: what each index type costs and loses on a store's own KB, against exact search, in one run.

For every ``--index`` factory string (optionally ``"STRING|params"``, e.g. ``"IVF1024,PQ48|nprobe=64,rerank=4"``)
it builds the index over the largest KB language (timed; once per factory string, however many parameter sets
follow it), loads it as ``xel-nn`` would (compressed types re-rank their shortlist against the store), searches the
queries in one batch (timed) and compares the top k with the exact top k. :func:`pareto_frontier` then keeps the
rows that no other row beats on both recall and ms/query: the recall/latency frontier, printed as its own table.
The exact answer is computed by streaming the store shard by shard (a brute-force matmul, never the whole table in
memory). Queries are the store's mention features (``ms`` for an ``es`` index), else entity rows
plus noise. Memory is reported as the index's bytes on disk and the process's peak RSS (``VmHWM``) after the
run, which is cumulative: run one factory per process to compare peaks.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import faiss
import numpy as np
from xel.precompute.store import Store
from xel.retrieval.build import build_index
from xel.retrieval.index import FEATURE_KINDS
from xel.retrieval.index_files import open_index_and_store
from xel.retrieval.vectors import iter_unit_chunks, unit_rows

log = logging.getLogger(__name__)
RECALL_WARNING = 0.01  # warn when recall@10 falls this far below exact search (whose recall is 1)
T = TypeVar("T")


@dataclass(frozen=True)
class BenchRow:
    factory: str
    params: str
    build_s: float
    bytes: int
    ms_per_query: float
    queries_per_s: float
    recall: float
    peak_rss_mb: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def pareto_frontier(rows: Sequence[T], recall: Callable[[T], float], cost: Callable[[T], float]) -> list[T]:
    """The rows no other row dominates (as high a recall at no higher cost, and strictly better in one of the two),
    cheapest first; of rows equal in both, the first is kept."""
    frontier: list[T] = []
    for row in sorted(rows, key=lambda r: (cost(r), -recall(r))):
        if not frontier or recall(row) > recall(frontier[-1]):
            frontier.append(row)
    return frontier


def parse_spec(spec: str) -> tuple[str, str]:
    """``"FACTORY|params"`` -> ``(FACTORY, params)``; params may be empty."""
    factory, _, params = spec.partition("|")
    return factory.strip(), params.strip()


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_queries(store: Store, kind: str, lang_rows: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Unit query vectors: the first ``n`` mention rows of the query kind, else KB rows plus Gaussian noise."""
    query_kind = FEATURE_KINDS[kind]
    if all(part in store.kinds for part in query_kind.split("+")) and store.count(query_kind.split("+")[0]):
        rows = np.arange(min(n, store.count(query_kind.split("+")[0])))
        return unit_rows(store, query_kind, rows)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(lang_rows, size=min(n, len(lang_rows)), replace=False))
    base = unit_rows(store, kind, picked)
    noisy = base + rng.normal(scale=0.5 / np.sqrt(base.shape[1]), size=base.shape).astype(np.float32)
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def exact_topk(store: Store, kind: str, lang: str, queries: np.ndarray, k: int,
               block: int = 2048) -> list[list[str]]:
    """The exact top-``k`` KB ids of ``lang`` for each query, streaming the store one shard at a time (and the
    queries ``block`` at a time, so a shard's score matrix stays small)."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    all_ids: list[str] = []
    for ids, vectors, langs in iter_unit_chunks(store, kind):
        mask = np.asarray(langs) == lang
        if not mask.any():
            continue
        offset = len(all_ids)
        all_ids.extend(i for i, m in zip(ids, mask) if m)
        vectors = vectors[mask]
        merged_scores, merged_rows = [], []
        for start in range(0, len(queries), block):
            scores = queries[start:start + block] @ vectors.T
            if scores.shape[1] > k:  # the chunk's own top k first (linear time), then merge with the best so far
                top = np.sort(np.argpartition(-scores, k - 1, axis=1)[:, :k], axis=1)
                scores, local = np.take_along_axis(scores, top, axis=1), top + offset
            else:
                local = np.broadcast_to(np.arange(offset, offset + scores.shape[1]), scores.shape)
            cand_scores = np.concatenate([best_scores[start:start + block], scores], axis=1)
            cand_rows = np.concatenate([best_rows[start:start + block], local], axis=1)
            order = np.argsort(-cand_scores, axis=1, kind="stable")[:, :k]
            merged_scores.append(np.take_along_axis(cand_scores, order, axis=1))
            merged_rows.append(np.take_along_axis(cand_rows, order, axis=1))
        best_scores, best_rows = np.concatenate(merged_scores), np.concatenate(merged_rows)
    return [[all_ids[r] for r in row] for row in best_rows]


def run_bench(store: Store, factories: list[str], *, kind: str = "es", queries: int = 1000, k: int = 10,
              seed: int = 0, train_rows: int | None = None) -> tuple[list[BenchRow], str]:
    """One :class:`BenchRow` per factory string, and the KB language measured."""
    ids, langs = store.load_ids(kind.split("+")[0])
    counts: dict[str, int] = {}
    for lang in langs:
        counts[lang] = counts.get(lang, 0) + 1
    lang = max(sorted(counts), key=lambda x: counts[x])
    lang_rows = np.flatnonzero(np.asarray(langs) == lang)
    q = bench_queries(store, kind, lang_rows, queries, seed)
    t0 = time.perf_counter()
    truth = exact_topk(store, kind, lang, q, k)
    log.info("exact top-%d of %d queries over %d entities in %.1f s", k, len(q), len(lang_rows),
             time.perf_counter() - t0)
    by_factory: dict[str, list[str]] = {}
    for spec in factories:
        factory, params = parse_spec(spec)
        by_factory.setdefault(factory, []).append(params)
    rows = []
    for factory, param_sets in by_factory.items():
        with tempfile.TemporaryDirectory(prefix="xel-nn-bench-") as tmp:
            t0 = time.perf_counter()
            build_index(store, Path(tmp) / "index", factory=factory, kind=kind, seed=seed, train_rows=train_rows)
            build_s = time.perf_counter() - t0
            size = sum(p.stat().st_size for p in (Path(tmp) / "index").glob(f"index-{lang}.faiss"))
            for params in param_sets:
                index, _ = open_index_and_store(Path(tmp) / "index", store.root)
                index.set_search_params(params or None)
                t0 = time.perf_counter()
                _, got = index.langs[lang].search(q, k)
                search_s = time.perf_counter() - t0
                recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, truth)]))
                rows.append(BenchRow(factory, params, build_s, size, 1000 * search_s / len(q), len(q) / search_s,
                                     recall, peak_rss_mb()))
    return rows, lang


def bench_frontier(rows: Sequence[BenchRow]) -> list[BenchRow]:
    return pareto_frontier(rows, lambda r: r.recall, lambda r: r.ms_per_query)


def format_bench(rows: list[BenchRow], k: int) -> str:
    """The table of all rows, the frontier's table, and a warning per row whose recall falls short."""
    frontier = bench_frontier(rows)
    lines = [f"{'index':<28} {'params':<22} {'build s':>8} {'MB':>9} {'ms/query':>9} {'queries/s':>10} "
             f"{f'recall@{k}':>10} {'peak RSS MB':>12}"]
    for r in rows:
        lines.append(f"{r.factory:<28} {r.params or '-':<22} {r.build_s:>8.1f} {r.bytes / 2**20:>9.1f} "
                     f"{r.ms_per_query:>9.3f} {r.queries_per_s:>10,.0f} {r.recall:>10.4f} {r.peak_rss_mb:>12,.0f}")
    lines.append(f"\nrecall@{k} / ms-per-query frontier ({faiss.omp_get_max_threads()} threads, queries in one batch): "
                 "no other row has as high a recall at no more ms/query")
    lines.append(f"{'index':<28} {'params':<22} {'ms/query':>9} {f'recall@{k}':>10}")
    for r in frontier:
        lines.append(f"{r.factory:<28} {r.params or '-':<22} {r.ms_per_query:>9.3f} {r.recall:>10.4f}")
    for r in rows:
        if r.recall < 1.0 - RECALL_WARNING:
            lines.append(f"WARNING: {r.factory} {r.params}: recall@{k} {r.recall:.4f} is more than "
                         f"{RECALL_WARNING} below exact search; raise nprobe/efSearch/rerank or use a larger code")
    return "\n".join(lines)
