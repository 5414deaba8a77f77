"""What the machine that runs the encoder offers, and what ``--dtype auto`` and ``--device auto`` mean there.

Both are resolved in the process that runs the encoder (a precompute actor, ``xel-nn query``, ``xel-link``), never
on the driver for another node: :meth:`precompute.settings.EncoderSettings.resolved` calls them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from xel.precompute.identity import EncodeError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(requested: str) -> str:
    """The one meaning of ``--device auto``, decided in the process that runs the encoder: ``cuda`` when it sees a
    GPU, else ``cpu`` (a precompute actor that Ray gave no GPU is sent ``cpu``: Ray does not hide the machine's GPUs
    from it; :func:`precompute.config.actor_device`). ``cuda`` without a visible GPU is refused."""
    if requested not in DEVICES:
        raise EncodeError(f"device {requested!r} is unknown; allowed: {', '.join(DEVICES)}")
    if requested == "cpu":
        return requested
    import torch  # here, not at the top: the precompute driver resolves "cpu" and never loads torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise EncodeError("device 'cuda' requested but no CUDA GPU is visible; use --device cpu or auto")
    return requested


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags, from ``cpuinfo`` (the text of ``/proc/cpuinfo``; read here when ``None``)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    lines = [line.split(":", 1)[-1] for line in cpuinfo.splitlines() if line.startswith("flags")]
    return {flag for line in lines for flag in line.split()}


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU multiplies bf16 matrices in hardware at more than fp32 speed (Intel AMX, ``amx_bf16``).
    With only AVX-512 BF16, autocast's casts cost more than they save: on a 2-core Xeon without AMX the shard
    worker ran 0.65x as fast in bf16 as in fp32 (e5-small) and 0.61x (XLM-R-base shape); bench/precompute.py."""
    return "amx_bf16" in cpu_flags(cpuinfo)


VNNI_FLAGS = ("avx512_vnni", "avx_vnni")  # int8 dot products in one instruction (Cascade Lake+, Zen 4+, Alder Lake+)


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """True when the CPU multiplies int8 in hardware (VNNI); without it int8 GEMMs widen to 16 bits first."""
    return any(flag in cpu_flags(cpuinfo) for flag in VNNI_FLAGS)


def auto_dtype(on_gpu: bool, cpuinfo: str | None = None, int8_gate: bool | None = None) -> tuple[str, str]:
    """What ``--dtype auto`` runs, and why: bf16 on a GPU and on an AMX CPU (measured faster than fp32 there);
    int8 (ONNX Runtime) on a CPU with VNNI when int8 passed the quality gate for this encoder (``int8_gate``:
    :func:`precompute.onnx_backend.gate_passed`); else fp32."""
    if on_gpu:
        return "bf16", "GPU"
    if cpu_has_native_bf16(cpuinfo):
        return "bf16", "CPU with AMX (amx_bf16)"
    if cpu_has_vnni(cpuinfo):
        if int8_gate:
            return "int8", "CPU with VNNI, and int8 passed the quality gate for this encoder"
        why = "failed" if int8_gate is False else "was not run for"
        return "fp32", f"CPU with VNNI, but the int8 quality gate {why} this encoder (bench/int8_gate.py)"
    return "fp32", "CPU without VNNI or AMX"


def resolve_dtype(requested: str, on_gpu: bool, cpuinfo: str | None = None, int8_gate: bool | None = None) -> str:
    """``requested``, or for ``auto`` the choice of :func:`auto_dtype`."""
    return auto_dtype(on_gpu, cpuinfo, int8_gate)[0] if requested == "auto" else requested


def pick_device(requested: str = "auto") -> torch.device:
    """:func:`resolve_device` as a ``torch.device`` (``auto``: the first CUDA GPU when there is one, else the CPU)."""
    import torch

    return torch.device(resolve_device(requested))
