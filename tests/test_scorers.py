"""The scorer descriptions (train.scorers): TrainConfig takes each scorer's defaults from them and refuses the
flags a scorer would not honour, naming the flag, the value and what is allowed."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from xel.precompute.store import open_store
from xel.train.cli import main
from xel.train.config import DEFAULT_FEATURE_GROUPS, ConfigError, TrainConfig
from xel.train.data import load_mentions, standardization
from xel.train.loop import LoopSettings, Trainer
from xel.train.model import ModelSpec
from xel.train.residual import ResidualScorer, build_model
from xel.train.scorers import PAPER, RESIDUAL, SCORERS

from tests.train_fixtures import synthetic_store


def test_each_scorers_defaults_come_from_its_description() -> None:
    assert set(SCORERS) == {"paper", "residual"}
    for scorer in SCORERS.values():
        cfg = TrainConfig(features="x", scorer=scorer.name)
        assert cfg.scorer_kind is scorer
        assert (cfg.loss_name, cfg.nil_score_name, cfg.nil_calibration_name) == (
            scorer.default_loss, scorer.default_nil_score, scorer.default_nil_calibration)
    assert (PAPER.default_loss, PAPER.default_nil_score, PAPER.default_nil_calibration) == ("hinge", "model", "none")
    assert (RESIDUAL.default_loss, RESIDUAL.default_nil_score, RESIDUAL.default_nil_calibration) == (
        "softmax", "csls", "quantile")
    assert (PAPER.first_trained_epoch, RESIDUAL.first_trained_epoch) == (0, 1)


@pytest.mark.parametrize(("changes", "flag", "allowed"), [
    ({"scorer": "paper", "loss": "softmax"}, "--loss 'softmax'", "['hinge']"),
    ({"scorer": "paper", "feature_groups": ("cosines", "interactions")}, "--feature-groups",
     "only with --scorer residual"),
    ({"scorer": "paper", "epochs": 0}, "--epochs 0", ">= 1 with --scorer paper"),
    ({"scorer": "paper", "nil_threshold": 1.5}, "--nil-threshold 1.5", "in [-1, 1] with --scorer paper"),
])
def test_flags_a_scorer_would_ignore_are_refused(changes, flag, allowed) -> None:
    with pytest.raises(ConfigError) as e:
        TrainConfig(features="x", **changes)
    assert flag in str(e.value) and allowed in str(e.value)


def test_what_the_residual_scorer_reads_is_accepted() -> None:
    TrainConfig(features="x", scorer="residual", loss="hinge", epochs=0, nil_threshold=1.5,
                feature_groups=("cosines", "interactions"))
    TrainConfig(features="x", scorer="paper", loss="hinge", feature_groups=DEFAULT_FEATURE_GROUPS)


def test_cli_refuses_paper_with_softmax_before_training(tmp_path) -> None:
    store = synthetic_store(tmp_path / "s", langs={"en": 40})
    out = tmp_path / "r"
    result = CliRunner().invoke(main, ["--features", str(store), "--out", str(out), "--scorer", "paper",
                                       "--loss", "softmax", "--epochs", "1", "--no-plots"])
    assert result.exit_code != 0
    assert "--loss 'softmax'" in result.output and "--scorer paper" in result.output
    assert not out.exists()


def test_trainer_refuses_a_loss_the_scorer_does_not_train(tmp_path) -> None:

    store = open_store(synthetic_store(tmp_path / "s", langs={"en": 40}))
    train = load_mentions(store, langs=("en",), candidates=None, max_candidates=10)
    spec = ModelSpec(dim=int(train.ms.shape[1]), hs_sizes=(8,), hc_sizes=(8,), final_sizes=(8,), dropout=0.0)
    torch.manual_seed(0)
    model = build_model(spec)
    model.set_statistics(*standardization(train))
    with pytest.raises(ValueError, match="paper scorer trains only"):
        Trainer(model, train, LoopSettings(lr=1e-2, batch_size=8, negatives=3, margin=0.5, loss="softmax"), 0)
    assert isinstance(build_model(replace(spec, scorer="residual")), ResidualScorer)
    with pytest.raises(ValueError, match="allowed"):
        build_model(replace(spec, scorer="other"))
