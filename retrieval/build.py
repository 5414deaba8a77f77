"""Build an index directory from a store's entity features, one FAISS index per KB language: ``xel-nn build``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from precompute.store import Store
from retrieval.factory import trained_index
from retrieval.index import FEATURE_KINDS, EntityIndex, LangIndex, RetrievalError
from retrieval.index_files import INDEX_FORMAT_VERSION, save_index
from retrieval.vectors import iter_unit_chunks, row_digests, unit_rows


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
