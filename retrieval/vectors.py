"""Unit vectors of a store's features: the rows FAISS indexes and searches (cosine = inner product of unit rows).

One kind (``es``) or two kinds concatenated (``es+ec``: each normalised, concatenated, normalised again), read
whole (:func:`load_features`), by rows (:func:`unit_rows`) or shard by shard (:func:`iter_unit_chunks`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
from xel.precompute.shards import read_row_hashes
from xel.precompute.store import Store, StoreError


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


def ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\x1f".join(ids).encode("utf-8")).hexdigest()


def store_row_digests(store: Store, kind: str) -> list[str] | None:
    """Per row of ``kind`` (``a+b``: of both kinds), a digest of the store's row hash (a hash of exactly what the
    row encoded, written by xel-precompute), read without any vector; None when the store's shards carry no
    row hashes. An update compares these to tell a changed entity from an unchanged one without reading it."""
    per_kind = []
    for part in kind.split("+"):
        hashes: list[str] = []
        for entry in store.manifest["kinds"][part]["shards"]:
            shard_hashes = read_row_hashes(store.root / entry["path"])
            if len(shard_hashes) != entry["rows"]:
                return None
            hashes.extend(shard_hashes)
        per_kind.append(hashes)
    if len(per_kind) == 1:
        return [h[:16] for h in per_kind[0]]
    return [hashlib.sha256("\x1f".join(row).encode("ascii")).hexdigest()[:16] for row in zip(*per_kind)]
