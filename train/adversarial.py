"""The adversarial language objective (+A) of paper §3.1, Algorithm 1: inverted labels and the two losses.

Adversarial step (lines 3-9): the language classifier ``hadv`` sees ``hs0`` of unannotated source (A) and L2 (B)
text and is fit by MSE to **inverted** one-hot labels: source text gets an L2 label (drawn uniformly when there
are several L2 languages), L2 text gets the source label (drawn uniformly when there are several source
languages). Only ``hadv`` is updated; ``hs0`` is run without gradients.

Main step (lines 10-19): the linking loss plus ``lambda * (MSE(pM, lang(m)) + MSE(pE, lang(e)))`` with the
correct labels, updating everything except ``hadv`` (see :mod:`train.loop`).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from train.model import Ranker


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
