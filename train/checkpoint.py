"""Save a :class:`~train.model.Ranker` as safetensors (its :class:`ModelSpec` and a sha256 of its tensors in the
metadata) and load it strictly.

A load never goes partial: a truncated or corrupted file (the sha256 of the tensors no longer matches), a NaN or
infinite value in any tensor, a spec that builds no model, missing or unexpected tensors, or a shape that differs,
raise :class:`CheckpointError` naming the file. Files are written
to a temporary name, fsynced and ``os.replace``d into place, so a checkpoint that exists is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from xel.precompute.files import atomic_write_bytes
from xel.train.model import ModelSpec, Ranker
from xel.train.residual import build_model

CHECKPOINT = "model.safetensors"  # a run directory's weights

log = logging.getLogger(__name__)

FORMAT = "xel-ranker-2"  # -2 adds "tensors_sha256"; -1 files (no checksum) still load, with a warning
READABLE_FORMATS = ("xel-ranker-1", FORMAT)
RERUN = "rerun the xel-train command that wrote it"


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable, corrupted, or does not match the model it is loaded into."""


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and raw bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\x1f{t.dtype}\x1f{tuple(t.shape)}\x1e".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """Write ``tensors`` atomically as safetensors, with ``tensors_sha256`` added to ``metadata``; returns it."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    digest = tensors_sha256(tensors)
    atomic_write_bytes(path, save_bytes(tensors, metadata={**metadata, "tensors_sha256": digest}))
    return digest


def read_tensors(path: str | os.PathLike, rerun: str = RERUN) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, refusing a truncated file or tensors whose sha256 differs
    from the one recorded in the metadata; errors name ``path`` and say ``rerun``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; {rerun}")
    data = path.read_bytes()
    try:
        tensors = load_bytes(data)
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
    except (SafetensorError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({e}); {rerun}") from None
    want = metadata.get("tensors_sha256")
    if want is not None and tensors_sha256(tensors) != want:
        raise CheckpointError(
            f"{path}: the sha256 of its tensors differs from the one recorded when it was written (the file is "
            f"corrupted); {rerun}"
        )
    return tensors, metadata


def check_finite(tensors: dict[str, torch.Tensor], where: str, rerun: str = RERUN) -> None:
    """Refuse NaN or infinite values in any floating-point tensor: a model holding them scores NaN (every mention
    NIL) or shifts every score silently."""
    bad = {name: int((~torch.isfinite(t)).sum()) for name, t in sorted(tensors.items())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())}
    if bad:
        raise CheckpointError(f"{where}: NaN or infinite values in tensors {bad} (name: count); allowed: finite "
                              f"numbers only (a diverged run, or a changed file); {rerun}")


def save_checkpoint(model: Ranker, path: str | os.PathLike) -> None:
    write_tensors(path, model.state_dict(), {"spec": model.spec.to_json(), "format": FORMAT})


def _verified(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    state, meta = read_tensors(path)
    check_finite(state, str(path))  # a resume state checks its own tensors (train.resume)
    fmt = meta.get("format")
    if fmt not in READABLE_FORMATS:
        raise CheckpointError(f"{path}: metadata format {fmt!r}; this xel reads {list(READABLE_FORMATS)}")
    if fmt == FORMAT and "tensors_sha256" not in meta:
        raise CheckpointError(f"{path}: format {fmt} but no 'tensors_sha256' in its metadata (corrupted); {RERUN}")
    if "tensors_sha256" not in meta:
        log.warning("%s: an %s checkpoint has no checksum, so corruption cannot be detected; rerun xel-train to "
                    "rewrite it as %s", path, fmt, FORMAT)
    return state, meta


def check_state_fits(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse ``state`` when any tensor of ``own`` (a model's state dict) is missing, unexpected or shaped apart."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = {k: (tuple(state[k].shape), tuple(own[k].shape)) for k in set(own) & set(state)
              if state[k].shape != own[k].shape}
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{where}: does not fit this model: missing {missing}, unexpected {unexpected}, "
            f"shape (checkpoint, model) {shapes}; build the model with the checkpoint's spec (load_checkpoint)"
        )


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``model``; refuse any missing, unexpected or differently shaped tensor."""
    check_state_fits(model.state_dict(), state, where)
    model.load_state_dict(state, strict=True)


def load_state_strict(model: Ranker, path: str | os.PathLike) -> None:
    """Load checkpoint ``path`` into ``model``, verified and strict (see :func:`load_state_dict_strict`)."""
    state, _ = _verified(path)
    load_state_dict_strict(model, state, str(path))


def load_checkpoint(path: str | os.PathLike) -> Ranker:
    """Rebuild the model from the checkpoint's spec and load it strictly."""
    state, meta = _verified(path)
    if "spec" not in meta:
        raise CheckpointError(f"{path}: metadata has no 'spec'; not an xel-train checkpoint")
    try:
        spec = ModelSpec.from_json(meta["spec"])
        with torch.device("meta"):  # shapes only: an absurd spec allocates nothing before it is refused
            skeleton = build_model(spec)
    except (ValueError, TypeError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: metadata 'spec' {meta['spec'][:200]} builds no model ({e}); {RERUN}") from None
    check_state_fits(skeleton.state_dict(), state, str(path))
    model = build_model(spec)
    load_state_dict_strict(model, state, str(path))
    model.eval()
    return model


def clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
