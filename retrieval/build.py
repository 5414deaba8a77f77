"""Build (or update) an index directory from a store's entity features, one FAISS index per KB language:
``xel-nn build`` (:func:`run_build`)."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from xel.precompute.files import check_writable, make_temp_dir, remove_stale_temp_dirs, replace_dir, resolve_out
from xel.precompute.store import Store, atomic_write_json, check_out_dir, open_store
from xel.retrieval.factory import trained_index
from xel.retrieval.index import FEATURE_KINDS, EntityIndex, LangIndex, RetrievalError
from xel.retrieval.index_files import INDEX_FORMAT_VERSION, INDEX_MANIFEST, load_index, save_index
from xel.retrieval.update import update_index
from xel.retrieval.vectors import iter_unit_chunks, store_row_digests, unit_rows

log = logging.getLogger(__name__)


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
    digests = store_row_digests(store, kind)  # None: the store has no row hashes, an update rebuilds
    result = EntityIndex(out, {})
    for lang, rows in sorted(rows_of.items()):
        positions = np.asarray(rows, dtype=np.int64)
        index = trained_index(factory, dim, len(rows), lambda picked, p=positions: unit_rows(store, kind, p[picked]),
                              lang=lang, seed=seed, train_rows=train_rows)
        result.langs[lang] = LangIndex(lang, index, [], [])
    start = 0
    for chunk_ids, vectors, chunk_langs in iter_unit_chunks(store, kind):
        chunk_langs_arr = np.asarray(chunk_langs)
        for lang in np.unique(chunk_langs_arr):
            mask = chunk_langs_arr == lang
            lang_index = result.langs[str(lang)]
            lang_index.index.add(np.ascontiguousarray(vectors[mask]))
            lang_index.ids.extend(i for i, m in zip(chunk_ids, mask) if m)
            if digests is not None:
                lang_index.digests.extend(d for d, m in zip(digests[start:start + len(chunk_ids)], mask) if m)
        start += len(chunk_ids)
    result.manifest = {
        "format_version": INDEX_FORMAT_VERSION, "factory": factory, "kind": kind, "dim": int(dim),
        "encoder_signature": store.encoder_signature(), "seed": seed, "train_rows": train_rows,
    }
    save_index(result, store, out)
    return result


@dataclass(frozen=True)
class BuildConfig:
    features: str
    out: str
    index: str = "Flat"
    kind: str = "es"
    seed: int = 0
    train_rows: int | None = None
    overwrite: bool = False
    update: bool = False


def run_build(cfg: BuildConfig) -> tuple[EntityIndex, dict[str, dict[str, Any]] | None]:
    """Build (or with ``update``, update) into a temp directory beside ``--out`` and move it into place: a failed
    build leaves nothing (a killed one leaves a temp directory that the next build removes). A symlinked
    ``--out`` is built where it points. Returns the index and, for an update, what was done per KB language."""
    out = resolve_out(cfg.out, RetrievalError)
    if cfg.update and cfg.overwrite:
        raise RetrievalError("--update and --overwrite: pick one (--update edits the index in --out, "
                             "--overwrite builds a new one)")
    old = None
    if cfg.update:
        old = load_index(out, mmap=False)  # edited in memory, written anew
        if (cfg.index, cfg.kind) != (old.manifest["factory"], old.manifest["kind"]):
            raise RetrievalError(
                f"--update: the index in {out} is {old.manifest['factory']!r} over {old.manifest['kind']!r}, this "
                f"command asks {cfg.index!r} over {cfg.kind!r}; drop --index/--kind, or rebuild with --overwrite")
    elif check_out_dir(out, INDEX_MANIFEST, "an xel index", RetrievalError) and not cfg.overwrite:
        raise RetrievalError(f"--out {out}: already holds an index; pass --overwrite to replace it")
    check_writable(out, RetrievalError, beside=True)
    store = open_store(cfg.features)
    rows = store.count(cfg.kind.split("+")[0])
    log.info("%s the %r index over %s %r rows of %s into %s", "updating" if cfg.update else "building", cfg.index,
             f"{rows:,}", cfg.kind, store.root, out)
    for stale in remove_stale_temp_dirs(out):
        log.info("removed %s, left by a build that was killed", stale)
    tmp = make_temp_dir(out)
    report = None
    try:
        if old is not None:
            report = update_index(old, store, tmp)
            index = old
        else:
            index = build_index(store, tmp, factory=cfg.index, kind=cfg.kind, seed=cfg.seed,
                                train_rows=cfg.train_rows)
        atomic_write_json(tmp / "config.json", asdict(cfg))
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    index.root = out
    return index, report
