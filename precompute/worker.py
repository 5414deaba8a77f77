"""One unit of precompute work: encode one shard's items and write ``{kind}/shard-{i:05d}.h5`` atomically.

:class:`ShardWorker` is a plain class, callable in-process (tests, benchmarks); ``precompute.run`` wraps it
as a Ray actor, one per ``--actors``, each with its own tokenizer and model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from precompute.encoding import EncodeItem, EncoderSettings, EncodeStats, TextEncoder
from precompute.store import StoreError, read_shard, write_shard

log = logging.getLogger(__name__)

FAULT_ENV = "XEL_FAULT_SHARD"  # "kind:index[:where]" — test hook: kill the process at that shard, once
FAULT_POINTS = ("start", "encoded", "writing", "written")  # where: before encoding ... after the shard's os.replace
FAULT_MARKER_ENV = "XEL_FAULT_MARKER"  # a file created when the fault fires, so the retry succeeds


@dataclass(frozen=True)
class ShardTask:
    kind: str
    index: int
    start: int
    items: tuple[EncodeItem, ...]
    input_hash: str
    path: str
    row_hashes: tuple[str, ...] = ()  # one per item (row_hash); written into the shard
    reuse: tuple[tuple[str, int] | None, ...] = ()  # per item: (shard file, row) holding its features, or None


def row_hash(settings_fingerprint: str, item: EncodeItem) -> str:
    """Hash of exactly what one row encodes: the encoder settings (identity, layer, max length, prefix, dtype),
    the text and the pooled and anchored spans. Rows with equal hashes have equal features."""
    payload = json.dumps([settings_fingerprint, item.text, item.pool, item.anchor], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def shard_input_hash(settings_fingerprint: str, kind: str, items: tuple[EncodeItem, ...]) -> str:
    """Hash of exactly what a shard encodes: encoder settings, kind, and each item's id, text and spans."""
    h = hashlib.sha256(f"{settings_fingerprint}\x1e{kind}".encode())
    for it in items:
        h.update(json.dumps([it.id, it.lang, it.text, it.pool, it.anchor], ensure_ascii=False).encode())
    return h.hexdigest()


def maybe_inject_fault(task: ShardTask, where: str) -> None:
    """Test hook: with ``XEL_FAULT_SHARD=kind:index:where`` set, die hard (``os._exit``) once at that point.

    ``writing`` first leaves what a kill in the middle of :func:`~precompute.store.write_shard` leaves: a partial
    temp file beside the shard, named as the store names its temp files.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    kind, index, *rest = spec.split(":")
    if rest and rest[0] not in FAULT_POINTS:
        raise ValueError(f"{FAULT_ENV}={spec!r}: fault point {rest[0]!r} unknown; allowed: {list(FAULT_POINTS)}")
    if (kind, int(index), rest[0] if rest else "encoded") != (task.kind, task.index, where):
        return
    marker = os.environ.get(FAULT_MARKER_ENV)
    if marker:
        if Path(marker).exists():
            return
        Path(marker).touch()
    log.error("injected fault at shard %s:%d (%s)", task.kind, task.index, where)
    if where == "writing":
        target = Path(task.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, _ = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(b"\x89HDF\r\n\x1a\n" + os.urandom(4096))  # an HDF5 signature, then garbage
    os._exit(17)


def progress_path(shard: str | os.PathLike) -> Path:
    """Where the actor writing ``shard`` says how many of its rows are done (a ``.tmp`` name: the store's clean-up
    removes one a killed actor left)."""
    shard = Path(shard)
    return shard.with_name(f".{shard.name}.progress.tmp")


def read_progress(shard: str | os.PathLike) -> int:
    """Rows of ``shard`` done so far by the actor writing it (0 when it has not reported yet)."""
    try:
        return int(progress_path(shard).read_text() or 0)
    except (OSError, ValueError):
        return 0


class ShardProgress:
    """Rows done in one shard, rewritten after every forward batch to :func:`progress_path`, which the driver polls
    to move its bar while the shard is encoded (a file, because features and progress travel by file)."""

    def __init__(self, path: Path, done: int = 0):
        self.path, self.done = path, 0
        self.add(done)

    def add(self, rows: int) -> None:
        self.done += rows
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(str(self.done))
        except OSError as e:  # progress is a courtesy; the shard itself is what counts
            log.debug("cannot report progress to %s: %s", self.path, e)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


class ShardWorker:
    """Holds one encoder; :meth:`run` encodes a shard and writes it."""

    def __init__(self, settings: EncoderSettings, threads: int | None = None):
        self.encoder = TextEncoder.load(settings, threads)

    def run(self, task: ShardTask) -> dict[str, Any]:
        t0 = time.perf_counter()
        maybe_inject_fault(task, "start")
        stats = EncodeStats()
        features = np.zeros((len(task.items), self.encoder.dim), dtype=np.float16)
        todo = self._copy_reused(task, features)
        progress = ShardProgress(progress_path(task.path), len(task.items) - len(todo))
        if todo:
            features[todo] = self.encoder.encode([task.items[i] for i in todo], stats, on_batch=progress.add)
        maybe_inject_fault(task, "encoded")
        maybe_inject_fault(task, "writing")
        checksum = write_shard(
            task.path, kind=task.kind, start=task.start, ids=[it.id for it in task.items],
            langs=[it.lang for it in task.items], features=features, input_hash=task.input_hash,
            row_hashes=task.row_hashes or None,
        )
        maybe_inject_fault(task, "written")
        progress.close()
        return {
            "kind": task.kind, "index": task.index, "rows": len(task.items), "checksum": checksum,
            "encoded_rows": len(todo), "reused_rows": len(task.items) - len(todo),
            "tokens": stats.tokens, "padded_tokens": stats.padded_tokens, "windowed": stats.windowed,
            "forward_seconds": stats.forward_seconds, "seconds": time.perf_counter() - t0,
        }

    @staticmethod
    def _copy_reused(task: ShardTask, features: np.ndarray) -> list[int]:
        """Fill ``features`` with the rows ``task.reuse`` points at, each source shard read once and its checksum
        verified, each row's hash checked; return the rows still to encode (a source that fails is encoded)."""
        if not task.reuse:
            return list(range(len(task.items)))
        by_source: dict[str, list[tuple[int, int]]] = {}
        todo = []
        for i, source in enumerate(task.reuse):
            if source is None:
                todo.append(i)
            else:
                by_source.setdefault(source[0], []).append((i, source[1]))
        for path, rows in by_source.items():
            try:
                shard = read_shard(path, verify=True)
            except StoreError as e:
                log.warning("cannot reuse rows of %s (%s); encoding them", path, e)
                todo.extend(i for i, _ in rows)
                continue
            for i, row in rows:
                if shard.row_hashes is not None and row < len(shard.row_hashes) \
                        and shard.row_hashes[row] == task.row_hashes[i]:
                    features[i] = shard.features[row]
                else:
                    todo.append(i)
        return sorted(todo)
