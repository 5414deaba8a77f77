"""One epoch of ``xel-train``: Algorithm 1's adversarial steps (with +A), then the main steps.

Main step, paper scorer: for a batch of mentions whose gold is among their candidates, score the gold and
``--negatives`` n negatives drawn at random from the mention's other candidates (from the whole KB when it has
too few) in one batched op, and take ``max(0, margin - (S(m, e+) - max_i S(m, e-_i)))``.
Residual scorer: every candidate of the batch is scored (its pair features exist only for candidates); the loss
is the listwise softmax cross-entropy of the gold among them at ``--temperature`` (``--loss softmax``, its
default) or the hinge against the best-scoring other candidate (``--loss hinge``).

With +A (``--adv-mode``, :mod:`train.adversarial`): ``alternating`` adds ``lambda * (MSE(pM, lang(m)) +
MSE(pE, lang(e+)))`` with the correct labels (the paper); ``grl`` adds the classifier's cross-entropy on source and
L2 text behind a gradient reversal layer; ``uniform`` adds ``lambda`` times the cross-entropy against a uniform
language posterior on source and L2 text. Everything but ``hadv`` is updated (with ``grl``, ``hadv`` too, by its
own optimizer, towards the correct labels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F
from xel.train.adversarial import (
    adversarial_step,
    classifier_step,
    grl_scale,
    language_mse,
    reverse_gradient,
    uniform_target_loss,
)
from xel.train.centre import offsets
from xel.train.data import Mentions
from xel.train.evaluate import rank
from xel.train.model import Ranker
from xel.train.nil_logit import fit_nil_head
from xel.train.scorers import scorer_named
from xel.train.text import LanguageText


@dataclass(frozen=True)
class LoopSettings:
    lr: float
    batch_size: int
    negatives: int
    margin: float
    lambda_adv: float = 0.0
    adv_steps: int = 0
    adv_epochs: int | None = None
    adv_batch_size: int = 64
    loss: str = "hinge"
    temperature: float = 0.05
    adv_mode: str = "alternating"
    weight_decay: float = 0.0
    epochs: int = 1


def sample_negatives(
    cand: torch.Tensor, mask: torch.Tensor, gold_pos: torch.Tensor, gold_kb: torch.Tensor,
    n: int, n_entities: int, generator: torch.Generator,
) -> torch.Tensor:
    """``[B, n]`` KB rows: random candidates other than the gold, topped up with random KB rows."""
    b, k = cand.shape
    keys = torch.rand(b, k, generator=generator)
    valid = mask & (torch.arange(k)[None, :] != gold_pos[:, None])
    keys = keys.masked_fill(~valid, -1.0)
    if k < n:
        keys = torch.cat([keys, torch.full((b, n - k), -1.0)], dim=1)
        cand = torch.cat([cand, torch.zeros((b, n - k), dtype=cand.dtype)], dim=1)
    top, pos = keys.topk(n, dim=1)
    neg = cand.gather(1, pos)
    filler = torch.randint(n_entities, (b, n), generator=generator)
    filler = torch.where(filler == gold_kb[:, None], (filler + 1) % n_entities, filler)
    return torch.where(top >= 0, neg, filler)


class Trainer:
    """Holds the model, its two optimizers and the in-memory training tensors; :meth:`epoch` runs one epoch."""

    def __init__(
        self, model: Ranker, train: Mentions, settings: LoopSettings, seed: int,
        text: LanguageText | None = None, source_langs: tuple[str, ...] = (), l2_langs: tuple[str, ...] = (),
    ):
        if len(train.kb.ids) < 2:
            raise ValueError(f"the KB has {len(train.kb.ids)} entries; negatives need at least 2")
        self.model, self.train, self.s = model, train, settings
        self.generator = torch.Generator().manual_seed(seed)
        self.rows = train.trainable()
        self.optimizer = torch.optim.Adam(model.linker_parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        scorer = scorer_named(model.spec.scorer)
        if settings.loss not in scorer.losses:
            raise ValueError(f"loss {settings.loss!r}: the {scorer.name} scorer trains only {list(scorer.losses)}")
        self.listwise = scorer.pair_features  # every candidate scored: pair features exist only for candidates
        self.steps_per_epoch = max(1, -(-len(self.rows) // settings.batch_size))
        self.step_count = 0
        self.adversarial = model.hadv is not None
        if self.adversarial:
            if text is None:
                raise ValueError("a model with a language classifier needs adversarial text")
            index = {lang: i for i, lang in enumerate(model.spec.languages)}
            self.source = [index[x] for x in source_langs]
            self.l2 = [index[x] for x in l2_langs]
            self.n_langs = len(index)
            self.mention_lang = torch.tensor([index[x] for x in train.langs])
            self.entity_lang = torch.tensor([index.get(x, -1) for x in train.kb.langs])
            a = [(text.features[x], index[x]) for x in source_langs]
            b = [(text.features[x], index[x]) for x in l2_langs]
            self.text_a = torch.cat([f for f, _ in a])
            self.langs_a = torch.cat([torch.full((len(f),), i) for f, i in a])
            self.text_b = torch.cat([f for f, _ in b])
            self.langs_b = torch.cat([torch.full((len(f),), i) for f, i in b])
            self.adv_optimizer = torch.optim.Adam(model.adversary_parameters(), lr=settings.lr)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers by name: ``optimizer`` (everything but ``hadv``) and, with +A, ``adv_optimizer``."""
        named = {"optimizer": self.optimizer}
        if self.adversarial:
            named["adv_optimizer"] = self.adv_optimizer
        return named

    def text_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``adv_batch_size`` source rows and as many L2 rows of unannotated text, with their language indices."""
        bs = self.s.adv_batch_size
        ia = torch.randint(len(self.text_a), (bs,), generator=self.generator)
        ib = torch.randint(len(self.text_b), (bs,), generator=self.generator)
        return torch.cat([self.text_a[ia], self.text_b[ib]]), torch.cat([self.langs_a[ia], self.langs_b[ib]])

    def adversarial_steps(self) -> float:
        total = 0.0
        bs = self.s.adv_batch_size
        for _ in range(self.s.adv_steps):
            if self.s.adv_mode == "uniform":
                text, langs = self.text_batch()
                total += classifier_step(self.model, self.adv_optimizer, text, langs)
                continue
            ia = torch.randint(len(self.text_a), (bs,), generator=self.generator)
            ib = torch.randint(len(self.text_b), (bs,), generator=self.generator)
            total += adversarial_step(
                self.model, self.adv_optimizer, self.text_a[ia], self.langs_a[ia], self.text_b[ib],
                self.langs_b[ib], self.source, self.l2, self.generator,
            )
        return total

    def linking_loss(self, rows: torch.Tensor) -> tuple[torch.Tensor, object, torch.Tensor]:
        """The EL loss of a batch, the scorer's output, and each row's gold column in that output."""
        t, kb = self.train, self.train.kb
        gold = t.gold_kb[rows]
        if self.listwise:
            cand, mask, gold_col = t.cand[rows], t.cand_mask[rows], t.gold_pos[rows]
            pair = None if t.pair is None else t.pair[rows]
            out = self.model(t.ms[rows], t.mc[rows], cand, kb.es, kb.ec, kb.popularity, pair, offsets(t, rows))
            scores = out.scores.masked_fill(~mask, float("-inf"))
            if self.s.loss == "softmax":
                el_loss = F.cross_entropy(scores / self.s.temperature, gold_col)
            else:
                others = scores.scatter(1, gold_col[:, None], float("-inf")).max(dim=1).values
                has = torch.isfinite(others)
                gold_score = scores.gather(1, gold_col[:, None]).squeeze(1)
                hinge = F.relu(self.s.margin - (gold_score - others.clamp_min(-1e4)))
                el_loss = (hinge * has).sum() / has.sum().clamp_min(1)
            return el_loss, out, gold_col
        neg = sample_negatives(t.cand[rows], t.cand_mask[rows], t.gold_pos[rows], gold, self.s.negatives,
                               len(kb.ids), self.generator)
        out = self.model(t.ms[rows], t.mc[rows], torch.cat([gold[:, None], neg], dim=1), kb.es, kb.ec, kb.popularity)
        el_loss = F.relu(self.s.margin - (out.scores[:, 0] - out.scores[:, 1:].max(dim=1).values)).mean()
        return el_loss, out, torch.zeros(len(rows), dtype=torch.long)

    def language_loss(self, rows: torch.Tensor, out, gold_col: torch.Tensor) -> torch.Tensor:
        """The +A term of the main step for ``--adv-mode`` (before lambda, except for ``grl``'s ramp)."""
        if self.s.adv_mode == "alternating":
            gold = self.train.gold_kb[rows]
            e_lang = self.entity_lang[gold]
            known = e_lang >= 0
            loss = language_mse(self.model, out.mention_shared,
                                F.one_hot(self.mention_lang[rows], self.n_langs).float())
            if bool(known.any()):
                e_shared = out.entity_shared[out.inverse.gather(1, gold_col[:, None]).squeeze(1)][known]
                loss = loss + language_mse(self.model, e_shared, F.one_hot(e_lang[known], self.n_langs).float())
            return loss
        text, langs = self.text_batch()
        shared = self.model.shared(text)
        if self.s.adv_mode == "uniform":
            return uniform_target_loss(self.model, shared)
        progress = min(1.0, self.step_count / (self.steps_per_epoch * max(1, self.s.epochs)))
        scale = grl_scale(self.s.lambda_adv, progress)
        return F.cross_entropy(self.model.hadv(reverse_gradient(shared, scale)), langs)

    def main_step(self, rows: torch.Tensor) -> tuple[float, float]:
        """One update on training rows ``rows``; returns (EL loss, language loss)."""
        el_loss, out, gold_col = self.linking_loss(rows)
        loss = el_loss
        lang_loss = torch.zeros(())
        grl = self.adversarial and self.s.adv_mode == "grl"
        if self.adversarial and self.s.lambda_adv > 0:
            lang_loss = self.language_loss(rows, out, gold_col)
            # grl: the reversal layer carries lambda (ramped) into hs0; hadv learns at full strength
            loss = loss + (lang_loss if grl else self.s.lambda_adv * lang_loss)
        self.optimizer.zero_grad(set_to_none=True)
        if grl:
            self.adv_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if grl:
            self.adv_optimizer.step()
        self.step_count += 1
        return float(el_loss.detach()), float(lang_loss.detach())

    def fit_nil_head(self) -> float | None:
        """Fit the model's learned NIL logit (:mod:`train.nil_logit`) to the training mentions with candidates,
        the ranker fixed and in eval mode; returns its loss (None for a model without the head). Draws no random
        numbers, so the ranker trains as it would without the head."""
        head = self.model.nil_head
        if head is None:
            return None
        t = self.train
        mentions = t.take(torch.nonzero(t.cand_mask.any(dim=1)).flatten())
        if not len(mentions):
            return None
        ranked = rank(self.model, mentions)
        return fit_nil_head(head, ranked.scores, ranked.nil_features, mentions.gold_pos)

    def epoch(self, index: int) -> dict[str, float]:
        """Algorithm 1, one iteration of the outer loop; returns mean losses."""
        self.model.train()
        self.step_count = index * self.steps_per_epoch
        adv_loss = 0.0
        if self.adversarial and self.s.adv_mode != "grl" and (self.s.adv_epochs is None or index < self.s.adv_epochs):
            adv_loss = self.adversarial_steps()
        order = self.rows[torch.randperm(len(self.rows), generator=self.generator)]
        el_total = lang_total = 0.0
        batches = 0
        for start in range(0, len(order), self.s.batch_size):
            el, lang = self.main_step(order[start : start + self.s.batch_size])
            el_total += el
            lang_total += lang
            batches += 1
        return {"loss": el_total / batches, "lang_loss": lang_total / batches,
                "adv_loss": adv_loss / max(1, self.s.adv_steps)}
