"""Save a :class:`~train.model.Ranker` as safetensors (its :class:`ModelSpec` in the metadata) and load it strictly.

A load never goes partial: missing or unexpected tensors, or a shape that differs, raise :class:`CheckpointError`
naming them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from train.model import ModelSpec, Ranker


class CheckpointError(RuntimeError):
    """A checkpoint does not match the model it is loaded into."""


def save_checkpoint(model: Ranker, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"spec": model.spec.to_json(), "format": "xel-ranker-1"})
    os.replace(tmp, path)


def load_state_strict(model: Ranker, path: str | os.PathLike) -> None:
    """Load ``path`` into ``model``; refuse any missing, unexpected or differently shaped tensor."""
    state = load_file(str(path))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = {k: (tuple(state[k].shape), tuple(own[k].shape)) for k in set(own) & set(state)
              if state[k].shape != own[k].shape}
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{path}: does not fit this model: missing {missing}, unexpected {unexpected}, "
            f"shape (checkpoint, model) {shapes}; build the model with the checkpoint's spec (load_checkpoint)"
        )
    model.load_state_dict(state, strict=True)


def load_checkpoint(path: str | os.PathLike) -> Ranker:
    """Rebuild the model from the checkpoint's spec and load it strictly."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "spec" not in meta:
        raise CheckpointError(f"{path}: metadata has no 'spec'; not an xel-train checkpoint")
    model = Ranker(ModelSpec.from_json(meta["spec"]))
    load_state_strict(model, path)
    model.eval()
    return model


def clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
