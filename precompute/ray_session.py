"""The one way xel connects to Ray, for ``xel-precompute`` and ``xel-experiment`` alike: :func:`ray_session`.

* ``address`` given (``--address``): join that cluster.
* inside a Ray job (``ray job submit``, which sets ``RAY_ADDRESS``): join the job's cluster.
* otherwise: start a local Ray head for this process (no dashboard), with
  its workers at niceness 0 (see ``WORKER_NICENESS``), and shut it down when the session ends.

A Ray that this process has already initialised is used as it is and left running.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import ray

# Ray starts its workers at niceness 15, so on a machine that runs anything else the encoder actors get a small
# share of the CPU: with the machine loaded by other processes, an actor got 3.7% CPU while the same worker at
# niceness 0 got 16% (bench/ray_overhead.py). A local Ray that xel starts runs its workers at niceness 0 (the
# actors are sized to the CPUs, so they do not starve Ray's own processes); a value in the environment wins.
WORKER_NICENESS = "RAY_worker_niceness"


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the block (the processes it starts inherit them), as before after it."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Connect to Ray for the duration of the block (see the module docstring); shut down only a Ray it started."""
    started = False
    # A local Ray turns token authentication on by default and says so on every run; it stays on, unsaid.
    quiet = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    # ray.init installs a SIGTERM handler that aborts the driver: the entry point's (or none) is put back after it
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if not ray.is_initialized():
            if address is None and not os.environ.get("RAY_ADDRESS"):
                with environment({WORKER_NICENESS: os.environ.get(WORKER_NICENESS, "0")}):  # read by the raylet
                    ray.init(include_dashboard=False, logging_level=logging.WARNING)
                started = True
            else:
                ray.init(address=address, logging_level=logging.WARNING)
    finally:
        quiet.setLevel(level)
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
