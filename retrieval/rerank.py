"""Exact re-ranking of a compressed index's shortlist (PQ, SQ, ...) against the store's fp16 features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xel.precompute.store import Store
from xel.retrieval.vectors import unit_rows

DEFAULT_RERANK = 4  # a compressed index returns RERANK x k candidates, re-ranked exactly against the store


def is_compressed(factory: str) -> bool:
    """True for factory strings whose codes lose precision (PQ, SQ, LSH, RaBitQ) and that carry no exact refine
    stage of their own (``RFlat``, ``Refine(...)``)."""
    parts = [p.strip() for p in factory.split(",")]
    lossy = any(p.startswith(("PQ", "SQ", "LSH", "RaBitQ", "OPQ")) or ("PQ" in p and not p.startswith("IVF"))
                for p in parts)
    return lossy and not any(p.startswith(("RFlat", "Refine")) for p in parts)


@dataclass
class Reranker:
    """Exact re-ranking of a compressed index's shortlist against the store's stored fp16 features."""

    store: Store
    kind: str
    rows: np.ndarray  # the store row of each index label
    factor: int = DEFAULT_RERANK
    chunk: int = 256

    def apply(self, queries: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(queries), k), -np.inf, np.float32)
        top = np.full((len(queries), k), -1, np.int64)
        for start in range(0, len(queries), self.chunk):
            q, lab = queries[start:start + self.chunk], labels[start:start + self.chunk]
            valid = lab >= 0
            unique = np.unique(lab[valid])
            if len(unique) == 0:
                continue
            vectors = unit_rows(self.store, self.kind, self.rows[unique])
            exact = np.einsum("qd,qkd->qk", q, vectors[np.searchsorted(unique, np.where(valid, lab, unique[0]))])
            exact[~valid] = -np.inf
            order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            width = order.shape[1]
            scores[start:start + len(q), :width] = np.take_along_axis(exact, order, axis=1)
            picked = np.take_along_axis(lab, order, axis=1)
            top[start:start + len(q), :width] = np.where(np.isfinite(scores[start:start + len(q), :width]), picked, -1)
        return scores, top
