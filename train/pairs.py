"""Pair features of the residual scorer: per (mention, candidate) numbers the frozen vectors do not carry.

Computed once per mention set, as a ``[M, K, F]`` tensor beside the candidates (``Mentions.pair``); the scorer
(:mod:`train.residual`) concatenates them with its vector features. Groups (each can be switched off with
``--feature-groups``; ``popularity`` is +P):

* ``retrieval``: ``1 / (1 + rank)`` in the candidate list, and one-hot flags of the source that proposed it
  (prior, dense, n-gram);
* ``prior``: the alias prior ``P(e | mention string)`` counted over the **training split only** (leave-one-out
  for a training mention itself), and whether the mention string equals the entity name exactly or after
  normalisation (:func:`retrieval.candidates.normalise_mention`);
* ``string``: similarity of the mention string and the entity name after transliteration to Latin script
  (``anyascii``: "Москва" -> "Moskva", "München" -> "Munchen"), by ``rapidfuzz``: ratio, token-set ratio,
  partial ratio (each / 100), and exact equality after transliteration;
* ``popularity``: ``log1p(links / median)`` and a missing-count flag (:func:`train.data.popularity_features`);
* ``names``: cos(mn, es) and cos(mn, ec), ``mn`` the mention string encoded alone, as the names are (the store's
  ``mn`` kind): a name compared with a name, where ``ms`` (the mention in its sentence) is compared with a name
  out of any sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from rapidfuzz import fuzz
from xel.retrieval.candidates import AliasPrior, MentionRef
from xel.retrieval.files import CANDIDATE_SOURCES
from xel.retrieval.names import latin, normalise_mention
from xel.train.config import TrainConfig
from xel.train.data import Mentions

GROUP_COLUMNS: dict[str, tuple[str, ...]] = {
    "retrieval": ("inverse_rank", "source_prior", "source_dense", "source_ngram"),
    "prior": ("alias_prior", "name_exact", "name_normalised"),
    "string": ("translit_ratio", "translit_token_set", "translit_partial", "translit_equal"),
    "popularity": ("log_popularity", "popularity_missing"),
    "names": ("name_cos", "name_context_cos"),
}
PAIR_GROUPS = tuple(GROUP_COLUMNS)


@lru_cache(maxsize=1_000_000)
def transliterate(text: str) -> str:
    """Latin-script, case-folded, punctuation-free form of ``text`` for string comparison."""
    return latin(text)


def string_similarity(mention: str, name: str) -> tuple[float, float, float, float]:
    """(ratio, token-set ratio, partial ratio, equal) of the transliterated strings, each in [0, 1]."""
    a, b = transliterate(mention), transliterate(name)
    if not a or not b:
        return 0.0, 0.0, 0.0, 0.0
    return (fuzz.ratio(a, b) / 100.0, fuzz.token_set_ratio(a, b) / 100.0, fuzz.partial_ratio(a, b) / 100.0,
            float(a == b))


def training_prior(train: Mentions) -> AliasPrior:
    """The alias prior over the training split's mentions with a gold (every language trained on)."""
    refs = [MentionRef(id=i, lang="train", surface=s, gold=g, given=None)
            for i, s, g in zip(train.ids, train.surfaces, train.golds)]
    return AliasPrior(refs, "train")


def pair_columns(groups: Sequence[str]) -> list[str]:
    return [c for g in PAIR_GROUPS if g in groups for c in GROUP_COLUMNS[g]]


def pair_features(
    mentions: Mentions, prior: AliasPrior, groups: Sequence[str], own_link_out: bool = False
) -> torch.Tensor:
    """``[M, K, F]`` float32 features of every (mention, candidate) pair for the ``groups`` asked for, in the
    order of :func:`pair_columns`; padded candidates get zeros."""
    kb = mentions.kb
    m, k = mentions.cand.shape
    blocks: list[np.ndarray] = []
    cand = mentions.cand.numpy()
    mask = mentions.cand_mask.numpy()
    if "retrieval" in groups:
        block = np.zeros((m, k, 4), dtype=np.float32)
        block[:, :, 0] = 1.0 / (1.0 + np.arange(k))[None, :]
        src = mentions.cand_source.numpy() if mentions.cand_source is not None else np.full((m, k), 1)
        for j, name in enumerate(("prior", "dense", "ngram"), start=1):
            block[:, :, j] = src == CANDIDATE_SOURCES.index(name)
        blocks.append(block)
    if "prior" in groups:
        block = np.zeros((m, k, 3), dtype=np.float32)
        for i in range(m):
            ref = MentionRef(id=mentions.ids[i], lang="train", surface=mentions.surfaces[i],
                             gold=mentions.golds[i], given=None)
            probs = dict(prior.lookup(ref))
            norm = normalise_mention(mentions.surfaces[i])
            for j in np.flatnonzero(mask[i]):
                kb_id, name = kb.ids[cand[i, j]], kb.names[cand[i, j]]
                block[i, j] = (probs.get(kb_id, 0.0), float(mentions.surfaces[i] == name),
                               float(norm == normalise_mention(name)))
        blocks.append(block)
    if "string" in groups:
        block = np.zeros((m, k, 4), dtype=np.float32)
        for i in range(m):
            for j in np.flatnonzero(mask[i]):
                block[i, j] = string_similarity(mentions.surfaces[i], kb.names[cand[i, j]])
        blocks.append(block)
    if "popularity" in groups:
        pop = kb.popularity.numpy()
        block = np.zeros((m, k, 2), dtype=np.float32)
        if pop.shape[1]:
            block[:, :, 0] = np.log1p(pop[cand, 0])
        if pop.shape[1] > 1:
            block[:, :, 1] = pop[cand, 1]
        if own_link_out and kb.link_counts is not None:  # training mentions: counts without their own link
            counts = np.array([c or 0 for c in kb.link_counts], dtype=np.float64)
            known = counts[counts > 0]
            median = float(np.median(known)) if len(known) else 1.0
            gold = mentions.gold_kb.numpy()
            own = (cand == gold[:, None]) & (gold[:, None] >= 0)
            rest = counts[cand] - 1
            block[:, :, 0] = np.where(own, np.log1p(np.where(rest > 0, rest / median, 1.0)), block[:, :, 0])
            block[:, :, 1] = np.where(own, (rest <= 0).astype(np.float32), block[:, :, 1])
        blocks.append(block * mask[:, :, None])
    if "names" in groups:
        if mentions.mn is None:
            raise ValueError("the names pair features need the mentions' mn rows (Mentions.mn)")
        mn = torch.nn.functional.normalize(mentions.mn, dim=-1)
        es = torch.nn.functional.normalize(kb.es, dim=-1)[mentions.cand]
        ec = torch.nn.functional.normalize(kb.ec, dim=-1)[mentions.cand]
        block = torch.stack([(es * mn[:, None, :]).sum(-1), (ec * mn[:, None, :]).sum(-1)], dim=-1)
        blocks.append(block.numpy().astype(np.float32))
    if not blocks:
        return torch.zeros((m, k, 0))
    return torch.from_numpy(np.concatenate(blocks, axis=2) * mask[:, :, None])


def pair_groups(cfg: TrainConfig) -> list[str]:
    """The :mod:`train.pairs` groups the residual scorer of ``cfg`` reads, in its order."""
    return [g for g in cfg.feature_groups if g in PAIR_GROUPS] + (["popularity"] if cfg.popularity else [])
