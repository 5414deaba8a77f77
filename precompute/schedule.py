"""Run planned shards on Ray actors (:func:`execute`), with a progress bar over rows and SIGTERM handled between
Ray's waits; :func:`precompute.run.run` calls it inside a Ray session.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray
from ray.util import ActorPool
from ray.util.queue import Queue
from tqdm import tqdm
from xel.precompute.config import PrecomputeConfig, PrecomputeError
from xel.precompute.identity import EncodeError
from xel.precompute.onnx_backend import CACHE_ENV as ONNX_CACHE_ENV
from xel.precompute.plan import Reuse
from xel.precompute.schema import InputError
from xel.precompute.settings import EncoderSettings
from xel.precompute.worker import (
    FAULT_ENV,
    FAULT_MARKER_ENV,
    ShardTask,
    ShardWorker,
)

log = logging.getLogger(__name__)


# oneDNN and ideep cache one compiled kernel per (rows, length) batch shape, 1,024 of each by default. Length-bucketed
# batches have thousands of shapes, so under bf16 on CPU an actor grew by ~800 MB over 200k texts (bench/soak.py);
# with 64 entries it stays flat at the same speed (measured: 5 shards of 1,024 texts, 51.2 s default, 50.3 s capped).
# Set in the actors' environment before torch loads; a value in the driver's environment wins.
CPU_KERNEL_CACHES = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "LRU_CACHE_CAPACITY": "64"}


class Stopped(BaseException):
    """SIGTERM (or SIGINT) arrived: unwind, killing the actors, and exit with 128 + the signal's number."""


class _StopFlag:
    """Where SIGTERM goes while the driver waits on Ray: raising inside Ray's (Cython) wait turns into
    ``SystemError: <cyfunction CoreWorker.wait ...> returned a result with an exception set``, so there a handler
    only records the signal, and the driver loop, which wakes every ``POLL_SECONDS``, raises :class:`Stopped` from
    plain Python (:meth:`check`). :meth:`deferred` puts that handler in place for its block and restores the one the
    entry point installed (or none) when it ends."""

    def __init__(self) -> None:
        self.deferring = False
        self.signum: int | None = None

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Record SIGTERM instead of raising it for the duration; raise :class:`Stopped` on leaving if it came."""
        main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if main else None
        if previous is not None:
            signal.signal(signal.SIGTERM, self._record)
        before, self.deferring, self.signum = self.deferring, True, None
        try:
            yield
        finally:
            self.deferring = before
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        self.check()

    def _record(self, signum: int, frame: object) -> None:
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            signum, self.signum = self.signum, None
            raise Stopped(signum)


STOP = _StopFlag()


def stop_on_sigterm() -> None:
    """Make SIGTERM raise :class:`Stopped` in the main thread, or, inside :meth:`_StopFlag.deferred`, at the driver
    loop's next :meth:`_StopFlag.check` (a no-op outside the main thread, e.g. in a Ray task). Entry points only
    (``xel-precompute``): library code leaves the process's handlers as it found them."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: object) -> None:
        if STOP.deferring:
            STOP.signum = signum
            return
        raise Stopped(signum)

    signal.signal(signal.SIGTERM, handler)


def _actor_cpus(cfg: PrecomputeConfig) -> float:
    if cfg.cpus_per_actor is not None:
        return cfg.cpus_per_actor
    return max(1.0, float(int(ray.available_resources().get("CPU", 1)) // max(cfg.actors, 1)))


def actor_options(cfg: PrecomputeConfig, cpus: float) -> dict[str, Any]:
    """The actors' Ray options; restarts and task retries make a crash recoverable."""
    # the fault-injection test hook travels to the actors' processes (unset in normal runs)
    # and so does the ONNX cache's place (--backend onnx), so that actors and queries find the same files
    env = {k: os.environ[k] for k in (FAULT_ENV, FAULT_MARKER_ENV, ONNX_CACHE_ENV) if k in os.environ}
    env.update({k: os.environ.get(k, v) for k, v in CPU_KERNEL_CACHES.items()})
    # torch's threads in the actor's process: its CPUs (set where the process starts, not by the encoder)
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", str(max(1, int(cpus))))
    return {
        "num_cpus": cpus, "num_gpus": cfg.gpus_per_actor, "max_restarts": 3, "max_task_retries": 3,
        "runtime_env": {"env_vars": env},
    }


POLL_SECONDS = 0.5  # how often the driver looks at the actors' progress (and lets Ctrl-C / SIGTERM in)


class Progress:
    """The tqdm bar over rows: rows of finished shards plus, for each shard in flight, the latest count its actor
    reported after a forward batch; tokens/s over the tokens of finished shards and those reported by shards in
    flight, so the rate shows from the first batch on, not only once a shard is written."""

    def __init__(self, bar: tqdm, total: int):
        self.bar, self.total = bar, total
        self.in_flight: dict[tuple[str, int], tuple[int, int]] = {}
        self.rows = self.tokens = 0
        self.t0 = time.perf_counter()

    def started(self, task: ShardTask) -> None:
        self.in_flight[(task.kind, task.index)] = (0, 0)

    def event(self, kind: str, index: int, rows: int, tokens: int) -> None:
        """An actor's report: ``rows`` of shard ``kind:index`` done, ``tokens`` of them encoded (a retried shard
        counts from 0 again)."""
        if (kind, index) in self.in_flight:
            self.in_flight[(kind, index)] = (rows, tokens)

    def finished(self, result: dict[str, Any]) -> None:
        self.in_flight.pop((result["kind"], result["index"]), None)
        self.rows += result["rows"]
        self.tokens += result["tokens"]

    def show(self) -> None:
        rows = self.rows + sum(r for r, _ in self.in_flight.values())
        tokens = self.tokens + sum(t for _, t in self.in_flight.values())
        self.bar.update(min(self.total, rows) - self.bar.n)
        seconds = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(tokens_per_s=f"{tokens / seconds:,.0f}", refresh=False)


def drain(queue: Queue) -> list[tuple[str, int, int, int]]:
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
