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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from xel.precompute.store import atomic_write_json
from xel.train.checkpoint import CheckpointError, check_state_fits, load_state_dict_strict, read_tensors, write_tensors
from xel.train.config import ConfigError, TrainConfig
from xel.train.loop import Trainer

log = logging.getLogger(__name__)

RESUME_TENSORS = "resume.safetensors"
RESUME_STATE = "resume.json"
RESUME_FORMAT = "xel-resume-2"  # 2: epochs chosen on dev F1 + top-candidate recall
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
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{state_path}: format {found!r}, this xel reads {RESUME_FORMAT!r}; {RESTART}")
    _check_state_fields(state, state_path, cfg)
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
    _check_tensors(tensors, trainer, where)
    load_state_dict_strict(trainer.model, _section(tensors, "model."), where)
    best_state = _section(tensors, "best.")
    check_state_fits(trainer.model.state_dict(), best_state, where)
    for name, optimizer in trainer.optimizers().items():
        _load_optimizer(optimizer, _section(tensors, f"{name}."), where, name)
    try:
        trainer.generator.set_state(tensors["rng.trainer"])
        torch.set_rng_state(tensors["rng.torch"])
    except RuntimeError as e:
        raise CheckpointError(f"{where}: an RNG state is not one torch can restore ({e}); {RESTART}") from None
    best = state["best"]
    log.info("%s: resuming seed %d after epoch %d (best so far: epoch %d)", run_dir, seed, state["epoch"],
             best["epoch"])
    return ResumePoint(state["epoch"], Best(best["key"], best["epoch"], best["threshold"], best_state),
                       state["history"])


# resume.json: field -> what it must be
_STATE_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "epoch": (int, "an epoch number >= 0"), "seed": (int, "an integer"), "config": (dict, "the run's config"),
    "best": (dict, "{key, epoch, threshold}"), "history": (list, "one entry per finished epoch"),
    "tensors_sha256": (str, "the sha256 of resume.safetensors' tensors"),
    "best.key": ((int, float), "a number"), "best.epoch": (int, "a finished epoch"),
    "best.threshold": ((int, float), "a finite NIL threshold"),
}


def _check_state_fields(state: dict[str, Any], path: Path, cfg: TrainConfig) -> None:
    """Every field of resume.json present, of its type and in range; else one ``CheckpointError`` naming it."""
    for name, (kind, allowed) in _STATE_FIELDS.items():
        container, _, key = name.rpartition(".")
        holder = state.get(container) if container else state
        if not isinstance(holder, dict) or key not in holder:
            raise CheckpointError(f"{path}: field {name!r} is missing ({allowed}); {RESTART}")
        value = holder[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise CheckpointError(f"{path}: field {name!r} is {str(value)[:60]!r}; {allowed} is required; {RESTART}")
    epoch, best = state["epoch"], state["best"]
    problems = {
        # epochs are numbered from 0; the residual scorer's epoch 0 is its untrained state, so up to cfg.epochs
        "epoch": not 0 <= epoch <= cfg.epochs, "history": len(state["history"]) != epoch + 1,
        "best.epoch": not 0 <= best["epoch"] <= epoch, "best.threshold": not math.isfinite(best["threshold"]),
        "best.key": not math.isfinite(best["key"]),
    }
    for name, bad in problems.items():
        if bad:
            container, _, key = name.rpartition(".")
            value = (state[container] if container else state)[key]
            shown = f"{len(value)} entries" if isinstance(value, list) else repr(value)
            raise CheckpointError(f"{path}: field {name!r} is {shown}, which does not fit epoch {epoch} of a "
                                  f"{cfg.epochs}-epoch run; {RESTART}")


def _check_tensors(tensors: dict[str, torch.Tensor], trainer: Trainer, where: str) -> None:
    """The RNG states present, every floating tensor finite, every optimizer state tensor shaped as its parameter."""
    for key in ("rng.trainer", "rng.torch"):
        if key not in tensors:
            raise CheckpointError(f"{where}: tensor {key!r} is missing; {RESTART}")
        if tensors[key].dtype != torch.uint8:
            raise CheckpointError(f"{where}: tensor {key!r} is {tensors[key].dtype}, an RNG state is uint8; {RESTART}")
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{where}: tensor {key!r} holds NaN or infinite values; {RESTART}")
    for name, optimizer in trainer.optimizers().items():
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for key, value in _section(tensors, f"{name}.").items():
            param, _, field = key.partition(".")
            if not param.isdigit() or int(param) >= len(params):
                raise CheckpointError(f"{where}: {name} state {key!r} names no parameter of this model; {RESTART}")
            want = () if field == "step" else tuple(params[int(param)].shape)
            if tuple(value.shape) != want:
                raise CheckpointError(f"{where}: {name} state {key!r} has shape {tuple(value.shape)}, its parameter "
                                      f"needs {want}; {RESTART}")


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
