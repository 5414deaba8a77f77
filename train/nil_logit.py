"""The learned NIL logit (``--nil-score learned``): NIL as one more candidate in the residual scorer's listwise
softmax, its logit a linear function of per-mention features that mean the same in every language and script.

For a mention with candidate scores ``s_1..s_K`` (the ranker's, :func:`train.evaluate.rank`) and the chosen
candidate ``b``, the features (:data:`NIL_FEATURES`) are

* ``margin``: ``s_b`` minus the best other score (1 without another candidate, at most 1);
* ``top_prob``: the softmax probability of ``b`` among the candidates at the head's temperature;
* ``csls``: cos(ms, es) of ``b`` minus the mention's background (:func:`train.evaluate.background_cosine`), and
  ``cos_margin``: that cosine minus the best other candidate's (1 without another, at most 1);
* ``same_name``: ``log1p`` of how many other candidates carry ``b``'s name;
* ``string``, ``string_set``: rapidfuzz ratio and token-set ratio of the transliterated mention string and
  ``b``'s name (:func:`train.pairs.string_similarity`, Latin script for every language).

Left out, measured on the sample (nn's ranking, English training split, test F1 en/de): the raw top score
(``s_b``: it shifts with the script, as the raw cosine does), and the retrieval rank and source of ``b``: the
candidates' alias prior counted the training mentions' own links, so on the training split "proposed by the
prior" almost means "linked" and the head learned it (en .733, de .503 with them; .773, .627 without; csls
.769, .625).

The NIL logit is ``h = w . f + c``; the NIL score compared with the rule's threshold (:mod:`train.nil`) is
``s_b - h``: positive where the best candidate beats NIL in the softmax. ``w`` and ``c`` start at zero and are
fitted (:func:`fit_nil_head`) on the training split with the ranker fixed (after every epoch when the run's NIL score
is ``learned``, else once, to the chosen epoch's ranker: :func:`train.fit.fit`): the listwise
cross-entropy over ``[s_1..s_K, h] / T`` whose target is the gold's position, or NIL for a mention whose gold is
not among its candidates (a NIL mention, ~22% of the sample's English training mentions, or a gold retrieval
missed). The ranker's scores are inputs, never trained by this loss, so the ranking is the same with or without
the head (and every other NIL score of the same run ranks identically). Features are per mention, so a batch of
one gets the NIL score it gets in a set.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from xel.train.data import Mentions
from xel.train.pairs import string_similarity

NIL_FEATURES = ("margin", "top_prob", "csls", "cos_margin", "same_name", "string", "string_set")
NIL_TEMPERATURE = 0.05  # the softmax temperature of the NIL candidate when the run's loss has none (hinge)
FIT_STEPS = 300
FIT_LR = 0.05


class NilHead(nn.Module):
    """``h = w . f + c`` over :data:`NIL_FEATURES`; zero at the start (its parameters draw no random numbers, so
    a model with the head trains the same ranker as one without)."""

    def __init__(self, n_features: int, temperature: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_features))
        self.bias = nn.Parameter(torch.zeros(()))
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight + self.bias


def _runner_up(values: torch.Tensor, best_pos: torch.Tensor) -> torch.Tensor:
    """``[M]`` the best of each row of ``values`` (-inf where padded) other than column ``best_pos``."""
    return values.scatter(1, best_pos[:, None], float("-inf")).max(dim=1).values


def _gap(top: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(second), top - second, torch.ones_like(top)).clamp(max=1.0)


def nil_features(scores: torch.Tensor, best_pos: torch.Tensor, mentions: Mentions,
                 temperature: float) -> torch.Tensor:
    """``[M, F]`` float32 :data:`NIL_FEATURES` of each mention from its candidates' ``scores`` ``[M, K]`` (-inf
    where padded) and its chosen candidate ``best_pos``; zeros for a mention without candidates."""
    from xel.train.evaluate import background_cosine, nn_scores  # evaluate imports this module

    m = len(mentions)
    has = mentions.cand_mask.any(dim=1)
    scores = scores.masked_fill(~mentions.cand_mask, float("-inf")).float()
    cos = nn_scores(mentions).float()
    top = scores.gather(1, best_pos[:, None]).squeeze(1)
    top_cos = cos.gather(1, best_pos[:, None]).squeeze(1)
    prob = torch.softmax(torch.where(has[:, None], scores, 0.0) / temperature, dim=1).gather(1, best_pos[:, None])
    chosen = mentions.cand.gather(1, best_pos[:, None]).squeeze(1).tolist()
    cand, mask = mentions.cand.tolist(), mentions.cand_mask.tolist()
    names = mentions.kb.names
    same = torch.zeros(m)
    text = torch.zeros(m, 2)
    for i in range(m):
        if not any(mask[i]):
            continue
        if names:
            name = names[chosen[i]]
            same[i] = sum(ok and names[c] == name for c, ok in zip(cand[i], mask[i])) - 1
            if mentions.surfaces:
                text[i] = torch.tensor(string_similarity(mentions.surfaces[i], name)[:2])
    columns = [_gap(top, _runner_up(scores, best_pos)), prob.squeeze(1), top_cos - background_cosine(cos),
               _gap(top_cos, _runner_up(cos, best_pos)), torch.log1p(same), text[:, 0], text[:, 1]]
    out = torch.stack([c.float() for c in columns], dim=1)
    return torch.where(has[:, None] & torch.isfinite(out), out, 0.0)


def nil_loss(scores: torch.Tensor, nil_logit: torch.Tensor, gold_pos: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """Cross-entropy of the listwise softmax over ``[scores, nil_logit] / temperature`` (``scores`` ``[M, K]``,
    -inf where padded) with target ``gold_pos``, or the NIL column where it is -1."""
    logits = torch.cat([scores, nil_logit[:, None]], dim=1) / temperature
    target = torch.where(gold_pos >= 0, gold_pos, scores.shape[1])
    return F.cross_entropy(logits, target)


def fit_nil_head(head: NilHead, scores: torch.Tensor, features: torch.Tensor, gold_pos: torch.Tensor,
                 steps: int = FIT_STEPS, lr: float = FIT_LR) -> float:
    """Fit ``head`` to mentions with candidates (``scores`` ``[M, K]`` fixed, -inf where padded) by full-batch
    Adam from its current weights: deterministic, no random numbers. Returns the final loss."""
    scores, features = scores.detach().clone(), features.detach().clone()
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    temperature = float(head.temperature)
    loss = torch.zeros(())
    with torch.enable_grad():
        for _ in range(steps):
            loss = nil_loss(scores, head(features), gold_pos, temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return float(loss.detach())
