"""NIL prediction, metrics and NIL-threshold tuning on hand-computed cases; stores that must be refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from xel.train.config import ConfigError, TrainConfig
from xel.train.data import KB, DataError, Mentions, popularity_features
from xel.train.evaluate import (
    Ranked,
    background_cosine,
    evaluate,
    nn_scores,
    pick_best,
    predict,
    prediction_rows,
    tune_threshold,
    with_nil_score,
)
from xel.train.nil import NilRule, NilRuleError, tuned_rule
from xel.train.run import run

from tests.train_fixtures import synthetic_store

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
    from xel.train.evaluate import rank

    m, k = 400, 10
    kb = KB(ids=[f"Q{i}" for i in range(k)], index={}, langs=["en"] * k, es=torch.zeros(k, 2), ec=torch.zeros(k, 2),
            popularity=torch.zeros(k, 0))
    cand = torch.arange(k).repeat(m, 1)
    mentions = Mentions(kb=kb, ids=[str(i) for i in range(m)], langs=["en"] * m, types=[None] * m,
                        golds=["Q0"] * m, ms=torch.zeros(m, 2), mc=torch.zeros(m, 2), cand=cand,
                        cand_mask=torch.ones(m, k, dtype=torch.bool), gold_pos=torch.zeros(m, dtype=torch.long),
                        gold_kb=torch.zeros(m, dtype=torch.long))

    class Constant(torch.nn.Module):
        def forward(self, ms, mc, cand, es, ec, pop, pair=None, offsets=None):
            return type("S", (), {"scores": torch.full(cand.shape, 0.3)})()

    ranked = rank(Constant(), mentions)
    assert ranked.tied_top == 1.0
    accuracy = evaluate(ranked, mentions, -1.0)["all"].micro
    assert accuracy < 0.25  # about 1/k, not the 1.0 that "first candidate wins" would give


def test_background_cosine_against_numpy() -> None:
    rng = np.random.default_rng(0)
    cos = rng.uniform(-1, 1, size=(5, 15))
    cos[1, 3:] = NEG  # three candidates: the background is the mean of the other two
    cos[2, 1:] = NEG  # one candidate: no background (0)
    got = background_cosine(torch.tensor(cos, dtype=torch.float64))
    want = []
    for row in cos:
        rest = np.sort(row[np.isfinite(row)])[::-1][1:11]
        want.append(rest.mean() if len(rest) else 0.0)
    np.testing.assert_allclose(got.numpy(), want)


def _shifted_language_case(langs: dict[str, float], n: int = 12, k: int = 6, seed: int = 0,
                           gold_top: dict[str, tuple[float, float]] | None = None) -> Mentions:
    """Per language, ``n`` mentions whose best candidate has cosine ``0.9 + shift`` (gold) or ``0.75 + shift``
    (NIL), and ``k - 1`` other candidates at ``0.5 + shift`` (gold) or ``0.6 + shift`` (NIL): NIL is separable by
    the best cosine within one language, but only the margin to the background separates it in every language."""
    rng = np.random.default_rng(seed)
    dim = 8
    ms, es, cand, golds, mlangs, kb_ids = [], [], [], [], [], []

    def unit_at(w: np.ndarray, cosine: float) -> np.ndarray:
        other = rng.normal(size=dim)
        other -= other @ w * w
        return cosine * w + np.sqrt(1 - cosine**2) * other / np.linalg.norm(other)

    for lang, shift in langs.items():
        for i in range(n):
            w = rng.normal(size=dim)
            w /= np.linalg.norm(w)
            nil = i % 3 == 0
            top, rest = (0.75, 0.6) if nil else ((gold_top or {}).get(lang, (0.9, 0.9))[i % 2], 0.5)
            row = []
            for j in range(k):
                kb_ids.append(f"Q{len(kb_ids)}")
                es.append(unit_at(w, (top if j == 0 else rest) + shift))
                row.append(len(es) - 1)
            ms.append(w)
            cand.append(row)
            golds.append(None if nil else kb_ids[row[0]])
            mlangs.append(lang)
    m = len(ms)
    kb = KB(ids=kb_ids, index={q: i for i, q in enumerate(kb_ids)}, langs=["en"] * len(kb_ids),
            es=torch.tensor(np.array(es), dtype=torch.float32), ec=torch.zeros(len(es), dim),
            popularity=torch.zeros(len(es), 0))
    cand_t = torch.tensor(cand)
    return Mentions(kb=kb, ids=[f"m{i}" for i in range(m)], langs=mlangs, types=[None] * m, golds=golds,
                    ms=torch.tensor(np.array(ms), dtype=torch.float32), mc=torch.zeros(m, dim), cand=cand_t,
                    cand_mask=torch.ones_like(cand_t, dtype=torch.bool),
                    gold_pos=torch.tensor([-1 if g is None else 0 for g in golds]),
                    gold_kb=torch.tensor([-1 if g is None else int(r[0]) for g, r in zip(golds, cand)]))


def test_csls_nil_threshold_tuned_on_english_transfers_to_a_shifted_script_and_cosine_does_not() -> None:
    english = _shifted_language_case({"en": 0.0})
    both = _shifted_language_case({"en": 0.0, "xx": -0.3}, seed=1)
    f1 = {}
    for rule in ("cosine", "csls"):
        threshold = tune_threshold(with_nil_score(pick_best(nn_scores(english), english), english, rule), english)
        ranked = with_nil_score(pick_best(nn_scores(both), both), both, rule)
        scores = evaluate(ranked, both, threshold)
        f1[rule] = (scores["lang:en"].f1, scores["lang:xx"].f1)
    assert f1["csls"] == pytest.approx((1.0, 1.0))
    assert f1["cosine"][0] == pytest.approx(1.0) and f1["cosine"][1] == 0.0  # every xx link called NIL


def test_nil_scores_use_no_gold() -> None:
    m = _shifted_language_case({"en": 0.0, "xx": -0.3})
    poisoned = replace(m, golds=[None] * len(m), gold_pos=torch.full((len(m),), -1),
                       gold_kb=torch.full((len(m),), -1))
    for rule in ("cosine", "csls"):
        a = with_nil_score(pick_best(nn_scores(m), m), m, rule)
        b = with_nil_score(pick_best(nn_scores(poisoned), poisoned), poisoned, rule)
        assert torch.equal(a.nil_score, b.nil_score) and predict(a, m, 0.2) == predict(b, poisoned, 0.2)


def test_quantile_calibration_links_a_language_whose_correct_links_score_lower_from_unlabelled_mentions() -> None:
    # csls of a correct link: 0.40 or 0.45 in English, 0.25 or 0.27 in xx; of a NIL: 0.15 in both. English's
    # threshold (0.40) calls every xx mention NIL; shifting xx's 90th percentile (0.27) onto English's (0.45)
    # links exactly the right ones
    tops = {"en": (0.9, 0.95), "xx": (0.75, 0.77)}
    english = _shifted_language_case({"en": 0.0}, n=30, gold_top=tops)
    both = _shifted_language_case({"en": 0.0, "xx": -0.3}, n=30, seed=1, gold_top=tops)
    dev_ranked = with_nil_score(pick_best(nn_scores(english), english), english, "csls")
    threshold = tune_threshold(dev_ranked, english)
    f1 = {}
    for calibration in ("none", "quantile"):
        rule = tuned_rule("csls", threshold, calibration, ("en",), dev_ranked)
        ranked = rule.scored(pick_best(nn_scores(both), both), both)
        rule = rule.calibrated(ranked, both)
        scores = evaluate(rule.apply(ranked, both), both, rule.threshold)
        f1[calibration] = (scores["lang:en"].f1, scores["lang:xx"].f1)
        assert "en" not in rule.shifts  # the training language keeps its threshold
    assert f1["none"] == pytest.approx((1.0, 0.0))
    assert f1["quantile"] == pytest.approx((1.0, 1.0))
    # the rule survives its JSON form, and a gold-less copy of the mentions gives the same calibration
    poisoned = replace(both, golds=[None] * len(both), gold_pos=torch.full((len(both),), -1),
                       gold_kb=torch.full((len(both),), -1))
    base = tuned_rule("csls", threshold, "quantile", ("en",), dev_ranked)
    a = base.calibrated(base.scored(pick_best(nn_scores(both), both), both), both)
    b = base.calibrated(base.scored(pick_best(nn_scores(poisoned), poisoned), poisoned), poisoned)
    assert a.shifts == b.shifts and NilRule.from_dict(a.to_dict(), "x") == a


@pytest.mark.parametrize("field, value", [("score", "median"), ("threshold", float("nan")), ("shifts", {"de": "x"}),
                                          ("calibration", "zscore"), ("reference", float("inf"))])
def test_a_malformed_saved_nil_rule_is_refused_naming_the_field(field, value) -> None:
    good = NilRule("csls", 0.1, "quantile", ("en",), 0.3, {"de": 0.05}).to_dict()
    with pytest.raises(NilRuleError, match=f"metrics.json: nil_rule field '{field}'"):
        NilRule.from_dict({**good, field: value}, "metrics.json")
