"""The precompute bar moves per encoded batch, with reports from the actors (issue 16, "Ray and the bar").

    pytest tests/test_progress.py
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from xel.precompute import schedule as precompute_schedule
from xel.precompute.config import PrecomputeConfig, run_settings
from xel.precompute.plan import plan_tasks
from xel.precompute.ray_session import WORKER_NICENESS
from xel.precompute.run import run
from xel.precompute.schema import scan_inputs
from xel.precompute.settings import resolve_encoder
from xel.precompute.worker import ShardWorker

from tests.conftest import KB, MENTIONS, write_jsonl

WORDS = "Barack Obama Moscow Paris London Tokyo Senate Republic Berlin Merkel city river capital".split()


def kb_entries(n: int) -> list[dict]:
    return [{"id": f"Q{i}", "name": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 4)) + f" {i}",
             "description": None, "lang": "en", "links": None} for i in range(n)]


def test_the_worker_reports_rows_after_every_batch(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    write_jsonl(data / "kb.jsonl", KB)
    write_jsonl(data / "mentions.jsonl", MENTIONS)
    settings = resolve_encoder(tiny_model_dir, prefix="", dtype="fp32", device="cpu", max_tokens_per_batch=64)
    cfg = PrecomputeConfig(data=data, model=tiny_model_dir, out=tmp_path / "h5", kinds=("ms",))
    task = plan_tasks(cfg, scan_inputs(data), run_settings(cfg, settings)).tasks["ms"][0]
    reports: queue.Queue = queue.Queue()
    result = ShardWorker(settings, threads=1, progress=reports).run(task)
    seen = [reports.get_nowait() for _ in range(reports.qsize())]
    rows = [r for kind, index, r, _ in seen if (kind, index) == ("ms", 0)]
    tokens = [t for kind, index, _, t in seen if (kind, index) == ("ms", 0)]
    assert len(seen) == len(rows) > 3, seen  # the start, then one report per forward batch
    assert rows[0] == 0 and rows == sorted(rows) and len(set(rows)) == len(rows) and rows[-1] == len(MENTIONS)
    assert tokens[0] == 0 and tokens == sorted(tokens) and tokens[-1] == result["tokens"] > 0


@pytest.mark.ray
def test_the_bar_moves_per_batch_with_reports_from_the_actors(tiny_model_dir, ray_session, tmp_path, monkeypatch):
    """Two real actors (one CPU each, so the queue actor must ask for none), 4 shards of 30 names, a 64-token batch
    budget: several batches a shard. Every report the driver takes from the queue came from an actor, per batch,
    and the bar's count moves with them."""
    data = tmp_path / "data"
    write_jsonl(data / "kb.jsonl", kb_entries(120))
    write_jsonl(data / "mentions.jsonl", [dict(MENTIONS[0], gold=None)])
    events: list[tuple[str, int, int, int]] = []
    positions: list[int] = []
    real_event, real_show = precompute_schedule.Progress.event, precompute_schedule.Progress.show

    def event(self, kind, index, rows, tokens):
        events.append((kind, index, rows, tokens))
        real_event(self, kind, index, rows, tokens)

    def show(self):
        real_show(self)
        positions.append(self.bar.n)

    monkeypatch.setattr(precompute_schedule.Progress, "event", event)
    monkeypatch.setattr(precompute_schedule.Progress, "show", show)
    summary = run(PrecomputeConfig(data=data, model=tiny_model_dir, out=tmp_path / "h5", kinds=("es",),
                                   dtype="fp32", shard_size=30, max_tokens_per_batch=64, actors=2,
                                   cpus_per_actor=1))
    assert summary["encoded_shards"] == 4
    by_shard: dict[tuple[str, int], list[int]] = defaultdict(list)
    tokens_by_shard: dict[tuple[str, int], list[int]] = defaultdict(list)
    for kind, index, rows, tokens in events:
        by_shard[(kind, index)].append(rows)
        tokens_by_shard[(kind, index)].append(tokens)
    assert sorted(by_shard) == [("es", i) for i in range(4)]
    for shard, rows in by_shard.items():
        assert rows[0] == 0 and rows == sorted(rows) and rows[-1] == 30, (shard, rows)
        assert len(rows) > 2, f"{shard}: {rows} (one report per forward batch expected)"
        tokens = tokens_by_shard[shard]
        assert tokens[0] == 0 and tokens == sorted(tokens) and len(set(tokens)) == len(tokens), (shard, tokens)
    assert sum(t[-1] for t in tokens_by_shard.values()) == summary["tokens"]  # the actors' counts add up
    assert len(events) > 2 * 4
    assert positions == sorted(positions) and positions[-1] == 120


def test_the_rate_shows_from_the_first_batch_before_any_shard_is_written():
    """tokens/s counts what shards in flight reported, not only finished shards (it read 0 until the first
    shard was written)."""
    import io

    from tqdm import tqdm

    with tqdm(total=60, file=io.StringIO()) as bar:
        progress = precompute_schedule.Progress(bar, 60)
        progress.started(SimpleNamespace(kind="es", index=0))
        progress.event("es", 0, 10, 250)
        progress.show()
        assert bar.n == 10
        assert float(bar.postfix.split("=")[1].replace(",", "")) > 0
        progress.event("es", 1, 5, 99)  # a shard not in flight (a late report of a finished one) is ignored
        progress.finished({"kind": "es", "index": 0, "rows": 30, "tokens": 700})
        progress.show()
        assert bar.n == 30 and progress.tokens == 700 and not progress.in_flight


NICENESS = """
import os, ray
from xel.precompute.ray_session import ray_session
with ray_session():
    print(ray.get(ray.remote(num_cpus=0)(lambda: os.nice(0)).remote()))
"""


@pytest.mark.ray
def test_a_local_ray_runs_the_actors_at_normal_priority():
    """Ray's default niceness 15 starves the encoders on a machine that runs anything else; xel's local Ray uses 0
    (its own Ray, in a fresh process)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", WORKER_NICENESS)}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="xel-ray-")  # its own Ray (a short path: Ray's sockets live there)
    try:
        out = subprocess.run([sys.executable, "-c", NICENESS], capture_output=True, text=True, env=env, timeout=300,
                             cwd=Path(__file__).resolve().parent.parent)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == str(os.nice(0)), out.stdout


@pytest.mark.ray
def test_the_suites_ray_runs_its_workers_at_xels_niceness(ray_session):
    """The tests' shared Ray (``tests/conftest.py``) runs its workers as xel's own local Ray does: at the driver's
    niceness, not 15 above it, at which the encoder actors crawled whenever anything else ran beside the suite."""
    worker = ray_session.get(ray_session.remote(num_cpus=0)(lambda: os.nice(0)).remote())
    assert worker == os.nice(0)
