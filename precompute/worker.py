"""One unit of precompute work: read one shard's records from its input file by byte range, encode them and
write ``{kind}/shard-{i:05d}.h5`` atomically.

:class:`ShardWorker` is a plain class, callable in-process (tests, benchmarks); ``precompute.run`` wraps it
as a Ray actor, one per ``--actors``, each with its own tokenizer and model. The driver ships only the task (a
byte range and hashes), never the records.
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
from typing import Any, Protocol

import numpy as np
from xel.precompute.items import EncodeItem, EncodeStats, context_item, entity_item, mention_item
from xel.precompute.schema import InputError, KBEntry, Mention, Record, Text, read_records
from xel.precompute.settings import EncoderSettings
from xel.precompute.shards import read_shard, write_shard
from xel.precompute.store import KINDS, StoreError

log = logging.getLogger(__name__)

FAULT_ENV = "XEL_FAULT_SHARD"  # "kind:index[:where]" — test hook: kill the process at that shard, once
FAULT_POINTS = ("start", "encoded", "writing", "written")  # where: before encoding ... after the shard's os.replace
FAULT_MARKER_ENV = "XEL_FAULT_MARKER"  # a file created when the fault fires, so the retry succeeds


# each kind's input file
SOURCE = {"ms": "mentions", "mc": "mentions", "mn": "mentions", "es": "kb", "ec": "kb", "text": "text"}


@dataclass(frozen=True)
class ShardTask:
    """Shard ``index`` of ``kind``: rows ``start`` to ``start + rows`` of the kind, the records whose lines start
    in bytes ``[begin, end)`` of the input file ``source`` (``first_line`` the line at ``begin``)."""

    kind: str
    index: int
    start: int
    rows: int
    source: str
    begin: int
    end: int
    first_line: int
    fingerprint: str  # of the settings that change what is encoded (row_hash, shard_input_hash)
    input_hash: str
    path: str
    reuse: tuple[tuple[str, int] | None, ...] = ()  # per row: (shard file, row) holding its features, or None


def build_items(records: list[Record], kind: str) -> list[EncodeItem]:
    """The texts and spans of one feature kind, in input order (``records`` from the kind's input file)."""
    if kind == "ms":
        return [mention_item(m.id, m.lang, m.sentence, m.start, m.end) for m in records if isinstance(m, Mention)]
    if kind == "mc":
        return [context_item(m.id, m.lang, m.context, m.sentence, m.start, m.end)
                for m in records if isinstance(m, Mention)]
    if kind == "mn":  # the mention string alone, as es encodes an entity's name alone
        return [entity_item(m.id, m.lang, m.sentence[m.start : m.end]) for m in records if isinstance(m, Mention)]
    if kind == "es":
        return [entity_item(e.id, e.lang, e.name) for e in records if isinstance(e, KBEntry)]
    if kind == "ec":  # an entity without a description is described by its name (counted in the manifest)
        return [entity_item(e.id, e.lang, e.description or e.name) for e in records if isinstance(e, KBEntry)]
    if kind == "text":
        return [entity_item(t.id, t.lang, t.text) for t in records if isinstance(t, Text)]
    raise ValueError(f"unknown kind {kind!r}; allowed: {list(KINDS)}")


def task_items(task: ShardTask) -> tuple[EncodeItem, ...]:
    """The items of ``task``, read from its input file by byte range; refused when the file changed since the
    driver planned the shard (the items' hash must be the task's)."""
    records = read_records(Path(task.source), SOURCE[task.kind], task.begin, task.end, task.first_line)
    items = tuple(build_items(records, task.kind))
    if len(items) != task.rows or shard_input_hash(task.fingerprint, task.kind, items) != task.input_hash:
        raise InputError(f"{task.source}: lines from {task.first_line} (shard {task.kind}:{task.index}) changed "
                         "since xel-precompute read the file; do not edit inputs during a run, rerun to resume")
    return items


def row_hash(settings_fingerprint: str, item: EncodeItem) -> str:
    """Hash of exactly what one row encodes: the encoder settings (identity, layer, max length, prefix, dtype),
    the text and the pooled and anchored spans. Rows with equal hashes have equal features."""
    payload = json.dumps([settings_fingerprint, item.text, item.pool, item.anchor], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def row_digest(row_hash_hex: str) -> int:
    """A row hash's first 8 bytes as an unsigned integer: what the driver keeps per row to find reusable rows
    (a digest match is checked against the full row hash before a row is reused)."""
    return int(row_hash_hex[:16], 16)


def shard_input_hash(settings_fingerprint: str, kind: str, items: tuple[EncodeItem, ...] | list[EncodeItem]) -> str:
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


class ProgressSink(Protocol):
    """Where a worker reports progress: ``ray.util.queue.Queue`` under Ray, a ``queue.Queue`` in-process."""

    def put_nowait(self, item: Any) -> None: ...


class ShardWorker:
    """Holds one encoder; :meth:`run` encodes a shard and writes it. With ``progress``, it puts
    ``(kind, index, rows done)`` there after every forward batch of a shard (and once at its start)."""

    def __init__(self, settings: EncoderSettings, threads: int | None = None, progress: ProgressSink | None = None):
        from xel.precompute.encoding import TextEncoder  # torch and transformers load in the actor, not the driver

        self.encoder = TextEncoder.load(settings, threads)  # dtype/device auto decided here, where it runs
        self.progress = progress

    def _report(self, task: ShardTask, rows: int, tokens: int) -> None:
        if self.progress is None:
            return
        try:
            self.progress.put_nowait((task.kind, task.index, rows, tokens))
        except Exception as e:  # progress is a courtesy (a full or dead queue); the shard itself is what counts
            log.debug("cannot report progress of shard %s:%d: %s", task.kind, task.index, e)

    def run(self, task: ShardTask) -> dict[str, Any]:
        t0 = time.perf_counter()
        maybe_inject_fault(task, "start")
        items = task_items(task)
        row_hashes = tuple(row_hash(task.fingerprint, it) for it in items)
        stats = EncodeStats()
        features = np.zeros((len(items), self.encoder.dim), dtype=np.float16)
        todo = self._copy_reused(task, row_hashes, features)
        done = len(items) - len(todo)
        tokens = 0
        self._report(task, done, tokens)

        def on_batch(rows: int, batch_tokens: int) -> None:
            nonlocal done, tokens
            done += rows
            tokens += batch_tokens
            self._report(task, done, tokens)

        if todo:
            features[todo] = self.encoder.encode([items[i] for i in todo], stats, on_batch=on_batch)
        maybe_inject_fault(task, "encoded")
        maybe_inject_fault(task, "writing")
        checksum = write_shard(
            task.path, kind=task.kind, start=task.start, ids=[it.id for it in items],
            langs=[it.lang for it in items], features=features, input_hash=task.input_hash, row_hashes=row_hashes,
            encoded_with=self.encoder.settings.encoded_with(),
        )
        maybe_inject_fault(task, "written")
        return {
            "kind": task.kind, "index": task.index, "rows": len(items), "checksum": checksum,
            "encoded_rows": len(todo), "reused_rows": len(items) - len(todo),
            "tokens": stats.tokens, "padded_tokens": stats.padded_tokens, "windowed": stats.windowed,
            "shared": stats.shared, "forward_seconds": stats.forward_seconds, "seconds": time.perf_counter() - t0,
            "encoded_with": self.encoder.settings.encoded_with(),
        }

    @staticmethod
    def _copy_reused(task: ShardTask, row_hashes: tuple[str, ...], features: np.ndarray) -> list[int]:
        """Fill ``features`` with the rows ``task.reuse`` points at, each source shard read once and its checksum
        verified, each row's hash checked; return the rows still to encode (a source that fails is encoded)."""
        if not task.reuse:
            return list(range(len(row_hashes)))
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
                        and shard.row_hashes[row] == row_hashes[i]:
                    features[i] = shard.features[row]
                else:
                    todo.append(i)
        return sorted(todo)
