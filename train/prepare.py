"""The trainer's data: the splits of a :class:`TrainConfig` (:func:`train.splits.load_splits`, which the linker
shares) with the residual scorer's pair features and +A's text, that one or many training runs share."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from xel.retrieval.splits import DEV_FRACTION, TEST_FRACTION
from xel.train.config import TrainConfig
from xel.train.data import DataError, Mentions
from xel.train.pairs import pair_columns, pair_features, pair_groups, training_prior
from xel.train.splits import Splits, load_splits
from xel.train.text import LanguageText, adversarial_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    splits: Splits
    train_langs: tuple[str, ...]
    eval_langs: tuple[str, ...]
    l2_langs: tuple[str, ...]
    text: LanguageText | None
    dim: int
    centres: dict[str, torch.Tensor] = field(default_factory=dict)  # train.splits.Loaded.centres


def check_candidates_split(cfg: TrainConfig) -> None:
    """Refuse training-store candidates whose alias prior counted another split than this run's: ``xel-nn
    candidates`` records its ``--dev-fraction``/``--test-fraction`` in the ``config.json`` beside
    ``candidates.jsonl``; with other fractions here, dev or test golds would have fed the prior. A file without
    that record (an older xel's, or none beside it) counted the default split: accepted with a warning."""
    path = Path(cfg.candidates) if cfg.candidates else Path(cfg.features) / "candidates.jsonl"
    if not path.is_file():
        return  # no candidates file: the mentions' own candidates, or load_mentions reports what is missing
    config_file = path.parent / "config.json"
    recorded: dict = {}
    if config_file.is_file():
        try:
            recorded = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{config_file}: unreadable ({e}); it should be the config.json xel-nn candidates "
                            f"wrote beside {path.name}") from None
    if not isinstance(recorded, dict) or "dev_fraction" not in recorded or "test_fraction" not in recorded:
        log.warning("%s: no split fractions recorded beside it (written by an older xel-nn candidates); its alias "
                    "prior is taken to count the training documents of the default split (--dev-fraction %g "
                    "--test-fraction %g)", path, DEV_FRACTION, TEST_FRACTION)
        return
    try:
        dev, test = float(recorded["dev_fraction"]), float(recorded["test_fraction"])
    except (TypeError, ValueError):
        raise DataError(f"{config_file}: dev_fraction {recorded['dev_fraction']!r} / test_fraction "
                        f"{recorded['test_fraction']!r}; numbers are required (rerun xel-nn candidates)") from None
    if not (math.isclose(dev, cfg.dev_fraction) and math.isclose(test, cfg.test_fraction)):
        raise DataError(
            f"{path}: its alias prior counted the training documents of --dev-fraction {dev:g} --test-fraction "
            f"{test:g} ({config_file}), this run splits with --dev-fraction {cfg.dev_fraction:g} --test-fraction "
            f"{cfg.test_fraction:g}, so held-out golds would feed the prior; pass --dev-fraction {dev:g} "
            f"--test-fraction {test:g} to xel-train, or rerun xel-nn candidates with --dev-fraction "
            f"{cfg.dev_fraction:g} --test-fraction {cfg.test_fraction:g}")


def prepare(cfg: TrainConfig) -> Prepared:
    check_candidates_split(cfg)
    loaded = load_splits(cfg)
    train_store, eval_store, splits = loaded.train_store, loaded.eval_store, loaded.splits
    train_langs, eval_langs = loaded.train_langs, loaded.eval_langs
    reached = len(splits.train.kb.ids)
    if reached < 2:  # checked before the run directory is made, so a refused run leaves nothing behind
        raise DataError(f"{train_store.root}: the training mentions' candidates and golds reach {reached} KB "
                        f"entr{'y' if reached == 1 else 'ies'}; allowed: at least 2 (the ranker learns from "
                        "negatives: other entries); add entries to kb.jsonl and rerun xel-precompute, or give more "
                        "candidates (--candidates)")
    if cfg.scorer_kind.pair_features:
        splits = with_pair_features(splits, cfg)
    l2_langs = tuple(x for x in eval_langs if x not in train_langs)
    text = None
    if cfg.adversarial:
        text = adversarial_text(train_store, eval_store, splits.train, splits.test, train_langs, l2_langs)
    elif l2_langs:  # the language probe (train.probe) reports on every model when there is an L2 language
        try:
            text = adversarial_text(train_store, eval_store, splits.train, splits.test, train_langs, l2_langs)
        except DataError as e:
            log.info("no language probe: %s", e)
    return Prepared(splits, train_langs, eval_langs, l2_langs, text, train_store.dim, loaded.centres)


def with_pair_features(splits: Splits, cfg: TrainConfig) -> Splits:
    """The residual scorer's pair features (:mod:`train.pairs`) for every split, the prior from train only."""
    groups = pair_groups(cfg)
    prior = training_prior(splits.train)

    def add(m: Mentions | None, own_link_out: bool = False) -> Mentions | None:
        return None if m is None else replace(m, pair=pair_features(m, prior, groups, own_link_out))

    log.info("pair features: %s", pair_columns(groups))
    return Splits(train=add(splits.train, True), dev=add(splits.dev), test=add(splits.test))
