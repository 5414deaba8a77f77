"""A feature store's shards on disk: the HDF5 files ``{kind}/shard-{i:05d}.h5`` that precompute writes and every
reader verifies (features float16 [n, D], ids, lang, row_hash; attrs: kind, start, rows, input_hash, checksum and
what ran the encoder). The store around them (manifest, inputs, reading by kind) is :mod:`precompute.store`.
This module imports only numpy, h5py and the standard library.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from xel.precompute.files import atomic_path

FORMAT_VERSION = 1
_STR = h5py.string_dtype(encoding="utf-8")

# A language code read from a store or an index becomes part of file names (index-<lang>.faiss): two lower-case
# letters (ISO 639-1), nothing else, so that no value can name a path outside the directory.
LANG_CODE = re.compile(r"[a-z]{2}")


class StoreError(RuntimeError):
    """A store on disk is missing, incomplete, corrupted, or does not match what was asked of it. Defined with the
    shards, the lowest layer that raises it; import it from :mod:`precompute.store` like the rest of the store API."""


def check_lang_code(value: object, where: str, error: type[Exception] = StoreError) -> str:
    """``value`` if it is a two-letter lower-case language code, else ``error`` naming ``where``."""
    if not isinstance(value, str) or not LANG_CODE.fullmatch(value):
        raise error(f"{where}: language {str(value)[:80]!r} is not an ISO 639-1 code (two lower-case letters); "
                    "the store or index was not written by xel, or was changed after")
    return value


def shard_path(root: str | os.PathLike, kind: str, index: int) -> Path:
    return Path(root) / kind / f"shard-{index:05d}.h5"


def shard_checksum(features: np.ndarray, ids: Sequence[str], langs: Sequence[str],
                   row_hashes: Sequence[str] | None = None) -> str:
    """sha256 over the feature bytes (float16, C order), the ids, the languages and, when present, the row hashes."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(features, dtype=np.float16).tobytes())
    h.update("\x1f".join(ids).encode("utf-8"))
    h.update(b"\x1e")
    h.update("\x1f".join(langs).encode("utf-8"))
    if row_hashes is not None:
        h.update(b"\x1d")
        h.update("\x1f".join(row_hashes).encode("ascii"))
    return h.hexdigest()


# a shard's attributes: what ran its encoder (the features themselves are always float16)
ENCODED_WITH = ("dtype", "backend", "device", "dtype_reason")


def write_shard(
    path: str | os.PathLike,
    *,
    kind: str,
    start: int,
    ids: Sequence[str],
    langs: Sequence[str],
    features: np.ndarray,
    input_hash: str,
    row_hashes: Sequence[str] | None = None,
    encoded_with: dict[str, str] | None = None,
) -> str:
    """Write one shard atomically; return its checksum. ``row_hashes`` (one per row) let a later run reuse rows;
    ``encoded_with`` records what ran the encoder for it (dtype, backend, device, why), as decided where it ran."""
    path = Path(path)
    features = np.ascontiguousarray(features, dtype=np.float16)
    if features.ndim != 2 or features.shape[0] != len(ids) or len(ids) != len(langs):
        raise ValueError(f"shard {path}: features {features.shape}, {len(ids)} ids, {len(langs)} langs disagree")
    if row_hashes is not None and len(row_hashes) != len(ids):
        raise ValueError(f"shard {path}: {len(row_hashes)} row hashes for {len(ids)} rows")
    checksum = shard_checksum(features, ids, langs, row_hashes)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("ids", data=list(ids), dtype=_STR)
        f.create_dataset("lang", data=list(langs), dtype=_STR)
        if row_hashes is not None:
            f.create_dataset("row_hash", data=list(row_hashes), dtype=_STR)
        f.attrs.update(
            kind=kind, start=start, rows=len(ids), input_hash=input_hash, checksum=checksum,
            format_version=FORMAT_VERSION,
        )
        f.attrs.update({key: encoded_with[key] for key in ENCODED_WITH if key in (encoded_with or {})})
    return checksum


@dataclass(frozen=True)
class Shard:
    path: Path
    kind: str
    start: int
    ids: list[str]
    langs: list[str]
    features: np.ndarray
    input_hash: str
    checksum: str
    row_hashes: list[str] | None = None
    encoded_with: dict[str, str] | None = None  # dtype, backend, device (, dtype_reason); None in older shards


def read_shard(path: str | os.PathLike, verify: bool = True) -> Shard:
    """Read a whole shard; with ``verify`` its checksum is recomputed. Raises ``StoreError``."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: shard file is missing")
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            features = f["features"][...]
            ids = [s.decode("utf-8") for s in f["ids"][...]]
            langs = [s.decode("utf-8") for s in f["lang"][...]]
            row_hashes = [s.decode("ascii") for s in f["row_hash"][...]] if "row_hash" in f else None
    except (OSError, KeyError, ValueError) as e:
        raise StoreError(f"{path}: unreadable or truncated shard ({e}); rerun xel-precompute to rewrite it") from e
    for key in ("kind", "start", "rows", "input_hash", "checksum"):
        if key not in attrs:
            raise StoreError(f"{path}: shard attribute {key!r} is missing; rerun xel-precompute to rewrite it")
    for lang in set(langs):
        check_lang_code(lang, f"{path}: dataset 'lang'")
    shard = Shard(
        path=path, kind=str(attrs["kind"]), start=int(attrs["start"]), ids=ids, langs=langs,
        features=features, input_hash=str(attrs["input_hash"]), checksum=str(attrs["checksum"]),
        row_hashes=row_hashes, encoded_with={k: str(attrs[k]) for k in ENCODED_WITH if k in attrs} or None,
    )
    if features.dtype != np.float16 or features.ndim != 2 or len(ids) != int(attrs["rows"]) != features.shape[0]:
        raise StoreError(f"{path}: features {features.dtype}{features.shape} do not match rows={attrs['rows']}")
    if verify and shard_checksum(features, ids, langs, row_hashes) != shard.checksum:
        raise StoreError(f"{path}: checksum mismatch (corrupted on disk); delete it and rerun xel-precompute")
    return shard


def read_row_hashes(path: str | os.PathLike) -> list[str]:
    """The ``row_hash`` of every row of a shard, without reading its features; ``[]`` when the file is unreadable
    or predates row hashes (its rows are then never reused). Rows read through it are verified when reused."""
    try:
        with h5py.File(path, "r") as f:
            return [s.decode("ascii") for s in f["row_hash"][...]] if "row_hash" in f else []
    except (OSError, KeyError, ValueError):
        return []


def shard_is_complete(path: str | os.PathLike, input_hash: str) -> bool:
    """True when ``path`` holds a valid shard computed from exactly the inputs hashed as ``input_hash``."""
    try:
        shard = read_shard(path, verify=True)
    except StoreError:
        return False
    return shard.input_hash == input_hash
