"""The resume state of a seeded ``xel-train --out`` run, written after every epoch; ``xel-train --resume`` reads it
and continues from the next epoch with the same results as a run that was never interrupted.

In the seed's run directory, both written atomically and without pickle:

* ``resume.safetensors``: the model (``model.*``), the best epoch's weights (``best.*``), each optimizer's state
  tensors (``optimizer.<param>.<name>``, ``adv_optimizer.<param>.<name>``) and the RNG states as uint8 tensors
  (``rng.trainer``: the trainer's generator; ``rng.torch``: torch's global generator, which drives dropout);
* ``resume.json``, written second: the last finished epoch, the best so far (dev key, epoch, NIL threshold), the
  history, the seed, the resolved config and the sha256 of the tensors, which ties the two files together.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from precompute.store import atomic_write_json
from train.checkpoint import CheckpointError, check_state_fits, load_state_dict_strict, read_tensors, write_tensors
from train.config import ConfigError, TrainConfig
from train.loop import Trainer

log = logging.getLogger(__name__)

RESUME_TENSORS = "resume.safetensors"
RESUME_STATE = "resume.json"
RESUME_FORMAT = "xel-resume-1"
# config keys that do not change what a run computes, so they may differ on --resume
NOT_COMPARED = ("resume", "progress", "plots", "out")
RESTART = "rerun without --resume to start the run over"


@dataclass
class Best:
    """The best epoch so far: its selection key (dev F1, or the epoch without dev), NIL threshold and weights."""

    key: float
    epoch: int
    threshold: float
    state: dict[str, torch.Tensor]


@dataclass
class ResumePoint:
    epoch: int  # the last finished epoch; training continues at epoch + 1
    best: Best
    history: list[dict[str, Any]]


def save_resume_state(
    run_dir: Path, trainer: Trainer, cfg: TrainConfig, seed: int, epoch: int, best: Best,
    history: list[dict[str, Any]],
) -> None:
    tensors = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in best.state.items()})
    for name, optimizer in trainer.optimizers().items():
        for param, values in optimizer.state_dict()["state"].items():
            for key, value in values.items():
                if not isinstance(value, torch.Tensor):
                    raise TypeError(f"optimizer {name!r} state {key!r} is a {type(value).__name__}, not a tensor")
                tensors[f"{name}.{param}.{key}"] = value
    tensors["rng.trainer"] = trainer.generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    digest = write_tensors(run_dir / RESUME_TENSORS, tensors, {"format": RESUME_FORMAT, "epoch": str(epoch)})
    atomic_write_json(run_dir / RESUME_STATE, {
        "format": RESUME_FORMAT, "epoch": epoch, "seed": seed, "config": cfg.to_dict(),
        "best": {"key": best.key, "epoch": best.epoch, "threshold": best.threshold},
        "history": history, "tensors_sha256": digest,
    })


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for every compared config key whose value differs."""
    keys = sorted((set(saved) | set(current)) - set(NOT_COMPARED))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def load_resume_state(run_dir: Path, trainer: Trainer, cfg: TrainConfig, seed: int) -> ResumePoint | None:
    """Restore ``trainer`` (model, optimizers, RNGs) from ``run_dir``'s resume state and return where to go on;
    ``None`` when the directory holds none. Refuses a state of another config or seed, or a damaged one."""
    state_path, tensors_path = run_dir / RESUME_STATE, run_dir / RESUME_TENSORS
    if not state_path.is_file():
        if tensors_path.is_file():
            raise CheckpointError(f"{tensors_path}: present without {state_path} (killed during the first "
                                  f"save); {RESTART}")
        log.info("%s: no resume state; training seed %d from the first epoch", run_dir, seed)
        return None
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{state_path}: not valid JSON ({e}); {RESTART}") from None
    if state.get("format") != RESUME_FORMAT:
        raise CheckpointError(f"{state_path}: format {state.get('format')!r}, this xel reads {RESUME_FORMAT!r}")
    differences = config_differences(state["config"], cfg.to_dict())
    if differences:
        raise ConfigError(f"--resume: {state_path} was written by a run with another config ({'; '.join(differences)}"
                          f"); resume with the same flags, or {RESTART}")
    if state["seed"] != seed:
        raise ConfigError(f"--resume: {state_path} holds seed {state['seed']}, this run trains seed {seed}; {RESTART}")
    tensors, meta = read_tensors(tensors_path, rerun=RESTART)
    if meta.get("tensors_sha256") != state["tensors_sha256"]:
        raise CheckpointError(f"{tensors_path} (epoch {meta.get('epoch')}) and {state_path} (epoch {state['epoch']})"
                              f" do not belong together: the run was killed between writing them; {RESTART}")
    where = str(tensors_path)
    load_state_dict_strict(trainer.model, _section(tensors, "model."), where)
    best_state = _section(tensors, "best.")
    check_state_fits(trainer.model.state_dict(), best_state, where)
    for name, optimizer in trainer.optimizers().items():
        _load_optimizer(optimizer, _section(tensors, f"{name}."), where, name)
    trainer.generator.set_state(tensors["rng.trainer"])
    torch.set_rng_state(tensors["rng.torch"])
    best = state["best"]
    log.info("%s: resuming seed %d after epoch %d (best so far: epoch %d)", run_dir, seed, state["epoch"],
             best["epoch"])
    return ResumePoint(state["epoch"], Best(best["key"], best["epoch"], best["threshold"], best_state),
                       state["history"])


def _section(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _load_optimizer(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor], where: str, name: str) -> None:
    """Load ``param.key`` tensors into ``optimizer``'s state; its hyperparameters are the current (equal) config's."""
    current = optimizer.state_dict()
    params = {p for group in current["param_groups"] for p in group["params"]}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        param, _, field = key.partition(".")
        if not param.isdigit() or int(param) not in params:
            raise CheckpointError(f"{where}: {name} state {key!r} names no parameter of this model; {RESTART}")
        state.setdefault(int(param), {})[field] = value
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
