"""Load the stores named by a :class:`TrainConfig` into the in-memory data one or many training runs share."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from xel.precompute.store import Store, open_store
from xel.retrieval.splits import DEV_FRACTION, TEST_FRACTION
from xel.train.config import TrainConfig
from xel.train.data import KB, DataError, Mentions, check_stores, load_mentions, popularity_features
from xel.train.pairs import PAIR_GROUPS, pair_columns, pair_features, training_prior
from xel.train.splits import Splits, make_splits
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


def _langs(store: Store) -> list[str]:
    return sorted({str(r["lang"]) for r in store.records("mentions")})


def _pick(asked: tuple[str, ...], present: list[str], flag: str, store: Store) -> tuple[str, ...]:
    unknown = [x for x in asked if x not in present]
    if unknown:
        raise DataError(f"{flag} {','.join(asked)}: {unknown} have no mentions in {store.root}; it holds {present}")
    return tuple(asked)


@dataclass(frozen=True)
class Loaded:
    """The stores of a :class:`TrainConfig` and their splits, before the residual scorer's pair features."""

    train_store: Store
    eval_store: Store
    splits: Splits
    train_langs: tuple[str, ...]
    eval_langs: tuple[str, ...]


def load_splits(cfg: TrainConfig) -> Loaded:
    """Open the stores, load the mentions and the KB rows of their candidates and golds (never the whole KB),
    split them, and count +P from mentions when asked: what a training run and a :class:`link.linker.Linker` of
    it share."""
    train_store = open_store(cfg.features)
    same = cfg.eval_features is None or Path(cfg.eval_features).resolve() == Path(cfg.features).resolve()
    eval_store = train_store if same else open_store(cfg.eval_features)
    if not same:
        check_stores(train_store, eval_store)
    present = _langs(train_store)
    default_train = ("en",) if "en" in present else tuple(present)
    train_langs = _pick(cfg.train_lang or default_train, present, "--train-lang", train_store)
    eval_langs = _pick(cfg.eval_lang or tuple(_langs(eval_store)), _langs(eval_store), "--eval-lang", eval_store)
    log.info("training languages %s, evaluation languages %s", list(train_langs), list(eval_langs))
    kb_args = {"popularity": cfg.popularity and cfg.popularity_source == "links",
               "popularity_missing": cfg.popularity_missing}
    pool_langs = tuple(sorted(set(train_langs) | (set(eval_langs) if same else set())))
    train_pool = load_mentions(train_store, langs=pool_langs, candidates=cfg.candidates,
                               max_candidates=cfg.max_candidates, **kb_args)
    test_pool = None
    if not same:
        test_pool = load_mentions(eval_store, langs=eval_langs, candidates=cfg.eval_candidates,
                                  max_candidates=cfg.max_candidates, **kb_args)
    splits = make_splits(
        train_pool, test_pool, train_langs=train_langs, eval_langs=eval_langs, dev_fraction=cfg.dev_fraction,
        test_fraction=cfg.test_fraction, equalize_langs=cfg.equalize, train_size=cfg.train_size, seed=cfg.seed,
    )
    if cfg.popularity and cfg.popularity_source == "mentions":
        splits = with_mention_popularity(splits)
    return Loaded(train_store, eval_store, splits, train_langs, eval_langs)


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
    return Prepared(splits, train_langs, eval_langs, l2_langs, text, train_store.dim)


def _with_kb(mentions: Mentions, kb: KB) -> Mentions:
    return replace(mentions, kb=kb)


def training_link_counts(splits: Splits) -> Counter[str]:
    """How often each KB id is the gold of a training-split mention (``--popularity-source mentions``)."""
    return Counter(g for g in splits.train.golds if g is not None)


def mention_popularity(ids: list[str], counts: Counter[str]) -> np.ndarray:
    """+P of the KB entries ``ids`` from training-mention link counts: ``count / median`` of the entries linked
    at least once (every such entry is a training gold, so any ``ids`` that hold the golds give the same
    median), and the missing flag where never linked."""
    return popularity_features([counts.get(k) for k in ids], "median", "training mentions")


def with_mention_popularity(splits: Splits) -> Splits:
    """+P from gold links among the training split's mentions (``--popularity-source mentions``): each KB entry
    gets ``count / median`` of the entries linked at least once, and the missing flag where it was never linked.
    A training mention's own link is left out of its own pair features (:func:`train.pairs.pair_features`):
    without that, every training gold looks popular by construction, and the residual scorer learned "linked
    once = gold" (on the sample every seed then fell back to epoch 0)."""
    counts = training_link_counts(splits)

    def kb_of(m: Mentions) -> KB:
        return replace(m.kb, popularity=torch.from_numpy(mention_popularity(m.kb.ids, counts)),
                       link_counts=tuple(counts.get(k) for k in m.kb.ids))

    train_kb = kb_of(splits.train)
    test_kb = train_kb if splits.test.kb is splits.train.kb else kb_of(splits.test)
    return Splits(train=_with_kb(splits.train, train_kb),
                  dev=None if splits.dev is None else _with_kb(splits.dev, train_kb),
                  test=_with_kb(splits.test, test_kb))


def pair_groups(cfg: TrainConfig) -> list[str]:
    """The :mod:`train.pairs` groups the residual scorer of ``cfg`` reads, in its order."""
    return [g for g in cfg.feature_groups if g in PAIR_GROUPS] + (["popularity"] if cfg.popularity else [])


def with_pair_features(splits: Splits, cfg: TrainConfig) -> Splits:
    """The residual scorer's pair features (:mod:`train.pairs`) for every split, the prior from train only."""
    groups = pair_groups(cfg)
    prior = training_prior(splits.train)

    def add(m: Mentions | None, own_link_out: bool = False) -> Mentions | None:
        return None if m is None else replace(m, pair=pair_features(m, prior, groups, own_link_out))

    log.info("pair features: %s", pair_columns(groups))
    return Splits(train=add(splits.train, True), dev=add(splits.dev), test=add(splits.test))
