"""Split mentions into train / dev / test for ``xel-train``, and equalise training languages (paper §6);
:func:`load_splits`: the stores of a run and their splits, which a training run and the linker share.

* Different stores (``--eval-features``): train and dev come from the training store's ``--train-lang``
  mentions, test is every ``--eval-lang`` mention of the evaluation store.
* One store: mentions of a language that is evaluated but not trained on all go to test; for a language that
  is both, ``--test-fraction`` of its documents are held out as test, so no test mention is trained on.
* Dev: ``--dev-fraction`` of the remaining training documents, for epoch selection, ``--tune-nil`` and the
  search. Dev and test keep NIL mentions and mentions whose gold is missing from the candidates.
* Buckets are drawn per document by :func:`retrieval.splits.split_of` (a hash of the document id): mentions of
  one document never straddle splits, and adding other languages or documents never moves a mention.
* ``--equalize`` downsamples every training language to the size of the smallest one; ``--train-size N``
  downsamples every training language to N (and implies equalising). Both seeded.

Splits do not depend on the seed, so ``--seeds 3`` trains three models on the same data.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from xel.precompute.store import Store, open_store
from xel.retrieval.splits import split_of
from xel.train.centre import language_means, with_centres
from xel.train.config import TrainConfig
from xel.train.data import KB, DataError, Mentions, check_stores, load_mentions, popularity_features

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    train: Mentions
    dev: Mentions | None
    test: Mentions


def _perm(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def equalize(rows: list[int], langs: list[str], size: int | None, seed: int) -> list[int]:
    """Keep ``size`` (default: the smallest language's count) seeded random rows of each language."""
    by_lang: dict[str, list[int]] = {}
    for r in rows:
        by_lang.setdefault(langs[r], []).append(r)
    target = size if size is not None else min(len(v) for v in by_lang.values())
    small = {k: len(v) for k, v in by_lang.items() if len(v) < target}
    if small:
        raise DataError(f"--train-size {target}: training languages {small} have fewer mentions; allowed <= "
                        f"{min(len(v) for v in by_lang.values())}")
    kept: list[int] = []
    for i, lang in enumerate(sorted(by_lang)):
        group = by_lang[lang]
        kept.extend(group[j] for j in _perm(len(group), seed + 7919 * (i + 1))[:target].tolist())
    log.info("equalised training languages to %d mentions each (%s)", target, sorted(by_lang))
    return sorted(kept)


def make_splits(
    train_pool: Mentions,
    test_pool: Mentions | None,
    *,
    train_langs: tuple[str, ...],
    eval_langs: tuple[str, ...],
    dev_fraction: float,
    test_fraction: float,
    equalize_langs: bool,
    train_size: int | None,
    seed: int,
) -> Splits:
    """``test_pool`` is the evaluation store's mentions, or None when train and test share ``train_pool``."""
    train_rows: list[int] = []
    dev_rows: list[int] = []
    test_rows: list[int] = []
    for r, (lang, doc) in enumerate(zip(train_pool.langs, train_pool.docs)):
        in_train, in_eval = lang in train_langs, test_pool is None and lang in eval_langs
        if not in_train:
            if in_eval:
                test_rows.append(r)
            continue
        bucket = split_of(doc, test_fraction=test_fraction, dev_fraction=dev_fraction, has_test=in_eval)
        {"train": train_rows, "dev": dev_rows, "test": test_rows}[bucket].append(r)
    test = train_pool.take(test_rows) if test_pool is None else test_pool
    if equalize_langs or train_size is not None:
        train_rows = equalize(train_rows, train_pool.langs, train_size, seed)
    if not train_rows:
        raise DataError(f"no training mentions left in languages {list(train_langs)}; check --train-lang, "
                        "--dev-fraction and --test-fraction")
    if len(test) == 0:
        raise DataError(f"no evaluation mentions in languages {list(eval_langs)}; check --eval-lang")
    train = train_pool.take(train_rows)
    if len(train.trainable()) == 0:
        raise DataError("no training mention has its gold among its candidates, so there is nothing to learn; "
                        "check the candidates file")
    dev = train_pool.take(dev_rows) if dev_rows else None
    log.info("splits: %d train (%d in the loss), %d dev, %d test", len(train), len(train.trainable()),
             len(dev) if dev else 0, len(test))
    return Splits(train=train, dev=dev, test=test)


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
    centres: dict[str, torch.Tensor]  # language -> [2, D] mean ms and mc (train.centre); empty without --centre


def check_has_mn(stores: list[Store]) -> None:
    """The ``names`` feature group reads the ``mn`` kind, which stores made before it existed lack: refused with
    the command that adds it."""
    for store in stores:
        if "mn" not in store.kinds:
            raise DataError(
                f"{store.root}: no 'mn' features (the mention strings encoded alone), which the 'names' feature "
                f"group reads; the store holds {sorted(store.kinds)} (made before mn existed). Rerun xel-precompute "
                "with the same --data and --out to add them (the other kinds are kept, nothing else is encoded "
                "again), or leave 'names' out of --feature-groups")


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
    names = cfg.scorer_kind.pair_features and "names" in cfg.feature_groups
    if names:
        check_has_mn([train_store] if same else [train_store, eval_store])
    train_pool = load_mentions(train_store, langs=pool_langs, candidates=cfg.candidates,
                               max_candidates=cfg.max_candidates, names=names, **kb_args)
    test_pool = None
    if not same:
        test_pool = load_mentions(eval_store, langs=eval_langs, candidates=cfg.eval_candidates,
                                  max_candidates=cfg.max_candidates, names=names, **kb_args)
    means: dict[str, torch.Tensor] = {}
    if cfg.centres:
        means = language_means([train_pool] + ([] if test_pool is None else [test_pool]))
        train_pool = with_centres(train_pool, means)
        test_pool = None if test_pool is None else with_centres(test_pool, means)
    splits = make_splits(
        train_pool, test_pool, train_langs=train_langs, eval_langs=eval_langs, dev_fraction=cfg.dev_fraction,
        test_fraction=cfg.test_fraction, equalize_langs=cfg.equalize, train_size=cfg.train_size, seed=cfg.seed,
    )
    if cfg.popularity and cfg.popularity_source == "mentions":
        splits = with_mention_popularity(splits)
    return Loaded(train_store, eval_store, splits, train_langs, eval_langs, means)


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
