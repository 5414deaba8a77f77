"""Ranker: the factorised scorer equals concatenate-then-MLP; strict checkpoints; Algorithm 1's parameter updates."""

from __future__ import annotations

import pytest
import torch
from xel.train.adversarial import adversarial_step, inverted_labels
from xel.train.checkpoint import CheckpointError, load_checkpoint, load_state_strict, save_checkpoint
from xel.train.data import KB, Mentions
from xel.train.loop import LoopSettings, Trainer, sample_negatives
from xel.train.model import ModelSpec, Ranker
from xel.train.text import LanguageText

DIM = 12


def _spec(**kw) -> ModelSpec:
    base = dict(dim=DIM, hs_sizes=(16, 8), hc_sizes=(10,), final_sizes=(8, 4), dropout=0.2)
    return ModelSpec(**{**base, **kw})


def _mentions(m: int = 20, e: int = 15, k: int = 5, pop: int = 0, seed: int = 0) -> Mentions:
    g = torch.Generator().manual_seed(seed)
    kb = KB(ids=[f"Q{i}" for i in range(e)], index={f"Q{i}": i for i in range(e)}, langs=["en"] * e,
            es=torch.randn(e, DIM, generator=g), ec=torch.randn(e, DIM, generator=g),
            popularity=torch.rand(e, pop, generator=g))
    cand = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(m)])
    return Mentions(kb=kb, ids=[f"m{i}" for i in range(m)], langs=["en"] * m, types=[None] * m,
                    golds=[kb.ids[int(c)] for c in cand[:, 0]], ms=torch.randn(m, DIM, generator=g),
                    mc=torch.randn(m, DIM, generator=g), cand=cand, cand_mask=torch.ones(m, k, dtype=torch.bool),
                    gold_pos=torch.zeros(m, dtype=torch.long), gold_kb=cand[:, 0].clone())


@pytest.mark.parametrize("adversarial,pop", [(False, 0), (True, 2)])
def test_factorised_scorer_equals_concatenate_then_mlp(adversarial: bool, pop: int) -> None:
    torch.manual_seed(0)
    spec = _spec(popularity_dim=pop, shared_size=6 if adversarial else None,
                 languages=("de", "en") if adversarial else ())
    model = Ranker(spec).eval()
    data = _mentions(pop=pop)
    model.set_standardization(torch.randn(50, spec.dim) * 3 + 1, torch.randn(50, spec.dim) * 2 - 1)
    assert not torch.equal(model.name_mean, torch.zeros(spec.dim))
    fast = model(data.ms, data.mc, data.cand, data.kb.es, data.kb.ec, data.kb.popularity).scores
    m, k = data.cand.shape
    rows = data.cand.flatten()
    slow = model.score_concat(data.ms.repeat_interleave(k, 0), data.mc.repeat_interleave(k, 0), data.kb.es[rows],
                              data.kb.ec[rows], data.kb.popularity[rows]).view(m, k)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert fast.abs().max() <= 1.0


def test_strict_checkpoint_roundtrip_and_refusal(tmp_path) -> None:
    torch.manual_seed(0)
    model = Ranker(_spec())
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path)
    loaded = load_checkpoint(path)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    with pytest.raises(CheckpointError, match="shape"):
        load_state_strict(Ranker(_spec(hs_sizes=(16, 9))), path)
    with pytest.raises(CheckpointError, match="missing"):
        load_state_strict(Ranker(_spec(shared_size=6, languages=("de", "en"))), path)


def test_negatives_exclude_gold_and_top_up_from_kb() -> None:
    g = torch.Generator().manual_seed(0)
    cand = torch.tensor([[3, 4, 5, 0], [7, 8, 0, 0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    neg = sample_negatives(cand, mask, torch.tensor([0, 1]), torch.tensor([3, 8]), 4, 10, g)
    assert neg.shape == (2, 4)
    assert set(neg[0, :2].tolist()) == {4, 5}  # the two real negatives first (random keys rank above padding)
    assert neg[1, 0].item() == 7
    assert 3 not in neg[0].tolist() and 8 not in neg[1].tolist()


def test_inverted_labels_and_their_distribution_with_several_l2() -> None:
    # languages: de=0, en=1, zh=2; source en, L2 de and zh
    g = torch.Generator().manual_seed(0)
    n = 6000
    english = inverted_labels(torch.full((n,), 1), [1], [0, 2], 3, g)
    assert english[:, 1].sum() == 0  # never its own label
    share_de = english[:, 0].mean().item()
    assert abs(share_de - 0.5) < 0.03  # uniform over the L2 languages
    l2 = inverted_labels(torch.tensor([0, 2] * 10), [1], [0, 2], 3, g)
    assert torch.equal(l2.argmax(1), torch.ones(20, dtype=torch.long))  # L2 text is labelled English
    assert torch.equal(l2.sum(1), torch.ones(20))


def _adv_trainer() -> tuple[Ranker, Trainer]:
    torch.manual_seed(0)
    model = Ranker(_spec(shared_size=6, languages=("de", "en"), dropout=0.0))
    data = _mentions()
    text = LanguageText("names", {"en": torch.randn(10, DIM), "de": torch.randn(10, DIM)})
    settings = LoopSettings(lr=1e-2, batch_size=8, negatives=3, margin=0.5, lambda_adv=0.5, adv_steps=1)
    return model, Trainer(model, data, settings, 0, text, ("en",), ("de",))


def _params(model: Ranker) -> dict[str, torch.Tensor]:
    """Learned parameters only (the standardization buffers are fixed before training)."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _changed(before: dict[str, torch.Tensor], model: Ranker) -> set[str]:
    return {k for k, v in _params(model).items() if not torch.equal(v, before[k])}


def test_adversarial_step_changes_only_hadv() -> None:
    model, trainer = _adv_trainer()
    before = _params(model)
    adversarial_step(model, trainer.adv_optimizer, trainer.text_a[:4], trainer.langs_a[:4], trainer.text_b[:4],
                     trainer.langs_b[:4], trainer.source, trainer.l2, trainer.generator)
    assert _changed(before, model) == {"hadv.weight", "hadv.bias"}


def test_main_step_changes_everything_but_hadv() -> None:
    model, trainer = _adv_trainer()
    before = _params(model)
    trainer.main_step(torch.arange(8))
    assert _changed(before, model) == set(before) - {"hadv.weight", "hadv.bias"}


def test_standardization_travels_with_the_checkpoint(tmp_path) -> None:
    from xel.train.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = Ranker(_spec()).eval()
    model.set_standardization(torch.randn(30, DIM) + 5, torch.randn(30, DIM) - 5)
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors").eval()
    data = _mentions()
    args = (data.ms, data.mc, data.cand, data.kb.es, data.kb.ec, data.kb.popularity)
    torch.testing.assert_close(model(*args).scores, loaded(*args).scores)
