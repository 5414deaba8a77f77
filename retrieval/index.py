"""A loaded FAISS index directory: one index per KB language, searched by unit vectors (``xel-nn build`` writes it).

An index directory holds, per KB language ``L``, ``index-L.faiss`` (the FAISS index), ``ids-L.json`` (row -> KB id)
and ``digests-L.json`` (row -> the store's hash of what the row encoded, for updates), plus ``manifest.json`` naming
the store it was built from (path relative to the index directory), the store's encoder signature, the feature kind,
the factory string, per-language row counts and the sha256 of each file (:mod:`retrieval.index_files` writes, loads
and verifies them). Cosine similarity is the inner product of L2-normalised float32 vectors
(:mod:`retrieval.vectors`). The jobs around it, each in its own module: :mod:`retrieval.factory` (make and train a
FAISS index), :mod:`retrieval.build` (build a directory from a store), :mod:`retrieval.update` (bring one up to
date), :mod:`retrieval.rerank` (exact re-ranking of compressed types), :mod:`retrieval.devices` (where a search
runs). """

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from xel.precompute.store import Store, StoreError
from xel.retrieval.devices import TorchExactSearcher, select_search_device
from xel.retrieval.rerank import DEFAULT_RERANK, Reranker, is_compressed

log = logging.getLogger(__name__)
ALL_LANGS = "*"  # kb_lang_for: the whole KB, every label language

# entity feature kind indexed -> the mention feature kind queried against it
FEATURE_KINDS = {"es": "ms", "ec": "mc", "es+ec": "ms+mc"}


class RetrievalError(ValueError):
    """An index cannot be built, loaded or searched as asked (bad factory string, too few rows, bad k)."""


@dataclass
class LangIndex:
    """One KB language's index and its row -> KB id map."""

    lang: str
    index: faiss.Index
    ids: list[str]
    # per row, for updates (store_row_digests); [] before format 4; a loaded index reads them on first use
    _digests: list[str] | Callable[[], list[str]] = field(default_factory=list)
    searcher: Any = None  # a TorchExactSearcher or a GPU copy, set by ``EntityIndex.to_device``
    reranker: Reranker | None = None  # set by ``EntityIndex.attach_store`` for compressed index types

    @property
    def digests(self) -> list[str]:
        """Each row's digest (:func:`~retrieval.vectors.store_row_digests`), read from the index directory the
        first time they are asked for (only ``--update`` needs them: 6M of them are ~0.7 GB of strings)."""
        if callable(self._digests):
            self._digests = self._digests()
        return self._digests

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

    def kb_lang_for(self, mention_lang: str, override: str | None = None) -> str:
        """The part of the KB a mention of ``mention_lang`` is searched in: ``override`` (one label language),
        else :data:`ALL_LANGS`, the whole KB. A KB whose entries carry labels in several languages (a Russian KB
        where some entries only have an English label) is one KB, so by default every label language's index
        is searched and the hits are merged by score."""
        if override is not None:
            if override not in self.langs:
                raise RetrievalError(f"KB language {override!r} is not in index {self.root}; it holds "
                                     f"{sorted(self.langs)}")
            return override
        return ALL_LANGS

    def scope_langs(self, scope: str) -> list[str]:
        """The label languages a scope of :meth:`kb_lang_for` covers."""
        return sorted(self.langs) if scope == ALL_LANGS else [scope]

    def search_kbs(
        self, vectors: np.ndarray, langs: Sequence[str], k: int, kb_lang: str | None = None
    ) -> tuple[list[str], list[list[tuple[str, float]]]]:
        """Row ``i`` of unit ``vectors`` (a mention or query in language ``langs[i]``) searched in the scope
        :meth:`kb_lang_for` picks for it, each label language's index searched once for all its rows and the hits
        merged by score; returns per row its scope and top-``k`` ``(kb id, score)``, best first."""
        scopes = [self.kb_lang_for(lang, kb_lang) for lang in langs]
        hits: list[list[tuple[str, float]]] = [[] for _ in scopes]
        for lang in sorted(self.langs):
            rows = [i for i, scope in enumerate(scopes) if lang in self.scope_langs(scope)]
            if not rows:
                continue
            scores, ids = self.langs[lang].search(vectors[rows], k)
            for r, s_row, id_row in zip(rows, scores, ids):
                hits[r].extend((kb, float(s)) for kb, s in zip(id_row, s_row))
        if len(self.langs) > 1:
            hits = [sorted(h, key=lambda x: -x[1])[:k] for h in hits]
        return scopes, hits

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
                if name.strip() == "ht":  # xel trains no polysemous codes (retrieval.factory.make_index)
                    raise RetrievalError(f"search parameter {item!r}: polysemous filtering (ht) is not supported; "
                                         "xel's PQ codes are not ordered for it")
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
