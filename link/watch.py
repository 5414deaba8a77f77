"""The files a loaded :class:`link.linker.Linker` reads from disk after loading, recorded at load and checked before
each batch, so that a store or index rewritten under a long-running ``xel-serve`` fails loudly, not silently.

After :meth:`link.linker.Linker.load` the linker reads the KB's ``es``/``ec`` rows from the store's shards per
batch (HDF5 partial reads by path), and searches the FAISS index files memory-mapped. A store re-precomputed into
the same directory would be read as the new rows under the old KB table, alias prior and index: every score
changes, with no error. :class:`FileWatch` records, at load, the identity of each such file: the store's
``manifest.json`` (the sha256 of the fields readers depend on: encoder, settings, inputs, per-shard rows and
checksums), each entity shard (its ``checksum`` attribute, which ``open_store`` matched to the manifest), the
index's ``manifest.json`` and files (their sha256, which ``load_index`` verified), and each file's ``os.stat``
(inode, size, mtime_ns). :meth:`FileWatch.check` stats them, and only for a file whose stat changed reads its
identity again: a file rewritten with the same content is accepted (and its new stat kept); any other change
raises :class:`StoreChanged`, which names the file and says to restart ``xel-serve`` (or rerun ``xel-link``, or
load the Linker again).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
from xel.precompute.files import file_sha256
from xel.precompute.store import ENTITY_KINDS, MANIFEST, Store, StoreError
from xel.retrieval.index_files import INDEX_MANIFEST

# the manifest fields a reader of the store's rows depends on (not the statistics of the run that wrote it)
IDENTITY_FIELDS = ("format_version", "encoder", "layer", "pooling", "dtype", "prefix", "max_length", "dim", "kinds",
                   "inputs")


class StoreChanged(StoreError):
    """A file that a loaded linker reads was changed on disk after it loaded: its answers would mix the old and the
    new files. Restart or reload."""


def stat_key(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def manifest_fields_sha256(manifest: dict[str, Any]) -> str:
    """sha256 of a store manifest's :data:`IDENTITY_FIELDS`, canonical JSON."""
    fields = {key: manifest.get(key) for key in IDENTITY_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()


def manifest_identity(path: Path) -> str:
    """:func:`manifest_fields_sha256` of the store manifest at ``path``."""
    return manifest_fields_sha256(json.loads(path.read_text(encoding="utf-8")))


def shard_identity(path: Path) -> str:
    """A shard's ``checksum`` attribute (the sha256 of its rows, written with them) and row count."""
    with h5py.File(path, "r") as f:
        return f"{f.attrs['checksum']}:{int(f.attrs['rows'])}"


@dataclass
class Watched:
    path: Path
    identity: str
    read: Callable[[Path], str]
    stat: tuple[int, int, int, int]


class FileWatch:
    """See the module docstring: ``files`` are ``(path, identity at load, how to read its identity)``."""

    def __init__(self, files: list[tuple[Path, str, Callable[[Path], str]]]):
        self.files = [Watched(path, identity, read, stat_key(path)) for path, identity, read in files]
        # the first change found: stale stays stale (a reload is the way out), and a rewritten multi-GB index is
        # hashed once, not again on every batch and /health call
        self.stale: str | None = None

    @classmethod
    def of(cls, store: Store, index_root: Path, index_manifest: dict[str, Any]) -> FileWatch:
        """The store's manifest and entity shards, and the index directory's manifest and files, as loaded."""
        files: list[tuple[Path, str, Callable[[Path], str]]] = [
            (store.root / MANIFEST, manifest_fields_sha256(store.manifest), manifest_identity)]
        for kind in ENTITY_KINDS:
            for entry in store.manifest["kinds"].get(kind, {}).get("shards", []):
                files.append((store.root / entry["path"], f"{entry['checksum']}:{int(entry['rows'])}", shard_identity))
        path = index_root / INDEX_MANIFEST
        files.append((path, file_sha256(path), file_sha256))
        for lang, info in index_manifest["langs"].items():
            files.append((index_root / f"index-{lang}.faiss", info["index_file_sha256"], file_sha256))
            files.append((index_root / f"ids-{lang}.json", info["ids_file_sha256"], file_sha256))
        return cls(files)

    def changed(self) -> str | None:
        """What changed since load, as the error message, or None: a stat per file, an identity read only for a
        file whose stat changed."""
        if self.stale is not None:
            return self.stale
        for watched in self.files:
            try:
                stat = stat_key(watched.path)
                if stat == watched.stat:
                    continue
                identity = watched.read(watched.path)
            except (OSError, KeyError, ValueError) as e:
                self.stale = self._message(watched.path, f"is gone or unreadable ({type(e).__name__}: {e})")
                return self.stale
            if identity != watched.identity:
                self.stale = self._message(watched.path, "was rewritten (its content differs from what was loaded)")
                return self.stale
            watched.stat = stat  # the same content written again: nothing this linker holds is stale
        return None

    def check(self) -> None:
        """Raise :class:`StoreChanged` when :meth:`changed` says what changed."""
        message = self.changed()
        if message is not None:
            raise StoreChanged(message)

    @staticmethod
    def _message(path: Path, problem: str) -> str:
        return (f"{path} {problem} since the linker loaded it (a store re-precomputed or an index rebuilt under "
                "it): its KB table, alias prior and index are the old files', so its scores would be wrong; restart "
                "xel-serve (or rerun xel-link, or Linker.load the run again) to link with the new files")
