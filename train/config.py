"""The trainer's one frozen configuration (``xel-train`` flags parse into it) and Table 3's search space."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from xel.train.scorers import SCORERS, Scorer

# Appendix Table 3 of the paper: the random-search space of the ranker.
SEARCH_SPACE: dict[str, list[Any]] = {
    "hc_sizes": [(768,), (512,), (256,), (512, 256)],
    "hs_sizes": [(768,), (512,), (256,), (512, 256)],
    "final_sizes": [(512, 256), (256, 128), (128, 64), (1024, 512), (512,), (256,)],
    "dropout": [0.1, 0.2, 0.5],
    "lr": [1e-5, 5e-4, 1e-4, 5e-3, 1e-3],
}
POPULARITY_MISSING = ("error", "median")
POPULARITY_SOURCES = ("links", "mentions")
LOSSES = ("hinge", "softmax")
ADV_MODES = ("alternating", "grl", "uniform")
NIL_SCORES = ("model", "cosine", "csls", "shared", "learned")
NIL_CALIBRATIONS = ("none", "quantile")
# the residual scorer's input groups (train.residual); each can be switched off for an ablation
FEATURE_GROUPS = ("paper", "cosines", "interactions", "retrieval", "prior", "string", "names")
# the default: the groups that carried over from English to German on the sample (docs/design.md); the
# high-dimensional paper and interactions groups over-fit 1,200 English mentions, and the retrieval group
# (rank, source) learned English-only habits; names (cos(mn, es), cos(mn, ec): the mention string encoded alone
# against the names) ranked better in four of five test sets but moved F1 within seed noise (docs/design.md)
DEFAULT_FEATURE_GROUPS = ("cosines", "prior", "string")


class ConfigError(ValueError):
    """A flag or config value is out of range; the message names it and what is allowed."""


@dataclass(frozen=True)
class TrainConfig:
    features: str
    out: str | None = None
    eval_features: str | None = None
    candidates: str | None = None
    eval_candidates: str | None = None
    train_lang: tuple[str, ...] = ()
    eval_lang: tuple[str, ...] = ()
    # model: "paper" is §2.1's ranker as published; "residual" scores cos(ms, es) + g(pair features), g starting
    # at zero, so before training it predicts exactly as nn (train.residual)
    scorer: str = "residual"
    feature_groups: tuple[str, ...] = DEFAULT_FEATURE_GROUPS
    # model (Table 3)
    hs_sizes: tuple[int, ...] = (256,)
    hc_sizes: tuple[int, ...] = (256,)
    final_sizes: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    # optimisation
    lr: float = 1e-3
    # the experiment's shipped rows train this long (train.experiment takes this default): the residual
    # scorer's dev F1 peaks within the first 5 epochs on the sample, and past 10 the +A runs can drift (a
    # wikidata-el +A seed kept epoch 23 of 30 by English dev, its Russian top-candidate recall 0.31 against the
    # other seeds' 0.61 and 0.64). Batch 32, not 128: 1,000 training mentions at 128 are too few steps an
    # epoch to leave the constant-score solution.
    epochs: int = 10
    batch_size: int = 32
    negatives: int = 10
    margin: float = 0.5
    # "hinge" (paper): margin against the best of --negatives sampled negatives (the paper scorer only; the residual
    # scorer's hinge is against the best other candidate); "softmax": listwise cross-entropy over all candidates of
    # a mention at temperature --temperature (also the learned NIL logit's). Default: the scorer's own (paper:
    # hinge, residual: softmax). A non-default value the run would not read is refused (train.scorers).
    loss: str | None = None
    temperature: float = 0.05
    weight_decay: float = 0.0
    max_candidates: int = 50  # xel-nn candidates: dense top-30 + up to 10 prior + up to 10 n-gram
    # +A (paper §3.1, Algorithm 1)
    adversarial: bool = False
    # "alternating": Algorithm 1 as published (inverted labels, MSE); "grl": a gradient reversal layer, lambda
    # ramped from 0; "uniform": the encoder side is pushed towards a uniform language posterior
    adv_mode: str = "alternating"
    shared_size: int = 256
    lambda_adv: float = 0.01
    adv_steps: int = 5
    adv_epochs: int | None = None
    adv_batch_size: int = 64
    # +P (paper §4.1)
    popularity: bool = False
    popularity_missing: str = "error"
    # "links": the KB's cross-link counts; "mentions": gold links among the training split's mentions
    popularity_source: str = "links"
    # NIL and selection
    nil_threshold: float = -1.0
    # what the threshold is compared with: "model" (the best score; the paper), "cosine" (cos(ms, es) of the best
    # candidate), "csls" (that cosine minus the mention's background similarity, which carries over to other
    # languages and scripts) or "learned" (the best score minus the learned NIL logit, train.nil_logit; residual
    # only); default: the scorer's own (paper: model, residual: csls); see train.evaluate
    nil_score: str | None = None
    # "quantile": shift each untrained language's NIL scores so that their 90th percentile is the training
    # language's (train.nil; from unlabelled mentions); default: the scorer's own (paper: none, residual: quantile)
    nil_calibration: str | None = None
    # per-language centring (train.centre): the scorer sees each mention minus its language's mean and each entity
    # minus its KB's mean; default: the scorer's own (residual: yes, paper: no). --no-centre --epochs 0 is nn
    centre: bool | None = None
    # pick the NIL threshold on dev; None: the scorer's own (residual: yes when there is a dev split; paper: no,
    # the paper's fixed --nil-threshold -1)
    tune_nil: bool | None = None
    dev_fraction: float = 0.1
    test_fraction: float = 0.2
    equalize: bool = False
    train_size: int | None = None
    # runs
    seed: int = 0
    seeds: int = 1
    search: int = 0
    threads: int = 0
    plots: bool = True
    progress: bool = True  # a tqdm bar over epochs (off for runs inside xel-experiment's Ray tasks)
    resume: bool = False  # continue each seed from the resume state in its run directory (train.resume)

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, value: Any, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"--{name.replace('_', '-')} {value!r}: allowed {allowed}")

        for name in ("hs_sizes", "hc_sizes", "final_sizes"):
            sizes = getattr(self, name)
            need(len(sizes) > 0 and all(int(s) > 0 for s in sizes), name, sizes, "one or more positive layer sizes")
        need(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "0 <= p < 1")
        need(self.lr > 0, "lr", self.lr, "> 0")
        need(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        need(self.negatives >= 1, "negatives", self.negatives, ">= 1")
        need(self.margin > 0, "margin", self.margin, "> 0")
        need(self.max_candidates >= 1, "max_candidates", self.max_candidates, ">= 1")
        need(self.shared_size >= 1, "shared_size", self.shared_size, ">= 1")
        need(self.lambda_adv >= 0, "lambda", self.lambda_adv, ">= 0")
        need(self.adv_steps >= 0, "adv_steps", self.adv_steps, ">= 0")
        need(self.adv_epochs is None or self.adv_epochs >= 0, "adv_epochs", self.adv_epochs, ">= 0")
        need(self.adv_batch_size >= 1, "adv_batch_size", self.adv_batch_size, ">= 1")
        need(self.popularity_missing in POPULARITY_MISSING, "popularity_missing", self.popularity_missing,
             f"one of {list(POPULARITY_MISSING)}")
        need(self.scorer in SCORERS, "scorer", self.scorer, f"one of {list(SCORERS)}")
        scorer = self.scorer_kind
        need(self.epochs >= scorer.min_epochs, "epochs", self.epochs,
             f">= {scorer.min_epochs} with --scorer {scorer.name} "
             f"({', '.join(f'{s.name}: >= {s.min_epochs}' for s in SCORERS.values())}; "
             "residual: 0 epochs is the nn baseline)")
        unknown = [g for g in self.feature_groups if g not in FEATURE_GROUPS]
        need(not unknown, "feature_groups", ",".join(self.feature_groups), f"a subset of {list(FEATURE_GROUPS)}")
        need(self.loss is None or self.loss in LOSSES, "loss", self.loss, f"one of {list(LOSSES)}")
        need(self.loss is None or self.loss in scorer.losses, "loss", self.loss,
             f"with --scorer {scorer.name}: one of {list(scorer.losses)} (softmax is listwise over all candidates, "
             "which only the residual scorer trains)")
        need(scorer.pair_features or self.feature_groups == DEFAULT_FEATURE_GROUPS, "feature_groups",
             ",".join(self.feature_groups),
             f"only with --scorer {'/'.join(s.name for s in SCORERS.values() if s.pair_features)} "
             f"(--scorer {scorer.name} reads no feature groups)")
        need(self.temperature > 0, "temperature", self.temperature, "> 0")
        # a value the scorer would not read is refused (one equal to the default is what every config holds);
        # xel-train also refuses such a flag given explicitly (train.cli)
        defaults = {f.name: f.default for f in fields(self)}
        set_values = {name: getattr(self, name) for name in ("negatives", "temperature", "nil_score")
                      if getattr(self, name) != defaults[name]}
        for problem in scorer.unread_flags(self.loss_name, set_values):
            raise ConfigError(problem)
        need(self.nil_score in (None, *NIL_SCORES), "nil_score", self.nil_score, f"one of {list(NIL_SCORES)}")
        need(self.nil_score != "shared" or self.adversarial, "nil_score", self.nil_score,
             "'shared' only with --adversarial (it reads the shared layer hs0)")
        need(self.nil_calibration in (None, *NIL_CALIBRATIONS), "nil_calibration", self.nil_calibration,
             f"one of {list(NIL_CALIBRATIONS)}")
        need(not self.centre or scorer.pair_features, "centre", self.centre,
             f"only with --scorer {'/'.join(s.name for s in SCORERS.values() if s.pair_features)} (the paper "
             "scorer reads the features as published)")
        need(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        need(self.adv_mode in ADV_MODES, "adv_mode", self.adv_mode, f"one of {list(ADV_MODES)}")
        need(self.popularity_source in POPULARITY_SOURCES, "popularity_source", self.popularity_source,
             f"one of {list(POPULARITY_SOURCES)}")
        if scorer.score_range is not None:
            low, high = scorer.score_range
            need(low <= self.nil_threshold <= high, "nil_threshold", self.nil_threshold,
                 f"in [{low:g}, {high:g}] with --scorer {scorer.name} (the range of its scores)")
        need(0.0 <= self.dev_fraction < 1.0, "dev_fraction", self.dev_fraction, "0 <= f < 1")
        need(0.0 < self.test_fraction < 1.0, "test_fraction", self.test_fraction, "0 < f < 1")
        need(self.train_size is None or self.train_size >= 1, "train_size", self.train_size, ">= 1")
        need(self.seeds >= 1, "seeds", self.seeds, ">= 1")
        need(self.search >= 0, "search", self.search, ">= 0")
        need(self.threads >= 0, "threads", self.threads, ">= 0 (0: torch's default)")
        need(not (self.tune_nil and self.dev_fraction == 0), "tune_nil", self.tune_nil,
             "only with --dev-fraction > 0 (the threshold is picked on dev)")
        need(not (self.resume and self.out is None), "resume", self.resume,
             "only with --out (the resume state lives in the run directory)")
        need(not (self.search and self.dev_fraction == 0), "search", self.search,
             "only with --dev-fraction > 0 (trials are ranked by dev F1)")

    @property
    def scorer_kind(self) -> Scorer:
        """The :class:`train.scorers.Scorer` that ``--scorer`` names."""
        return SCORERS[self.scorer]

    @property
    def nil_score_name(self) -> str:
        return self.nil_score or self.scorer_kind.default_nil_score

    @property
    def centres(self) -> bool:
        """Whether the scorer centres each language (:mod:`train.centre`): ``--centre``, else the scorer's default
        (the residual scorer's, the one that reads pair features)."""
        return self.centre if self.centre is not None else self.scorer_kind.pair_features

    @property
    def tunes_nil(self) -> bool:
        """Whether the NIL threshold is picked on dev: ``--tune-nil``, else the scorer's default where a dev
        split exists."""
        if self.tune_nil is not None:
            return self.tune_nil
        return self.scorer_kind.tunes_nil and self.dev_fraction > 0

    @property
    def nil_calibration_name(self) -> str:
        return self.nil_calibration or self.scorer_kind.default_nil_calibration

    @property
    def loss_name(self) -> str:
        return self.loss or self.scorer_kind.default_loss

    def with_(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"config keys {unknown} are unknown; allowed: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
