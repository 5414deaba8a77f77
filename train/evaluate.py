"""Score every candidate of a mention set, predict with the NIL threshold, and compute the shared metrics.

A mention is predicted NIL when it has no candidate or its NIL score is below the threshold (paper §5: -1 by
default); otherwise its best-scoring candidate. The NIL score (``--nil-score``) is one of:

* ``model``: the best candidate's score (the paper's rule, the paper scorer's default);
* ``cosine``: cos(ms, es) of the best candidate (nn's rule as the paper's baseline has it);
* ``learned``: the best score minus the learned NIL logit (:mod:`train.nil_logit`; the residual scorer);
* ``csls``: that cosine minus the mention's *background*, the mean cosine of its 2nd to 11th most similar
  candidates (the residual scorer's default). The correction is the mention side of CSLS (Conneau et al.,
  2018, "Word translation without parallel data"): a mention whose script or language differs from the KB's
  names has lower cosines to every entity, right or wrong, so a raw-cosine threshold tuned on English calls
  most of its correct links NIL; the background moves with that shift and the difference does not. It needs
  no target-language data, labelled or not, and is computed per mention, so a batch of one links as the
  whole set does;
* ``shared`` (+A only): ``csls`` in the shared space, cos(hs0(ms), hs0(es)) of the best candidate minus the
  mean of its runner-ups', where the adversary pushes the two languages' name features together.

The model's own score is not the residual scorer's NIL score: features that only English mentions have (an
alias prior, an exact name match) raise its scores of English links, so a threshold tuned on English dev on
those scores would turn correct links in another language into NIL. Metrics come from :mod:`retrieval.metrics`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
import torch
from xel.retrieval.metrics import Scores, score_groups
from xel.train.centre import offsets
from xel.train.data import Mentions
from xel.train.model import Ranker
from xel.train.nil_logit import NIL_FEATURES, nil_features

# how many runner-up candidates make a mention's background similarity (--nil-score csls)
BACKGROUND_K = 10


@dataclass(frozen=True)
class Ranked:
    scores: torch.Tensor  # [M, K], -inf where padded
    best: torch.Tensor  # [M] best score (-inf without candidates)
    best_pos: torch.Tensor  # [M]
    tied_top: float = 0.0  # share of mentions whose best score is shared by several candidates
    tied: torch.Tensor | None = None  # [M] bool: this mention's best score is shared by several candidates
    nil_score: torch.Tensor | None = None  # [M] what the NIL threshold is compared with (default: ``best``)
    nil_logit: torch.Tensor | None = None  # [M] the learned NIL logit (train.nil_logit), for a model with the head
    nil_features: torch.Tensor | None = None  # [M, F] its inputs
    shared_cos: torch.Tensor | None = None  # [M, K] cos(hs0(ms), hs0(es)) of a +A model (-inf where padded)

    @property
    def decision(self) -> torch.Tensor:
        return self.best if self.nil_score is None else self.nil_score

    def tied_by_group(self, langs: list[str]) -> dict[str, float]:
        """Share of tied mentions overall (``all``) and per language (``lang:xx``)."""
        if self.tied is None or not len(langs):
            return {"all": self.tied_top}
        flags = self.tied.tolist()
        out = {"all": sum(flags) / len(flags)}
        for lang in sorted(set(langs)):
            mine = [f for f, x in zip(flags, langs) if x == lang]
            out[f"lang:{lang}"] = sum(mine) / len(mine)
        return out


def context_cosines(mentions: Mentions) -> torch.Tensor:
    """``[M, K]`` cos(mc, ec) of every candidate: the tie-breaker when names (hence ``es``) are identical."""
    kb = mentions.kb
    mc = torch.nn.functional.normalize(mentions.mc, dim=-1)
    ec = torch.nn.functional.normalize(kb.ec, dim=-1)
    return torch.einsum("md,mkd->mk", mc, ec[mentions.cand])


def tie_noise(mention_id: str, kb_id: str) -> float:
    """A fixed pseudo-random number in [0, 1) for a (mention, entity) pair: the last tie-breaker. It depends on
    the two ids only, never on the batch or the set a mention is scored in, so the trainer's evaluation and
    ``xel-link`` pick the same entity."""
    digest = hashlib.blake2b(f"{mention_id}\x00{kb_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def pick_best(scores: torch.Tensor, mentions: Mentions) -> Ranked:
    """Best candidate per mention from ``[M, K]`` scores (-inf where padded). Ties (same-name KB entries have
    identical name vectors) go to the candidate whose description is closest to the mention's context
    (cos(mc, ec)), then by :func:`tie_noise`, never by candidate order: a collapsed model that scores every
    candidate alike would otherwise inherit the retrieval ranking and look like a good linker."""
    scores = scores.masked_fill(~mentions.cand_mask, float("-inf"))
    best = scores.max(dim=1).values
    tied = (scores == best[:, None]) & mentions.cand_mask
    several = tied.sum(dim=1) > 1
    best_pos = tied.double().argmax(dim=1)
    rows = torch.nonzero(several).flatten().tolist()
    if rows:
        context = context_cosines(mentions.take(rows)).double()
        for j, i in enumerate(rows):
            cols = torch.nonzero(tied[i]).flatten().tolist()
            keys = [(float(context[j, c]), tie_noise(mentions.ids[i], mentions.kb.ids[int(mentions.cand[i, c])]))
                    for c in cols]
            best_pos[i] = cols[max(range(len(cols)), key=keys.__getitem__)]
    return Ranked(scores, best, best_pos, float(several.float().mean()) if len(scores) else 0.0, several)


def nn_scores(mentions: Mentions) -> torch.Tensor:
    """``[M, K]`` cos(ms, es) of every candidate: the nn baseline's scores (-inf where padded); uncentred, also for
    a centring scorer's NIL score (the rule that nn and the linker share)."""
    ms = torch.nn.functional.normalize(mentions.ms, dim=-1)
    es = torch.nn.functional.normalize(mentions.kb.es, dim=-1)
    return torch.einsum("md,mkd->mk", ms, es[mentions.cand]).masked_fill(~mentions.cand_mask, float("-inf"))


def background_cosine(cos: torch.Tensor, k: int = BACKGROUND_K) -> torch.Tensor:
    """``[M]`` mean of the 2nd to ``k + 1``-th highest cosines of each row of ``cos`` ``[M, K]`` (-inf where
    padded): how similar a mention is to entities that are not its best match. 0 where a row has no second
    candidate."""
    top = cos.sort(dim=1, descending=True).values[:, 1 : k + 1]
    finite = torch.isfinite(top)
    n = finite.sum(dim=1)
    return torch.where(n > 0, torch.where(finite, top, 0.0).sum(dim=1) / n.clamp_min(1), 0.0)


def with_nil_score(ranked: Ranked, mentions: Mentions, nil_score: str) -> Ranked:
    """``ranked`` with the NIL score ``nil_score`` (see the module docstring): ``model`` the best score itself,
    ``cosine`` cos(ms, es) of the best candidate, ``csls`` that cosine minus the mention's background
    (:func:`background_cosine` over its candidates), ``shared`` the same in hs0's space (+A), ``learned`` the
    best score minus the NIL logit."""
    if nil_score == "model":
        return ranked
    if nil_score == "learned":
        if ranked.nil_logit is None:
            raise ValueError("NIL score 'learned' needs a model with a learned NIL logit (the residual scorer, "
                             "trained by this version of xel-train); allowed here: 'model', 'cosine', 'csls'")
        value = ranked.best - ranked.nil_logit
        return replace(ranked, nil_score=torch.where(torch.isfinite(ranked.best), value, ranked.best))
    if nil_score == "shared" and ranked.shared_cos is None:
        raise ValueError("NIL score 'shared' needs a model with the shared layer hs0 (trained with --adversarial); "
                         "allowed here: 'model', 'cosine', 'csls'")
    cos = ranked.shared_cos if nil_score == "shared" else nn_scores(mentions)
    value = cos.gather(1, ranked.best_pos[:, None]).squeeze(1)
    if nil_score in ("csls", "shared"):
        value = value - background_cosine(cos)
    elif nil_score != "cosine":
        raise ValueError(f"NIL score {nil_score!r}: allowed 'model', 'cosine', 'csls', 'shared', 'learned'")
    return replace(ranked, nil_score=torch.where(torch.isfinite(ranked.best), value, ranked.best))


def rank(model: Ranker, mentions: Mentions, batch_size: int = 256, nil_score: str = "model") -> Ranked:
    model.eval()
    kb = mentions.kb
    parts = []
    with torch.inference_mode():
        for start in range(0, len(mentions), batch_size):
            sl = slice(start, start + batch_size)
            pair = None if mentions.pair is None else mentions.pair[sl]
            parts.append(model(mentions.ms[sl], mentions.mc[sl], mentions.cand[sl], kb.es, kb.ec, kb.popularity,
                               pair, offsets(mentions, sl)).scores)
    scores = torch.cat(parts) if parts else torch.zeros(mentions.cand.shape)
    ranked = pick_best(scores, mentions)
    if getattr(model, "hs0", None) is not None:
        with torch.inference_mode():
            ms, es = mentions.ms, kb.es
            if model.spec.centre:  # hs0 reads what the scorer reads (train.centre)
                ms, es = ms - mentions.centre[:, 0], es - kb.centre[0]
            m = torch.nn.functional.normalize(model.shared(ms), dim=-1)
            e = torch.nn.functional.normalize(model.shared(es), dim=-1)
            shared = torch.einsum("md,mkd->mk", m, e[mentions.cand]).masked_fill(~mentions.cand_mask, float("-inf"))
        ranked = replace(ranked, shared_cos=shared)
    head = getattr(model, "nil_head", None)  # a Ranker has one (None but for the residual scorer)
    if head is not None:
        if model.spec.nil_features != NIL_FEATURES:
            raise ValueError(f"the model's NIL logit reads features {list(model.spec.nil_features)}; this version "
                             f"computes {list(NIL_FEATURES)}: retrain the run")
        with torch.inference_mode():
            features = nil_features(ranked.scores, ranked.best_pos, mentions, float(head.temperature))
            ranked = replace(ranked, nil_logit=head(features), nil_features=features)
    return with_nil_score(ranked, mentions, nil_score)


def predict(ranked: Ranked, mentions: Mentions, threshold: float) -> list[str | None]:
    """KB id of the best candidate, or None (NIL) when there is none or it scores below ``threshold``."""
    rows = mentions.cand.gather(1, ranked.best_pos[:, None]).squeeze(1).tolist()
    linked = (ranked.decision >= threshold).tolist()
    return [mentions.kb.ids[r] if ok else None for r, ok in zip(rows, linked)]


def evaluate(ranked: Ranked, mentions: Mentions, threshold: float) -> dict[str, Scores]:
    return score_groups(mentions.golds, predict(ranked, mentions, threshold), mentions.langs, mentions.types)


def tune_threshold(ranked: Ranked, mentions: Mentions) -> float:
    """The NIL threshold with the best F1 on ``mentions`` (ties: the lowest threshold): a score of one of them,
    so the paper's tanh scores give one in [-1, 1]."""
    preds = predict(ranked, mentions, float("-inf"))
    correct = np.array([p is not None and p == g for p, g in zip(preds, mentions.golds)], dtype=np.float64)
    gold_links = sum(g is not None for g in mentions.golds)
    best = ranked.decision.numpy().astype(np.float64)
    has = np.isfinite(best)
    order = np.argsort(-best[has], kind="stable")
    scores_sorted, correct_sorted = best[has][order], correct[has][order]
    if not len(scores_sorted) or not gold_links:
        return -1.0
    # Linking exactly the top k mentions, k = 1..n; keep the last k of each run of equal scores.
    k = np.arange(1, len(scores_sorted) + 1)
    tp = np.cumsum(correct_sorted)
    p, r = tp / k, tp / gold_links
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    last_of_tie = np.append(scores_sorted[1:] != scores_sorted[:-1], True)
    f1 = np.where(last_of_tie, f1, -1.0)
    i = int(np.argmax(f1[::-1]))
    i = len(f1) - 1 - i
    return float(scores_sorted[i])


def prediction_rows(
    ranked: Ranked, mentions: Mentions, threshold: float
) -> list[tuple[str, str | None, float, list[tuple[str, float]]]]:
    """Rows for :func:`retrieval.files.write_predictions`: candidates sorted by model score, best first."""
    preds = predict(ranked, mentions, threshold)
    scores = ranked.scores.tolist()
    cands = mentions.cand.tolist()
    masks = mentions.cand_mask.tolist()
    rows = []
    for i, mid in enumerate(mentions.ids):
        pairs = sorted(((mentions.kb.ids[c], s) for c, s, ok in zip(cands[i], scores[i], masks[i]) if ok),
                       key=lambda x: -x[1])
        best = pairs[0][1] if pairs else -1.0
        rows.append((mid, preds[i], best, pairs))
    return rows
