"""NIL prediction, metrics and NIL-threshold tuning on hand-computed cases; stores that must be refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.train_fixtures import synthetic_store
from train.config import ConfigError, TrainConfig
from train.data import KB, DataError, Mentions, popularity_features
from train.evaluate import Ranked, evaluate, predict, prediction_rows, tune_threshold
from train.run import run

NEG = float("-inf")


def _case() -> tuple[Mentions, Ranked]:
    kb = KB(ids=["Q1", "Q2", "Q3", "Q9"], index={}, langs=["en"] * 4, es=torch.zeros(4, 2), ec=torch.zeros(4, 2),
            popularity=torch.zeros(4, 0))
    cand = torch.tensor([[0, 3], [3, 1], [2, 0], [2, 0]])
    mask = torch.tensor([[True, True], [True, True], [True, True], [False, False]])
    scores = torch.tensor([[0.9, 0.1], [0.5, 0.4], [-0.2, -0.5], [NEG, NEG]])
    best, pos = scores.max(1)
    m = Mentions(kb=kb, ids=["a", "b", "c", "d"], langs=["en", "en", "de", "de"], types=["PER", None, "PER", "LOC"],
                 golds=["Q1", "Q2", None, "Q3"], ms=torch.zeros(4, 2), mc=torch.zeros(4, 2), cand=cand,
                 cand_mask=mask, gold_pos=torch.tensor([0, 1, -1, -1]), gold_kb=torch.tensor([0, 1, -1, 2]))
    return m, Ranked(scores, best, pos)


def test_nil_threshold_and_metrics_by_hand() -> None:
    m, ranked = _case()
    # threshold -1: a -> Q1 (right), b -> Q9 (wrong), c -> Q3 (gold NIL: wrong), d has no candidates -> NIL
    assert predict(ranked, m, -1.0) == ["Q1", "Q9", "Q3", None]
    s = evaluate(ranked, m, -1.0)
    assert s["all"].p == pytest.approx(1 / 3) and s["all"].r == pytest.approx(1 / 3)
    assert s["all"].micro == pytest.approx(1 / 4)
    # threshold 0: c's best (-0.2) is below it, so c is NIL (right)
    assert predict(ranked, m, 0.0) == ["Q1", "Q9", None, None]
    s = evaluate(ranked, m, 0.0)
    assert (s["all"].p, s["all"].r, s["all"].f1, s["all"].micro) == pytest.approx((0.5, 1 / 3, 0.4, 0.5))
    assert s["lang:de"].micro == pytest.approx(0.5) and s["lang:en"].micro == pytest.approx(0.5)
    assert s["type:en:PER"].n == 1
    # non-NIL F1: over a, b, d only: p = 1/2 (a right, b wrong), r = 1/3
    assert s["all"].nonnil_f1 == pytest.approx(0.4)
    # NIL decision: c and d predicted NIL, only c is gold NIL: p = 1/2, r = 1/1
    assert (s["all"].nil_p, s["all"].nil_r, s["all"].nil_f1) == pytest.approx((0.5, 1.0, 2 / 3))


def test_tune_threshold_picks_best_dev_f1() -> None:
    m, ranked = _case()
    # linking a only: p 1, r 1/3, f1 .5; a+b: p .5 r 1/3 f1 .4; all three: f1 1/3 -> threshold = a's score
    assert tune_threshold(ranked, m) == pytest.approx(0.9)


def test_prediction_rows_follow_the_contract() -> None:
    m, ranked = _case()
    rows = prediction_rows(ranked, m, 0.0)
    assert rows[1] == ("b", "Q9", pytest.approx(0.5), [("Q9", pytest.approx(0.5)), ("Q2", pytest.approx(0.4))])
    assert rows[3] == ("d", None, -1.0, [])


def test_popularity_missing_counts_are_explicit() -> None:
    assert popularity_features([2, 4, 6], "error", "kb").tolist() == [[0.5], [1.0], [1.5]]
    with pytest.raises(DataError, match="2 of 3 entries have links: null"):
        popularity_features([4, None, None], "error", "kb")
    got = popularity_features([4, None, 8], "median", "kb")
    np.testing.assert_allclose(got, [[2 / 3, 0.0], [1.0, 1.0], [4 / 3, 0.0]])


def test_eval_store_with_another_encoder_is_refused(tmp_path) -> None:
    a = synthetic_store(tmp_path / "a", langs={"en": 30})
    b = synthetic_store(tmp_path / "b", langs={"de": 30}, encoder={"name": "other", "fingerprint": "other-1"})
    with pytest.raises(DataError, match="different encoders"):
        run(TrainConfig(features=str(a), eval_features=str(b), epochs=1, plots=False))


def test_missing_candidates_say_what_to_run(tmp_path) -> None:
    a = synthetic_store(tmp_path / "a", langs={"en": 30})
    (a / "candidates.jsonl").unlink()
    with pytest.raises(DataError, match="xel-nn candidates"):
        run(TrainConfig(features=str(a), epochs=1, plots=False))


def test_bad_config_values_are_named() -> None:
    with pytest.raises(ConfigError, match="--dropout 1.5"):
        TrainConfig(features="x", dropout=1.5)
    with pytest.raises(ConfigError, match="--tune-nil"):
        TrainConfig(features="x", tune_nil=True, dev_fraction=0.0)


def test_ties_are_not_broken_by_candidate_order() -> None:
    """A collapsed model (every candidate scored alike) must not inherit the retrieval ranking."""
    from train.evaluate import rank

    m, k = 400, 10
    kb = KB(ids=[f"Q{i}" for i in range(k)], index={}, langs=["en"] * k, es=torch.zeros(k, 2), ec=torch.zeros(k, 2),
            popularity=torch.zeros(k, 0))
    cand = torch.arange(k).repeat(m, 1)
    mentions = Mentions(kb=kb, ids=[str(i) for i in range(m)], langs=["en"] * m, types=[None] * m,
                        golds=["Q0"] * m, ms=torch.zeros(m, 2), mc=torch.zeros(m, 2), cand=cand,
                        cand_mask=torch.ones(m, k, dtype=torch.bool), gold_pos=torch.zeros(m, dtype=torch.long),
                        gold_kb=torch.zeros(m, dtype=torch.long))

    class Constant(torch.nn.Module):
        def forward(self, ms, mc, cand, es, ec, pop, pair=None):
            return type("S", (), {"scores": torch.full(cand.shape, 0.3)})()

    ranked = rank(Constant(), mentions)
    assert ranked.tied_top == 1.0
    accuracy = evaluate(ranked, mentions, -1.0)["all"].micro
    assert accuracy < 0.25  # about 1/k, not the 1.0 that "first candidate wins" would give
