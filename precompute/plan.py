"""Plan a precompute run: the shards of every kind (:func:`plan_tasks`) and the stored rows a rewritten shard can
reuse (:func:`plan_reuse`, incremental precompute); :func:`precompute.run.run` calls them before Ray starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from xel.precompute.config import PrecomputeConfig
from xel.precompute.schema import FileIndex, ScannedInputs, read_records
from xel.precompute.shards import read_row_hashes, shard_path
from xel.precompute.store import RECORD_FILES, write_records
from xel.precompute.worker import (
    SOURCE,
    ShardTask,
    build_items,
    row_digest,
    row_hash,
    shard_input_hash,
)

log = logging.getLogger(__name__)


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """What a shard holds does not depend on how it was batched: the settings less ``max_tokens_per_batch``.
    ``mn`` is left out of the kinds hashed, so that a store made before that kind existed keeps every row when a
    rerun adds it (only ``mn`` is encoded)."""
    encoded = {k: v for k, v in settings.items() if k != "max_tokens_per_batch"}
    if isinstance(encoded.get("kinds"), list):
        encoded["kinds"] = [kind for kind in encoded["kinds"] if kind != "mn"]
    return hashlib.sha256(json.dumps(encoded, sort_keys=True).encode()).hexdigest()


@dataclass
class Plan:
    """The shards of every kind, and each row's :func:`~precompute.worker.row_digest` (8 bytes a row, the only
    per-row state the driver keeps: it finds the stored rows a rewritten shard can reuse)."""

    tasks: dict[str, list[ShardTask]]
    row_digests: dict[str, np.ndarray]


def plan_tasks(cfg: PrecomputeConfig, scanned: ScannedInputs, settings: dict[str, Any]) -> Plan:
    """Plan the shards from the byte ranges :func:`~precompute.schema.scan_inputs` found (``cfg.shard_size``
    records each), reading one shard's records at a time to hash them, and copy the validated records into the
    store (``inputs/``, for ``Store.records``) in the same pass. Memory: one shard's records, 8 bytes a row."""
    fingerprint = settings_fingerprint(settings)
    tasks: dict[str, list[ShardTask]] = {kind: [] for kind in cfg.kinds}
    digests = {kind: array("Q") for kind in cfg.kinds}
    for name in RECORD_FILES:
        index = scanned.files.get(name)
        if index is None:
            write_records(cfg.out, name, [])
            continue
        kinds = [kind for kind in cfg.kinds if SOURCE[kind] == name]

        def records(index: FileIndex = index, kinds: list[str] = kinds) -> Iterator[dict[str, Any]]:
            for shard, (start, rows, begin, end) in enumerate(index.ranges()):
                first_line = index.starts[shard][1]
                chunk = read_records(index.path, index.name, begin, end, first_line)
                for kind in kinds:
                    items = build_items(chunk, kind)
                    digests[kind].extend(row_digest(row_hash(fingerprint, it)) for it in items)
                    tasks[kind].append(ShardTask(
                        kind, shard, start, rows, str(index.path), begin, end, first_line, fingerprint,
                        shard_input_hash(fingerprint, kind, items), str(shard_path(cfg.out, kind, shard)),
                    ))
                yield from (vars(r) for r in chunk)  # the fields, as dataclasses.asdict gives them

        write_records(cfg.out, name, records())
    return Plan(tasks, {kind: np.frombuffer(d, dtype=np.uint64).copy() for kind, d in digests.items()})


PREV_DIR = ".prev"  # {kind}/.prev/: shards set aside by a run that rewrites them, read for reusable rows


@dataclass
class Reuse:
    """Where stored rows with the row digests a rewritten shard needs are: per kind, sorted digests and the
    (shard file, row) of each. :meth:`attach` gives a task its per-row sources just before it is submitted."""

    row_digests: dict[str, np.ndarray]
    digests: dict[str, np.ndarray]
    files: dict[str, list[str]]
    file_of: dict[str, np.ndarray]
    row_of: dict[str, np.ndarray]

    def attach(self, task: ShardTask) -> ShardTask:
        if task.kind not in self.digests or not len(self.digests[task.kind]):
            return task
        found = self.digests[task.kind]
        wanted = self.row_digests[task.kind][task.start : task.start + task.rows]
        at = np.minimum(np.searchsorted(found, wanted), len(found) - 1)
        hit = found[at] == wanted
        if not hit.any():
            return task
        files, file_of, row_of = self.files[task.kind], self.file_of[task.kind], self.row_of[task.kind]
        reuse = tuple((files[file_of[a]], int(row_of[a])) if h else None for a, h in zip(at.tolist(), hit.tolist()))
        return dataclasses.replace(task, reuse=reuse)


def plan_reuse(out: Path, plan: Plan, todo: list[ShardTask]) -> Reuse:
    """Incremental precompute: move the shard files that ``todo`` will overwrite (and those past the plan's end)
    into ``{kind}/.prev/``, then find, for the rows of the ``todo`` shards, stored rows with the same row digest
    (in a kept shard or a set-aside one), so that only new or changed rows are encoded (the actor checks the full
    row hash). Moving first means no actor ever reads a file that another is rewriting; ``.prev`` is deleted once
    the manifest is written, and a run killed before that finds it again."""
    reuse = Reuse(plan.row_digests, {}, {}, {}, {})
    for kind, tasks in plan.tasks.items():
        mine = [t for t in todo if t.kind == kind]
        if not mine:
            continue
        kind_dir, planned = out / kind, {Path(t.path).name for t in tasks}
        rewritten = {Path(t.path).name for t in mine}
        prev = kind_dir / PREV_DIR
        for path in sorted(kind_dir.glob("shard-*.h5")):
            if path.name in rewritten or path.name not in planned:
                prev.mkdir(parents=True, exist_ok=True)
                os.replace(path, prev / f"{path.stem}.{uuid.uuid4().hex[:12]}.h5")
        sources = [str(p) for p in [*sorted(kind_dir.glob("shard-*.h5")), *sorted(prev.glob("*.h5"))]]
        if not sources:
            continue
        needed = np.unique(np.concatenate([plan.row_digests[kind][t.start : t.start + t.rows] for t in mine]))
        digests, file_of, row_of = [], [], []
        for number, path in enumerate(sources):
            stored = np.array([row_digest(h) for h in read_row_hashes(path)], dtype=np.uint64)
            rows = np.flatnonzero(np.isin(stored, needed))
            digests.append(stored[rows])
            file_of.append(np.full(len(rows), number, dtype=np.int32))
            row_of.append(rows.astype(np.int32))
        # the first source of a digest wins: kept shards before set-aside ones, rows in order
        found, first = np.unique(np.concatenate(digests), return_index=True)
        reuse.digests[kind], reuse.files[kind] = found, sources
        reuse.file_of[kind], reuse.row_of[kind] = np.concatenate(file_of)[first], np.concatenate(row_of)[first]
    return reuse


def drop_set_aside(out: Path, kinds: tuple[str, ...]) -> None:
    for kind in kinds:
        shutil.rmtree(out / kind / PREV_DIR, ignore_errors=True)


def remove_stale_temp_files(out: Path, kinds: tuple[str, ...]) -> None:
    """Delete the ``.{name}.XXXX.tmp`` files that a writer killed mid-write left beside the store's files.
    Call it only when no actor writes into ``out``."""
    for folder in (out, out / "inputs", *(out / kind for kind in kinds)):
        for path in folder.glob(".*.tmp"):
            log.info("removing %s, left by a write that was killed", path)
            path.unlink(missing_ok=True)
