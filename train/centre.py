"""Per-language centring of the mention features (``xel-train --centre``): each mention's ``ms``/``mc`` minus the
mean over its language's mentions, each entity's ``es``/``ec`` minus its KB's mean.

Multilingual encoders put a language-specific offset into every vector (Libovický et al., 2020, "On the language
neutrality of pre-trained multilingual representations"); removing each language's mean makes cosines across
languages comparable. The means come from the mentions' features only, never from a gold (zero-shot allows
unlabelled target-language mentions, as the NIL calibration of :mod:`train.nil` does): a language's mean is that of
every mention of it that the run loads (its training store's when it has any, else its evaluation store's), and
is saved with the run (the model's ``language_means`` buffer, in its checkpoint) so that
:class:`link.linker.Linker` centres a mention as the trainer's evaluation did. A language the run has no mean for
is centred by the linker from the mentions it is given (:meth:`link.linker.Linker.centre_languages`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from xel.precompute.store import Store
from xel.train.data import KB, Mentions, Moments, kind_moments


def language_means(pools: Sequence[Mentions]) -> dict[str, torch.Tensor]:
    """Language -> ``[2, D]`` mean ``ms`` and ``mc`` of that language's mentions, from the first of ``pools`` that
    has the language; reads features only."""
    means: dict[str, torch.Tensor] = {}
    for pool in pools:
        for lang in sorted(set(pool.langs) - set(means)):
            rows = torch.tensor([i for i, x in enumerate(pool.langs) if x == lang])
            means[lang] = torch.stack([pool.ms[rows].mean(dim=0), pool.mc[rows].mean(dim=0)])
    return means


def kb_mean(kb: KB) -> torch.Tensor:
    """``[2, D]`` mean ``es`` and ``ec`` over every KB row (its :class:`Moments` when loaded by store), else over
    the rows in memory."""
    es, ec = kb.moments if kb.moments is not None else (Moments.of(kb.es), Moments.of(kb.ec))
    return torch.stack([es.mean_std()[0], ec.mean_std()[0]])


def store_kb_mean(store: Store) -> torch.Tensor:
    """``[2, D]`` mean ``es`` and ``ec`` over every KB row of ``store``, one shard in memory at a time (what
    :func:`kb_mean` gives for a KB that :func:`train.data.load_kb` read from it)."""
    return torch.stack([kind_moments(store, kind).mean_std()[0] for kind in ("es", "ec")])


def with_centres(mentions: Mentions, means: dict[str, torch.Tensor], kb_centre: torch.Tensor | None = None
                 ) -> Mentions:
    """``mentions`` with each row's language mean (``centre`` [M, 2, D]) and its KB's mean (``kb.centre``)."""
    missing = sorted(set(mentions.langs) - set(means))
    if missing:
        raise ValueError(f"no mention mean for language(s) {missing}; have {sorted(means)}")
    dim = mentions.ms.shape[1]
    rows = torch.stack([means[x] for x in mentions.langs]) if len(mentions) else torch.zeros((0, 2, dim))
    if kb_centre is None:
        kb_centre = mentions.kb.centre if mentions.kb.centre is not None else kb_mean(mentions.kb)
    return replace(mentions, centre=rows, kb=replace(mentions.kb, centre=kb_centre))


def offsets(mentions: Mentions, rows: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """What the scorer subtracts for mentions ``rows``: ``([B, 2, D] language means, [2, D] KB mean)``, or None
    for mentions without centres."""
    if mentions.centre is None:
        return None
    return mentions.centre[rows], mentions.kb.centre

