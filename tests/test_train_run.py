"""Training runs on synthetic stores: overfitting, seeded reproducibility, cross-store evaluation, seeds, search."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from xel.train.config import ConfigError, TrainConfig
from xel.train.data import load_mentions
from xel.train.fit import fit
from xel.train.prepare import Prepared, prepare
from xel.train.run import run
from xel.train.splits import Splits, equalize

from tests.train_fixtures import synthetic_store

FAST = dict(hs_sizes=(32,), hc_sizes=(32,), final_sizes=(16,), batch_size=16, plots=False, threads=1)


def test_overfits_a_tiny_set(tmp_path) -> None:
    from xel.precompute.store import open_store

    store = open_store(synthetic_store(tmp_path / "s", langs={"en": 24}, nil_rate=0.0))
    m = load_mentions(store, langs=(), candidates=None, max_candidates=30)
    m.ms.normal_(generator=torch.Generator().manual_seed(1))  # no signal left: only memorising can fit it
    data = Prepared(Splits(train=m, dev=None, test=m), ("en",), ("en",), (), None, store.dim)
    cfg = TrainConfig(features="unused", epochs=40, lr=1e-2, dropout=0.0, centre=False, **FAST)
    result = fit(cfg, data, 0, progress=False)
    assert result.test["all"]["micro"] == 1.0
    assert result.history[-1]["loss"] < 0.05


def test_seeded_short_run_reproduces_its_loss(tmp_path) -> None:
    path = synthetic_store(tmp_path / "s", langs={"en": 120, "de": 40})
    cfg = TrainConfig(features=str(path), epochs=3, adversarial=True, popularity=True, **FAST)
    data = prepare(cfg)
    first = [h["loss"] for h in fit(cfg, data, 3, progress=False).history]
    second = [h["loss"] for h in fit(cfg, prepare(cfg), 3, progress=False).history]
    assert first == pytest.approx(second, abs=1e-6)
    other = [h["loss"] for h in fit(cfg, data, 4, progress=False).history]
    assert other != pytest.approx(first, abs=1e-6)


def test_train_on_one_store_evaluate_on_another(tmp_path) -> None:
    a = synthetic_store(tmp_path / "a", langs={"en": 150}, seed=1)
    b = synthetic_store(tmp_path / "b", langs={"de": 50, "ru": 30}, seed=2, kb_lang="de")
    cfg = TrainConfig(features=str(a), eval_features=str(b), eval_lang=("de",), epochs=4, adversarial=True,
                      tune_nil=True, **FAST)
    summary = run(cfg)
    assert "lang:ru" not in summary["test"]  # --eval-lang de: the 30 Russian mentions are not evaluated
    assert summary["test"]["all"]["n"] == summary["test"]["lang:de"]["n"] == 50


def test_splits_keep_test_mentions_out_of_training(tmp_path) -> None:
    path = synthetic_store(tmp_path / "s", langs={"en": 100, "de": 20})
    data = prepare(TrainConfig(features=str(path), **FAST))
    train, dev, test = data.splits.train, data.splits.dev, data.splits.test
    assert not set(train.ids) & set(test.ids) and not set(dev.ids) & set(test.ids)
    assert set(train.langs) == {"en"} and sum(x == "de" for x in test.langs) == 20
    assert 10 <= sum(x == "en" for x in test.langs) <= 30  # --test-fraction 0.2 of en's documents


def test_equalize_downsamples_to_the_smallest_language() -> None:
    langs = ["en"] * 10 + ["de"] * 4
    kept = equalize(list(range(14)), langs, None, 0)
    assert sorted(langs[i] for i in kept) == ["de"] * 4 + ["en"] * 4
    assert kept == equalize(list(range(14)), langs, None, 0)


def test_seeds_report_mean_and_std_and_search_picks_by_dev(tmp_path) -> None:
    path = synthetic_store(tmp_path / "s", langs={"en": 80})
    out = tmp_path / "run"
    summary = run(TrainConfig(features=str(path), out=str(out), epochs=2, seeds=2, search=2, **FAST))
    per_seed = [s["test"]["all"] for s in summary["seeds"]]
    assert [s["seed"] for s in summary["seeds"]] == [0, 1]
    for metric in ("micro", "f1", "nonnil_f1"):  # the reported mean and std are the seeds' own, recomputed
        values = [s[metric] for s in per_seed]
        assert summary["test"]["all"][metric] == pytest.approx(np.mean(values))
        assert summary["std"]["all"][metric] == pytest.approx(np.std(values))
    for seed in summary["seeds"]:  # and each seed's is what its own run directory recorded
        recorded = json.loads((out / f"seed-{seed['seed']}" / "metrics.json").read_text())
        assert recorded["best_epoch"] == seed["best_epoch"] and recorded["test"] == seed["test"]
    assert len(summary["search"]) == 2
    best = max(summary["search"], key=lambda t: t["dev_f1"])
    assert summary["config"]["lr"] == best["lr"]
    saved = json.loads((out / "search.json").read_text())
    assert [t["dev_f1"] for t in saved] == [t["dev_f1"] for t in summary["search"]]


# --------------------------------------------------------------------------- a run directory holds one run (15.8)


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class Killed(BaseException):
    """Stands in for a SIGKILL in the middle of writing a run's outputs."""


def test_a_different_config_into_a_finished_run_is_refused_and_overwrite_replaces_it(tmp_path) -> None:
    from click.testing import CliRunner
    from xel.train.cli import main

    store = synthetic_store(tmp_path / "s", langs={"en": 60})
    out = tmp_path / "run"
    flags = ["--features", str(store), "--out", str(out), "--hs-sizes", "32", "--hc-sizes", "32", "--final-sizes", "16",
             "--threads", "1", "--no-plots"]
    assert CliRunner().invoke(main, [*flags, "--epochs", "1"]).exit_code == 0
    before = _files(out)
    epochs_before = len(json.loads((out / "metrics.json").read_text())["epochs"])
    result = CliRunner().invoke(main, [*flags, "--epochs", "2"])
    assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
    assert "holds a run with another config (epochs: 1 -> 2)" in result.output and "--overwrite" in result.output
    assert _files(out) == before
    result = CliRunner().invoke(main, [*flags, "--epochs", "2", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == epochs_before + 1
    assert not list(tmp_path.glob(".run.*.tmp"))


def test_a_rerun_killed_while_writing_leaves_the_old_run_whole(tmp_path, monkeypatch) -> None:
    import xel.train.run

    store = synthetic_store(tmp_path / "s", langs={"en": 60})
    cfg = TrainConfig(features=str(store), out=str(tmp_path / "run"), epochs=2, **FAST)
    run(cfg)
    before = _files(tmp_path / "run")
    real = xel.train.run.write_fit

    def write_then_die(result, test, out, *args):
        (out / "metrics.json").write_text("{}")  # half of the new outputs written
        raise Killed

    monkeypatch.setattr(xel.train.run, "write_fit", write_then_die)
    with pytest.raises(ConfigError, match="holds a run with another config"):
        run(cfg.with_(seed=1))
    with pytest.raises(Killed):
        run(cfg)  # the same config reruns ...
    with pytest.raises(Killed):
        run(cfg.with_(seed=1), overwrite=True)  # ... and so does another one with overwrite
    assert _files(tmp_path / "run") == before
    monkeypatch.setattr(xel.train.run, "write_fit", real)
    run(cfg)  # and the next run removes what the killed one left beside it
    assert not list(tmp_path.glob(".run.*.tmp"))


def test_xel_train_help_shows_the_defaults_and_accepts_h() -> None:
    from click.testing import CliRunner
    from xel.train.cli import main

    result = CliRunner().invoke(main, ["-h"])
    assert result.exit_code == 0, result.output
    import re

    defaults = TrainConfig(features="x")
    for flag, value in (("--lr", defaults.lr), ("--epochs", defaults.epochs), ("--batch-size", defaults.batch_size),
                        ("--dropout", defaults.dropout), ("--negatives", defaults.negatives),
                        ("--margin", defaults.margin), ("--seed", defaults.seed)):
        entry = re.search(rf"^  {flag} [A-Z]+(.*?)(?=^  -)", result.output, re.MULTILINE | re.DOTALL)
        assert entry and f"[default: {value}]" in " ".join(entry.group(1).split()), (flag, result.output)
    text = " ".join(result.output.split())
    assert "--features DIRECTORY training store (xel-precompute --out) [required" in text


def test_a_full_disk_is_one_message_and_the_earlier_run_stays(tmp_path, monkeypatch) -> None:
    import errno

    import xel.train.run
    from click.testing import CliRunner
    from xel.train.cli import main

    store = synthetic_store(tmp_path / "s", langs={"en": 60})
    out = tmp_path / "run"
    flags = ["--features", str(store), "--out", str(out), "--epochs", "1", "--hs-sizes", "32", "--hc-sizes", "32",
             "--final-sizes", "16", "--threads", "1", "--no-plots"]
    assert CliRunner().invoke(main, flags).exit_code == 0
    before = _files(out)

    def full(result, test, run_dir, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run_dir / "model.safetensors"))

    monkeypatch.setattr(xel.train.run, "write_fit", full)
    result = CliRunner().invoke(main, flags)
    assert result.exit_code == 1 and (result.exception is None or isinstance(result.exception, SystemExit))
    assert "model.safetensors: No space left on device" in result.output
    assert _files(out) == before and not list(tmp_path.glob(".run.*.tmp"))


def test_plots_name_the_setting_and_seed_and_say_that_prf_pools_languages(tmp_path, monkeypatch) -> None:
    import matplotlib.axes

    titles: list[str] = []
    real = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda ax, text, *a, **k: (titles.append(text),
                                                                                    real(ax, text, *a, **k))[1])
    store = synthetic_store(tmp_path / "s", langs={"en": 60, "de": 20})
    run(TrainConfig(features=str(store), out=str(tmp_path / "run"), epochs=1, adversarial=True, seed=3,
                    **{**FAST, "plots": True}))
    assert len(titles) == 3 and all(t.startswith("train en+A, seed 3: ") for t in titles), titles
    assert "all evaluated mentions pooled (de, en)" in titles[1]


def test_run_leaves_process_state_to_its_entry_point(tmp_path) -> None:
    """train.run.run is a library function: --threads is set by xel-train (and xel-experiment's tasks), not here,
    and the plots it writes select no matplotlib backend (pyplot stays unimported)."""
    import sys

    store = synthetic_store(tmp_path / "s", langs={"en": 60})
    before, pyplot_before = torch.get_num_threads(), "matplotlib.pyplot" in sys.modules
    run(TrainConfig(features=str(store), out=str(tmp_path / "r"), epochs=1, threads=before + 1, progress=False))
    assert torch.get_num_threads() == before
    assert (tmp_path / "r" / "loss.png").is_file()
    assert pyplot_before or "matplotlib.pyplot" not in sys.modules
