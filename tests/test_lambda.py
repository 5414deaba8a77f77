"""λ followed from the config to the loss: the main step backpropagates EL + λ·language loss, and λ = 0 is the plain
EL update (paper §3.1, Algorithm 1, lines 10-19)."""

from __future__ import annotations

import pytest
import torch
from xel.train.config import TrainConfig
from xel.train.data import KB, Mentions
from xel.train.fit import fit
from xel.train.loop import LoopSettings, Trainer
from xel.train.model import ModelSpec, Ranker
from xel.train.prepare import prepare
from xel.train.text import LanguageText

from tests.train_fixtures import synthetic_store

DIM = 12


def _trainer(lambda_adv: float) -> Trainer:
    """The same model, data and generator for every λ (dropout off, so a step is a function of λ alone)."""
    torch.manual_seed(0)
    spec = ModelSpec(dim=DIM, hs_sizes=(16,), hc_sizes=(10,), final_sizes=(8,), dropout=0.0, shared_size=6,
                     languages=("de", "en"))
    g = torch.Generator().manual_seed(0)
    e, m, k = 15, 16, 5
    kb = KB(ids=[f"Q{i}" for i in range(e)], index={f"Q{i}": i for i in range(e)}, langs=["en"] * 10 + ["de"] * 5,
            es=torch.randn(e, DIM, generator=g), ec=torch.randn(e, DIM, generator=g), popularity=torch.zeros(e, 0))
    cand = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(m)])
    data = Mentions(kb=kb, ids=[f"m{i}" for i in range(m)], langs=["en"] * m, types=[None] * m,
                    golds=[kb.ids[int(c)] for c in cand[:, 0]], ms=torch.randn(m, DIM, generator=g),
                    mc=torch.randn(m, DIM, generator=g), cand=cand, cand_mask=torch.ones(m, k, dtype=torch.bool),
                    gold_pos=torch.zeros(m, dtype=torch.long), gold_kb=cand[:, 0].clone())
    text = LanguageText("names", {"en": torch.randn(10, DIM, generator=g), "de": torch.randn(10, DIM, generator=g)})
    settings = LoopSettings(lr=1e-2, batch_size=8, negatives=3, margin=0.5, lambda_adv=lambda_adv, adv_steps=1)
    return Trainer(Ranker(spec), data, settings, 0, text, ("en",), ("de",))


class _Recorder:
    """Inside ``Trainer.main_step``: the loss each ``backward`` runs on, and every parameter's gradient at the
    optimizer step, next to the (EL, language) losses the step returns."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.steps: list[dict] = []
        backward, main_step = torch.Tensor.backward, Trainer.main_step
        recorder = self

        def recording_backward(tensor: torch.Tensor, *args, **kwargs):
            if recorder.active is not None:
                recorder.active["loss"] = float(tensor.detach())
            return backward(tensor, *args, **kwargs)

        def recording_main_step(trainer: Trainer, rows: torch.Tensor) -> tuple[float, float]:
            recorder.active = {}
            try:
                el, lang = main_step(trainer, rows)
            finally:
                step, recorder.active = recorder.active, None
            step.update(el=el, lang=lang, lambda_adv=trainer.s.lambda_adv)
            recorder.steps.append(step)
            return el, lang

        self.active: dict | None = None
        monkeypatch.setattr(torch.Tensor, "backward", recording_backward)
        monkeypatch.setattr(Trainer, "main_step", recording_main_step)


def _gradients_of_one_step(lambda_adv: float) -> dict[str, torch.Tensor]:
    trainer = _trainer(lambda_adv)
    grads: dict[str, torch.Tensor] = {}
    step = trainer.optimizer.step

    stepped = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}

    def recording_step(*args, **kwargs):
        grads.update({name: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                      for name, p in trainer.model.named_parameters() if id(p) in stepped})
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.main_step(torch.arange(8))
    return grads


@pytest.mark.parametrize("lambda_adv", [0.0, 0.25, 2.0])
def test_main_step_loss_is_el_plus_lambda_times_language_loss(lambda_adv, monkeypatch) -> None:
    recorder = _Recorder(monkeypatch)
    el, lang = _trainer(lambda_adv).main_step(torch.arange(8))
    (step,) = recorder.steps
    assert step["loss"] == pytest.approx(el + lambda_adv * lang, rel=1e-6, abs=1e-7)
    if lambda_adv == 0:
        assert lang == 0.0 and step["loss"] == pytest.approx(el, rel=1e-7)  # the language term is not computed
    else:
        assert lang > 0


def test_lambda_scales_the_language_gradient_and_zero_is_the_plain_update() -> None:
    """The update's gradient is grad(EL) + λ·grad(language loss): linear in λ, the EL gradient alone at λ = 0."""
    plain, one, quarter = (_gradients_of_one_step(x) for x in (0.0, 1.0, 0.25))
    assert set(plain) == set(one) == set(quarter)
    language = {name: one[name] - plain[name] for name in plain}
    assert any(float(v.abs().max()) > 0 for v in language.values())  # λ reaches the shared layer's gradient
    for name in plain:
        torch.testing.assert_close(quarter[name], plain[name] + 0.25 * language[name], rtol=1e-4, atol=1e-6)
    assert not any(name.startswith("hadv") for name in plain)  # the main step never updates the classifier


@pytest.mark.parametrize("lambda_adv", [0.0, 0.3])
def test_the_configured_lambda_reaches_every_main_step_of_a_run(lambda_adv, tmp_path, monkeypatch) -> None:
    """From ``TrainConfig.lambda_adv`` (``--lambda``) through ``fit`` to each main step's backpropagated loss."""
    path = synthetic_store(tmp_path / "s", langs={"en": 60, "de": 20})
    cfg = TrainConfig(features=str(path), epochs=1, adversarial=True, lambda_adv=lambda_adv, hs_sizes=(16,),
                      hc_sizes=(16,), final_sizes=(8,), batch_size=16, plots=False, threads=1)
    recorder = _Recorder(monkeypatch)
    fit(cfg, prepare(cfg), 0, progress=False)
    assert recorder.steps
    for step in recorder.steps:
        assert step["lambda_adv"] == lambda_adv
        assert step["loss"] == pytest.approx(step["el"] + lambda_adv * step["lang"], rel=1e-6, abs=1e-7)
    assert (max(s["lang"] for s in recorder.steps) > 0) == (lambda_adv > 0)
