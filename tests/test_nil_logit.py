"""The learned NIL logit (train.nil_logit, ``--nil-score learned``): it finds NIL mentions that a threshold on a
score cannot, it reads no gold of the mentions it decides, it leaves the ranker as it is, and the flags it and
the scorers do not read are refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from xel.train.cli import main
from xel.train.config import ConfigError, TrainConfig
from xel.train.data import KB, Mentions
from xel.train.evaluate import predict, rank, with_nil_score
from xel.train.fit import compare_nil_rules, fit, rank_sets
from xel.train.loop import LoopSettings, Trainer
from xel.train.model import ModelSpec
from xel.train.nil_logit import NIL_FEATURES, nil_features
from xel.train.prepare import Prepared
from xel.train.residual import build_model
from xel.train.splits import Splits

from tests.train_fixtures import synthetic_store


def margin_case(n: int, seed: int, lang: str = "en", shift: float = 0.0, k: int = 8) -> Mentions:
    """``n`` mentions whose best candidate has cosine 0.7 or 0.9 (+ ``shift``), NIL or not alike: the raw score
    says nothing. A linked mention's runner-up is 0.2 below its best, a NIL mention's 0.01 below (two entities it
    cannot tell apart: neither is it); the other candidates sit 0.4 to 0.55 below at random, so the mean of the
    runners-up (csls's background) overlaps between the two kinds too. Only the margin separates them."""
    rng = np.random.default_rng(seed)
    dim = 16
    ms, es, cand, golds, kb_ids = [], [], [], [], []

    def unit_at(w: np.ndarray, cosine: float) -> np.ndarray:
        other = rng.normal(size=dim)
        other -= other @ w * w
        return cosine * w + np.sqrt(1 - cosine**2) * other / np.linalg.norm(other)

    for i in range(n):
        w = rng.normal(size=dim)
        w /= np.linalg.norm(w)
        nil = i % 4 == 0
        top = (0.7 if (i // 4) % 2 else 0.9) + shift
        cosines = [top, top - (0.01 if nil else 0.2)] + list(top - rng.uniform(0.4, 0.55, size=k - 2))
        row = []
        for c in cosines:
            kb_ids.append(f"{lang}{seed}-Q{len(kb_ids)}")
            es.append(unit_at(w, c))
            row.append(len(es) - 1)
        ms.append(w)
        cand.append(row)
        golds.append(None if nil else kb_ids[row[0]])
    kb = KB(ids=kb_ids, index={q: i for i, q in enumerate(kb_ids)}, langs=["en"] * len(kb_ids),
            es=torch.tensor(np.array(es), dtype=torch.float32), ec=torch.zeros(len(es), dim),
            popularity=torch.zeros(len(es), 0), names=tuple(f"name {q}" for q in kb_ids))
    cand_t = torch.tensor(cand)
    return Mentions(kb=kb, ids=[f"{lang}{seed}-m{i}" for i in range(n)], langs=[lang] * n, types=[None] * n,
                    golds=golds, ms=torch.tensor(np.array(ms), dtype=torch.float32), mc=torch.zeros(n, dim),
                    cand=cand_t, cand_mask=torch.ones_like(cand_t, dtype=torch.bool),
                    gold_pos=torch.tensor([-1 if g is None else 0 for g in golds]),
                    gold_kb=torch.tensor([-1 if g is None else int(r[0]) for g, r in zip(golds, cand)]))


def join(a: Mentions, b: Mentions) -> Mentions:
    """Two mention sets over the union of their KBs."""
    ids = a.kb.ids + b.kb.ids
    kb = KB(ids=ids, index={q: i for i, q in enumerate(ids)}, langs=a.kb.langs + b.kb.langs,
            es=torch.cat([a.kb.es, b.kb.es]), ec=torch.cat([a.kb.ec, b.kb.ec]), popularity=torch.zeros(len(ids), 0),
            names=a.kb.names + b.kb.names)
    off = len(a.kb.ids)
    shift = lambda t: torch.where(t >= 0, t + off, t)  # noqa: E731
    return Mentions(kb=kb, ids=a.ids + b.ids, langs=a.langs + b.langs, types=a.types + b.types,
                    golds=a.golds + b.golds, ms=torch.cat([a.ms, b.ms]), mc=torch.cat([a.mc, b.mc]),
                    cand=torch.cat([a.cand, b.cand + off]), cand_mask=torch.cat([a.cand_mask, b.cand_mask]),
                    gold_pos=torch.cat([a.gold_pos, b.gold_pos]), gold_kb=torch.cat([a.gold_kb, shift(b.gold_kb)]))


FAST = dict(hs_sizes=(8,), hc_sizes=(8,), final_sizes=(8,), batch_size=16, plots=False, threads=1)


def fitted(test: Mentions, nil_score: str = "learned"):
    """epochs 0 (the residual scorer before training: nn's ranking) with the NIL logit fitted on English."""
    train, dev = margin_case(160, seed=1), margin_case(80, seed=2)
    data = Prepared(Splits(train=train, dev=dev, test=test), ("en",), ("en",), (), None, train.ms.shape[1])
    cfg = TrainConfig(features="unused", epochs=0, nil_score=nil_score, centre=False, **FAST)
    return cfg, data, fit(cfg, data, 0, progress=False)


def test_learned_nil_finds_what_only_the_margin_separates_and_a_threshold_on_a_score_does_not() -> None:
    test = margin_case(120, seed=3)
    _, _, result = fitted(test)
    rules = result.nil_rules
    learned = rules["learned"]["test"]["lang:en"]
    # the dev-tuned threshold is the lowest linked dev mention's score: a test link or two may fall just below
    assert learned["nil_r"] == pytest.approx(1.0) and learned["nil_f1"] > 0.9 and learned["f1"] > 0.95
    for rule in ("model", "cosine"):  # a threshold on the raw score: it links everything
        assert rules[rule]["test"]["lang:en"]["nil_f1"] == 0.0, rule
    assert rules["csls"]["test"]["lang:en"]["nil_f1"] < 0.7  # the background overlaps: some
    assert all(rules[r]["test"]["lang:en"]["f1"] < 0.9 for r in ("model", "cosine", "csls"))
    assert result.nil_rule.score == "learned"
    assert result.test["lang:en"]["f1"] == pytest.approx(learned["f1"])


def test_learned_nil_carries_over_to_a_language_whose_scores_are_all_lower() -> None:
    both = join(margin_case(60, seed=4), margin_case(60, seed=5, lang="xx", shift=-0.25))
    _, _, result = fitted(both)
    rules = result.nil_rules
    assert rules["learned+q"]["test"]["lang:xx"]["f1"] > 0.95 and rules["learned+q"]["test"]["lang:xx"]["nil_f1"] > 0.9
    assert rules["learned+q"]["test"]["lang:xx"]["f1"] >= max(rules[r]["test"]["lang:xx"]["f1"] for r in rules)
    assert rules["model"]["test"]["lang:xx"]["f1"] < 0.5  # English's raw-score threshold: most xx links are NIL


def test_learned_nil_and_its_calibration_read_no_gold_of_the_mentions_they_decide() -> None:
    both = join(margin_case(60, seed=4), margin_case(60, seed=5, lang="xx", shift=-0.25))
    _, _, result = fitted(both)
    poisoned = replace(both, golds=[g or "Q-poison" for g in reversed(both.golds)],
                       gold_pos=torch.full((len(both),), 1), gold_kb=torch.zeros(len(both), dtype=torch.long))
    model, rule = result.model, replace(result.nil_rule, shifts={})
    a, b = rank(model, both), rank(model, poisoned)
    assert torch.equal(a.nil_logit, b.nil_logit) and torch.equal(a.nil_features, b.nil_features)
    ra, rb = rule.calibrated(rule.scored(a, both), both), rule.calibrated(rule.scored(b, poisoned), poisoned)
    assert ra.shifts == rb.shifts and "xx" in ra.shifts
    assert predict(ra.apply(rule.scored(a, both), both), both, rule.threshold) == \
        predict(rb.apply(rule.scored(b, poisoned), poisoned), poisoned, rule.threshold)


def test_nil_features_of_a_mention_do_not_depend_on_the_set_it_is_scored_in() -> None:
    m = margin_case(12, seed=6)
    _, _, result = fitted(m)
    whole = rank(result.model, m)
    for i in (0, 5, 11):
        one = rank(result.model, m.take([i]))
        assert torch.allclose(one.nil_features[0], whole.nil_features[i])
        assert torch.allclose(one.nil_logit[0], whole.nil_logit[i])


def test_nil_features_by_hand() -> None:
    m = margin_case(4, seed=7, k=3)
    m = replace(m, surfaces=["name en7-Q0", "x", "y", "z"])
    scores = torch.tensor([[0.9, 0.5, 0.2], [0.3, 0.9, 0.1], [0.5, float("-inf"), float("-inf")], [0.1, 0.2, 0.3]])
    m = replace(m, cand_mask=torch.isfinite(scores))
    best = torch.tensor([0, 1, 0, 2])
    f = dict(zip(NIL_FEATURES, nil_features(scores, best, m, 0.1).T))
    assert f["margin"].tolist() == pytest.approx([0.4, 0.6, 1.0, 0.1])
    assert f["top_prob"][0] == pytest.approx(float(torch.softmax(scores[0] / 0.1, 0)[0]))
    cos = torch.nn.functional.normalize(m.ms, dim=-1)[:, None, :] @ torch.nn.functional.normalize(
        m.kb.es[m.cand], dim=-1).transpose(1, 2)
    cos = cos.squeeze(1).masked_fill(~m.cand_mask, float("-inf"))
    top_cos = cos.gather(1, best[:, None]).squeeze(1)
    others = [sorted((c for j, c in enumerate(row.tolist()) if j != b and c != float("-inf")), reverse=True)
              for row, b in zip(cos, best.tolist())]
    assert f["cos_margin"].tolist() == pytest.approx([min(1.0, t - o[0]) if o else 1.0
                                                      for t, o in zip(top_cos.tolist(), others)], abs=1e-6)
    ranked = [sorted((c for c in row.tolist() if c != float("-inf")), reverse=True)[1:11] for row in cos]
    assert f["csls"].tolist() == pytest.approx([t - (np.mean(r) if r else 0.0)  # csls's background: 2nd to 11th
                                                for t, r in zip(top_cos.tolist(), ranked)], abs=1e-6)
    assert f["string"][0] == pytest.approx(1.0) and f["string_set"][0] == pytest.approx(1.0)
    assert f["same_name"].tolist() == [0.0] * 4


def test_the_head_changes_no_ranker_weight_and_no_ranking() -> None:
    train = margin_case(64, seed=8)
    states = []
    for nil in ((), NIL_FEATURES):
        torch.manual_seed(0)
        spec = ModelSpec(dim=16, hs_sizes=(8,), hc_sizes=(8,), final_sizes=(8,), dropout=0.3, scorer="residual",
                         feature_groups=("cosines",), nil_features=nil)
        model = build_model(spec)
        trainer = Trainer(model, train, LoopSettings(lr=1e-2, batch_size=8, negatives=3, margin=0.5, loss="softmax"), 0)
        for epoch in range(2):
            trainer.epoch(epoch)
            trainer.fit_nil_head()
        states.append({k: v for k, v in model.state_dict().items() if not k.startswith("nil_head")})
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("nil_score,fits", [("learned", 3), ("csls", 1)])
def test_the_head_is_fitted_each_epoch_only_when_it_decides(monkeypatch, nil_score, fits) -> None:
    """Under another NIL score the head only reports its rows (compare_nil_rules): fitted once, to the chosen
    epoch's ranker, not after every epoch; the learned rows are still reported."""
    calls = []
    real = Trainer.fit_nil_head
    monkeypatch.setattr(Trainer, "fit_nil_head", lambda self: calls.append(1) or real(self))
    train, dev = margin_case(64, seed=1), margin_case(32, seed=2)
    data = Prepared(Splits(train=train, dev=dev, test=margin_case(32, seed=3)), ("en",), ("en",), (), None,
                    train.ms.shape[1])
    cfg = TrainConfig(features="unused", epochs=2, nil_score=nil_score, centre=False, **FAST)
    result = fit(cfg, data, 0, progress=False)
    assert len(calls) == fits  # learned: epochs 0, 1 and 2
    assert ("nil_loss" in result.history[-1]) == (nil_score == "learned")
    assert {"learned", "learned+q"} <= set(result.nil_rules)
    assert float(result.model.nil_head.weight.abs().sum()) > 0  # the saved head is fitted


def test_compare_nil_rules_ranks_once(monkeypatch) -> None:
    import xel.train.evaluate
    import xel.train.fit

    test = margin_case(40, seed=9)
    cfg, data, result = fitted(test)
    calls = []
    real = xel.train.evaluate.rank
    monkeypatch.setattr(xel.train.fit, "rank", lambda *a, **k: calls.append(1) or real(*a, **k))
    dev_base, test_base = rank_sets(result.model, data.splits.dev, test)
    out = compare_nil_rules(cfg, dev_base, data.splits.dev, test_base, test, ("en",))
    assert len(calls) == 2  # dev and test, once each
    assert set(out) == {"off"} | {f"{s}{q}" for s in ("model", "cosine", "csls", "learned") for q in ("", "+q")}
    # "shared" needs hs0 (+A): this run has none, so it is not compared
    assert out == result.nil_rules  # what the run reported, from the same ranking


def test_learned_needs_the_head() -> None:
    m = margin_case(8, seed=10)
    _, _, result = fitted(m, nil_score="csls")
    ranked = rank(result.model, m)
    with pytest.raises(ValueError, match="'learned' needs a model with a learned NIL logit"):
        with_nil_score(replace(ranked, nil_logit=None), m, "learned")


def test_the_shared_nil_score_is_csls_in_hs0_space_by_hand() -> None:
    """``--nil-score shared`` (+A): cos(hs0(ms), hs0(es)) of the best candidate minus the mean of the 2nd to 11th
    best such cosines; a model without hs0 has none, and the rule is refused without --adversarial."""
    m = margin_case(12, seed=11, k=14)
    torch.manual_seed(0)
    spec = ModelSpec(dim=16, hs_sizes=(8,), hc_sizes=(8,), final_sizes=(8,), dropout=0.0, scorer="residual",
                     feature_groups=("cosines",), shared_size=6, languages=("de", "en"))
    model = build_model(spec).eval()
    ranked = rank(model, m, nil_score="shared")
    with torch.no_grad():
        hm = torch.nn.functional.normalize(model.hs0((m.ms - model.name_mean) / model.name_std), dim=-1)
        he = torch.nn.functional.normalize(model.hs0((m.kb.es - model.name_mean) / model.name_std), dim=-1)
    want = []
    for i, best in enumerate(ranked.best_pos.tolist()):
        cos = [float(hm[i] @ he[c]) for c, ok in zip(m.cand[i].tolist(), m.cand_mask[i].tolist()) if ok]
        top = float(hm[i] @ he[m.cand[i, best]])
        want.append(top - np.mean(sorted(cos, reverse=True)[1:11]))
    assert ranked.nil_score.tolist() == pytest.approx(want, abs=1e-5)
    assert not torch.allclose(ranked.nil_score, rank(model, m, nil_score="csls").nil_score)  # another space
    plain = build_model(replace(spec, shared_size=None, languages=())).eval()
    with pytest.raises(ValueError, match="'shared' needs a model with the shared layer hs0"):
        rank(plain, m, nil_score="shared")
    with pytest.raises(ConfigError, match="'shared' only with --adversarial"):
        TrainConfig(features="x", nil_score="shared")


@pytest.mark.parametrize(("changes", "message"), [
    ({"negatives": 5}, "--negatives 5: the residual scorer samples no negatives"),
    ({"temperature": 0.1, "loss": "hinge"}, "--temperature 0.1: the hinge loss has no temperature"),
    ({"temperature": 0.1, "scorer": "paper"}, "which --scorer paper does not train"),
    ({"nil_score": "learned", "scorer": "paper"}, "--nil-score learned: the paper scorer has no learned NIL logit"),
])
def test_flags_the_scorer_would_not_read_are_refused(changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(features="x", **changes)


@pytest.mark.parametrize(("flags", "message"), [
    (["--negatives", "10"], "--negatives 10: the residual scorer samples no negatives"),
    (["--temperature", "0.05", "--loss", "hinge"], "--temperature 0.05: the hinge loss has no temperature"),
    (["--scorer", "paper", "--temperature", "0.05"], "--temperature 0.05: the hinge loss has no temperature"),
])
def test_xel_train_refuses_an_unread_flag_even_at_its_default(tmp_path, flags, message) -> None:
    result = CliRunner().invoke(main, ["--features", str(tmp_path / "none"), "--out", str(tmp_path / "run"), *flags])
    assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_xel_train_with_the_learned_nil_saves_its_rule(tmp_path) -> None:
    import json

    store = synthetic_store(tmp_path / "s", langs={"en": 80, "de": 30})
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["--features", str(store), "--out", str(out), "--epochs", "1",
                                       "--nil-score", "learned", "--no-plots", "--threads", "1"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nil_rule"]["score"] == "learned"
    assert {"learned", "learned+q", "csls+q"} <= set(metrics["nil_rules"])


@pytest.mark.ray
@pytest.mark.slow
def test_the_linker_reproduces_a_learned_nil_run(tmp_path, capital_run, monkeypatch) -> None:
    """``xel-link`` decides NIL with the learned logit exactly as the trainer's evaluation did: same predictions and
    scores, the saved rule with its calibration (the features are computed per mention, from the linker's own
    candidates, names and mention strings). Trained on the session's capital-cities store (``tests/conftest.py``)."""
    import json

    from xel.link.linker import Linker
    from xel.precompute.store import open_store
    from xel.retrieval.files import read_predictions
    from xel.train import nil as train_nil
    from xel.train.run import run as run_train

    root = capital_run.parent.parent  # h5, index, candidates
    out = tmp_path / "train" / "en"
    monkeypatch.setattr(train_nil, "MIN_CALIBRATION_MENTIONS", 3)
    run_train(TrainConfig(features=str(root / "h5"), candidates=str(root / "candidates" / "candidates.jsonl"),
                          out=str(out), train_lang=("en",), epochs=2, tune_nil=True, plots=False, progress=False,
                          threads=1, nil_score="learned"))
    by_id = {r["id"]: r for r in open_store(str(root / "h5")).records("mentions")}
    preds = {p["id"]: p for p in read_predictions(out / "predictions.jsonl")}
    items = [{k: by_id[m][k] for k in ("id", "sentence", "start", "end", "lang", "context")} for m in preds]
    linker = Linker.load(out)
    assert linker.nil_rule.score == "learned" and set(linker.nil_rule.shifts) == {"de"}
    assert json.loads((out / "metrics.json").read_text())["nil_rule"]["score"] == "learned"
    links = linker.link(items, k=100)
    assert [x.pred for x in links] == [preds[x.id]["pred"] for x in links]
    assert [x.score for x in links] == pytest.approx([preds[x.id]["score"] for x in links], abs=1e-5)
    one = [linker.link([it], k=100)[0].pred for it in items[:5]]  # a batch of one decides as the whole set
    assert one == [x.pred for x in links[:5]]


def test_the_linker_reproduces_a_run_with_the_names_features(tmp_path, capital_run) -> None:
    """A run that reads the ``names`` pair features (cos(mn, es), cos(mn, ec)): ``Linker`` encodes each mention
    string alone as precompute's ``mn`` kind does, and links as the trainer's evaluation did, in a set and one by
    one."""
    from xel.link.linker import Linker
    from xel.precompute.store import open_store
    from xel.retrieval.files import read_predictions
    from xel.train.run import run as run_train

    root = capital_run.parent.parent
    out = tmp_path / "names"
    run_train(TrainConfig(features=str(root / "h5"), candidates=str(root / "candidates" / "candidates.jsonl"),
                          out=str(out), train_lang=("en",), epochs=2, tune_nil=True, plots=False, progress=False,
                          threads=1, feature_groups=("cosines", "prior", "string", "names")))
    by_id = {r["id"]: r for r in open_store(str(root / "h5")).records("mentions")}
    preds = {p["id"]: p for p in read_predictions(out / "predictions.jsonl")}
    items = [{k: by_id[m][k] for k in ("id", "sentence", "start", "end", "lang", "context")} for m in preds]
    linker = Linker.load(out)
    assert linker.mention_kinds == ("ms", "mc", "mn") and Linker.load(capital_run).mention_kinds == ("ms", "mc")
    links = linker.link(items, k=100)
    assert [x.pred for x in links] == [preds[x.id]["pred"] for x in links]
    assert [x.score for x in links] == pytest.approx([preds[x.id]["score"] for x in links], abs=1e-5)
    assert [linker.link([it], k=100)[0].score for it in items[:4]] == pytest.approx([x.score for x in links[:4]],
                                                                                     abs=1e-5)
    ms, mc, mn = linker.encode(linker.items(items[:3]))
    stored = open_store(str(root / "h5"))
    ids, rows, _ = stored.load("mn")
    np.testing.assert_array_equal(mn, rows[[ids.index(it["id"]) for it in items[:3]]])
