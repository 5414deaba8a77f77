"""Bring an index directory up to date with a newer version of its store: ``xel-nn build --update``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from precompute.store import Store
from retrieval.factory import build_lang_index
from retrieval.index import FEATURE_KINDS, EntityIndex, LangIndex, RetrievalError
from retrieval.index_files import save_index
from retrieval.vectors import load_features, row_digests

log = logging.getLogger(__name__)


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
