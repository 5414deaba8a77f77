"""Split mentions into train / dev / test for ``xel-train``, and equalise training languages (paper §6).

* Different stores (``--eval-features``): train and dev come from the training store's ``--train-lang``
  mentions, test is every ``--eval-lang`` mention of the evaluation store.
* One store: mentions of a language that is evaluated but not trained on all go to test; for a language that
  is both, a seeded ``--test-fraction`` of its mentions is held out as test, so no test mention is trained on.
* Dev: a seeded ``--dev-fraction`` of the remaining training mentions, for epoch selection, ``--tune-nil``
  and the search. Dev and test keep NIL mentions and mentions whose gold is missing from the candidates.
* ``--equalize`` downsamples every training language to the size of the smallest one; ``--train-size N``
  downsamples every training language to N (and implies equalising). Both seeded.

Splits use the base ``--seed`` only, so ``--seeds 3`` trains three models on the same data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from train.data import DataError, Mentions

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
    n = len(train_pool)
    order = _perm(n, seed).tolist()
    train_rows: list[int] = []
    test_rows: list[int] = []
    if test_pool is None:
        seen: dict[str, int] = {}
        totals: dict[str, int] = {}
        for r in order:
            totals[train_pool.langs[r]] = totals.get(train_pool.langs[r], 0) + 1
        for r in order:
            lang = train_pool.langs[r]
            in_train, in_eval = lang in train_langs, lang in eval_langs
            if in_eval and (not in_train or seen.get(lang, 0) < round(test_fraction * totals[lang])):
                test_rows.append(r)
                seen[lang] = seen.get(lang, 0) + 1
            elif in_train:
                train_rows.append(r)
        test = train_pool.take(sorted(test_rows))
    else:
        train_rows = [r for r in order if train_pool.langs[r] in train_langs]
        test = test_pool
    n_dev = round(dev_fraction * len(train_rows))
    dev_rows, train_rows = sorted(train_rows[:n_dev]), sorted(train_rows[n_dev:])
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
