"""The adversarial language objective (+A) of paper §3.1, Algorithm 1: inverted labels and the two losses.

Adversarial step (lines 3-9): the language classifier ``hadv`` sees ``hs0`` of unannotated source (A) and L2 (B)
text and is fit by MSE to **inverted** one-hot labels: source text gets an L2 label (drawn uniformly when there
are several L2 languages), L2 text gets the source label (drawn uniformly when there are several source
languages). Only ``hadv`` is updated; ``hs0`` is run without gradients.

Main step (lines 10-19): the linking loss plus ``lambda * (MSE(pM, lang(m)) + MSE(pE, lang(e)))`` with the
correct labels, updating everything except ``hadv`` (see :mod:`train.loop`).

That is ``--adv-mode alternating``, the paper's. Measured on the sample it leaves ``hs0`` language-separable:
``hadv`` learns to output the inverted language confidently, and the main step's correct-label loss then
rewards keeping the languages apart. Two objectives that do what +A is meant to do:

* ``grl`` (Ganin & Lempitsky, 2015): ``hadv`` is trained by cross-entropy on the *correct* language of source and
  L2 text in the main step, behind a gradient reversal layer, so ``hs0`` receives ``-lambda_p`` times the
  classifier's gradient: it is pushed to make the languages indistinguishable. ``lambda_p`` ramps from 0 to
  lambda as ``2 / (1 + exp(-10 p)) - 1`` over training progress ``p``.
* ``uniform``: the adversarial steps fit ``hadv`` to the correct language (cross-entropy); the main step adds
  ``lambda * CE(uniform, hadv(hs0(text)))``, which is smallest exactly when the classifier is maximally unsure.
  Unlike an inverted-label target, it cannot be met by a classifier that swaps the labels.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F
from xel.train.model import Ranker


def inverted_labels(
    langs: torch.Tensor, source: list[int], l2: list[int], n_langs: int, generator: torch.Generator
) -> torch.Tensor:
    """One-hot ``[N, n_langs]`` wrong labels for rows of language index ``langs``: source → a uniform L2
    language, L2 → a uniform source language."""
    is_source = torch.isin(langs, torch.tensor(source))
    pick_l2 = torch.tensor(l2)[torch.randint(len(l2), (len(langs),), generator=generator)]
    pick_src = torch.tensor(source)[torch.randint(len(source), (len(langs),), generator=generator)]
    target = torch.where(is_source, pick_l2, pick_src)
    return F.one_hot(target, n_langs).float()


def language_mse(model: Ranker, shared: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MSE between ``softmax(hadv(shared))`` and one-hot ``labels`` [N, L]."""
    return F.mse_loss(model.language_probs(shared), labels)


def adversarial_step(
    model: Ranker,
    optimizer: torch.optim.Optimizer,
    text_a: torch.Tensor, langs_a: torch.Tensor,
    text_b: torch.Tensor, langs_b: torch.Tensor,
    source: list[int], l2: list[int], generator: torch.Generator,
) -> float:
    """One update of ``hadv`` on a batch of A and B text with inverted labels; returns the loss."""
    n_langs = len(model.spec.languages)
    with torch.no_grad():
        shared_a, shared_b = model.shared(text_a), model.shared(text_b)
    loss = language_mse(model, shared_a, inverted_labels(langs_a, source, l2, n_langs, generator)) + language_mse(
        model, shared_b, inverted_labels(langs_b, source, l2, n_langs, generator)
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


class GradientReversal(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by ``-scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    return GradientReversal.apply(x, scale)


def grl_scale(lambda_adv: float, progress: float) -> float:
    """The usual GRL schedule: ``lambda * (2 / (1 + exp(-10 p)) - 1)``, 0 at the start, ~lambda at the end."""
    return lambda_adv * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)


def uniform_target_loss(model: Ranker, shared: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the classifier's language posterior against the uniform distribution; its minimum,
    ``log(n_langs)``, is reached exactly at a uniform posterior."""
    log_probs = torch.log_softmax(model.hadv(shared), dim=-1)
    return -log_probs.mean(dim=-1).mean()


def classifier_step(
    model: Ranker, optimizer: torch.optim.Optimizer, text: torch.Tensor, langs: torch.Tensor,
) -> float:
    """One update of ``hadv`` by cross-entropy on the correct languages (``--adv-mode uniform``)."""
    with torch.no_grad():
        shared = model.shared(text)
    loss = F.cross_entropy(model.hadv(shared), langs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
