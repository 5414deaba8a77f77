"""One seeded training run: build the scorer, train for ``--epochs``, evaluate dev and test after each epoch,
and keep the trained epoch with the best dev F1 + dev top-candidate recall, the earliest on a tie (the last epoch
without dev), with its NIL rule (:mod:`train.nil`).

The residual scorer is also evaluated before the first step (epoch 0, where it ranks exactly as nn), reported in
the history, but not kept when there are trained epochs: on the sample's English dev (68 mentions) epoch 0 won
the choice by one mention in 5 of 12 residual runs, although every trained epoch of those runs was better on
test in both languages (the measurement is in docs/design.md). ``--epochs 0`` is nn itself."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from xel.train.checkpoint import clone_state
from xel.train.config import NIL_SCORES, TrainConfig
from xel.train.data import Mentions, standardization
from xel.train.evaluate import Ranked, evaluate, rank, tune_threshold, with_nil_score
from xel.train.loop import LoopSettings, Trainer
from xel.train.model import ModelSpec, Ranker
from xel.train.nil import NilRule, tuned_rule
from xel.train.nil_logit import NIL_FEATURES, NIL_TEMPERATURE
from xel.train.prepare import Prepared
from xel.train.probe import language_probe
from xel.train.residual import VECTOR_GROUPS, build_model
from xel.train.resume import Best, load_resume_state, save_resume_state

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    model: Ranker
    seed: int
    best_epoch: int
    nil_threshold: float
    history: list[dict[str, Any]]
    dev: dict[str, dict[str, float]] | None
    test: dict[str, dict[str, float]]
    test_ranked: Ranked
    probe: dict[str, float] | None = None
    test_langs: list[str] | None = None
    nil_rules: dict[str, Any] | None = None
    nil_rule: NilRule | None = None


RULE_METRICS = ("p", "r", "f1", "nil_p", "nil_r", "nil_f1")
LINK_ALL = -torch.finfo(torch.float32).max  # a threshold every finite score passes (NIL off)


def rank_sets(model: Ranker, dev: Mentions | None, test: Mentions) -> tuple[Ranked | None, Ranked]:
    """dev (None without) and test scored by ``model`` once, before any NIL score (:func:`decide_nil` applies
    one)."""
    return (rank(model, dev) if dev is not None else None), rank(model, test)


def decide_nil(cfg: TrainConfig, dev_base: Ranked | None, dev: Mentions | None, test_base: Ranked,
               test: Mentions, train_langs: tuple[str, ...], score: str | None = None,
               calibration: str | None = None) -> tuple[NilRule, Ranked, Ranked | None]:
    """The NIL rule of a model whose dev and test rankings are ``dev_base`` and ``test_base``
    (:func:`rank_sets`; :mod:`train.nil`): threshold tuned on dev (``--tune-nil``), calibrated on the test
    mentions' languages without their labels; returns it, the test mentions ranked with it, and dev ranked with
    the uncalibrated score."""
    score = score or cfg.nil_score_name
    calibration = calibration or cfg.nil_calibration_name
    threshold = cfg.nil_threshold
    dev_ranked = with_nil_score(dev_base, dev, score) if dev_base is not None and dev is not None else None
    tuned = dev_ranked is not None and cfg.tunes_nil
    if tuned:
        threshold = tune_threshold(dev_ranked, dev)
    rule = tuned_rule(score, threshold, calibration, train_langs, dev_ranked if tuned else None)
    test_ranked = with_nil_score(test_base, test, score)
    rule = rule.calibrated(test_ranked, test)
    return rule, rule.apply(test_ranked, test), dev_ranked


def compare_nil_rules(cfg: TrainConfig, dev_base: Ranked | None, dev: Mentions | None, test_base: Ranked,
                      test: Mentions, train_langs: tuple[str, ...]) -> dict[str, Any]:
    """Test scores of a model ranked once (:func:`rank_sets`) under every NIL score of
    :data:`train.config.NIL_SCORES` it has (``learned`` needs the NIL head), uncalibrated and calibrated
    (``+q``, :mod:`train.nil`), each threshold tuned on dev (the training language's labels, the only ones a
    zero-shot run has), and with NIL off (``off``: the best candidate always linked, so ``r`` is top-candidate
    recall): the same ranking, only the NIL decision differs. Per ``all`` and language group."""

    def keep(scores: dict) -> dict[str, dict[str, float]]:
        return {g: {m: getattr(v, m) for m in RULE_METRICS} for g, v in scores.items()
                if g == "all" or g.startswith("lang:")}

    out: dict[str, Any] = {"off": {"threshold": None, "test": keep(evaluate(test_base, test, LINK_ALL))}}
    if dev_base is None or not cfg.tunes_nil:
        return out
    for score in NIL_SCORES:
        if score == "learned" and test_base.nil_logit is None or score == "shared" and test_base.shared_cos is None:
            continue
        for calibration, name in (("none", score), ("quantile", f"{score}+q")):
            rule, ranked, _ = decide_nil(cfg, dev_base, dev, test_base, test, train_langs, score, calibration)
            out[name] = {"threshold": rule.threshold, "shifts": rule.shifts,
                         "test": keep(evaluate(ranked, test, rule.threshold))}
    return out


def model_spec(cfg: TrainConfig, data: Prepared) -> ModelSpec:
    adversarial = cfg.adversarial
    pairs = cfg.scorer_kind.pair_features  # +P is then a pair feature, not the head's popularity input
    pair = data.splits.train.pair
    return ModelSpec(
        dim=data.dim, hs_sizes=cfg.hs_sizes, hc_sizes=cfg.hc_sizes, final_sizes=cfg.final_sizes,
        dropout=cfg.dropout, popularity_dim=0 if pairs else int(data.splits.train.kb.popularity.shape[1]),
        shared_size=cfg.shared_size if adversarial else None,
        languages=tuple(sorted(set(data.train_langs) | set(data.l2_langs))) if adversarial else (),
        scorer=cfg.scorer,
        feature_groups=tuple(g for g in cfg.feature_groups if g in VECTOR_GROUPS) if pairs else (),
        pair_dim=int(pair.shape[-1]) if pairs and pair is not None else 0,
        nil_features=NIL_FEATURES if cfg.scorer_kind.learns_nil else (),
        nil_temperature=cfg.temperature if cfg.loss_name == "softmax" else NIL_TEMPERATURE,
        centre=cfg.centres, centre_langs=tuple(sorted(data.centres)) if cfg.centres else (),
    )


def _as_dicts(scores: dict) -> dict[str, dict[str, float]]:
    return {k: v.as_dict() for k, v in scores.items()}


def fit(cfg: TrainConfig, data: Prepared, seed: int, progress: bool | None = None,
        run_dir: Path | None = None) -> FitResult:
    """Train seed ``seed``. With ``run_dir`` a resume state is written there after every epoch, and with
    ``cfg.resume`` the run continues after the epoch that state holds (see :mod:`train.resume`)."""
    torch.manual_seed(seed)
    model = build_model(model_spec(cfg, data))
    train = data.splits.train
    model.set_statistics(*standardization(train))
    if model.spec.centre:
        if train.centre is None:
            raise ValueError("--centre: the training mentions carry no language means; load the data with "
                             "train.prepare.prepare (train.splits.load_splits computes them), or pass --no-centre")
        model.set_language_means(data.centres)
    settings = LoopSettings(
        lr=cfg.lr, batch_size=cfg.batch_size, negatives=cfg.negatives, margin=cfg.margin,
        lambda_adv=cfg.lambda_adv, adv_steps=cfg.adv_steps, adv_epochs=cfg.adv_epochs,
        adv_batch_size=cfg.adv_batch_size, loss=cfg.loss_name, temperature=cfg.temperature, adv_mode=cfg.adv_mode,
        weight_decay=cfg.weight_decay, epochs=cfg.epochs,
    )
    trainer = Trainer(model, data.splits.train, settings, seed, data.text, data.train_langs, data.l2_langs)
    dev, test = data.splits.dev, data.splits.test
    history: list[dict[str, Any]] = []
    best: Best | None = None
    start = 0
    if cfg.resume and run_dir is not None:
        point = load_resume_state(run_dir, trainer, cfg, seed)
        if point is not None:
            start, best, history = point.epoch + 1, point.best, point.history
    show = cfg.progress if progress is None else progress

    # the learned NIL head decides the epoch only when it is the run's NIL score; otherwise it is fitted once, to
    # the chosen epoch's ranker (it never changes the ranking), for the learned rows of compare_nil_rules
    head_each_epoch = cfg.nil_score_name == "learned"

    def evaluate_epoch(epoch: int, losses: dict[str, float]) -> None:
        nonlocal best
        nil_loss = trainer.fit_nil_head() if head_each_epoch else None
        dev_base, test_base = rank_sets(model, dev, test)
        rule, test_ranked, dev_ranked = decide_nil(cfg, dev_base, dev, test_base, test, data.train_langs)
        entry: dict[str, Any] = {"epoch": epoch, **losses}
        if nil_loss is not None:
            entry["nil_loss"] = nil_loss
        if dev_ranked is not None:
            entry["dev"] = _as_dicts(evaluate(dev_ranked, dev, rule.threshold))
            entry["dev_top_r"] = evaluate(dev_base, dev, LINK_ALL)["all"].r
        entry["nil_threshold"] = rule.threshold
        entry["nil_rule"] = rule.to_dict()
        entry["test"] = _as_dicts(evaluate(test_ranked, test, rule.threshold))
        entry["tied_top"] = test_ranked.tied_top
        if test_ranked.tied_top > 0.5:
            log.warning("seed %d epoch %d: %.0f%% of test mentions have tied top scores: the ranker has collapsed "
                        "towards a constant", seed, epoch, 100 * test_ranked.tied_top)
        history.append(entry)
        # dev F1 and dev top-candidate recall (NIL off): the NIL threshold alone moves F1 by a mention or two
        # on a small dev set, the ranking is what training changes
        key = entry["dev"]["all"]["f1"] + entry["dev_top_r"] if dev is not None else float(epoch)
        untrained = epoch < first  # the residual scorer's epoch 0: nn, kept only by --epochs 0
        if best is None or (key > best.key and not untrained) or best.epoch < first:
            best = Best(key, epoch, rule.threshold, clone_state(model))
        if run_dir is not None:
            save_resume_state(run_dir, trainer, cfg, seed, epoch, best, history)
        log.info("seed %d epoch %d: loss %.4f dev F1 %s test F1 %.3f", seed, epoch, losses["loss"],
                 f"{entry['dev']['all']['f1']:.3f}" if dev is not None else "-", entry["test"]["all"]["f1"])

    # residual: epoch 0 is the untrained scorer (= nn), evaluated, kept only without training; epochs 1..N train
    first = cfg.scorer_kind.first_trained_epoch
    last = cfg.epochs + first
    if first and start == 0:
        evaluate_epoch(0, {"loss": 0.0, "lang_loss": 0.0, "adv_loss": 0.0})
        start = 1
    for epoch in tqdm(range(start, last), desc=f"train seed {seed}", disable=not show, leave=False,
                      initial=start - first, total=cfg.epochs):
        evaluate_epoch(epoch, trainer.epoch(epoch - first))
    assert best is not None
    model.load_state_dict(best.state, strict=True)
    if not head_each_epoch:
        trainer.fit_nil_head()
    dev_base, test_base = rank_sets(model, dev, test)
    rule, ranked, _ = decide_nil(cfg, dev_base, dev, test_base, test, data.train_langs)
    chosen = next(h for h in history if h["epoch"] == best.epoch)
    probe = None
    if data.text is not None and len(data.text.held_out) >= 2:
        try:
            probe = language_probe(model, data.text, seed)
        except ValueError as e:
            log.info("no language probe: %s", e)
    return FitResult(model, seed, best.epoch, rule.threshold, history, chosen.get("dev"),
                     _as_dicts(evaluate(ranked, test, rule.threshold)), ranked, probe, test.langs,
                     compare_nil_rules(cfg, dev_base, dev, test_base, test, data.train_langs), rule)
