"""The residual scorer (``xel-train --scorer residual``, the default): nn's cosine plus a learned correction.

``score(m, e) = cos(ms, es) + g(x(m, e))``. ``g`` is an MLP whose last layer starts at zero, so before the first
step the scorer ranks every candidate list exactly as the (centred, see below) cosine does; training can only move
it away from there where the English training (and dev, through epoch selection) data say so. ``x``
concatenates, per pair:

* ``paper``: the paper's ``rs`` and ``rc`` (the ``hs`` MLP over ``[hs0(ms); hs0(es)]`` and ``hc`` over
  ``[mc; ec]``, :class:`train.model.Ranker`'s paths);
* ``cosines``: cos(ms, es), cos(mc, ec), cos(ms, ec), cos(mc, es) (an MLP over a concatenation cannot form a
  dot product, so these are given explicitly);
* ``interactions``: ``m * e`` and ``|m - e|`` for the name pair and for the context pair, as in SBERT, after
  one learned linear projection per pair to ``interaction_size`` (64) dimensions shared by both sides (a
  low-rank bilinear form: the full 384-dimensional products made ``g``'s first layer 5x wider and the step 3x
  slower); the name side starts from ``hs0``'s outputs with +A, else from the standardized features;
* the pair features of :mod:`train.pairs` (retrieval rank and source, alias prior, transliterated string
  similarity, popularity);
* with +A: cos(hs0(ms), hs0(es)), a learned name similarity in the shared space the adversary makes
  language-invariant (whatever the groups).

With ``--centre`` (the default, :mod:`train.centre`) every vector above, ``cos(ms, es)`` of the base term
included, is computed after subtracting each mention's language mean and each entity's KB mean, so before the
first step the scorer ranks as the centred cosine; ``--no-centre --epochs 0`` is the nn baseline itself.

All of it is computed for the ``[B, K]`` candidates of a batch in batched tensor ops; each mention's features
are computed once and each distinct entity's once, then gathered.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from xel.train.model import ModelSpec, Ranker, Scored, _tail
from xel.train.nil_logit import NilHead
from xel.train.scorers import PAPER, RESIDUAL, scorer_named

VECTOR_GROUPS = ("paper", "cosines", "interactions")


def cosine_features(ms: torch.Tensor, mc: torch.Tensor, es: torch.Tensor, ec: torch.Tensor,
                    inverse: torch.Tensor) -> torch.Tensor:
    """``[B, K, 4]``: cos(ms, es), cos(mc, ec), cos(ms, ec), cos(mc, es) of mentions ``[B, D]`` against their
    candidates ``inverse`` ``[B, K]``, indices into the KB rows ``es``/``ec`` ``[R, D]``. The rows are normalised
    before they are gathered, and the four cosines are one batched product."""
    m = F.normalize(torch.stack([ms, mc], dim=1), dim=-1)  # [B, 2, D]
    e = F.normalize(torch.stack([es, ec], dim=1), dim=-1)[inverse]  # [B, K, 2, D]
    c = torch.bmm(m, e.flatten(1, 2).transpose(1, 2)).unflatten(2, e.shape[1:3])  # [B, 2 (ms, mc), K, 2 (es, ec)]
    return torch.stack([c[:, 0, :, 0], c[:, 1, :, 1], c[:, 0, :, 1], c[:, 1, :, 0]], dim=-1)


def interaction_features(m: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``[B, K, 2D]``: ``m * e`` and ``|m - e|`` of mentions ``[B, D]`` against candidate rows ``[B, K, D]``."""
    m = m[:, None, :]
    return torch.cat([m * e, (m - e).abs()], dim=-1)


class ResidualScorer(Ranker):
    """See the module docstring. Shares :class:`Ranker`'s standardization, ``hs0``/``hadv`` (+A) and the
    ``hs``/``hc`` paths; replaces the tanh head by ``cos(ms, es) + g``."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        groups = set(spec.feature_groups)
        del self.final
        name_dim = spec.shared_size if spec.shared_size is not None else spec.dim
        width = spec.pair_dim
        if "paper" in groups:
            width += self.hs.out_size + self.hc.out_size
        else:
            self.hs = self.hc = None
        if "cosines" in groups:
            width += 4
        if "interactions" in groups:
            self.name_projection = nn.Linear(name_dim, spec.interaction_size, bias=False)
            self.context_projection = nn.Linear(spec.dim, spec.interaction_size, bias=False)
            width += 4 * spec.interaction_size
        if self.hs0 is not None:
            width += 1
        self.input_width = max(width, 1)
        out = nn.Linear(spec.final_sizes[-1], 1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.g = nn.Sequential(
            nn.Linear(self.input_width, spec.final_sizes[0]),
            _tail(spec.final_sizes[0], spec.final_sizes[1:], spec.dropout), out,
        )
        # last, and drawing no random numbers: the ranker's initialisation and dropout are those of a model without
        self.nil_head = NilHead(len(spec.nil_features), spec.nil_temperature) if spec.nil_features else None
        if spec.centre:  # [L, 2, D]: mean ms and mc of each of spec.centre_langs, saved with the checkpoint
            self.register_buffer("language_means", torch.zeros(len(spec.centre_langs), 2, spec.dim))

    def set_language_means(self, means: dict[str, torch.Tensor]) -> None:
        """Hold ``means`` (language -> ``[2, D]``, :func:`train.centre.language_means`) for ``spec.centre_langs``."""
        for i, lang in enumerate(self.spec.centre_langs):
            self.language_means[i].copy_(means[lang])

    def saved_language_means(self) -> dict[str, torch.Tensor]:
        """Language -> ``[2, D]`` mean ms and mc that the model holds (empty for a model that does not centre)."""
        if not self.spec.centre:
            return {}
        return {lang: self.language_means[i].clone() for i, lang in enumerate(self.spec.centre_langs)}

    def forward(
        self, ms: torch.Tensor, mc: torch.Tensor, cand: torch.Tensor,
        kb_es: torch.Tensor, kb_ec: torch.Tensor, kb_pop: torch.Tensor, pair: torch.Tensor | None = None,
        offsets: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Scored:
        """``offsets``: ``([B, 2, D] language means of the mentions' ms and mc, [2, D] the KB's mean es and ec)``
        (:func:`train.centre.offsets`), subtracted before any feature when the spec centres (``--centre``)."""
        groups = self.spec.feature_groups
        rows, inverse = torch.unique(cand, return_inverse=True)
        es, ec = kb_es[rows], kb_ec[rows]
        if self.spec.centre:
            if offsets is None:
                raise ValueError("this scorer centres its inputs (--centre) and needs each mention's language mean "
                                 "and the KB's mean (train.centre.offsets); none were given")
            m_off, kb_off = offsets
            ms, mc, es, ec = ms - m_off[:, 0], mc - m_off[:, 1], es - kb_off[0], ec - kb_off[1]
        m_sh, e_sh = self.shared(ms), self.shared(es)
        cosines = cosine_features(ms, mc, es, ec, inverse)
        parts: list[torch.Tensor] = []
        if "paper" in groups:
            hs, hc = self.hs, self.hc
            parts.append(hs.tail(hs.project_mention(m_sh)[:, None, :] + hs.project_entity(e_sh)[inverse]))
            mc_z, ec_z = self.standardize_contexts(mc), self.standardize_contexts(ec)
            parts.append(hc.tail(hc.project_mention(mc_z)[:, None, :] + hc.project_entity(ec_z)[inverse]))
        if "cosines" in groups:
            parts.append(cosines)
        if "interactions" in groups:
            name_p, context_p = self.name_projection, self.context_projection
            parts.append(interaction_features(name_p(m_sh), name_p(e_sh)[inverse]))
            parts.append(interaction_features(context_p(self.standardize_contexts(mc)),
                                              context_p(self.standardize_contexts(ec))[inverse]))
        if self.hs0 is not None:
            parts.append(F.cosine_similarity(m_sh[:, None, :], e_sh[inverse], dim=-1)[..., None])
        if self.spec.pair_dim:
            if pair is None or pair.shape[-1] != self.spec.pair_dim:
                got = None if pair is None else tuple(pair.shape)
                raise ValueError(f"this scorer needs pair features of width {self.spec.pair_dim}, got {got}")
            parts.append(pair)
        x = torch.cat(parts, dim=-1) if parts else cosines.new_zeros((*cand.shape, 1))
        scores = cosines[..., 0] + self.g(x).squeeze(-1)
        has_shared = self.hs0 is not None
        return Scored(scores, m_sh if has_shared else None, e_sh if has_shared else None, rows, inverse)


MODELS: dict[str, type[Ranker]] = {PAPER.name: Ranker, RESIDUAL.name: ResidualScorer}


def build_model(spec: ModelSpec) -> Ranker:
    """The scorer a spec describes: the paper's :class:`Ranker` or a :class:`ResidualScorer`."""
    return MODELS[scorer_named(spec.scorer).name](spec)
