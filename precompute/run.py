"""Precompute the feature store: encode mentions, names, contexts, descriptions and text with Ray actors.

Run locally (a local Ray is started for you)::

    xel-precompute --data data/sample --model models/multilingual-e5-small --out h5/

or on a cluster, joining it from inside a Ray job::

    RAY_AUTH_MODE=disabled ray start --head --dashboard-host 127.0.0.1
    ray job submit --working-dir . -- python precompute/run.py --data data/sample \
        --model "$PWD/models/multilingual-e5-small" --out "$PWD/h5/"

Rerunning the same command resumes: complete, valid shards are kept, the rest redone; ``manifest.json`` is
written last. A different encoder or config into the same ``--out`` is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.util import ActorPool
from ray.util.queue import Queue
from tqdm import tqdm
from xel.precompute.encoding import (
    EncodeError,
    EncoderSettings,
    resolve_encoder,
    same_encoder,
)
from xel.precompute.onnx_backend import CACHE_ENV as ONNX_CACHE_ENV
from xel.precompute.onnx_backend import QUANTIZE as ONNX_QUANTIZE
from xel.precompute.onnx_backend import OnnxBackendError
from xel.precompute.onnx_backend import check_cache as check_onnx_cache
from xel.precompute.onnx_backend import check_dependencies as check_onnx_dependencies
from xel.precompute.ray_session import ray_session
from xel.precompute.schema import FileIndex, InputError, ScannedInputs, read_records, scan_inputs
from xel.precompute.store import (
    KINDS,
    RECORD_FILES,
    RUN_CONFIG,
    atomic_write_json,
    file_sha256,
    open_store,
    read_row_hashes,
    read_shard,
    shard_is_complete,
    shard_path,
    write_manifest,
    write_records,
)
from xel.precompute.worker import (
    FAULT_ENV,
    FAULT_MARKER_ENV,
    SOURCE,
    ShardTask,
    ShardWorker,
    build_items,
    row_digest,
    row_hash,
    shard_input_hash,
)

log = logging.getLogger("xel.precompute.run")
# Settings that change what is written; a rerun into the same --out must match them.
GUARDED = ("encoder", "layer", "max_length", "prefix", "dtype", "backend", "shard_size", "kinds")
UNNAMED = {"backend": "torch"}  # what a setting that run_settings leaves out stands for


# oneDNN and ideep cache one compiled kernel per (rows, length) batch shape, 1,024 of each by default. Length-bucketed
# batches have thousands of shapes, so under bf16 on CPU an actor grew by ~800 MB over 200k texts (bench/soak.py);
# with 64 entries it stays flat at the same speed (measured: 5 shards of 1,024 texts, 51.2 s default, 50.3 s capped).
# Set in the actors' environment before torch loads; a value in the driver's environment wins.
CPU_KERNEL_CACHES = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "LRU_CACHE_CAPACITY": "64"}


class PrecomputeError(RuntimeError):
    """The run cannot start or cannot finish; the message says why and what to do."""


class Stopped(BaseException):
    """SIGTERM (or SIGINT) arrived: unwind, killing the actors, and exit with 128 + the signal's number."""


class _StopFlag:
    """Where SIGTERM goes while the driver waits on Ray: raising inside Ray's (Cython) wait turns into
    ``SystemError: <cyfunction CoreWorker.wait ...> returned a result with an exception set``, so there the
    handler only records the signal, and the driver loop, which wakes every ``POLL_SECONDS``, raises
    :class:`Stopped` from plain Python (:meth:`check`)."""

    def __init__(self) -> None:
        self.deferring = False
        self.signum: int | None = None

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Record SIGTERM instead of raising it for the duration; raise :class:`Stopped` on leaving if it came."""
        before, self.deferring, self.signum = self.deferring, True, None
        try:
            yield
        finally:
            self.deferring = before
        self.check()

    def check(self) -> None:
        if self.signum is not None:
            signum, self.signum = self.signum, None
            raise Stopped(signum)


STOP = _StopFlag()


def stop_on_sigterm() -> None:
    """Make SIGTERM raise :class:`Stopped` in the main thread, or, inside :meth:`_StopFlag.deferred`, at the driver
    loop's next :meth:`_StopFlag.check` (a no-op outside the main thread, e.g. in a Ray task)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: object) -> None:
        if STOP.deferring:
            STOP.signum = signum
            return
        raise Stopped(signum)

    signal.signal(signal.SIGTERM, handler)


def check_job_paths(cfg: PrecomputeConfig) -> None:
    """Inside a Ray job (``ray job submit``) the driver runs in the job's copy of ``--working-dir``: a relative
    ``--model`` or ``--out`` would point into that copy (which lacks the git-ignored models/ and is deleted with
    the job), not the directory the job was submitted from. Refuse them, saying what to pass instead."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        return
    relative = [(flag, path) for flag, path in (("--model", cfg.model), ("--out", cfg.out)) if not path.is_absolute()]
    if relative:
        shown = ", ".join(f"{flag} {path}" for flag, path in relative)
        fix = " ".join(f'{flag} "$PWD/{path}"' for flag, path in relative)
        raise PrecomputeError(
            f"{shown}: a relative path inside a Ray job resolves against the job's copy of --working-dir "
            f"({Path.cwd()}), not the directory you submitted from; that copy has no git-ignored models/ and is "
            f"deleted with the job. Pass absolute paths, e.g. {fix}"
        )


@dataclass(frozen=True)
class PrecomputeConfig:
    """What ``xel-precompute`` runs; its flags default to these values."""

    data: Path
    model: Path
    out: Path
    kinds: tuple[str, ...] = KINDS
    layer: int = -1
    max_length: int | None = None
    prefix: str | None = None
    dtype: str = "auto"  # resolved once by resolve_encoder (encoding.auto_dtype)
    backend: str | None = None  # torch | onnx; None: onnx for int8, else torch
    max_tokens_per_batch: int | None = None
    shard_size: int = 4096
    actors: int = 1
    cpus_per_actor: float | None = None
    gpus_per_actor: float = 0.0
    device: str = "auto"
    address: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def encoder_settings(cfg: PrecomputeConfig) -> EncoderSettings:
    """The flags' encoder, resolved once for the whole run (the model hashed once), on the actors' device."""
    settings = resolve_encoder(cfg.model, layer=cfg.layer, max_length=cfg.max_length, prefix=cfg.prefix,
                               dtype=cfg.dtype, device=actor_device(cfg), max_tokens_per_batch=cfg.max_tokens_per_batch,
                               backend=cfg.backend)
    if settings.backend == "onnx":
        try:
            check_onnx_dependencies()
            check_onnx_cache(settings.model, settings.identity["fingerprint"], settings.dtype)
        except OnnxBackendError as e:
            raise PrecomputeError(str(e)) from None
    return settings


def run_settings(cfg: PrecomputeConfig, encoder: EncoderSettings) -> dict[str, Any]:
    """The settings a store is guarded by and its rows are hashed with (``max_length`` as asked, not resolved)."""
    return {
        "encoder": encoder.identity["fingerprint"], "layer": encoder.layer, "max_length": cfg.max_length,
        "prefix": encoder.prefix, "dtype": encoder.dtype, "shard_size": cfg.shard_size, "kinds": sorted(cfg.kinds),
        "max_tokens_per_batch": cfg.max_tokens_per_batch,
        # only a non-torch backend is named, so that torch stores written before backends existed keep their hashes
        **({"backend": encoder.backend} if encoder.backend != "torch" else {}),
        **({"quantization": dict(ONNX_QUANTIZE)} if encoder.dtype == "int8" else {}),  # its recipe, in every row hash
    }


def adopt_store_identity(out: Path, encoder: dict[str, Any]) -> dict[str, Any]:
    """``encoder`` with the fingerprint the store in ``out`` recorded for the same model files. Stores written before
    fingerprints were by content only recorded one that included the model directory's name; their shards and
    indexes stay valid for the same files in any directory."""
    try:
        previous = json.loads((out / RUN_CONFIG).read_text(encoding="utf-8")).get("encoder")
    except (OSError, ValueError, AttributeError):
        return encoder
    if isinstance(previous, dict) and same_encoder(previous, encoder) and isinstance(previous.get("fingerprint"), str):
        return {**encoder, "fingerprint": previous["fingerprint"]}
    return encoder


def prepare_out_dir(out: Path, run_config: dict[str, Any]) -> None:
    """Refuse an --out that holds something else or a store made with other settings; else claim it."""
    if out.exists() and not out.is_dir():
        raise PrecomputeError(f"--out {out}: exists and is not a directory")
    config_file = out / RUN_CONFIG
    if out.is_dir() and any(out.iterdir()):
        if not config_file.is_file():
            raise PrecomputeError(
                f"--out {out}: directory is not empty and holds no xel store ({RUN_CONFIG} missing); "
                "choose an empty or new directory"
            )
        previous = _previous_settings(config_file)
        asked = run_config["settings"]
        diff = {k: (previous.get(k, UNNAMED.get(k)), asked.get(k, UNNAMED.get(k))) for k in GUARDED
                if previous.get(k, UNNAMED.get(k)) != asked.get(k, UNNAMED.get(k))}
        if diff:
            shown = "; ".join(f"{k}: store has {a!r}, this run asks {b!r}" for k, (a, b) in diff.items())
            raise PrecomputeError(
                f"--out {out}: holds a store made with other settings ({shown}). Use another --out, or delete it"
            )
    atomic_write_json(config_file, run_config)


def _previous_settings(config_file: Path) -> dict[str, Any]:
    """The settings an earlier xel-precompute recorded in ``config_file``; one message with the fix when that file
    is not what xel-precompute wrote (another command wrote into the store, or it was edited)."""
    try:
        previous = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        previous = e
    if not isinstance(previous, dict) or not isinstance(previous.get("settings"), dict):
        if isinstance(previous, Exception):
            found = f"unreadable ({previous})"
        else:
            keys = sorted(previous)[:6] if isinstance(previous, dict) else type(previous).__name__
            found = f"without the 'settings' xel-precompute writes (keys: {keys})"
        raise PrecomputeError(
            f"--out {config_file.parent}: {config_file.name} is {found}, so the store's settings are unknown (was "
            f"another command's output written into the store?). Restore it, or delete {config_file.parent} "
            "(or use another --out) and rerun to encode from scratch"
        )
    return previous["settings"]


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """What a shard holds does not depend on how it was batched: the settings less ``max_tokens_per_batch``."""
    encoded = {k: v for k, v in settings.items() if k != "max_tokens_per_batch"}
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


def _actor_cpus(cfg: PrecomputeConfig) -> float:
    if cfg.cpus_per_actor is not None:
        return cfg.cpus_per_actor
    return max(1.0, float(int(ray.available_resources().get("CPU", 1)) // max(cfg.actors, 1)))


def actor_device(cfg: PrecomputeConfig) -> str:
    """The actors' device: ``--gpus-per-actor 1`` asks Ray for one GPU per actor (so Ray places one actor per GPU)
    and runs the model there; else the CPU."""
    if cfg.gpus_per_actor > 0 and cfg.device == "cpu":
        raise PrecomputeError("--gpus-per-actor > 0 with --device cpu: drop one of them")
    device = "cuda" if cfg.gpus_per_actor > 0 else ("cpu" if cfg.device == "auto" else cfg.device)
    if device == "cuda" and cfg.gpus_per_actor == 0:
        raise PrecomputeError("--device cuda needs --gpus-per-actor > 0, so that Ray gives each actor a GPU")
    return device


def actor_options(cfg: PrecomputeConfig, cpus: float) -> dict[str, Any]:
    """The actors' Ray options; restarts and task retries make a crash recoverable."""
    # the fault-injection test hook travels to the actors' processes (unset in normal runs)
    # and so does the ONNX cache's place (--backend onnx), so that actors and queries find the same files
    env = {k: os.environ[k] for k in (FAULT_ENV, FAULT_MARKER_ENV, ONNX_CACHE_ENV) if k in os.environ}
    env.update({k: os.environ.get(k, v) for k, v in CPU_KERNEL_CACHES.items()})
    return {
        "num_cpus": cpus, "num_gpus": cfg.gpus_per_actor, "max_restarts": 3, "max_task_retries": 3,
        "runtime_env": {"env_vars": env},
    }


POLL_SECONDS = 0.5  # how often the driver looks at the actors' progress (and lets Ctrl-C / SIGTERM in)


class Progress:
    """The tqdm bar over rows: rows of finished shards plus, for each shard in flight, the latest count its actor
    reported after a forward batch; tokens/s exact for finished shards, and for the rows of shards in flight
    estimated at the tokens per encoded row seen so far (the encoder reports rows per batch, not tokens)."""

    def __init__(self, bar: tqdm, total: int):
        self.bar, self.total = bar, total
        self.in_flight: dict[tuple[str, int], int] = {}
        self.rows = self.tokens = self.encoded = 0
        self.t0 = time.perf_counter()

    def started(self, task: ShardTask) -> None:
        self.in_flight[(task.kind, task.index)] = 0

    def event(self, kind: str, index: int, rows: int) -> None:
        """An actor's report: ``rows`` of shard ``kind:index`` done (a retried shard counts from 0 again)."""
        if (kind, index) in self.in_flight:
            self.in_flight[(kind, index)] = rows

    def finished(self, result: dict[str, Any]) -> None:
        self.in_flight.pop((result["kind"], result["index"]), None)
        self.rows += result["rows"]
        self.tokens += result["tokens"]
        self.encoded += result["encoded_rows"]

    def show(self) -> None:
        encoding = sum(self.in_flight.values())
        self.bar.update(min(self.total, self.rows + encoding) - self.bar.n)
        per_row = self.tokens / self.encoded if self.encoded else 0.0
        seconds = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(tokens_per_s=f"{(self.tokens + encoding * per_row) / seconds:,.0f}", refresh=False)


def drain(queue: Queue) -> list[tuple[str, int, int]]:
    """Every progress report waiting in ``queue`` (the driver is its only reader)."""
    waiting = queue.size()
    return queue.get_nowait_batch(waiting) if waiting else []


def execute(cfg: PrecomputeConfig, encoder: EncoderSettings, tasks: list[ShardTask],
            reuse: Reuse | None = None) -> list[dict[str, Any]]:
    """Run ``tasks`` on ``cfg.actors`` Ray actors (a ``ray.util.ActorPool``) with a tqdm bar over rows that moves
    per encoded batch: every actor puts ``(kind, index, rows done)`` into one ``ray.util.queue.Queue`` after each
    forward batch, which the driver drains every ``POLL_SECONDS`` (also letting Ctrl-C and SIGTERM in) and before
    it books a finished shard. The actors and the queue are killed however this ends.

    Each actor is in the pool twice, so that its next shard is already queued at the actor while it encodes one.
    A task gets its reusable rows (``reuse``) only when an actor takes it, so the driver holds them for the
    shards in flight only.
    """
    cpus = _actor_cpus(cfg)
    actor_cls = ray.remote(ShardWorker).options(**actor_options(cfg, cpus))
    queue = Queue(actor_options={"num_cpus": 0})  # takes no CPU from the encoders
    actors = [actor_cls.remote(encoder, max(1, int(cpus)), queue) for _ in range(cfg.actors)]
    pool = ActorPool([actor for actor in actors for _ in range(2)])
    in_flight: dict[ray.ObjectRef, ShardTask] = {}
    results: list[dict[str, Any]] = []
    with STOP.deferred():  # SIGTERM: raised by STOP.check() between waits, never inside Ray's wait
        try:
            with tqdm(total=sum(t.rows for t in tasks), unit="row", desc="encoding", dynamic_ncols=True) as bar:
                progress = Progress(bar, bar.total)

                def submit(actor: Any, task: ShardTask) -> ray.ObjectRef:
                    task = reuse.attach(task) if reuse is not None else task
                    ref = actor.run.remote(task)
                    in_flight[ref] = task
                    progress.started(task)
                    return ref

                for task in tasks:
                    pool.submit(submit, task)
                while pool.has_next():
                    try:
                        result = pool.get_next_unordered(timeout=POLL_SECONDS)
                    except TimeoutError:
                        result = None
                    except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as e:
                        raise _shard_failure(e, _failed_task(in_flight)) from e
                    STOP.check()
                    for event in drain(queue):
                        progress.event(*event)
                    if result is not None:
                        in_flight.pop(next(r for r, t in in_flight.items()
                                           if (t.kind, t.index) == (result["kind"], result["index"])))
                        results.append(result)
                        progress.finished(result)
                    progress.show()
        finally:
            for actor in actors:
                ray.kill(actor)
            queue.shutdown(force=True)
    return results


def _failed_task(in_flight: dict[ray.ObjectRef, ShardTask]) -> ShardTask:
    """The task whose result raised: among the finished ones not yet collected, the one whose ``ray.get`` raises."""
    ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
    for ref in ready:
        try:
            ray.get(ref)
        except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError):
            return in_flight[ref]
    raise AssertionError("a shard failed but no finished task raises")


def _shard_failure(e: Exception, task: ShardTask) -> Exception:
    """The user-facing error for a shard whose task raised ``e``."""
    if isinstance(e, ray.exceptions.RayActorError):
        return PrecomputeError(
            f"shard {task.kind}:{task.index}: its actor died repeatedly ({e}); finished shards are kept, "
            "rerun the same command to resume"
        )
    cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else e
    if isinstance(cause, EncodeError):
        return InputError(f"{cause} (kind {task.kind})")
    return PrecomputeError(f"shard {task.kind}:{task.index} failed: {cause}")


def run(cfg: PrecomputeConfig) -> dict[str, Any]:
    """Validate inputs, encode what is missing, write the manifest; return a summary."""
    for kind in cfg.kinds:
        if kind not in KINDS:
            raise PrecomputeError(f"--kinds: {kind!r} is not a feature kind; allowed: {','.join(KINDS)}")
    check_job_paths(cfg)
    scanned = scan_inputs(cfg.data, cfg.shard_size)
    kinds = tuple(k for k in cfg.kinds if k != "text" or ("text" in scanned.files and scanned.files["text"].rows))
    encoder = encoder_settings(cfg)
    encoder = dataclasses.replace(encoder, identity=adopt_store_identity(cfg.out, encoder.identity))
    cfg = dataclasses.replace(cfg, kinds=kinds, dtype=encoder.dtype, backend=encoder.backend)
    settings = run_settings(cfg, encoder)
    input_hashes = {name: file_sha256(path) for name, path in scanned.paths.items()}
    prepare_out_dir(cfg.out, {"settings": settings, "encoder": encoder.identity, "config": cfg.to_json()})

    plan = plan_tasks(cfg, scanned, settings)
    todo = [t for tasks in plan.tasks.values() for t in tasks if not shard_is_complete(t.path, t.input_hash)]
    skipped = sum(len(tasks) for tasks in plan.tasks.values()) - len(todo)
    log.info("%d shards to encode, %d complete shards kept", len(todo), skipped)
    reuse = plan_reuse(cfg.out, plan, todo)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    if todo:
        with ray_session(cfg.address):
            stop_on_sigterm()  # after ray.init, which installs a handler of its own that aborts the driver
            results = execute(cfg, encoder, todo, reuse)
    seconds = time.perf_counter() - t0
    remove_stale_temp_files(cfg.out, cfg.kinds)
    rows = {kind: {"encoded": sum(r["encoded_rows"] for r in results if r["kind"] == kind),
                   "reused": sum(r["reused_rows"] for r in results if r["kind"] == kind),
                   "kept": sum(t.rows for t in plan.tasks[kind]) - sum(r["rows"] for r in results if r["kind"] == kind)}
            for kind in plan.tasks}
    manifest = finish_store(cfg, scanned, plan.tasks, encoder, settings, input_hashes, rows)
    drop_set_aside(cfg.out, cfg.kinds)
    tokens = sum(r["tokens"] for r in results)
    padded = sum(r["padded_tokens"] for r in results)
    return {
        "out": str(cfg.out), "manifest": manifest, "encoded_shards": len(todo), "kept_shards": skipped,
        "encoded_rows": sum(r["encoded"] for r in rows.values()),
        "reused_rows": sum(r["reused"] for r in rows.values()), "rows": rows,
        "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds if results else 0.0,
        "padding_fraction": 1 - tokens / padded if padded else 0.0,
        "windowed": sum(r["windowed"] for r in results),
    }


def remove_stale_temp_files(out: Path, kinds: tuple[str, ...]) -> None:
    """Delete the ``.{name}.XXXX.tmp`` files that a writer killed mid-write left beside the store's files.
    Call it only when no actor writes into ``out``."""
    for folder in (out, out / "inputs", *(out / kind for kind in kinds)):
        for path in folder.glob(".*.tmp"):
            log.info("removing %s, left by a write that was killed", path)
            path.unlink(missing_ok=True)


def finish_store(
    cfg: PrecomputeConfig, scanned: ScannedInputs, plan: dict[str, list[ShardTask]], encoder: EncoderSettings,
    settings: dict[str, Any], input_hashes: dict[str, str], rows: dict[str, dict[str, int]],
) -> dict[str, Any]:
    """Check every planned shard, drop stale ones, and write ``manifest.json`` last."""
    shards: dict[str, list[dict[str, Any]]] = {}
    dim = None
    for kind, tasks in plan.items():
        shards[kind] = []
        for task in tasks:
            shard = read_shard(task.path, verify=True)
            if shard.input_hash != task.input_hash:
                raise PrecomputeError(f"{task.path}: does not match its inputs after the run; rerun")
            dim = shard.features.shape[1]
            rel = f"{kind}/{Path(task.path).name}"
            shards[kind].append({"path": rel, "rows": len(shard.ids), "checksum": shard.checksum})
        stale = sorted((cfg.out / kind).glob("shard-*.h5")) if (cfg.out / kind).is_dir() else []
        for path in stale[len(tasks):]:
            path.unlink()
    return write_manifest(
        cfg.out, **encoder.manifest_fields(), dim=dim, shards=shards, inputs=input_hashes, config=cfg.to_json(),
        ec_from_name=scanned.files["kb"].no_description, settings=settings, last_run_rows=rows,
    )


def summary_table(summary: dict[str, Any]) -> str:
    """What was written: rows and shards per kind, mentions per language with NIL rate, speed."""
    store = open_store(summary["out"])
    m = store.manifest
    lines = [
        f"store {summary['out']}: encoder {m['encoder']['name']} ({m['encoder']['fingerprint'][:12]}), dim {m['dim']}, "
        f"layer {m['layer']}, max length {m['max_length']}, prefix {m['prefix']!r}, {m['dtype']} on "
        f"{m.get('backend', 'torch')}" + (f" (--dtype auto: {m['dtype_reason']})" if m.get("dtype_reason") else ""),
        f"{'kind':<6}{'rows':>9}{'shards':>8}",
    ]
    for kind, info in m["kinds"].items():
        lines.append(f"{kind:<6}{info['rows']:>9}{len(info['shards']):>8}")
    by_lang: Counter[str] = Counter()
    nil: Counter[str] = Counter()
    for r in store.iter_records("mentions"):
        by_lang[r["lang"]] += 1
        nil[r["lang"]] += r["gold"] is None
    kb_langs = Counter(r["lang"] for r in store.iter_records("kb"))
    lines.append(f"{'lang':<6}{'mentions':>9}{'NIL rate':>10}  KB")
    only_kb = f"links to the {next(iter(kb_langs))} KB" if len(kb_langs) == 1 else \
        f"has no KB of its own (KBs: {', '.join(sorted(kb_langs))}; xel-nn --kb-lang picks one)"
    for lang in sorted(set(by_lang) | set(kb_langs)):
        rate = f"{nil[lang] / by_lang[lang]:>10.3f}" if by_lang[lang] else f"{'-':>10}"
        kb = f"{kb_langs[lang]:,} entities" if kb_langs[lang] else only_kb
        lines.append(f"{lang:<6}{by_lang[lang]:>9}{rate}  {kb}")
    lines.append(
        f"wrote {summary['encoded_shards']} shards ({summary['encoded_rows']:,} rows encoded, "
        f"{summary['reused_rows']:,} reused from the store), kept {summary['kept_shards']}; "
        f"{summary['tokens']:,} tokens in "
        f"{summary['seconds']:.1f}s ({summary['tokens_per_s']:,.0f} tokens/s), padding "
        f"{summary['padding_fraction']:.1%}, {summary['windowed']} texts windowed to the length limit"
    )
    return "\n".join(lines)


if __name__ == "__main__":  # the command of ray job submit; the flags are xel-precompute's
    from xel.precompute.cli import main

    main()
