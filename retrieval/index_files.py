"""Save, load and verify an index directory (layout in :mod:`retrieval.index`); every file is written atomically and
its sha256 recorded in ``manifest.json``, checked on load, so a corrupted file is named, never searched. The manifest
itself carries ``manifest_sha256``, a sha256 over every other field (kind, factory, dim, encoder signature, store,
per-KB rows and file checksums), so an edited field is refused too."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import faiss
from xel.precompute.files import atomic_path, atomic_write_bytes, file_sha256
from xel.precompute.store import Store, atomic_write_json, check_lang_code, open_store
from xel.retrieval.index import EntityIndex, LangIndex, RetrievalError
from xel.retrieval.vectors import ids_digest

log = logging.getLogger(__name__)

INDEX_MANIFEST = "manifest.json"
# 5: manifest_sha256 over the manifest's fields; 4: row digests are the store's row hashes; 3 digests of vectors;
# 2 per-file sha256
INDEX_FORMAT_VERSION = 5
READABLE_INDEX_VERSIONS = (2, 3, 4, INDEX_FORMAT_VERSION)  # 1 (no checksums) is refused
MANIFEST_CHECKSUM = "manifest_sha256"


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """sha256 of every field of an index manifest but :data:`MANIFEST_CHECKSUM` (canonical JSON, sorted keys)."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


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
    manifest = {k: v for k, v in result.manifest.items() if k != MANIFEST_CHECKSUM}
    manifest.update({"format_version": INDEX_FORMAT_VERSION,
                     "store": os.path.relpath(Path(store.root).resolve(), out.resolve()), "langs": lang_info})
    result.manifest = {**manifest, MANIFEST_CHECKSUM: manifest_sha256(manifest)}
    atomic_write_json(out / INDEX_MANIFEST, result.manifest)


def write_faiss(index: faiss.Index, path: Path) -> tuple[int, str]:
    """Write ``index`` to ``path`` atomically, straight from FAISS to a temp file (no in-memory copy of the
    serialised index, which for a large KB would double the memory of the build); return (bytes, sha256)."""
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
        sha256, size = file_sha256(tmp), os.path.getsize(tmp)
    return size, sha256


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
        why = " (it records no file checksums, so its files cannot be verified)" \
            if manifest["format_version"] == 1 else ""
        raise RetrievalError(f"{manifest_path}: format_version {manifest['format_version']!r}{why}, "
                             f"this xel reads {list(READABLE_INDEX_VERSIONS)}; {_rebuild_hint(root, manifest)}")
    if not isinstance(manifest["langs"], dict):
        raise RetrievalError(f"{manifest_path}: field 'langs' is not an object; {_rebuild_hint(root, manifest)}")
    for lang, info in manifest["langs"].items():
        check_lang_code(lang, f"{manifest_path}: field 'langs'", RetrievalError)
        missing = [k for k in ("rows", "index_file_sha256", "ids_file_sha256") if not isinstance(info, dict)
                   or k not in info]
        if missing:
            raise RetrievalError(f"{manifest_path}: KB {lang!r} lacks {missing} (every file's sha256 is required); "
                                 f"{_rebuild_hint(root, manifest)}")
    if manifest["format_version"] >= 5 or MANIFEST_CHECKSUM in manifest:
        want, got = manifest.get(MANIFEST_CHECKSUM), manifest_sha256(manifest)
        if want != got:
            raise RetrievalError(
                f"{manifest_path}: {MANIFEST_CHECKSUM} {str(want)[:12]}... differs from {got[:12]}..., the sha256 of "
                f"its other fields (a field such as 'kind' or a KB's ids checksum was edited after the build); "
                f"{_rebuild_hint(root, manifest)}")
    if manifest["format_version"] < 5:
        log.warning("%s: format_version %s has no %s, so an edited manifest field cannot be detected; %s",
                    manifest_path, manifest["format_version"], MANIFEST_CHECKSUM, _rebuild_hint(root, manifest))
    if manifest["format_version"] < 4:  # its files are checksummed (verified below), its rows have no row hashes
        log.warning("%s: format_version %s records no row hashes, so xel-nn build --update rebuilds each KB instead "
                    "of editing it; %s", manifest_path, manifest["format_version"], _rebuild_hint(root, manifest))
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
        digests: list[str] | Callable[[], list[str]] = []
        if "digests_file_sha256" in info and manifest["format_version"] >= 4:
            digests_path = root / f"digests-{lang}.json"
            _verify_file(digests_path, info["digests_file_sha256"], root, manifest)
            digests = partial(_read_digests, digests_path, info["digests_file_sha256"], len(ids), root, manifest)
        result.langs[lang] = LangIndex(lang, index, ids, digests)
    return result


def _read_digests(path: Path, sha256: str, rows: int, root: Path, manifest: dict[str, Any]) -> list[str]:
    """A KB's row digests (verified again: the file may have changed since the index was loaded)."""
    digests = json.loads(_read_verified(path, sha256, root, manifest).decode("utf-8"))
    if len(digests) != rows:
        raise RetrievalError(f"{path}: {len(digests)} digests for {rows} ids; {_rebuild_hint(root, manifest)}")
    return digests


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
    got = file_sha256(path)  # every readable format records a sha256 per file (load_index checks that it does)
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
