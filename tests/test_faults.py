"""Fault injection: kill an actor at each point of a shard's life, or kill the whole driver, then rerun and prove
the store equals a clean run's, byte for byte.

    pytest tests/test_faults.py

Seeded trials. The seed picks the point (``seed % 5``): the actor dies at ``start`` (before encoding),
``encoded`` (after the forward, before the write), ``writing`` (a partial temp file left beside the shard),
``written`` (after the shard's ``os.replace``, before the driver hears of it), or the driver process (``python
precompute/run.py``, its own local Ray) is SIGKILLed mid-run. Actor faults in seeds 0-3 fire on every retry, so the
run fails and the rerun resumes it; in seeds 5-8 they fire once and Ray's retry repairs the run itself. The seed also
picks the kind and the shard (or when the driver dies). The suite runs seeds 2, 4, 5 and 6 (a trial costs 15-40 s
on 2 cores): every point but ``written``, and both kinds of actor fault; an actor that dies at ``written`` on every
retry is ``tests/test_precompute.py::test_run_that_dies_is_resumed_by_the_same_command``. ``XEL_FAULT_SEEDS=0-9``
runs all ten.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from xel.precompute.config import PrecomputeConfig, PrecomputeError
from xel.precompute.run import run
from xel.precompute.shards import read_shard, shard_path
from xel.precompute.store import KINDS, MANIFEST, StoreError, open_store

from tests.conftest import write_jsonl

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
SHARD_SIZE = 7
N_MENTIONS, N_KB, N_TEXT = 60, 40, 20
POINTS = ("start", "encoded", "writing", "written", "driver")
WORDS = {
    "en": "Barack Obama visited Moscow and met the president of Russia in Paris London Tokyo".split(),
    "es": "El Senado de la República aprobó la ley en la Ciudad de México".split(),
    "de": "Angela Merkel war Bundeskanzlerin der Bundesrepublik Deutschland in Berlin".split(),
    "ru": "Бывший президент США Барак Обама с женой Мишель приобрели жильё в Вашингтоне".split(),
}


def generate_data(root: Path, seed: int = 0) -> Path:
    """Mentions, KB entries and texts in four languages, enough for several shards of every kind."""
    rng = random.Random(seed)
    langs = sorted(WORDS)

    def sentence(lang: str, n: int) -> str:
        return " ".join(rng.choices(WORDS[lang], k=n))

    kb = [{"id": f"Q{i}", "name": sentence(lang, rng.randint(1, 3)),
           "description": sentence(lang, rng.randint(4, 12)) if i % 6 else None, "lang": lang, "links": i}
          for i, lang in enumerate(rng.choices(langs, k=N_KB))]
    mentions = []
    for i, lang in enumerate(rng.choices(langs, k=N_MENTIONS)):
        words = rng.choices(WORDS[lang], k=rng.randint(3, 14))
        first = rng.randrange(len(words))
        start = len(" ".join(words[:first])) + (1 if first else 0)
        text = " ".join(words)
        mentions.append({"id": f"m{i}", "lang": lang, "sentence": text, "start": start,
                         "end": start + len(words[first]), "context": f"{sentence(lang, 5)} {text}",
                         "gold": f"Q{rng.randrange(N_KB)}" if i % 4 else None})
    text = [{"id": f"t{i}", "lang": lang, "text": sentence(lang, rng.randint(2, 20))}
            for i, lang in enumerate(rng.choices(langs, k=N_TEXT))]
    data = root / "data"
    write_jsonl(data / "kb.jsonl", kb)
    write_jsonl(data / "mentions.jsonl", mentions)
    write_jsonl(data / "text.jsonl", text)
    return data


SHARDS = {kind: -(-n // SHARD_SIZE) for kind, n in
          {"ms": N_MENTIONS, "mc": N_MENTIONS, "mn": N_MENTIONS, "es": N_KB, "ec": N_KB, "text": N_TEXT}.items()}
TOTAL_SHARDS = sum(SHARDS.values())


@dataclass(frozen=True)
class Trial:
    seed: int
    point: str
    kind: str = ""
    shard: int = -1
    every_retry: bool = False  # actor faults: die on every retry (the run fails) or once (Ray's retry repairs it)
    kill_after_shards: int = 0  # driver faults: SIGKILL once this many shard files exist ...
    kill_delay_s: float = 0.0  # ... and this much later

    def describe(self) -> str:
        if self.point == "driver":
            return f"driver SIGKILL {self.kill_delay_s:.2f}s after {self.kill_after_shards} shard files"
        return f"actor {self.kind}:{self.shard} at {self.point}, {'every retry' if self.every_retry else 'once'}"


def plan_trial(seed: int) -> Trial:
    rng = random.Random(seed)
    point = POINTS[seed % len(POINTS)]
    if point == "driver":
        return Trial(seed, point, kill_after_shards=rng.randint(1, TOTAL_SHARDS // 3),
                     kill_delay_s=rng.uniform(0.0, 0.05))
    kind = rng.choice(KINDS)
    return Trial(seed, point, kind, rng.randrange(SHARDS[kind]), every_retry=seed < len(POINTS))


def _cfg(data: Path, model: Path, out: Path) -> PrecomputeConfig:
    # one torch thread per actor: fp32 sums in the same order in every run, so features agree exactly
    return PrecomputeConfig(data=data, model=model, out=out, dtype="fp32", shard_size=SHARD_SIZE, cpus_per_actor=1)


@pytest.fixture(scope="module")
def fault_data(tmp_path_factory) -> Path:
    return generate_data(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def reference_store(fault_data, tiny_model_dir, ray_session, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults-reference") / "h5"
    summary = run(_cfg(fault_data, tiny_model_dir, out))
    assert summary["encoded_shards"] == TOTAL_SHARDS
    return out


def complete_shards(out: Path, reference: Path) -> set[tuple[str, int]]:
    """Shards on disk that are valid and were computed from the same inputs as the reference's."""
    done = set()
    for kind, n in SHARDS.items():
        for index in range(n):
            try:
                shard = read_shard(shard_path(out, kind, index), verify=True)
            except StoreError:
                continue
            if shard.input_hash == read_shard(shard_path(reference, kind, index), verify=False).input_hash:
                done.add((kind, index))
    return done


def temp_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.tmp"))


def assert_same_as_reference(out: Path, reference: Path) -> None:
    store, ref = open_store(out), open_store(reference)
    assert store.kinds == ref.kinds == sorted(SHARDS)
    for kind in ref.kinds:
        ids, features, langs = store.load(kind)  # verifies every shard's checksum against the manifest
        ref_ids, ref_features, ref_langs = ref.load(kind)
        assert ids == ref_ids and langs == ref_langs, f"{kind}: rows lost, duplicated or reordered"
        assert len(set(ids)) == len(ids) == store.manifest["kinds"][kind]["rows"]
        assert features.dtype == np.float16
        np.testing.assert_array_equal(features, ref_features, err_msg=f"{kind}: features differ from a clean run")
        assert store.manifest["kinds"][kind]["shards"] == ref.manifest["kinds"][kind]["shards"]
    assert not temp_files(out), f"temp files left in the store: {temp_files(out)}"


def _session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes in session ``sid``: the driver we started and every Ray process it started."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            state, _ppid, _pgrp, session = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue
        if int(session) == sid and state != "Z":
            pids.append(int(entry))
    return pids


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's process group, then the Ray workers it started (they sit in their own groups, but in
    the driver's session), and wait until none is left; none of them may write into the store after this."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while pids := _session_pids(proc.pid):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert time.monotonic() < deadline, f"processes of the killed driver still alive: {pids}"
        time.sleep(0.1)


def kill_driver_midway(trial: Trial, data: Path, model: Path, out: Path, log: Path) -> None:
    """Run ``python precompute/run.py`` with its own local Ray in a new session and SIGKILL all of it midway."""
    ray_tmp = tempfile.mkdtemp(prefix="xel-ray-")  # its own Ray temp dir: it can join no other cluster
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "XEL_FAULT_SHARD", "XEL_FAULT_MARKER")}
    env["RAY_TMPDIR"] = ray_tmp
    cmd = [sys.executable, "precompute/run.py", "--data", str(data), "--model", str(model), "--out", str(out),
           "--dtype", "fp32", "--shard-size", str(SHARD_SIZE), "--cpus-per-actor", "1"]
    try:
        with open(log, "wb") as log_file:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                deadline = time.monotonic() + 120
                while len(list(out.glob("*/shard-*.h5"))) < trial.kill_after_shards and proc.poll() is None:
                    assert time.monotonic() < deadline, "the driver wrote too few shards in 120 s"
                    time.sleep(0.005)
                time.sleep(trial.kill_delay_s)
                finished_early = proc.poll() is not None
            finally:
                kill_session(proc)
        assert not finished_early, f"the driver exited ({proc.returncode}) before the kill:\n{log.read_text()[-3000:]}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _seeds() -> list[int]:
    """``XEL_FAULT_SEEDS``: comma-separated seeds or ranges (``0-9``, ``2,4-6``)."""
    seeds = []
    for part in os.environ.get("XEL_FAULT_SEEDS", "2,4-6").split(","):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


@pytest.mark.parametrize("seed", _seeds())
def test_fault_then_rerun_gives_the_clean_store(seed, fault_data, tiny_model_dir, reference_store, ray_session,
                                                tmp_path, monkeypatch):
    trial = plan_trial(seed)
    out = tmp_path / "h5"
    faulty = (trial.kind, trial.shard)
    if trial.point == "driver":
        kill_driver_midway(trial, fault_data, tiny_model_dir, out, tmp_path / "driver.log")
    else:
        monkeypatch.setenv("XEL_FAULT_SHARD", f"{trial.kind}:{trial.shard}:{trial.point}")
        if not trial.every_retry:
            monkeypatch.setenv("XEL_FAULT_MARKER", str(tmp_path / "fired"))
            summary = run(_cfg(fault_data, tiny_model_dir, out))
            assert (tmp_path / "fired").exists(), f"{trial.describe()}: the fault never fired"
            assert summary["encoded_shards"] == TOTAL_SHARDS
        else:
            with pytest.raises(PrecomputeError, match="rerun the same command"):
                run(_cfg(fault_data, tiny_model_dir, out))
            assert (faulty in complete_shards(out, reference_store)) == (trial.point == "written")
            if trial.point == "writing":
                assert list(shard_path(out, *faulty).parent.glob(f".{shard_path(out, *faulty).name}.*.tmp"))
        monkeypatch.delenv("XEL_FAULT_SHARD")
        monkeypatch.delenv("XEL_FAULT_MARKER", raising=False)

    if trial.point == "driver" or trial.every_retry:
        assert not (out / MANIFEST).exists(), "a run that died wrote its manifest"
        with pytest.raises(StoreError, match="did not finish"):
            open_store(out)
    before = complete_shards(out, reference_store)
    resumed = run(_cfg(fault_data, tiny_model_dir, out))
    assert resumed["kept_shards"] == len(before), "a complete shard was redone, or a partial one kept"
    assert resumed["encoded_shards"] == TOTAL_SHARDS - len(before)
    if trial.point == "driver" or trial.every_retry:
        assert resumed["encoded_shards"] > 0
    assert_same_as_reference(out, reference_store)
