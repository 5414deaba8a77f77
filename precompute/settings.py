"""How an encoder runs (:class:`EncoderSettings`): resolved from the flags by :func:`resolve_encoder` on the precompute
driver, completed where the encoder runs (:meth:`EncoderSettings.resolved`), recorded in the store, read back at query
time (:meth:`EncoderSettings.from_manifest`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xel.precompute.hardware import auto_dtype, resolve_device
from xel.precompute.identity import EncodeError, default_prefix, encoder_identity, same_encoder
from xel.precompute.onnx_backend import QUANTIZE, check_dependencies, gate_passed

log = logging.getLogger(__name__)


# RoBERTa-style models number positions from padding_idx + 1, so two position rows are not usable.
_OFFSET_POSITION_MODELS = ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl")


def max_length_limit(model_type: str | None, max_position_embeddings: int, tokenizer_limit: int | None,
                     requested: int | None) -> int:
    """Subwords per text, specials included: the model's position limit (RoBERTa-style models number positions from
    ``padding_idx + 1``, so two rows are not usable), the tokenizer's ``model_max_length`` when it is a real limit,
    and ``requested`` (``--max-length``), whichever is smallest."""
    limit = max_position_embeddings - (2 if model_type in _OFFSET_POSITION_MODELS else 0)
    if isinstance(tokenizer_limit, int) and tokenizer_limit < 10**6:
        limit = min(limit, tokenizer_limit)
    return min(limit, requested or limit)


DEFAULT_BACKEND = "torch"  # what a store that names no backend ran (stores written before backends existed)
BACKENDS = {"torch": ("fp32", "bf16"), "onnx": ("fp32", "int8")}  # the dtypes each backend runs


@dataclass(frozen=True)
class EncoderSettings:
    """How a store's encoder runs: resolved from the flags by :func:`resolve_encoder` on the precompute driver (the
    model hashed once), passed to each actor, completed there by :meth:`resolved` (``--dtype auto``, ``--device
    auto`` and the backend depend on the machine that runs the encoder), recorded per shard in the store, and read
    back from its manifest at query time (:meth:`from_manifest`)."""

    model: str  # the model directory, as given (each Ray node resolves it in its own working directory)
    identity: dict[str, Any]  # encoder_identity(model): name, content hashes, fingerprint; hashed once
    dtype: str  # "bf16" | "fp32" | "int8", or "auto" until resolved where the encoder runs
    device: str  # "cpu" | "cuda", or "auto" until resolved where the encoder runs
    layer: int
    max_length: int  # resolved: never above the model's or the tokenizer's limit
    prefix: str
    max_tokens_per_batch: int | None = None  # None: 16,384 on CPU, sized from free memory on GPU
    backend: str | None = DEFAULT_BACKEND  # "torch" | "onnx" (ONNX Runtime, CPU; int8 runs only there); None: auto
    dtype_reason: str = ""  # why --dtype auto chose ``dtype`` (empty when the dtype was given)

    def resolved(self, cpuinfo: str | None = None) -> EncoderSettings:
        """These settings with ``auto`` decided by this machine, where the encoder runs: the device
        (:func:`~precompute.hardware.resolve_device`), then the dtype (:func:`~precompute.hardware.auto_dtype`,
        with the int8 quality gate's verdict for this encoder) and the backend (:func:`resolve_backend`)."""
        device = resolve_device(self.device)
        dtype, reason = self.dtype, self.dtype_reason
        if dtype == "auto":
            dtype, reason = auto_dtype(on_gpu=device == "cuda", cpuinfo=cpuinfo,
                                       int8_gate=gate_passed(self.identity["fingerprint"]))
            if dtype == "int8" and self.backend == "torch":
                dtype, reason = "fp32", f"{reason}; but --backend torch runs no int8"
            log.info("--dtype auto: %s (%s)", dtype, reason)
        backend = resolve_backend(self.backend, dtype, device)
        if backend == "onnx":
            check_dependencies()
        return dataclasses.replace(self, dtype=dtype, device=device, backend=backend, dtype_reason=reason)

    @property
    def is_resolved(self) -> bool:
        return "auto" not in (self.dtype, self.device) and self.backend is not None

    def encoded_with(self) -> dict[str, str]:
        """What a shard records of the encoder that wrote it (resolved settings only)."""
        if not self.is_resolved:
            raise ValueError(f"encoder settings not resolved yet: dtype {self.dtype}, device {self.device}")
        return {"dtype": self.dtype, "backend": str(self.backend), "device": self.device,
                **({"dtype_reason": self.dtype_reason} if self.dtype_reason else {})}

    def manifest_fields(self) -> dict[str, Any]:
        """What the store manifest records of the encoder (``model`` resolved on the driver); what ran it (dtype,
        backend, device) is recorded from the shards (:func:`precompute.run.encoders_of`)."""
        return {"encoder": self.identity, "model": str(Path(self.model).resolve()), "layer": self.layer,
                "max_length": self.max_length, "prefix": self.prefix}

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], model_dir: str | Path | None = None,
                      device: str = "auto") -> EncoderSettings:
        """The settings a store was built with, to run its encoder again here (``device``, resolved when the
        encoder loads); refuses a model directory whose content differs from the one the store was built with."""
        given = model_dir is not None
        model_dir = Path(model_dir or manifest["model"])
        try:
            identity = encoder_identity(model_dir)
        except EncodeError as e:
            if given:
                raise
            raise EncodeError(f"{e}. The store was built with the model at {model_dir}; if it was moved or copied, "
                              "pass its new place with --model DIR") from None
        if not same_encoder(identity, manifest["encoder"]):
            raise EncodeError(
                f"{model_dir}: its files (config, weights, tokenizer sha256) differ from those of the encoder the "
                f"store was built with ({manifest['encoder'].get('name')}); pass that model with --model DIR"
            )
        identity = {**identity, "fingerprint": manifest["encoder"]["fingerprint"]}
        backend = manifest.get("backend", DEFAULT_BACKEND)
        recipe = manifest.get("settings", {}).get("quantization")
        if manifest["dtype"] == "int8" and recipe != QUANTIZE:
            raise EncodeError(f"the store was encoded in int8 quantised as {recipe}, this xel quantises as {QUANTIZE}; "
                              "queries would not encode as the store did. Rerun xel-precompute into a new --out")
        return cls(model=str(model_dir), identity=identity, dtype=manifest["dtype"],
                   device="cpu" if backend == "onnx" else device, layer=manifest["layer"],
                   max_length=manifest["max_length"], prefix=manifest["prefix"], backend=backend)


def resolve_encoder(
    model: str | Path, *, layer: int = -1, max_length: int | None = None, prefix: str | None = None,
    dtype: str = "auto", device: str = "auto", max_tokens_per_batch: int | None = None, backend: str | None = None,
) -> EncoderSettings:
    """Resolve what the flags leave open and does not depend on the machine, once: the model's identity (its files
    hashed), the prefix (the encoder's own when ``None``), the max length (the model's limit when ``None``), and the
    backend of a given dtype (``None``: onnx for int8, else torch). ``dtype`` and ``device`` ``auto`` stay ``auto``
    (and the backend open) until :meth:`EncoderSettings.resolved` runs where the encoder runs."""
    identity = encoder_identity(model)
    config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    tok_cfg = Path(model) / "tokenizer_config.json"
    tokenizer_limit = json.loads(tok_cfg.read_text(encoding="utf-8")).get("model_max_length") \
        if tok_cfg.is_file() else None
    if backend is not None and backend not in BACKENDS:
        raise EncodeError(f"backend {backend!r} is unknown; allowed: {', '.join(BACKENDS)}")
    if dtype != "auto":
        backend = resolve_backend(backend, dtype, device if device != "auto" else "cpu")
    return EncoderSettings(
        model=str(model), identity=identity, dtype=dtype, device=device,
        layer=layer, prefix=default_prefix(model) if prefix is None else prefix,
        max_length=max_length_limit(config.get("model_type"), int(config["max_position_embeddings"]),
                                    tokenizer_limit, max_length),
        max_tokens_per_batch=max_tokens_per_batch, backend=backend,
    )


def resolve_backend(backend: str | None, dtype: str, device: str) -> str:
    """``None``: onnx for int8, else :data:`DEFAULT_BACKEND`. Refuses what a backend cannot run: int8 on torch,
    bf16 on onnx, onnx on a GPU (xel installs ONNX Runtime's CPU build)."""
    backend = backend or ("onnx" if dtype == "int8" else DEFAULT_BACKEND)
    if backend not in BACKENDS:
        raise EncodeError(f"backend {backend!r} is unknown; allowed: {', '.join(BACKENDS)}")
    if dtype not in BACKENDS[backend]:
        raise EncodeError(f"dtype {dtype!r} does not run on backend {backend!r}; allowed there: "
                          f"{', '.join(BACKENDS[backend])} (int8 runs on --backend onnx, bf16 on --backend torch)")
    if backend == "onnx" and device == "cuda":
        raise EncodeError(f"backend onnx runs on the CPU, not on device {device!r}; use --backend torch on a GPU")
    return backend
