"""What ``xel-precompute`` runs: the frozen :class:`PrecomputeConfig` its flags fill, the encoder it resolves, the
settings a store is guarded by, and the checks on ``--out`` before any work (:func:`precompute.run.run` calls them).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xel.precompute.identity import same_encoder
from xel.precompute.onnx_backend import QUANTIZE as ONNX_QUANTIZE
from xel.precompute.onnx_backend import OnnxBackendError
from xel.precompute.onnx_backend import check_cache as check_onnx_cache
from xel.precompute.settings import DEFAULT_BACKEND, EncoderSettings, resolve_encoder
from xel.precompute.store import (
    KINDS,
    RUN_CONFIG,
    atomic_write_json,
)

log = logging.getLogger(__name__)


# Settings that change what is written; a rerun into the same --out must match them.
GUARDED = ("encoder", "layer", "max_length", "prefix", "dtype", "backend", "shard_size", "kinds")


UNNAMED = {"backend": DEFAULT_BACKEND}  # what a setting that run_settings leaves out stands for


class PrecomputeError(RuntimeError):
    """The run cannot start or cannot finish; the message says why and what to do."""


def check_job_paths(cfg: PrecomputeConfig) -> None:
    """Inside a Ray job (``ray job submit``) the driver runs in the job's copy of ``--working-dir``: a relative
    ``--model`` or ``--out`` would point into that copy (which lacks the git-ignored models/ and is deleted with
    the job), not the directory the job was submitted from. Refuse them, saying what to pass instead."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        return
    relative = [(flag, path) for flag, path in (("--model", cfg.model), ("--out", cfg.out)) if not path.is_absolute()]
    if relative:
        shown = ", ".join(f"{flag} {path}" for flag, path in relative)
        fix = " ".join(f'{flag} "$PWD/{path}"' for flag, path in relative)
        raise PrecomputeError(
            f"{shown}: a relative path inside a Ray job resolves against the job's copy of --working-dir "
            f"({Path.cwd()}), not the directory you submitted from; that copy has no git-ignored models/ and is "
            f"deleted with the job. Pass absolute paths, e.g. {fix}"
        )


@dataclass(frozen=True)
class PrecomputeConfig:
    """What ``xel-precompute`` runs; its flags default to these values."""

    data: Path
    model: Path
    out: Path
    kinds: tuple[str, ...] = KINDS
    layer: int = -1
    max_length: int | None = None
    prefix: str | None = None
    dtype: str = "auto"  # resolved once by resolve_encoder (hardware.auto_dtype)
    backend: str | None = None  # torch | onnx; None: onnx for int8, else torch
    max_tokens_per_batch: int | None = None
    shard_size: int = 4096
    actors: int = 1
    cpus_per_actor: float | None = None
    gpus_per_actor: float = 0.0
    device: str = "auto"
    address: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def encoder_settings(cfg: PrecomputeConfig) -> EncoderSettings:
    """The flags' encoder, resolved once for the whole run (the model hashed once), on the actors' device; what
    ``auto`` leaves to the machine is decided by each actor (:meth:`EncoderSettings.resolved`). The packages the
    backend needs are checked here, before Ray starts, for what an actor on this machine would run."""
    settings = resolve_encoder(cfg.model, layer=cfg.layer, max_length=cfg.max_length, prefix=cfg.prefix,
                               dtype=cfg.dtype, device=actor_device(cfg), max_tokens_per_batch=cfg.max_tokens_per_batch,
                               backend=cfg.backend)
    if settings.device == "cpu":  # what an actor on this machine would run: its backend's packages checked here
        try:
            here = settings.resolved()
            if here.backend == "onnx":
                check_onnx_cache(here.model, here.identity["fingerprint"], here.dtype)
        except OnnxBackendError as e:
            raise PrecomputeError(str(e)) from None
        if settings.dtype == "auto":
            log.info("--dtype auto on this machine: %s on %s (%s); each actor decides on its own machine",
                     here.dtype, here.backend, here.dtype_reason)
    return settings


def may_run_int8(encoder: EncoderSettings) -> bool:
    """Whether the actors may encode in int8: asked, or ``--dtype auto`` on a backend that runs it."""
    return encoder.dtype == "int8" or (encoder.dtype == "auto" and encoder.backend in (None, "onnx"))


def run_settings(cfg: PrecomputeConfig, encoder: EncoderSettings) -> dict[str, Any]:
    """The settings a store is guarded by and its rows are hashed with (``max_length`` as asked, not resolved)."""
    return {
        "encoder": encoder.identity["fingerprint"], "layer": encoder.layer, "max_length": cfg.max_length,
        "prefix": encoder.prefix, "dtype": encoder.dtype, "shard_size": cfg.shard_size, "kinds": sorted(cfg.kinds),
        "max_tokens_per_batch": cfg.max_tokens_per_batch,
        # only a non-default backend is named, so that torch stores written before backends existed keep their
        # hashes; with --dtype auto it is the one asked (None: each actor's choice)
        **({"backend": encoder.backend} if encoder.backend not in (None, DEFAULT_BACKEND) else {}),
        # the int8 recipe, in every row hash of a store that int8 may encode (--dtype auto may pick it)
        **({"quantization": dict(ONNX_QUANTIZE)} if may_run_int8(encoder) else {}),
    }


def adopt_store_identity(out: Path, encoder: dict[str, Any]) -> dict[str, Any]:
    """``encoder`` with the fingerprint the store in ``out`` recorded for the same model files. Stores written before
    fingerprints were by content only recorded one that included the model directory's name; their shards and
    indexes stay valid for the same files in any directory."""
    try:
        previous = json.loads((out / RUN_CONFIG).read_text(encoding="utf-8")).get("encoder")
    except (OSError, ValueError, AttributeError):
        return encoder
    if isinstance(previous, dict) and same_encoder(previous, encoder) and isinstance(previous.get("fingerprint"), str):
        return {**encoder, "fingerprint": previous["fingerprint"]}
    return encoder


def prepare_out_dir(out: Path, run_config: dict[str, Any]) -> None:
    """Refuse an --out that holds something else or a store made with other settings; else claim it."""
    if out.exists() and not out.is_dir():
        raise PrecomputeError(f"--out {out}: exists and is not a directory")
    config_file = out / RUN_CONFIG
    if out.is_dir() and any(out.iterdir()):
        if not config_file.is_file():
            raise PrecomputeError(
                f"--out {out}: directory is not empty and holds no xel store ({RUN_CONFIG} missing); "
                "choose an empty or new directory"
            )
        previous = _previous_settings(config_file)
        asked = run_config["settings"]
        diff = {k: (previous.get(k, UNNAMED.get(k)), asked.get(k, UNNAMED.get(k))) for k in GUARDED
                if previous.get(k, UNNAMED.get(k)) != asked.get(k, UNNAMED.get(k))}
        if set(diff.get("kinds", ((), ()))[0] or ()) <= set(asked.get("kinds") or ()):
            diff.pop("kinds", None)  # more kinds than the store has (a store from before mn): the others are kept
        if diff:
            shown = "; ".join(f"{k}: store has {a!r}, this run asks {b!r}" for k, (a, b) in diff.items())
            raise PrecomputeError(
                f"--out {out}: holds a store made with other settings ({shown}). Use another --out, or delete it"
            )
    atomic_write_json(config_file, run_config)


def _previous_settings(config_file: Path) -> dict[str, Any]:
    """The settings an earlier xel-precompute recorded in ``config_file``; one message with the fix when that file
    is not what xel-precompute wrote (another command wrote into the store, or it was edited)."""
    try:
        previous = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        previous = e
    if not isinstance(previous, dict) or not isinstance(previous.get("settings"), dict):
        if isinstance(previous, Exception):
            found = f"unreadable ({previous})"
        else:
            keys = sorted(previous)[:6] if isinstance(previous, dict) else type(previous).__name__
            found = f"without the 'settings' xel-precompute writes (keys: {keys})"
        raise PrecomputeError(
            f"--out {config_file.parent}: {config_file.name} is {found}, so the store's settings are unknown (was "
            f"another command's output written into the store?). Restore it, or delete {config_file.parent} "
            "(or use another --out) and rerun to encode from scratch"
        )
    return previous["settings"]


def actor_device(cfg: PrecomputeConfig) -> str:
    """The actors' device: ``--gpus-per-actor 1`` asks Ray for one GPU per actor (so Ray places one actor per GPU)
    and runs the model there; else the CPU. ``--device auto`` means what it means everywhere (a GPU when the
    process that runs the encoder has one, :func:`~precompute.hardware.resolve_device`): an actor has a GPU only
    when Ray gave it one (Ray does not hide the machine's other GPUs from an actor it gave none)."""
    if cfg.gpus_per_actor > 0 and cfg.device == "cpu":
        raise PrecomputeError("--gpus-per-actor > 0 with --device cpu: drop one of them")
    device = "cuda" if cfg.gpus_per_actor > 0 else ("cpu" if cfg.device == "auto" else cfg.device)
    if device == "cuda" and cfg.gpus_per_actor == 0:
        raise PrecomputeError("--device cuda needs --gpus-per-actor > 0, so that Ray gives each actor a GPU")
    return device
