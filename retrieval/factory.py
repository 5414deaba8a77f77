"""An empty FAISS index from a factory string, trained when its type needs it on a seeded sample of the KB."""

from __future__ import annotations

import logging
from collections.abc import Callable

import faiss
import numpy as np

from retrieval.index import RetrievalError

log = logging.getLogger(__name__)

TRAIN_ROWS_PER_CENTROID = 50


def training_requirements(index: faiss.Index) -> tuple[int, int]:
    """``(minimum, recommended)`` training rows for an untrained index made by ``faiss.index_factory``.

    The minimum is the largest codebook (IVF ``nlist`` coarse centroids, ``2**nbits`` PQ/SQ centroids); the
    recommended count is ``TRAIN_ROWS_PER_CENTROID`` rows per centroid of the largest codebook.
    """
    centroids = 1
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        centroids = max(centroids, ivf.nlist)
    for candidate in (index, ivf, getattr(index, "base_index", None)):
        if candidate is None:
            continue
        candidate = faiss.downcast_index(candidate)
        pq = getattr(candidate, "pq", None)
        if pq is not None:
            centroids = max(centroids, pq.ksub)
    if index.is_trained:
        return 0, 0
    return centroids, TRAIN_ROWS_PER_CENTROID * centroids


def make_index(factory: str, dim: int) -> faiss.Index:
    """An empty inner-product index from a FAISS factory string; a string FAISS rejects raises ``RetrievalError``."""
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise RetrievalError(
            f"FAISS rejects the factory string {factory!r} at dim {dim} ({first}); "
            "use one such as 'Flat', 'HNSW32', 'IVF1024,Flat', 'IVF4096,PQ32' (see the faiss index_factory docs)"
        ) from None


def build_lang_index(
    vectors: np.ndarray, factory: str, *, lang: str = "?", seed: int = 0, train_rows: int | None = None
) -> faiss.Index:
    """Train (on a seeded sample) and fill an index over unit ``vectors`` [n, D] float32."""
    index = trained_index(factory, vectors.shape[1], len(vectors), lambda rows: vectors[rows], lang=lang, seed=seed,
                          train_rows=train_rows)
    index.add(vectors)
    return index


def trained_index(
    factory: str, dim: int, n: int, sample: Callable[[np.ndarray], np.ndarray], *, lang: str = "?", seed: int = 0,
    train_rows: int | None = None,
) -> faiss.Index:
    """An empty index, trained when its type needs it on a seeded sample of ``n`` rows: ``sample(rows)`` returns
    the unit vectors of the given sorted row positions (all rows when the sample is the whole KB)."""
    index = make_index(factory, dim)
    if not index.is_trained:
        minimum, recommended = training_requirements(index)
        if n < minimum:
            raise RetrievalError(
                f"factory {factory!r} needs at least {minimum} training rows (its largest codebook has {minimum} "
                f"centroids) but the KB {lang!r} has {n} entities; use a smaller IVF/PQ or 'Flat'/'HNSW32'"
            )
        sample_size = min(n, train_rows or recommended)
        if sample_size < recommended:
            log.warning("index %r for KB %r: training on %d rows, below the recommended %d", factory, lang,
                        sample_size, recommended)
        rng = np.random.default_rng(seed)
        picked = np.arange(n) if sample_size == n else np.sort(rng.choice(n, sample_size, replace=False))
        sample_vectors = sample(picked)
        _set_kmeans_seed(index, seed)
        log.info("training %r for KB %r on %d of %d rows", factory, lang, sample_size, n)
        try:
            index.train(np.ascontiguousarray(sample_vectors, dtype=np.float32))
        except RuntimeError as e:
            raise RetrievalError(f"training {factory!r} on {sample_size} rows of KB {lang!r} failed: {e}") from None
    return index


def _set_kmeans_seed(index: faiss.Index, seed: int) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
