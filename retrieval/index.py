"""FAISS indexes over a store's entity features, one per KB language: ``xel-nn build --features h5/ --out index/``.

An index directory holds, per KB language ``L``, ``index-L.faiss`` (the FAISS index) and ``ids-L.json`` (row ->
KB id), plus ``manifest.json`` naming the store it was built from (path relative to the index directory), the
store's encoder signature, the feature kind, the factory string, per-language row counts and the sha256 of each
index and ids file (verified on load, so a corrupted file is named, never searched). Every file is written
atomically. Cosine similarity is the inner product of L2-normalised float32 vectors.

Search runs where :func:`select_search_device` says: GPU FAISS when it sees a GPU, else an exact torch
matmul + top-k on CUDA when torch sees one, else CPU FAISS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from precompute.store import Store, StoreError, atomic_write_bytes, atomic_write_json, file_sha256, open_store

log = logging.getLogger(__name__)

INDEX_MANIFEST = "manifest.json"
INDEX_FORMAT_VERSION = 3  # 3 adds per-row digests (updates); 2 per-file sha256; 1 (no checksums) loads with a warning
READABLE_INDEX_VERSIONS = (1, 2, INDEX_FORMAT_VERSION)
# entity feature kind indexed -> the mention feature kind queried against it
FEATURE_KINDS = {"es": "ms", "ec": "mc", "es+ec": "ms+mc"}
SEARCH_DEVICES = ("auto", "cpu", "faiss-gpu", "torch")
TRAIN_ROWS_PER_CENTROID = 50


class RetrievalError(ValueError):
    """An index cannot be built, loaded or searched as asked (bad factory string, too few rows, bad k)."""


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` as float32 unit vectors (zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def unit_concat(parts: list[np.ndarray]) -> np.ndarray:
    """The unit rows of one kind, or of two kinds (``a+b``): each normalised, concatenated, normalised again."""
    mats = [l2_normalise(p) for p in parts]
    return l2_normalise(np.concatenate(mats, axis=1)) if len(mats) > 1 else mats[0]


def load_features(store: Store, kind: str) -> tuple[list[str], np.ndarray, list[str]]:
    """``(ids, L2-normalised float32 features, langs)`` of ``kind``; ``a+b`` concatenates the unit rows of two kinds.

    Mention kinds (``ms``, ``mc``, ``ms+mc``) and entity kinds (``es``, ``ec``, ``es+ec``) are both accepted.
    """
    parts = kind.split("+")
    ids, feats, langs = store.load(parts[0])
    mats = [feats]
    for extra in parts[1:]:
        ids2, feats2, _ = store.load(extra)
        if ids2 != ids:
            raise StoreError(f"{store.root}: kinds {parts[0]!r} and {extra!r} hold different ids; cannot concatenate")
        mats.append(feats2)
    return ids, unit_concat(mats), langs


def ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\x1f".join(ids).encode("utf-8")).hexdigest()


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


# ----------------------------------------------------------------------------------------------- devices


def select_search_device(
    requested: str = "auto", *, faiss_gpus: int | None = None, torch_cuda: bool | None = None
) -> str:
    """Where to search: ``faiss-gpu`` if FAISS sees a GPU, else ``torch`` if torch sees CUDA, else ``cpu``.

    ``requested`` other than ``auto`` is honoured, and refused when the hardware it needs is absent.
    """
    if requested not in SEARCH_DEVICES:
        raise ValueError(f"search device {requested!r}; allowed: {list(SEARCH_DEVICES)}")
    if faiss_gpus is None:
        faiss_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if torch_cuda is None:
        torch_cuda = _torch_cuda_available()
    if requested == "faiss-gpu" and faiss_gpus <= 0:
        raise ValueError("search device 'faiss-gpu' asked for, but FAISS sees no GPU (install the 'gpu' extra)")
    if requested == "torch" and not torch_cuda:
        raise ValueError("search device 'torch' asked for, but torch sees no CUDA device")
    if requested != "auto":
        return requested
    if faiss_gpus > 0:
        return "faiss-gpu"
    if torch_cuda:
        return "torch"
    return "cpu"


def _torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TorchExactSearcher:
    """Exact inner-product top-k with a torch matmul over the index's stored vectors (on ``device``)."""

    def __init__(self, index: faiss.Index, device: str = "cuda", chunk: int = 4096):
        import torch

        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.make_direct_map()
        vectors = index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, index.d), np.float32)
        self.torch = torch
        self.device = device
        self.chunk = chunk
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        k_eff = min(k, self.vectors.shape[0])
        scores = np.full((len(queries), k), -np.inf, np.float32)
        rows = np.full((len(queries), k), -1, np.int64)
        with torch.inference_mode():
            for start in range(0, len(queries), self.chunk):
                q = torch.from_numpy(np.ascontiguousarray(queries[start:start + self.chunk])).to(self.device)
                top = torch.topk(q @ self.vectors.T, k_eff, dim=1)
                scores[start:start + len(q), :k_eff] = top.values.cpu().numpy()
                rows[start:start + len(q), :k_eff] = top.indices.cpu().numpy()
        return scores, rows


# ----------------------------------------------------------------------------------------------- index dir


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


@dataclass
class LangIndex:
    """One KB language's index and its row -> KB id map."""

    lang: str
    index: faiss.Index
    ids: list[str]
    digests: list[str] = field(default_factory=list)  # per row, for updates (row_digests); [] before format 3
    searcher: Any = None  # a TorchExactSearcher or a GPU copy, set by ``EntityIndex.to_device``
    reranker: Reranker | None = None  # set by ``EntityIndex.attach_store`` for compressed index types

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` ``(scores [n, <=k], kb ids)`` of unit ``queries``, best first (fewer if the KB is small)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.index.d:
            raise RetrievalError(
                f"queries of shape {queries.shape}; the {self.lang!r} index expects [n, {self.index.d}]"
            )
        if k < 1:
            raise RetrievalError(f"k={k}; k must be >= 1")
        if len(queries) == 0:
            return np.zeros((0, 0), np.float32), []
        searcher = self.searcher if self.searcher is not None else self.index
        if self.reranker is not None and self.reranker.factor > 1:
            _, shortlist = searcher.search(queries, k * self.reranker.factor)
            scores, rows = self.reranker.apply(queries, shortlist, k)
        else:
            scores, rows = searcher.search(queries, k)
        valid = rows >= 0
        width = int(valid.sum(axis=1).min())
        ids = [[self.ids[r] for r in row[:width]] for row in rows]
        return scores[:, :width], ids


@dataclass
class EntityIndex:
    """A loaded index directory: per-language indexes plus the manifest."""

    root: Path
    manifest: dict[str, Any]
    langs: dict[str, LangIndex] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def query_kind(self) -> str:
        return FEATURE_KINDS[self.kind]

    def store_path(self) -> Path:
        return (self.root / self.manifest["store"]).resolve()

    def check_store(self, store: Store) -> None:
        """Refuse a store whose encoder signature or dimension differs from the one the index was built from."""
        theirs = store.encoder_signature()
        if theirs != self.manifest["encoder_signature"]:
            raise StoreError(
                f"index {self.root} was built from a store with encoder {self.manifest['encoder_signature']}, "
                f"but store {store.root} has {theirs}; rebuild the index with xel-nn build --features {store.root}"
            )

    def check_ids(self, lang: str, ids: list[str]) -> None:
        """Refuse entity rows that differ from the ones the index of ``lang`` was built over (as a set: an updated
        index holds them in another order)."""
        info = self.manifest["langs"][lang]
        if ("ids_set_sha256" in info and ids_digest(sorted(ids)) != info["ids_set_sha256"]) or \
                ("ids_set_sha256" not in info and ids_digest(ids) != info["ids_sha256"]):
            raise StoreError(
                f"index {self.root}: the store's KB {lang!r} entities differ from those indexed; rebuild the index"
            )

    def kb_lang_for(self, mention_lang: str, override: str | None = None) -> str:
        """The KB a mention of ``mention_lang`` links to: ``override``, else its own language, else the only KB."""
        available = sorted(self.langs)
        if override is not None:
            if override not in self.langs:
                raise RetrievalError(f"KB language {override!r} is not in index {self.root}; it holds {available}")
            return override
        if mention_lang in self.langs:
            return mention_lang
        if len(available) == 1:
            return available[0]
        raise RetrievalError(
            f"mentions in {mention_lang!r} have no KB of their language in index {self.root} (it holds {available}); "
            "name the KB with --kb-lang"
        )

    def attach_store(self, store: Store, factor: int = DEFAULT_RERANK) -> None:
        """For a compressed index type, re-rank each search's ``factor`` x k shortlist exactly against ``store``'s
        fp16 features (read row by row), so that compression does not silently cost recall."""
        if not is_compressed(self.manifest["factory"]):
            return
        ids, _ = store.load_ids(self.kind.split("+")[0])
        position = {entity: row for row, entity in enumerate(ids)}
        for lang_index in self.langs.values():
            rows = np.fromiter((position[i] for i in lang_index.ids), dtype=np.int64, count=len(lang_index.ids))
            lang_index.reranker = Reranker(store, self.kind, rows, factor)

    def set_search_params(self, params: str | None) -> None:
        """Apply FAISS search parameters such as ``efSearch=128`` or ``nprobe=32,k_factor_rf=4`` to every index;
        ``rerank=N`` sets the shortlist factor of a compressed index's exact re-ranking (1: off)."""
        if not params:
            return
        space = faiss.ParameterSpace()
        for lang_index in self.langs.values():
            for item in params.split(","):
                name, _, value = item.partition("=")
                if name.strip() == "rerank":
                    if not value.strip().isdigit() or int(value) < 1:
                        raise RetrievalError(f"search parameter {item!r}: rerank takes an integer >= 1 (1: off)")
                    if lang_index.reranker is not None:
                        lang_index.reranker.factor = int(value)
                    continue
                try:
                    space.set_index_parameter(lang_index.index, name.strip(), float(value))
                except (RuntimeError, ValueError) as e:
                    raise RetrievalError(
                        f"search parameter {item!r} does not apply to index {self.manifest['factory']!r} ({e}); "
                        "use name=value pairs such as efSearch=128, nprobe=32, k_factor_rf=4"
                    ) from None

    def to_device(self, requested: str = "auto") -> str:
        """Move search to the device :func:`select_search_device` picks; returns it."""
        device = select_search_device(requested)
        for lang_index in self.langs.values():
            if device == "faiss-gpu":
                try:
                    resources = faiss.StandardGpuResources()
                    lang_index.searcher = faiss.index_cpu_to_gpu(resources, 0, lang_index.index)
                    lang_index.searcher._resources = resources
                except (RuntimeError, AttributeError) as e:
                    log.warning("index %r has no GPU FAISS version (%s); KB %r searches on the CPU",
                                self.manifest["factory"], e, lang_index.lang)
            elif device == "torch":
                lang_index.searcher = TorchExactSearcher(lang_index.index, device="cuda")
        log.info("searching on %s", device)
        return device


def row_digests(vectors: np.ndarray) -> list[str]:
    """A digest of each indexed vector (its float32 bytes), kept beside the ids so that an update can tell a
    changed entity from an unchanged one."""
    return [hashlib.sha256(row.tobytes()).hexdigest()[:16] for row in np.ascontiguousarray(vectors, np.float32)]


def _features_by_lang(store: Store, kind: str) -> tuple[dict[str, tuple[list[str], np.ndarray]], int]:
    if kind not in FEATURE_KINDS:
        raise RetrievalError(f"feature kind {kind!r}; allowed: {list(FEATURE_KINDS)}")
    ids, vectors, langs = load_features(store, kind)
    if not ids:
        raise RetrievalError(f"store {store.root} has no {kind!r} rows to index")
    by_lang: dict[str, list[int]] = {}
    for row, lang in enumerate(langs):
        by_lang.setdefault(lang, []).append(row)
    return {lang: ([ids[r] for r in rows], vectors[rows]) for lang, rows in sorted(by_lang.items())}, vectors.shape[1]


def unit_rows(store: Store, kind: str, rows: np.ndarray) -> np.ndarray:
    """Unit float32 vectors of the given global rows of ``kind`` (``a+b``: both kinds' unit rows, concatenated and
    normalised again), read from the store row by row."""
    return unit_concat([store.read_rows(part, rows) for part in kind.split("+")])


def iter_unit_chunks(store: Store, kind: str) -> Iterator[tuple[list[str], np.ndarray, list[str]]]:
    """``(ids, unit float32 vectors, langs)`` shard by shard, each shard checksummed: one shard in memory."""
    parts = kind.split("+")
    for shards in zip(*(store.iter_shards(part) for part in parts)):
        if any(s.ids != shards[0].ids for s in shards[1:]):
            raise StoreError(f"{store.root}: kinds {parts} hold different ids; cannot concatenate")
        yield shards[0].ids, unit_concat([s.features for s in shards]), shards[0].langs


def build_index(
    store: Store, out: str | os.PathLike, *, factory: str = "Flat", kind: str = "es", seed: int = 0,
    train_rows: int | None = None,
) -> EntityIndex:
    """Build one index per KB language of ``store``'s ``kind`` features and save it under ``out``.

    Bounded memory: the ids are read first; an index that needs training trains on a seeded sample read row by
    row from the store; then the store is added one shard at a time. Beyond the index itself, memory holds one
    shard and the training sample, so a KB larger than RAM can be indexed with a compressed index type."""
    if kind not in FEATURE_KINDS:
        raise RetrievalError(f"feature kind {kind!r}; allowed: {list(FEATURE_KINDS)}")
    out = Path(out)
    ids, langs = store.load_ids(kind.split("+")[0])
    if not ids:
        raise RetrievalError(f"store {store.root} has no {kind!r} rows to index")
    rows_of: dict[str, list[int]] = {}
    for row, lang in enumerate(langs):
        rows_of.setdefault(lang, []).append(row)
    dim = store.dim * len(kind.split("+"))
    result = EntityIndex(out, {})
    for lang, rows in sorted(rows_of.items()):
        positions = np.asarray(rows, dtype=np.int64)
        index = trained_index(factory, dim, len(rows), lambda picked, p=positions: unit_rows(store, kind, p[picked]),
                              lang=lang, seed=seed, train_rows=train_rows)
        result.langs[lang] = LangIndex(lang, index, [], [])
    for chunk_ids, vectors, chunk_langs in iter_unit_chunks(store, kind):
        chunk_langs_arr = np.asarray(chunk_langs)
        for lang in np.unique(chunk_langs_arr):
            mask = chunk_langs_arr == lang
            lang_index = result.langs[str(lang)]
            lang_index.index.add(np.ascontiguousarray(vectors[mask]))
            lang_index.ids.extend(i for i, m in zip(chunk_ids, mask) if m)
            lang_index.digests.extend(row_digests(vectors[mask]))
    result.manifest = {
        "format_version": INDEX_FORMAT_VERSION, "factory": factory, "kind": kind, "dim": int(dim),
        "encoder_signature": store.encoder_signature(), "seed": seed, "train_rows": train_rows,
    }
    save_index(result, store, out)
    return result


def save_index(result: EntityIndex, store: Store, out: Path) -> None:
    """Write every language's index, ids and digests, then ``manifest.json`` (last), under ``out``."""
    lang_info: dict[str, Any] = {}
    for lang, lang_index in sorted(result.langs.items()):
        size, index_sha256 = write_faiss(lang_index.index, out / f"index-{lang}.faiss")
        ids_json = (json.dumps(lang_index.ids, ensure_ascii=False) + "\n").encode("utf-8")
        digests_json = (json.dumps(lang_index.digests) + "\n").encode("utf-8")
        atomic_write_bytes(out / f"ids-{lang}.json", ids_json)
        atomic_write_bytes(out / f"digests-{lang}.json", digests_json)
        lang_info[lang] = {
            "rows": len(lang_index.ids), "bytes": size, "ids_sha256": ids_digest(lang_index.ids),
            "ids_set_sha256": ids_digest(sorted(lang_index.ids)),
            "index_file_sha256": index_sha256,
            "ids_file_sha256": hashlib.sha256(ids_json).hexdigest(),
            "digests_file_sha256": hashlib.sha256(digests_json).hexdigest(),
        }
        log.info("KB %r: %d entities indexed with %r (%d bytes)", lang, len(lang_index.ids),
                 result.manifest["factory"], size)
    result.manifest = {**result.manifest, "format_version": INDEX_FORMAT_VERSION,
                       "store": os.path.relpath(Path(store.root).resolve(), out.resolve()), "langs": lang_info}
    atomic_write_json(out / INDEX_MANIFEST, result.manifest)


def write_faiss(index: faiss.Index, path: Path) -> tuple[int, str]:
    """Write ``index`` to ``path`` atomically, straight from FAISS to a temp file (no in-memory copy of the
    serialised index, which for a large KB would double the memory of the build); return (bytes, sha256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        sha256, size = file_sha256(tmp), os.path.getsize(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return size, sha256


def update_index(index: EntityIndex, store: Store, out: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Bring ``index`` up to date with ``store`` (a newer version of the store it was built from) and save it
    under ``out``; returns, per KB language, how: ``unchanged``; ``in place`` (Flat: the removed and changed
    rows are deleted, which keeps the others in order, and the new and changed rows appended, the id map edited
    the same way); ``re-added`` (IVF: the trained quantizer and codes are kept, the lists emptied and every row
    added again); ``rebuilt`` (HNSW and other types FAISS cannot delete from: trained and filled anew, as
    ``xel-nn build`` would). A search result's id is the same as a from-scratch index's in every case.
    ``index`` is edited, so it must be loaded with ``load_index(..., mmap=False)``."""
    index.check_store(store)
    factory, seed = index.manifest["factory"], index.manifest.get("seed", 0)
    train_rows = index.manifest.get("train_rows")
    by_lang, _ = _features_by_lang(store, index.kind)
    report: dict[str, dict[str, Any]] = {}
    for lang in sorted(set(index.langs) - set(by_lang)):
        del index.langs[lang]
        report[lang] = {"how": "dropped (no entities left)", "added": 0, "removed": None}
    for lang, (new_ids, vectors) in by_lang.items():
        digests = row_digests(vectors)
        old = index.langs.get(lang)
        if old is None or (not old.digests and old.ids):
            why = "new KB language" if old is None else "the index predates row digests"
            if old is not None:
                log.warning("KB %r: %s, so changed rows cannot be told apart; rebuilding it", lang, why)
            built = build_lang_index(vectors, factory, lang=lang, seed=seed, train_rows=train_rows)
            index.langs[lang] = LangIndex(lang, built, new_ids, digests)
            report[lang] = {"how": f"built ({why})", "added": len(new_ids), "removed": None if old else 0}
            continue
        now = dict(zip(new_ids, digests))
        before = dict(zip(old.ids, old.digests))
        gone = [pos for pos, (i, d) in enumerate(zip(old.ids, old.digests)) if now.get(i) != d]
        fresh = [row for row, (i, d) in enumerate(zip(new_ids, digests)) if before.get(i) != d]
        entry = {"added": len(fresh), "removed": len(gone)}
        if not gone and not fresh:
            report[lang] = {"how": "unchanged", **entry}
            continue
        base = faiss.downcast_index(old.index)
        if isinstance(base, faiss.IndexFlat):
            if gone:
                base.remove_ids(faiss.IDSelectorBatch(np.asarray(gone, dtype=np.int64)))
            base.add(np.ascontiguousarray(vectors[fresh]))
            keep = np.ones(len(old.ids), dtype=bool)
            keep[gone] = False
            ids = [i for i, k in zip(old.ids, keep) if k] + [new_ids[r] for r in fresh]
            kept_digests = [d for d, k in zip(old.digests, keep) if k] + [digests[r] for r in fresh]
            index.langs[lang] = LangIndex(lang, base, ids, kept_digests)
            report[lang] = {"how": "in place", **entry}
        elif faiss.try_extract_index_ivf(old.index) is not None:
            old.index.reset()
            old.index.add(np.ascontiguousarray(vectors))
            index.langs[lang] = LangIndex(lang, old.index, new_ids, digests)
            report[lang] = {"how": "re-added (training kept)", **entry}
        else:
            log.warning("KB %r: index %r cannot delete rows in place; rebuilding it", lang, factory)
            built = build_lang_index(vectors, factory, lang=lang, seed=seed, train_rows=train_rows)
            index.langs[lang] = LangIndex(lang, built, new_ids, digests)
            report[lang] = {"how": f"rebuilt ({factory} cannot delete rows)", **entry}
    out = Path(out)
    index.root = out
    save_index(index, store, out)
    return report


def load_index(path: str | os.PathLike, store: Store | None = None, mmap: bool = True) -> EntityIndex:
    """Load an index directory; with ``store``, refuse it unless it was built with the same encoder.

    With ``mmap`` (the default) each index file is memory-mapped read-only (FAISS ``IO_FLAG_MMAP_IFC``) after its
    sha256 is checked by streaming it: its codes stay in the page cache, which the OS can evict, instead of
    private memory (a 460 MB Flat index: 0 MB private, 440 MB file-backed after a search). An index to be
    modified (``xel-nn build --update``) is read into memory instead."""
    root = Path(path)
    manifest_path = root / INDEX_MANIFEST
    if not manifest_path.is_file():
        raise RetrievalError(
            f"{manifest_path}: missing; {root} is not an index directory (build one with xel-nn build)"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RetrievalError(f"{manifest_path}: not valid JSON ({e}); rebuild the index") from None
    if "factory" not in manifest and "kinds" in manifest:
        raise RetrievalError(f"{root}: is a feature store (xel-precompute), not an index directory; build one with "
                             f"xel-nn build --features {root} --out <index dir>")
    for key in ("format_version", "factory", "kind", "dim", "store", "encoder_signature", "langs"):
        if key not in manifest:
            raise RetrievalError(f"{manifest_path}: field {key!r} is missing; rebuild the index")
    if manifest["format_version"] not in READABLE_INDEX_VERSIONS:
        raise RetrievalError(f"{manifest_path}: format_version {manifest['format_version']!r}, "
                             f"this xel reads {list(READABLE_INDEX_VERSIONS)}; {_rebuild_hint(root, manifest)}")
    if manifest["format_version"] < INDEX_FORMAT_VERSION:
        log.warning("%s: format_version %s records no file checksums, so corruption cannot be detected; %s",
                    manifest_path, manifest["format_version"], _rebuild_hint(root, manifest))
    result = EntityIndex(root, manifest)
    if store is not None:
        result.check_store(store)
    for lang, info in manifest["langs"].items():
        index_path, ids_path = root / f"index-{lang}.faiss", root / f"ids-{lang}.json"
        _verify_file(index_path, info.get("index_file_sha256"), root, manifest)
        ids_bytes = _read_verified(ids_path, info.get("ids_file_sha256"), root, manifest)
        try:
            index = _read_faiss(index_path, mmap)
            ids = json.loads(ids_bytes.decode("utf-8"))
        except (RuntimeError, ValueError) as e:
            hint = _rebuild_hint(root, manifest)
            raise RetrievalError(f"{root}: KB {lang!r} index or ids unreadable ({e}); {hint}") from None
        if index.ntotal != info["rows"] or len(ids) != info["rows"] or index.d != manifest["dim"]:
            raise RetrievalError(
                f"{index_path}: {index.ntotal} rows, {len(ids)} ids, dim {index.d} disagree with {manifest_path} "
                f"({info['rows']} rows, dim {manifest['dim']}); rebuild the index"
            )
        digests: list[str] = []
        if "digests_file_sha256" in info:
            digests_bytes = _read_verified(root / f"digests-{lang}.json", info["digests_file_sha256"], root, manifest)
            digests = json.loads(digests_bytes.decode("utf-8"))
            if len(digests) != len(ids):
                raise RetrievalError(f"{root / f'digests-{lang}.json'}: {len(digests)} digests for {len(ids)} ids; "
                                     f"{_rebuild_hint(root, manifest)}")
        result.langs[lang] = LangIndex(lang, index, ids, digests)
    return result


def _rebuild_hint(root: Path, manifest: dict[str, Any]) -> str:
    store = (root / str(manifest.get("store", "<store>"))).resolve()
    return (f"rerun xel-nn build --features {store} --out {root} --index {manifest.get('factory', 'Flat')!r} "
            f"--kind {manifest.get('kind', 'es')} --overwrite")


def _read_faiss(path: Path, mmap: bool) -> faiss.Index:
    if mmap:
        try:
            return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError as e:  # an index type FAISS cannot map: read it into memory
            log.debug("%s: not memory-mapped (%s)", path, e)
    return faiss.read_index(str(path))


def _read_verified(path: Path, sha256: str | None, root: Path, manifest: dict[str, Any]) -> bytes:
    """The bytes of ``path``, refused when missing or when their sha256 differs from the manifest's."""
    _verify_file(path, sha256, root, manifest)
    return path.read_bytes()


def _verify_file(path: Path, sha256: str | None, root: Path, manifest: dict[str, Any]) -> None:
    """Refuse ``path`` when missing or when its sha256 (streamed) differs from the manifest's."""
    if not path.is_file():
        raise RetrievalError(f"{path}: listed in {root / INDEX_MANIFEST} but missing; {_rebuild_hint(root, manifest)}")
    if manifest["format_version"] >= 2:
        got = file_sha256(path)
        if got != sha256:
            raise RetrievalError(
                f"{path}: sha256 {got[:12]}... differs from {str(sha256)[:12]}... recorded in {root / INDEX_MANIFEST} "
                f"(the file is truncated, corrupted or was changed after the build); {_rebuild_hint(root, manifest)}"
            )


def open_index_and_store(index_path: str | os.PathLike, store_path: str | os.PathLike | None = None
                         ) -> tuple[EntityIndex, Store]:
    """Load an index and the store it names (or ``store_path``), refusing an encoder mismatch."""
    index = load_index(index_path)
    store = open_store(store_path if store_path is not None else index.store_path())
    index.check_store(store)
    index.attach_store(store)
    return index, store
