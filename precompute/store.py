"""The feature store: the one reader and writer of the sharded HDF5 features that precompute writes.

Layout of a store directory (written by ``xel-precompute``, read by ``xel-nn`` and ``xel-train``)::

    config.json                  resolved run config + encoder identity, written first (guards --out reuse)
    inputs/{kb,mentions,text}.jsonl   the validated input records the features were computed from
    {kind}/shard-{i:05d}.h5      features (float16 [n, D]), ids, lang, row_hash (a hash of exactly what each row
                                 encoded: text, spans, encoder settings); attrs: rows, start, input_hash, checksum
                                 (written and verified by :mod:`precompute.shards`)
    manifest.json                written last: encoder identity, layer, pooling, dtype, dim, max length,
                                 input file hashes, per-shard row counts and checksums, resolved config

Every file is written to a temporary name and ``os.replace``d into place, so a file that exists is
complete. This module imports only numpy, h5py and the standard library (a test asserts it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from xel.precompute.files import atomic_path, atomic_write_bytes
from xel.precompute.shards import FORMAT_VERSION, Shard, StoreError, check_lang_code, read_shard

KINDS = ("ms", "mc", "mn", "es", "ec", "text")
MENTION_KINDS = ("ms", "mc", "mn")  # mn: the mention string alone, encoded as es encodes a name
ENTITY_KINDS = ("es", "ec")
RECORD_FILES = {"mentions": "mentions.jsonl", "kb": "kb.jsonl", "text": "text.jsonl"}
MANIFEST = "manifest.json"
RUN_CONFIG = "config.json"
SHARD_PATH = re.compile(rf"({'|'.join(KINDS)})/shard-\d{{5}}\.h5")


def store_root_of(path: str | os.PathLike) -> Path | None:
    """The feature store that ``path`` is, or lies inside, or None. A store directory holds ``manifest.json``
    with ``kinds`` (finished) or ``config.json`` with ``settings`` (written first by xel-precompute)."""
    path = Path(os.path.abspath(path))
    for folder in (path, *path.parents):
        for name, key in ((MANIFEST, "kinds"), (RUN_CONFIG, "settings")):
            marker = folder / name
            if marker.is_file():
                try:
                    if key in json.loads(marker.read_text(encoding="utf-8")):
                        return folder
                except (OSError, ValueError):
                    continue
    return None


def refuse_store_out(out: str | os.PathLike, error: type[Exception] = ValueError) -> None:
    """Only xel-precompute writes into a feature store: refuse an ``--out`` that is a store or lies inside one."""
    root = store_root_of(out)
    if root is not None:
        inside = "is" if Path(os.path.abspath(out)) == root else f"lies inside {root}, which is"
        raise error(f"--out {out}: {inside} a feature store (xel-precompute); only xel-precompute writes into a store. "
                    "Use a directory of its own, e.g. --out runs/cands/")


def check_out_dir(out: str | os.PathLike, marker: str, what: str, error: type[Exception] = ValueError) -> bool:
    """An output directory must be new, empty, or hold ``marker`` (it is ``what``, written by this command
    before); anything else raises ``error`` naming what it holds. Returns whether ``marker`` is there."""
    out = Path(out)
    refuse_store_out(out, error)
    if not out.exists():
        return False
    if not out.is_dir():
        raise error(f"--out {out}: is a file; a directory (new, empty, or {what}) is required")
    names = sorted(p.name for p in out.iterdir())
    if names and marker not in names:
        raise error(f"--out {out}: holds files that are not {what} ({', '.join(names[:5])}); "
                    "use a new or empty directory")
    return marker in names


class NotJSONError(StoreError):
    """An output would hold a NaN or infinite number, which JSON has no token for (a StoreError, so that every
    command reports it as one line)."""


def to_json(obj: Any, where: str | os.PathLike, **kwargs: Any) -> str:
    """``json.dumps(obj, allow_nan=False, **kwargs)``: the one serialiser of every JSON and JSONL output (links,
    predictions, candidates, manifests, metrics), so that no file ever holds the bare ``NaN``/``Infinity`` tokens
    Python's json writes by default; a non-finite number raises :class:`NotJSONError` naming ``where``."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError as e:
        raise NotJSONError(f"{where}: a NaN or infinite number cannot be written as JSON ({e}); allowed: finite "
                           "numbers only (a model or input that produced it is broken)") from None


def json_line(obj: Any, where: str | os.PathLike) -> str:
    """One JSONL line (newline included) of ``obj``, UTF-8 text kept as is, refusing NaN and infinity."""
    return to_json(obj, where, ensure_ascii=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (to_json(obj, path, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode())


def write_records(root: str | os.PathLike, name: str, records: Iterable[dict[str, Any]]) -> int:
    """The one writer of ``inputs/{name}.jsonl``, the input records a store's features come from (read back by
    :meth:`Store.records`), written as ``records`` yields them (any number in bounded memory); no records, no
    file. Returns how many were written."""
    path = Path(root) / "inputs" / RECORD_FILES[name]
    written = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json_line(record, path))
            written += 1
    if not written:
        path.unlink(missing_ok=True)
    return written


STORE_DTYPES = ("bf16", "fp32", "int8")
def write_manifest(
    root: str | os.PathLike, *, encoder: dict[str, Any], model: str | None, layer: int, max_length: int,
    prefix: str, dtype: str, dim: int | None, shards: dict[str, list[dict[str, Any]]],
    inputs: dict[str, str] | None = None, config: dict[str, Any] | None = None, **extra: Any,
) -> dict[str, Any]:
    """The one writer of a store's ``manifest.json``, written last; ``shards[kind]`` lists ``{"path" (relative to
    ``root``), "rows", "checksum"}`` in row order. ``extra`` adds fields readers do not need (run statistics)."""
    if dtype not in STORE_DTYPES:
        raise ValueError(f"manifest dtype {dtype!r}; allowed: {list(STORE_DTYPES)}")
    manifest = {
        "format_version": FORMAT_VERSION, "encoder": encoder, "model": model, "layer": layer, "pooling": "max",
        "dtype": dtype, "prefix": prefix, "max_length": max_length, "dim": dim,
        "kinds": {kind: {"rows": sum(s["rows"] for s in entries), "shards": entries}
                  for kind, entries in shards.items()},
        "inputs": inputs or {}, "config": config or {}, **extra,
    }
    atomic_write_json(Path(root) / MANIFEST, manifest)
    return manifest


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


class Store:
    """A validated, read-only view of a finished store directory. Use :func:`open_store`."""

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = root
        self.manifest = manifest

    @property
    def kinds(self) -> list[str]:
        return sorted(self.manifest["kinds"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def encoder(self) -> dict[str, Any]:
        """The encoder identity (name, config/weights/tokenizer hashes, fingerprint) the store was built with."""
        return self.manifest["encoder"]

    def count(self, kind: str) -> int:
        return sum(s["rows"] for s in self._shards(kind))

    def _shards(self, kind: str) -> list[dict[str, Any]]:
        if kind not in self.manifest["kinds"]:
            raise StoreError(f"{self.root}: kind {kind!r} not in store; it holds {self.kinds}")
        return self.manifest["kinds"][kind]["shards"]

    def iter_shards(self, kind: str) -> Iterator[Shard]:
        """Shards of ``kind`` in row order, each checked against the manifest; for chunked reading."""
        for entry in self._shards(kind):
            shard = read_shard(self.root / entry["path"], verify=True)
            if shard.checksum != entry["checksum"] or len(shard.ids) != entry["rows"]:
                raise StoreError(
                    f"{shard.path}: does not match manifest.json (rows {len(shard.ids)} vs {entry['rows']}, "
                    f"checksum); rerun xel-precompute with the same flags to repair the store"
                )
            yield shard

    def load(self, kind: str) -> tuple[list[str], np.ndarray, list[str]]:
        """All rows of ``kind`` in input order: ``(ids, features float16 [N, D], langs)``."""
        ids: list[str] = []
        langs: list[str] = []
        parts: list[np.ndarray] = []
        for shard in self.iter_shards(kind):
            ids.extend(shard.ids)
            langs.extend(shard.langs)
            parts.append(shard.features)
        features = np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float16)
        return ids, features, langs

    def load_ids(self, kind: str) -> tuple[list[str], list[str]]:
        """``(ids, langs)`` of ``kind`` in input order, without reading any features."""
        ids: list[str] = []
        langs: list[str] = []
        for shard_ids, shard_langs in self.iter_ids(kind):
            ids.extend(shard_ids)
            langs.extend(shard_langs)
        return ids, langs

    def iter_ids(self, kind: str) -> Iterator[tuple[list[str], list[str]]]:
        """:meth:`load_ids` one shard at a time: ``(ids, langs)`` of each shard of ``kind``, in row order."""
        for entry in self._shards(kind):
            path = self.root / entry["path"]
            try:
                with h5py.File(path, "r") as f:
                    shard_ids = [s.decode("utf-8") for s in f["ids"][...]]
                    shard_langs = [s.decode("utf-8") for s in f["lang"][...]]
            except (OSError, KeyError, ValueError) as e:
                raise StoreError(f"{path}: unreadable or truncated ({e}); rerun xel-precompute") from e
            for lang in set(shard_langs):
                check_lang_code(lang, f"{path}: dataset 'lang'")
            yield shard_ids, shard_langs

    def read_rows(self, kind: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """float16 ``[len(rows), D]``: the features of the given global rows of ``kind`` (input order positions),
        read from their shards with HDF5 partial reads, so that only these rows enter memory. Unlike
        :meth:`load`, rows read this way are not checksummed (that would read whole shards)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), self.dim), dtype=np.float16)
        if len(rows) == 0:
            return out
        bounds = np.cumsum([0] + [e["rows"] for e in self._shards(kind)])
        if rows.min() < 0 or rows.max() >= bounds[-1]:
            raise StoreError(f"{self.root}/{kind}: rows must lie in [0, {bounds[-1]}); got {rows.min()}..{rows.max()}")
        shard_of = np.searchsorted(bounds, rows, side="right") - 1
        for shard in np.unique(shard_of):
            picked = np.flatnonzero(shard_of == shard)
            local = rows[picked] - bounds[shard]
            order = np.argsort(local, kind="stable")
            unique, inverse = np.unique(local[order], return_inverse=True)
            path = self.root / self._shards(kind)[shard]["path"]
            try:
                with h5py.File(path, "r") as f:
                    block = f["features"][unique]  # h5py wants increasing, unique indices
            except (OSError, KeyError) as e:
                raise StoreError(f"{path}: unreadable or truncated ({e}); rerun xel-precompute") from e
            out[picked[order]] = block[inverse]
        return out

    def records(self, name: str) -> list[dict[str, Any]]:
        """The validated input records ``name`` (``mentions``, ``kb`` or ``text``) the store was built from."""
        return list(self.iter_records(name))

    def iter_records(self, name: str) -> Iterator[dict[str, Any]]:
        """:meth:`records`, one at a time (bounded memory)."""
        if name not in RECORD_FILES:
            raise ValueError(f"unknown record file {name!r}; allowed: {sorted(RECORD_FILES)}")
        path = self.root / "inputs" / RECORD_FILES[name]
        if path.is_file():
            yield from read_jsonl(path)

    def check_same_encoder(self, other: Store) -> None:
        """Refuse to combine two stores built with different encoders or pooling."""
        mine, theirs = self.encoder_signature(), other.encoder_signature()
        if mine != theirs:
            raise StoreError(
                f"stores {self.root} and {other.root} were built with different encoders or settings: "
                f"{mine} vs {theirs}"
            )

    def encoder_signature(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "encoder": m["encoder"]["fingerprint"], "layer": m["layer"], "pooling": m["pooling"],
            "max_length": m["max_length"], "prefix": m["prefix"],
        }


def open_store(path: str | os.PathLike) -> Store:
    """Open and validate a finished store; raises ``StoreError`` naming the offending path and field."""
    root = Path(path)
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise StoreError(f"{root}: no such store directory; build one with xel-precompute --out {root}")
    if not manifest_path.is_file():
        raise StoreError(
            f"{manifest_path}: missing; the precompute run into {root} did not finish, or is still running. "
            "When no xel-precompute is writing into it, rerun the same xel-precompute command to resume it"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{manifest_path}: not valid JSON ({e}); rerun xel-precompute") from e
    for key in ("format_version", "encoder", "dim", "kinds", "layer", "pooling", "max_length", "prefix"):
        if key not in manifest:
            raise StoreError(f"{manifest_path}: field {key!r} is missing")
    if manifest["format_version"] != FORMAT_VERSION:
        raise StoreError(
            f"{manifest_path}: format_version {manifest['format_version']!r}, this xel reads {FORMAT_VERSION}"
        )
    for kind, info in manifest["kinds"].items():
        if kind not in KINDS:
            raise StoreError(f"{manifest_path}: unknown kind {kind!r}; allowed: {list(KINDS)}")
        for entry in info["shards"]:
            if not isinstance(entry.get("path"), str) or not SHARD_PATH.fullmatch(entry["path"]) \
                    or not entry["path"].startswith(f"{kind}/"):
                raise StoreError(f"{manifest_path}: shard path {str(entry.get('path'))[:80]!r} of kind {kind!r}; "
                                 f"'{kind}/shard-NNNNN.h5' is required; rerun xel-precompute")
            shard_file = root / entry["path"]
            if not shard_file.is_file():
                raise StoreError(f"{shard_file}: listed in manifest.json but missing; rerun xel-precompute")
            try:
                with h5py.File(shard_file, "r") as f:
                    rows = int(f.attrs["rows"])
                    checksum = str(f.attrs["checksum"])
                    shape = f["features"].shape
            except (OSError, KeyError) as e:
                raise StoreError(f"{shard_file}: unreadable or truncated ({e}); rerun xel-precompute") from e
            if rows != entry["rows"] or checksum != entry["checksum"] or shape != (rows, manifest["dim"]):
                raise StoreError(
                    f"{shard_file}: rows/checksum/shape {rows}/{checksum[:12]}/{shape} disagree with manifest.json "
                    f"({entry['rows']}/{entry['checksum'][:12]}/dim {manifest['dim']}); rerun xel-precompute"
                )
    return Store(root, manifest)
