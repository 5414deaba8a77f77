"""``xel-train`` through click's CliRunner: outputs exist and errors are clean."""

from __future__ import annotations

import json
import logging
import shutil

from click.testing import CliRunner
from xel.retrieval.files import read_predictions
from xel.train.checkpoint import load_checkpoint
from xel.train.cli import main

from tests.train_fixtures import synthetic_store


def test_cli_writes_every_output(tmp_path) -> None:
    store = synthetic_store(tmp_path / "s", langs={"en": 100, "de": 30})
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "--features", str(store), "--out", str(out), "--epochs", "2", "--hs-sizes", "32", "--hc-sizes", "32",
        "--final-sizes", "16,8", "--adversarial", "--lambda", "0.25", "--tune-nil", "--threads", "1",
    ])
    assert result.exit_code == 0, result.output
    assert "lang:de" in result.output and "f1" in result.output
    for name in ("config.json", "metrics.json", "predictions.jsonl", "model.safetensors", "loss.png", "prf.png",
                 "languages.png"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["hs_sizes"] == [32] and config["lambda_adv"] == 0.25 and config["adversarial"] is True
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [0, 1, 2] and "lang:de" in metrics["epochs"][0]["test"]
    preds = read_predictions(out / "predictions.jsonl")
    assert len(preds) == metrics["test"]["all"]["n"] and set(preds[0]) == {"id", "pred", "score", "candidates"}
    assert load_checkpoint(out / "model.safetensors").hadv is not None


def test_cli_popularity_without_links_fails_cleanly(tmp_path) -> None:
    store = synthetic_store(tmp_path / "s", langs={"en": 40}, links=False)
    result = CliRunner().invoke(main, ["--features", str(store), "--out", str(tmp_path / "r"), "--popularity"])
    assert result.exit_code == 1 and "--popularity-missing median" in result.output
    result = CliRunner().invoke(main, ["--features", str(store), "--out", str(tmp_path / "r"), "--popularity",
                                       "--popularity-missing", "median", "--epochs", "1", "--no-plots"])
    assert result.exit_code == 0, result.output


def _candidates_beside_a_config(store, root, **recorded) -> str:
    """The store's candidates.jsonl copied into ``root`` with an ``xel-nn candidates`` config.json that records
    ``recorded`` (none when empty: a file an older xel wrote)."""
    root.mkdir()
    shutil.copy(store / "candidates.jsonl", root / "candidates.jsonl")
    (root / "config.json").write_text(json.dumps({"k": 30, "max_prior": 10, "train_lang": "en", **recorded}))
    return str(root / "candidates.jsonl")


def test_cli_refuses_candidates_whose_prior_counted_another_split(tmp_path) -> None:
    store = synthetic_store(tmp_path / "s", langs={"en": 60})
    cands = _candidates_beside_a_config(store, tmp_path / "c", dev_fraction=0.1, test_fraction=0.2)
    out = tmp_path / "r"
    result = CliRunner().invoke(main, ["--features", str(store), "--candidates", cands, "--out", str(out),
                                       "--test-fraction", "0.3", "--epochs", "1", "--no-plots"])
    assert result.exit_code == 1
    message = result.output.strip().splitlines()[-1]
    assert "--dev-fraction 0.1 --test-fraction 0.2 to xel-train" in message
    assert "rerun xel-nn candidates with --dev-fraction 0.1 --test-fraction 0.3" in message
    assert not out.exists()


def test_cli_trains_on_candidates_counted_with_its_split(tmp_path, caplog) -> None:
    store = synthetic_store(tmp_path / "s", langs={"en": 60})
    matching = _candidates_beside_a_config(store, tmp_path / "c", dev_fraction=0.15, test_fraction=0.3)
    common = ["--features", str(store), "--dev-fraction", "0.15", "--test-fraction", "0.3", "--epochs", "1",
              "--no-plots", "--threads", "1"]
    result = CliRunner().invoke(main, [*common, "--candidates", matching, "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    older = _candidates_beside_a_config(store, tmp_path / "old")
    with caplog.at_level(logging.WARNING, logger="xel.train.prepare"):
        result = CliRunner().invoke(main, [*common, "--candidates", older, "--out", str(tmp_path / "r-old")])
    assert result.exit_code == 0, result.output
    assert any("no split fractions recorded" in r.getMessage() for r in caplog.records)


def test_cli_sets_the_threads_it_is_given(tmp_path) -> None:
    import torch

    store = synthetic_store(tmp_path / "s", langs={"en": 60})
    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(main, ["--features", str(store), "--out", str(tmp_path / "r"), "--epochs", "1",
                                           "--no-plots", "--threads", str(before + 1)])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)
