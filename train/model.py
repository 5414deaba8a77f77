"""The pointwise ranker of paper §2.1 (with §3.1's shared layer ``hs0`` and language classifier ``hadv``).

``hs`` is an MLP over ``[ms; es]`` giving ``rs``, ``hc`` an MLP over ``[mc; ec]`` giving ``rc``, and ``final`` an
MLP over ``[rs; rc; popularity]`` ending in one tanh unit, so a score lies in [-1, 1]. With +A the mention and
entity name features first pass separately through ``hs0`` (Linear + leaky ReLU); ``hadv`` classifies the language of
an ``hs0`` output.

Speed: the first layer of ``hs`` and ``hc`` is linear over a concatenation, ``W [m; e] + b = W_m m + W_e e + b``,
so :meth:`Ranker.forward` projects each mention once and each distinct entity of the batch once, adds them
by broadcasting over the candidates, and runs the remaining layers on all ``[B, K]`` pairs in one batched op.
:meth:`Ranker.score_concat` is the plain concatenate-then-MLP reference (a test proves they agree).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a :class:`Ranker`; saved in the checkpoint's metadata."""

    dim: int
    hs_sizes: tuple[int, ...]
    hc_sizes: tuple[int, ...]
    final_sizes: tuple[int, ...]
    dropout: float
    popularity_dim: int = 0
    shared_size: int | None = None
    languages: tuple[str, ...] = ()
    scorer: str = "paper"  # "paper": Ranker; "residual": train.residual.ResidualScorer
    feature_groups: tuple[str, ...] = ()  # residual only: vector feature groups in use
    pair_dim: int = 0  # residual only: width of the pair features (train.pairs)
    interaction_size: int = 64  # residual only: projection width of the interaction features
    # residual only: the learned NIL logit's features (train.nil_logit.NIL_FEATURES; () for a run without the head,
    # as every run before it) and its softmax temperature
    nil_features: tuple[str, ...] = ()
    nil_temperature: float = 0.05
    # residual only: per-language centring (train.centre) and the languages whose mention means the model holds
    centre: bool = False
    centre_langs: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        d = json.loads(text)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _activation() -> nn.Module:
    """Leaky ReLU (slope 0.1): the paper names no activation. With plain ReLU the name path behind ``hs0``
    (+A) died within two epochs on the sample (every candidate scored alike, loss stuck at the margin) in 2 of 3
    seeds, even with lambda = 0; with a leaky slope every seed trains."""
    return nn.LeakyReLU(0.1)


def _tail(first_size: int, sizes: tuple[int, ...], dropout: float) -> nn.Sequential:
    """Activation and dropout after the first linear layer, then the remaining hidden layers."""
    layers: list[nn.Module] = [_activation(), nn.Dropout(dropout)]
    prev = first_size
    for size in sizes:
        layers += [nn.Linear(prev, size), _activation(), nn.Dropout(dropout)]
        prev = size
    return nn.Sequential(*layers)


class PairMLP(nn.Module):
    """An MLP over ``[m; e]`` whose first layer can be applied to ``m`` and ``e`` separately."""

    def __init__(self, dim_m: int, dim_e: int, sizes: tuple[int, ...], dropout: float):
        super().__init__()
        self.dim_m = dim_m
        self.first = nn.Linear(dim_m + dim_e, sizes[0])
        if dim_m == dim_e:
            # Antisymmetric start: the entity half is minus the mention half, so the first layer begins as a
            # function of m - e and its ReLU pairs measure a difference. On the sample, random init collapses to a
            # constant score (loss = margin) within three epochs; with this start the ranker learns.
            with torch.no_grad():
                self.first.weight[:, dim_m:] = -self.first.weight[:, :dim_m]
        self.tail = _tail(sizes[0], tuple(sizes[1:]), dropout)
        self.out_size = sizes[-1]

    def project_mention(self, m: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(m, self.first.weight[:, : self.dim_m], self.first.bias)

    def project_entity(self, e: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(e, self.first.weight[:, self.dim_m :])

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """The plain form: ``pairs`` is ``[..., dim_m + dim_e]``."""
        return self.tail(self.first(pairs))


@dataclass
class Scored:
    scores: torch.Tensor  # [B, K]
    mention_shared: torch.Tensor | None  # [B, S], hs0(ms)
    entity_shared: torch.Tensor | None  # [U, S], hs0(es) of the distinct entities
    entity_rows: torch.Tensor  # [U] KB rows of the distinct entities
    inverse: torch.Tensor  # [B, K] position of each candidate in entity_rows


class Ranker(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        if spec.shared_size is not None:
            if len(spec.languages) < 2:
                raise ValueError(f"the language classifier needs >= 2 languages, got {list(spec.languages)}")
            self.hs0: nn.Module | None = nn.Sequential(nn.Linear(spec.dim, spec.shared_size), _activation())
            self.hadv: nn.Module | None = nn.Linear(spec.shared_size, len(spec.languages))
            name_dim = spec.shared_size
        else:
            self.hs0 = self.hadv = None
            name_dim = spec.dim
        self.nil_head: nn.Module | None = None  # the learned NIL logit (train.nil_logit): residual scorer only
        for name in ("name_mean", "context_mean"):
            self.register_buffer(name, torch.zeros(spec.dim))
        for name in ("name_std", "context_std"):
            self.register_buffer(name, torch.ones(spec.dim))
        self.hs = PairMLP(name_dim, name_dim, spec.hs_sizes, spec.dropout)
        self.hc = PairMLP(spec.dim, spec.dim, spec.hc_sizes, spec.dropout)
        final_in = self.hs.out_size + self.hc.out_size + spec.popularity_dim
        self.final = nn.Sequential(
            nn.Linear(final_in, spec.final_sizes[0]), _tail(spec.final_sizes[0], spec.final_sizes[1:], spec.dropout),
            nn.Linear(spec.final_sizes[-1], 1), nn.Tanh(),
        )

    def set_standardization(self, names: torch.Tensor, contexts: torch.Tensor) -> None:
        """Per-dimension mean and std of the training rows: ``names`` (ms, es), ``contexts`` (mc, ec).

        The frozen features share a large common component (cosines sit in 0.75-0.95); standardizing them
        lets the MLPs see what differs between a mention and its candidates. The statistics are buffers, so a
        checkpoint carries them and applies them at inference.
        """
        self.set_statistics((names.mean(dim=0), names.std(dim=0)), (contexts.mean(dim=0), contexts.std(dim=0)))

    def set_statistics(self, names: tuple[torch.Tensor, torch.Tensor], contexts: tuple[torch.Tensor, torch.Tensor]
                       ) -> None:
        """:meth:`set_standardization` from ``(mean, std)`` pairs of rows not all in memory
        (:func:`train.data.standardization`)."""
        self.name_mean.copy_(names[0])
        self.name_std.copy_(names[1].clamp_min(1e-6))
        self.context_mean.copy_(contexts[0])
        self.context_std.copy_(contexts[1].clamp_min(1e-6))

    def standardize_names(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.name_mean) / self.name_std

    def standardize_contexts(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.context_mean) / self.context_std

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """Name-side features (ms, es, adversarial text) standardized, then ``hs0`` with +A."""
        x = self.standardize_names(x)
        return self.hs0(x) if self.hs0 is not None else x

    def language_probs(self, shared: torch.Tensor) -> torch.Tensor:
        if self.hadv is None:
            raise RuntimeError("this model has no language classifier (built without --adversarial)")
        return torch.softmax(self.hadv(shared), dim=-1)

    def forward(
        self, ms: torch.Tensor, mc: torch.Tensor, cand: torch.Tensor,
        kb_es: torch.Tensor, kb_ec: torch.Tensor, kb_pop: torch.Tensor, pair: torch.Tensor | None = None,
        offsets: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Scored:
        """Scores ``[B, K]`` of mentions ``ms``/``mc`` ``[B, D]`` against KB rows ``cand`` ``[B, K]``; the paper's
        ranker takes no pair features and does not centre (``pair`` and ``offsets`` are ignored)."""
        rows, inverse = torch.unique(cand, return_inverse=True)
        m_sh = self.shared(ms)
        e_sh = self.shared(kb_es[rows])
        rs = self.hs.tail(self.hs.project_mention(m_sh)[:, None, :] + self.hs.project_entity(e_sh)[inverse])
        mc, ec = self.standardize_contexts(mc), self.standardize_contexts(kb_ec[rows])
        rc = self.hc.tail(self.hc.project_mention(mc)[:, None, :] + self.hc.project_entity(ec)[inverse])
        parts = [rs, rc]
        if self.spec.popularity_dim:
            parts.append(kb_pop[rows][inverse])
        scores = self.final(torch.cat(parts, dim=-1)).squeeze(-1)
        has_shared = self.hs0 is not None
        return Scored(scores, m_sh if has_shared else None, e_sh if has_shared else None, rows, inverse)

    def score_concat(
        self, ms: torch.Tensor, mc: torch.Tensor, es: torch.Tensor, ec: torch.Tensor, pop: torch.Tensor
    ) -> torch.Tensor:
        """Reference scorer over aligned pairs ``[N, D]``: concatenate, then the plain MLPs; ``[N]``."""
        rs = self.hs(torch.cat([self.shared(ms), self.shared(es)], dim=-1))
        rc = self.hc(torch.cat([self.standardize_contexts(mc), self.standardize_contexts(ec)], dim=-1))
        parts = [rs, rc] + ([pop] if self.spec.popularity_dim else [])
        return self.final(torch.cat(parts, dim=-1)).squeeze(-1)

    def adversary_parameters(self) -> list[nn.Parameter]:
        return list(self.hadv.parameters()) if self.hadv is not None else []

    def linker_parameters(self) -> list[nn.Parameter]:
        """Every parameter except ``hadv``'s: what the main step of Algorithm 1 updates."""
        adv = {id(p) for p in self.adversary_parameters()}
        return [p for p in self.parameters() if id(p) not in adv]
