"""Bring an index directory up to date with a newer version of its store: ``xel-nn build --update``.

Changed rows are told apart by digest, not by vector: each index row keeps a digest of the store's row hash (a
hash of exactly what the row encoded, :func:`retrieval.vectors.store_row_digests`), read from the store without
any vector, so an update reads the vectors of the new and changed rows only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from xel.precompute.store import Store
from xel.retrieval.factory import build_lang_index
from xel.retrieval.index import FEATURE_KINDS, EntityIndex, LangIndex, RetrievalError
from xel.retrieval.index_files import save_index
from xel.retrieval.vectors import store_row_digests, unit_rows

log = logging.getLogger(__name__)


def update_index(index: EntityIndex, store: Store, out: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Bring ``index`` up to date with ``store`` (a newer version of the store it was built from) and save it
    under ``out``; returns, per KB language, how: ``unchanged``; ``in place`` (Flat: the removed and changed
    rows are deleted, which keeps the others in order, and the new and changed rows appended, the id map edited
    the same way); ``in place (training kept)`` (IVF: the same, the trained quantizer and the kept rows' codes
    untouched); ``rebuilt`` (HNSW and other types FAISS cannot delete from: trained and filled anew, as
    ``xel-nn build`` would, reading every row). A search result's id is the same as a from-scratch index's in
    every case. ``index`` is edited, so it must be loaded with ``load_index(..., mmap=False)``."""
    index.check_store(store)
    kind, factory = index.manifest["kind"], index.manifest["factory"]
    seed, train_rows = index.manifest.get("seed", 0), index.manifest.get("train_rows")
    if kind not in FEATURE_KINDS:
        raise RetrievalError(f"feature kind {kind!r}; allowed: {list(FEATURE_KINDS)}")
    ids, langs = store.load_ids(kind.split("+")[0])
    if not ids:
        raise RetrievalError(f"store {store.root} has no {kind!r} rows to index")
    digests = store_row_digests(store, kind)
    rows_of: dict[str, list[int]] = {}
    for row, lang in enumerate(langs):
        rows_of.setdefault(lang, []).append(row)
    report: dict[str, dict[str, Any]] = {}
    for lang in sorted(set(index.langs) - set(rows_of)):
        del index.langs[lang]
        report[lang] = {"how": "dropped (no entities left)", "added": 0, "removed": None}
    for lang, rows in sorted(rows_of.items()):
        positions = np.asarray(rows, dtype=np.int64)
        new_ids = [ids[r] for r in rows]
        new_digests = [digests[r] for r in rows] if digests is not None else []

        def vectors(picked: list[int] | np.ndarray, positions: np.ndarray = positions) -> np.ndarray:
            return unit_rows(store, kind, positions[np.asarray(picked, dtype=np.int64)])

        old = index.langs.get(lang)
        if old is None or not new_digests or (not old.digests and old.ids):
            why = ("new KB language" if old is None else "the store has no row hashes" if not new_digests
                   else "the index predates row digests")
            if old is not None:
                log.warning("KB %r: %s, so changed rows cannot be told apart; rebuilding it", lang, why)
            built = build_lang_index(vectors(range(len(rows))), factory, lang=lang, seed=seed, train_rows=train_rows)
            index.langs[lang] = LangIndex(lang, built, new_ids, new_digests)
            report[lang] = {"how": f"built ({why})", "added": len(new_ids), "removed": None if old else 0}
            continue
        now = dict(zip(new_ids, new_digests))
        before = dict(zip(old.ids, old.digests))
        gone = [pos for pos, (i, d) in enumerate(zip(old.ids, old.digests)) if now.get(i) != d]
        fresh = [row for row, (i, d) in enumerate(zip(new_ids, new_digests)) if before.get(i) != d]
        entry = {"added": len(fresh), "removed": len(gone)}
        if not gone and not fresh:
            report[lang] = {"how": "unchanged", **entry}
            continue
        base = faiss.downcast_index(old.index)
        ivf = faiss.try_extract_index_ivf(old.index)
        if isinstance(base, faiss.IndexFlat) or (ivf is not None and not isinstance(base, faiss.IndexRefine)):
            keep = np.ones(len(old.ids), dtype=bool)
            keep[gone] = False
            if gone:
                old.index.remove_ids(faiss.IDSelectorBatch(np.asarray(gone, dtype=np.int64)))
            added = np.ascontiguousarray(vectors(fresh))
            if ivf is None:
                old.index.add(added)  # Flat deletes by shifting the rows after: ids stay row positions
            else:
                renumber_ivf(ivf, np.cumsum(keep) - 1)  # IVF keeps the ids it stored: make them row positions
                old.index.add_with_ids(added, np.arange(int(keep.sum()), int(keep.sum()) + len(fresh)))
            kept_ids = [i for i, k in zip(old.ids, keep) if k] + [new_ids[r] for r in fresh]
            kept_digests = [d for d, k in zip(old.digests, keep) if k] + [new_digests[r] for r in fresh]
            index.langs[lang] = LangIndex(lang, old.index, kept_ids, kept_digests)
            report[lang] = {"how": "in place" if ivf is None else "in place (training kept)", **entry}
        else:
            log.warning("KB %r: index %r cannot delete rows in place; rebuilding it", lang, factory)
            built = build_lang_index(vectors(range(len(rows))), factory, lang=lang, seed=seed, train_rows=train_rows)
            index.langs[lang] = LangIndex(lang, built, new_ids, new_digests)
            report[lang] = {"how": f"rebuilt ({factory} cannot delete rows)", **entry}
    out = Path(out)
    index.root = out
    save_index(index, store, out)
    return report


def renumber_ivf(ivf: faiss.IndexIVF, new_id: np.ndarray) -> None:
    """Replace every id stored in ``ivf``'s inverted lists by ``new_id[id]``, in place."""
    lists = ivf.invlists
    for list_no in range(ivf.nlist):
        size = lists.list_size(list_no)
        if size:
            stored = faiss.rev_swig_ptr(lists.get_ids(list_no), size)
            stored[:] = new_id[stored]
