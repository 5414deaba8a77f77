"""``xel-train --resume``: a run killed after an epoch and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import xel.train.fit
from click.testing import CliRunner
from safetensors.torch import load_file
from xel.train.checkpoint import CheckpointError
from xel.train.cli import main
from xel.train.config import ConfigError, TrainConfig
from xel.train.resume import RESUME_STATE, RESUME_TENSORS
from xel.train.run import run

from tests.train_fixtures import synthetic_store

ROOT = Path(__file__).resolve().parent.parent
# xel-train in a child process that SIGKILLs itself right after writing the resume state of epoch argv[1]
KILL_AFTER_EPOCH = """
import os, signal, sys
import xel.train.fit
from xel.train.cli import main
real = xel.train.fit.save_resume_state
def save_then_die(run_dir, *args):
    real(run_dir, *args)
    if args[3] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
xel.train.fit.save_resume_state = save_then_die
main(sys.argv[2:])
"""
# dropout > 0 draws from torch's global RNG, +A from the trainer's generator and a second optimizer: all must resume
SETTINGS = dict(hs_sizes=(32,), hc_sizes=(32,), final_sizes=(16,), batch_size=16, plots=False, threads=1,
                progress=False, epochs=5, dropout=0.2, adversarial=True, popularity=True, tune_nil=True, adv_steps=2)


@pytest.fixture(autouse=True)
def _the_threads_xel_train_sets():
    """``run(cfg)`` leaves torch's thread count alone, ``xel-train --resume`` sets it to ``--threads``: train both
    ways with that count, or float sums differ (conftest restores the count after each test)."""
    from xel.train.run import set_threads

    set_threads(SETTINGS["threads"])


class Killed(BaseException):
    """Stands in for the process being killed right after a resume state was written."""


@dataclass
class Interrupts:
    kill_after: dict[str, int] = field(default_factory=dict)  # run dir name -> kill after this epoch's save
    saved: list[tuple[str, int]] = field(default_factory=list)  # (run dir name, epoch) of every save


@pytest.fixture
def interrupts(monkeypatch) -> Interrupts:
    """Records every resume-state save and kills the run right after the ones named in ``kill_after``."""
    real = xel.train.fit.save_resume_state
    state = Interrupts()

    def save_then_maybe_die(run_dir: Path, *args, **kwargs) -> None:
        real(run_dir, *args, **kwargs)
        epoch = args[3]
        state.saved.append((run_dir.name, epoch))
        if state.kill_after.get(run_dir.name) == epoch:
            raise Killed

    monkeypatch.setattr(xel.train.fit, "save_resume_state", save_then_maybe_die)
    return state


@pytest.fixture
def store(tmp_path) -> Path:
    return synthetic_store(tmp_path / "s", langs={"en": 120, "de": 40}, text=True)


def assert_same_run(a: Path, b: Path) -> None:
    ma, mb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
    assert ma["best_epoch"] == mb["best_epoch"] and ma["nil_threshold"] == mb["nil_threshold"]
    for key in ("test", "dev"):
        assert ma[key].keys() == mb[key].keys()
        for group, scores in ma[key].items():
            assert scores == pytest.approx(mb[key][group], abs=1e-6), (key, group)
    assert len(ma["epochs"]) == len(mb["epochs"])
    for ea, eb in zip(ma["epochs"], mb["epochs"]):
        assert ea["loss"] == pytest.approx(eb["loss"], abs=1e-6) and ea["test"] == eb["test"]
    assert (a / "predictions.jsonl").read_text() == (b / "predictions.jsonl").read_text()
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)


@pytest.mark.parametrize("scorer", ["residual", "paper"])
def test_killed_and_resumed_run_matches_an_uninterrupted_one(store, tmp_path, interrupts, scorer) -> None:
    cfg = TrainConfig(features=str(store), scorer=scorer, **SETTINGS)
    run(cfg.with_(out=str(tmp_path / "whole")))
    killed = tmp_path / "killed"
    interrupts.kill_after["killed"] = 2
    with pytest.raises(Killed):
        run(cfg.with_(out=str(killed)))
    assert json.loads((killed / RESUME_STATE).read_text())["epoch"] == 2 and not (killed / "metrics.json").exists()
    interrupts.saved.clear()
    result = CliRunner().invoke(main, ["--config", str(killed / "config.json"), "--resume"])
    assert result.exit_code == 0, result.output
    # it went on after epoch 2; it did not start over (the residual scorer's epoch 0 is its untrained state)
    last = 5 if scorer == "residual" else 4
    assert interrupts.saved == [("killed", e) for e in range(3, last + 1)]
    assert_same_run(tmp_path / "whole", killed)


def test_each_seed_resumes_from_its_own_directory(store, tmp_path, interrupts) -> None:
    cfg = TrainConfig(features=str(store), seeds=2, **{**SETTINGS, "epochs": 3})
    whole = run(cfg.with_(out=str(tmp_path / "whole")))
    interrupts.kill_after["seed-1"] = 0
    with pytest.raises(Killed):
        run(cfg.with_(out=str(tmp_path / "killed")))
    interrupts.saved.clear()
    resumed = run(cfg.with_(out=str(tmp_path / "killed"), resume=True))
    # seed 0 had finished: nothing to retrain; residual epochs are 0 (untrained) to 3
    assert interrupts.saved == [("seed-1", 1), ("seed-1", 2), ("seed-1", 3)]
    assert resumed["best_epoch"] == whole["best_epoch"]
    for group, scores in whole["test"].items():
        assert resumed["test"][group] == pytest.approx(scores, abs=1e-6)
    for seed in ("seed-0", "seed-1"):
        assert_same_run(tmp_path / "whole" / seed, tmp_path / "killed" / seed)


def test_resume_without_a_state_trains_from_the_start(store, tmp_path, interrupts) -> None:
    run(TrainConfig(features=str(store), out=str(tmp_path / "fresh"), resume=True, **{**SETTINGS, "epochs": 2}))
    assert interrupts.saved == [("fresh", 0), ("fresh", 1), ("fresh", 2)]  # epoch 0: the untrained residual


def test_resume_with_another_config_is_refused_naming_the_keys(store, tmp_path, interrupts) -> None:
    out = tmp_path / "run"
    interrupts.kill_after["run"] = 0
    with pytest.raises(Killed):
        run(TrainConfig(features=str(store), out=str(out), **SETTINGS))
    result = CliRunner().invoke(main, ["--config", str(out / "config.json"), "--resume", "--lr", "0.002",
                                       "--epochs", "6", "--no-plots"])
    assert result.exit_code == 1
    assert "another config" in result.output and "epochs: 5 -> 6" in result.output
    assert "lr: 0.001 -> 0.002" in result.output and "plots" not in result.output.split("another config")[1]
    with pytest.raises(ConfigError, match="--resume .* only with --out"):
        TrainConfig(features=str(store), resume=True)


def test_damaged_resume_state_is_refused(store, tmp_path, interrupts) -> None:
    out = tmp_path / "run"
    cfg = TrainConfig(features=str(store), out=str(out), **SETTINGS)
    interrupts.kill_after["run"] = 1
    with pytest.raises(Killed):
        run(cfg)
    stale = (out / RESUME_STATE).read_text()
    data = bytearray((out / RESUME_TENSORS).read_bytes())
    data[-100] ^= 0x10
    (out / RESUME_TENSORS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{RESUME_TENSORS}: the sha256 .* rerun without --resume"):
        run(cfg.with_(resume=True))
    import shutil

    shutil.rmtree(out)  # a rerun over an earlier run is written beside it (train.run); this one starts afresh
    interrupts.kill_after["run"] = 2
    with pytest.raises(Killed):
        run(cfg)
    (out / RESUME_STATE).write_text(stale)  # as if killed between writing the epoch-2 tensors and its JSON
    with pytest.raises(CheckpointError, match=r"\(epoch 2\) and .* \(epoch 1\) do not belong together"):
        run(cfg.with_(resume=True))


def test_sigkilled_cli_run_resumes_to_the_same_result(store, tmp_path) -> None:
    flags = ["--features", str(store), "--epochs", "4", "--hs-sizes", "32", "--hc-sizes", "32", "--final-sizes", "16",
             "--batch-size", "16", "--dropout", "0.2", "--adversarial", "--tune-nil", "--threads", "1", "--no-plots"]
    whole = CliRunner().invoke(main, [*flags, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    child = subprocess.run([sys.executable, "-c", KILL_AFTER_EPOCH, "1", *flags, "--out", str(killed)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert json.loads((killed / RESUME_STATE).read_text())["epoch"] == 1 and not (killed / "metrics.json").exists()
    resumed = CliRunner().invoke(main, [*flags, "--out", str(killed), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(tmp_path / "whole", killed)


def _tamper_tensors(out: Path, change) -> None:
    """Change resume.safetensors with ``change(tensors)`` and record the new tensors' sha256 where a careful forger
    would: in the file's metadata and in resume.json, so that only a check of the content can tell."""
    from xel.train.checkpoint import read_tensors, write_tensors

    tensors, meta = read_tensors(out / RESUME_TENSORS)
    change(tensors)
    meta.pop("tensors_sha256")
    digest = write_tensors(out / RESUME_TENSORS, tensors, meta)
    state = json.loads((out / RESUME_STATE).read_text())
    state["tensors_sha256"] = digest
    (out / RESUME_STATE).write_text(json.dumps(state))


def _tamper_state(out: Path, change) -> None:
    state = json.loads((out / RESUME_STATE).read_text())
    change(state)
    (out / RESUME_STATE).write_text(json.dumps(state))


def _nan_weights(tensors) -> None:
    name = next(k for k in sorted(tensors) if k.startswith("model.") and tensors[k].is_floating_point())
    tensors[name] = tensors[name].clone().fill_(float("nan"))


def _wrong_optimizer_shape(tensors) -> None:
    name = next(k for k in sorted(tensors) if k.startswith("optimizer.") and k.endswith(".exp_avg"))
    tensors[name] = tensors[name].reshape(-1)[:1].clone()


TAMPERED = [
    ("nan-weights", lambda out: _tamper_tensors(out, _nan_weights), "holds NaN or infinite values"),
    ("nan-best-weights", lambda out: _tamper_tensors(out, lambda t: t.update(
        {k: v.clone().fill_(float("inf")) for k, v in t.items() if k.startswith("best.") and v.is_floating_point()})),
     "holds NaN or infinite values"),
    ("optimizer-state-shape", lambda out: _tamper_tensors(out, _wrong_optimizer_shape), "has shape"),
    ("no-rng-tensor", lambda out: _tamper_tensors(out, lambda t: t.pop("rng.trainer")), "'rng.trainer' is missing"),
    ("no-best", lambda out: _tamper_state(out, lambda s: s.pop("best")), "field 'best' is missing"),
    ("no-config", lambda out: _tamper_state(out, lambda s: s.pop("config")), "field 'config' is missing"),
    ("no-rng-field-best-epoch", lambda out: _tamper_state(out, lambda s: s["best"].pop("epoch")),
     "field 'best.epoch' is missing"),
    ("best-epoch-out-of-range", lambda out: _tamper_state(out, lambda s: s["best"].update(epoch=7)),
     "field 'best.epoch' is 7"),
]


@pytest.mark.parametrize("name,tamper,message", TAMPERED, ids=[t[0] for t in TAMPERED])
def test_a_forged_resume_state_is_refused_in_one_message(name, tamper, message, store, tmp_path, interrupts) -> None:
    """Issue 15.12: a resume state with its hashes recomputed is still checked: keys, shapes and finiteness."""
    out = tmp_path / "run"
    cfg = TrainConfig(features=str(store), out=str(out), **{**SETTINGS, "epochs": 3})
    interrupts.kill_after["run"] = 1
    with pytest.raises(Killed):
        run(cfg)
    tamper(out)
    result = CliRunner().invoke(main, ["--config", str(out / "config.json"), "--resume"])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert message in result.output and "rerun without --resume" in result.output, result.output
    assert not (out / "metrics.json").exists()
