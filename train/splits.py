"""Split mentions into train / dev / test for ``xel-train``, and equalise training languages (paper §6).

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
from dataclasses import dataclass

import torch
from xel.retrieval.splits import split_of
from xel.train.data import DataError, Mentions

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
