"""An empty FAISS index from a factory string or a preset name, trained when its type needs it on a seeded sample of
the KB."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np
from xel.retrieval.index import RetrievalError

log = logging.getLogger(__name__)

TRAIN_ROWS_PER_CENTROID = 50


@dataclass(frozen=True)
class IndexPreset:
    """A named index configuration: a FAISS factory string and the search parameters set on the index when it is
    made, so they are saved in its file and used by every search (``--search-params`` still overrides them)."""

    factory: str
    search_params: str


INDEX_PRESETS: dict[str, IndexPreset] = {
    # KBs of about 1M entities (dim divisible by 192: 384 for e5-small, 768 for e5-base): 8,192 inverted lists of
    # which 256 are scanned with 4-bit fast-scan PQ (two dimensions per code), the best 64 x k re-ranked exactly
    # against the float32 vectors the index holds (4 x dim + 104 bytes per entity). Measured on real e5 vectors
    # (python -m bench.retrieval --data real: the 13,102 distinct KB names of the sample, WEL-X and NEREL KBs,
    # replicated with small perturbations to 1M rows; 2,000 real de/en/ru mention queries; 2 cores, load 4-6):
    # recall@10 against exact 0.9962 at 1.10 CPU ms a query batched (goal >= 0.99 at <= 2 ms; 3.2 ms one query at
    # a time), trained on the recommended 409,600 rows (500 s to build); bench/results/ann-real-1m.json.
    # The lists limit recall, not the codes: nprobe=128 / 192 / 384 give 0.987 / 0.994 / 0.998, k_factor_rf=32 /
    # 128 give 0.994 / 0.997. At the same 1M, HNSW32 reached only 0.945 at efSearch=1024 (4.1 CPU ms), and the
    # preset before this one (PCAR64,IVF1024,PQ64x4fs,RFlat, tuned on random low-rank vectors) 0.481 (0.695 at
    # k_factor_rf=64): its 64-dim PCA codes cannot rank near-identical names. Two thirds of that exact top-10 are
    # perturbed copies; with copies as far from their original as a real name's nearest other name (--spread 0.6,
    # bench/results/ann-real-1m-spread06.json) the preset gives 0.978, and nprobe=384 0.990 at about 2x the CPU.
    "ann-1m": IndexPreset("IVF8192,PQ192x4fs,RFlat", "nprobe=256,k_factor_rf=64"),
}


def training_requirements(index: faiss.Index) -> tuple[int, int]:
    """``(minimum, recommended)`` training rows for an untrained index made by ``faiss.index_factory``.

    The minimum is the largest codebook (IVF ``nlist`` coarse centroids, ``2**nbits`` PQ/SQ centroids) or the
    output dimension of a PCA, whichever is larger; the recommended count is ``TRAIN_ROWS_PER_CENTROID`` rows per
    centroid of the largest codebook, or per input dimension of a PCA if that is more.
    """
    if index.is_trained:
        return 0, 0
    centroids, pca_in, pca_out = 1, 0, 0
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        centroids = max(centroids, ivf.nlist)
    for part in (*_wrapped(index), ivf):
        if part is None:
            continue
        part = faiss.downcast_index(part)
        pq = getattr(part, "pq", None)
        if pq is not None:
            centroids = max(centroids, pq.ksub)
        if isinstance(part, faiss.IndexPreTransform):
            for i in range(part.chain.size()):
                transform = faiss.downcast_VectorTransform(part.chain.at(i))
                if isinstance(transform, faiss.PCAMatrix):
                    pca_in, pca_out = max(pca_in, transform.d_in), max(pca_out, transform.d_out)
    return max(centroids, pca_out), TRAIN_ROWS_PER_CENTROID * max(centroids, pca_in)


def _wrapped(index: faiss.Index) -> list[faiss.Index]:
    """``index`` and the indexes it wraps (a refine stage's base, a pre-transform's inner index), outermost first."""
    parts = []
    while index is not None:
        index = faiss.downcast_index(index)
        parts.append(index)
        index = getattr(index, "base_index", None) or getattr(index, "index", None)
    return parts


def make_index(factory: str, dim: int) -> faiss.Index:
    """An empty inner-product index from a FAISS factory string or a name in :data:`INDEX_PRESETS` (its search
    parameters set); a string FAISS rejects raises ``RetrievalError``."""
    preset = INDEX_PRESETS.get(factory)
    string = preset.factory if preset else factory
    try:
        index = faiss.index_factory(dim, string, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        what = f"preset {factory!r} ({string!r})" if preset else f"the factory string {factory!r}"
        raise RetrievalError(
            f"FAISS rejects {what} at dim {dim} ({first}); use one such as 'Flat', 'HNSW32', 'IVF1024,Flat', "
            f"'IVF4096,PQ32' (see the faiss index_factory docs) or a preset: {', '.join(INDEX_PRESETS)}"
        ) from None
    if preset:
        faiss.ParameterSpace().set_index_parameters(index, preset.search_params)
    _no_polysemous_training(index)
    return index


def _no_polysemous_training(index: faiss.Index) -> None:
    """Switch off the polysemous code ordering FAISS trains for 8-bit PQ codes by default. It renumbers each
    sub-quantizer's centroids by simulated annealing (15-23 s on 2 busy cores for the 600-row ``IVF8,PQ4`` of
    ``tests/test_large_kb.py``, 0.3-0.8 s without it) and serves only searches that filter by a Hamming threshold
    (``ht``), which xel refuses (:meth:`~retrieval.index.EntityIndex.set_search_params`); the distances a search
    computes do not depend on the numbering."""
    ivf = faiss.try_extract_index_ivf(index)
    for part in (*_wrapped(index), faiss.downcast_index(ivf) if ivf is not None else None):
        if part is not None and hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False


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
                f"factory {factory!r} needs at least {minimum} training rows (its largest codebook's centroids or "
                f"its PCA's output dimensions) but the KB {lang!r} has {n} entities; use a smaller IVF/PQ/PCA or "
                "'Flat'/'HNSW32'"
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
