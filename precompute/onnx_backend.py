"""The ONNX Runtime backend of the encoder: export once, quantise to int8 once, run with ONNX Runtime.

Used by ``xel-precompute --backend onnx --dtype fp32|int8`` (and ``--dtype auto`` on a CPU with VNNI) through
:meth:`precompute.encoding.TextEncoder.load`; tokenizing, windowing, the prefix and span pooling stay in
:class:`~precompute.encoding.TextEncoder`: this module only turns token ids into hidden states.

The encoder is exported with ``torch.onnx.export`` with every hidden state as an output (``--layer`` picks one at
run time), then quantised with ONNX Runtime's ``quantize_dynamic`` (int8 per-channel weights, activations
quantised per batch; :data:`QUANTIZE`). Both files are cached under ``{cache}/{fingerprint[:16]}/fp32/model.onnx``
and ``.../int8-{recipe digest}/model.onnx``, where ``cache`` is ``$XEL_ONNX_CACHE`` or ``onnx/`` inside the encoder
directory (the encoder's fingerprint hashes only its config, weights and tokenizer, so the cache never changes it).
Each is built in a temp directory and renamed into place, under a file lock, so two actors that start together
export it once and never read a partial file. The build records the sha256 of every file it wrote in the
directory's ``build.json``, and every use checks them: a file changed since (another model's export copied over it)
is refused with the file and the fix named; a directory without the record (an older xel's) is built again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from xel.precompute.files import file_sha256, make_temp_dir
from xel.precompute.store import atomic_write_json

log = logging.getLogger(__name__)

CACHE_ENV = "XEL_ONNX_CACHE"
MODEL_FILE = "model.onnx"
BUILD_FILE = "build.json"  # what built the directory and the sha256 of each file it wrote ("files")
# the int8 quality gate's verdicts, by encoder fingerprint and quantisation recipe: written by bench/int8_gate.py,
# shipped with xel (package data), so that every node of a cluster reads the same verdict for the same encoder
GATE_FILE = Path(__file__).with_name("int8_gate.json")
OPSET = 17
# quantize_dynamic's weights: int8, one scale per output channel. reduce_range (7-bit weights) is off. ONNX Runtime
# says it "may improve the accuracy for some models running on non-VNNI machines" (u8s8 products summed in pairs into
# int16 can saturate there); on a VNNI CPU (one u8s8 -> int32 instruction, no saturation) it only costs precision:
# e5-small, 128 sample mentions, cosine to torch fp32 mean/min 0.99436/0.98869 with 8-bit weights, 0.99400/0.98819
# with 7-bit ones. --dtype auto picks int8 only on VNNI CPUs, so no store it writes needs 7-bit weights. On a CPU
# without VNNI 7-bit weights do avoid the saturation (row cosine to fp32, es min 0.9949 instead of 0.9782) but still
# fail the gate there (nn top-1 English -0.010, one ranker seed's F1 -0.020; bench/results/int8_gate_no_vnni_7bit.json).
# The feed-forward down-projections (``layer.N/output/dense``: their input is the GELU output, whose long tail one
# uint8 scale per batch cannot hold) stay fp32: quantising them too cost the gate on the bundled sample (e5-small,
# mention-span rows: cosine to fp32 min 0.983, German nn F1 -0.037); without them the 128-mention check gave
# cosine mean/min 0.99822/0.99505 instead of 0.99436/0.98869 (docs/results.md, "int8 quality gate").
QUANTIZE = {"per_channel": True, "reduce_range": False, "weight_type": "QInt8", "fp32_nodes": "ffn_down"}


class OnnxBackendError(RuntimeError):
    """The ONNX model cannot be exported, quantised or loaded; the message says where and why."""


def cache_root(model_dir: str | Path) -> Path:
    """Where exported models live: ``$XEL_ONNX_CACHE``, else ``onnx/`` inside the encoder directory."""
    return Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) else Path(model_dir) / "onnx"


def cache_dir(model_dir: str | Path, fingerprint: str) -> Path:
    return cache_root(model_dir) / fingerprint[:16]


def model_path(model_dir: str | Path, fingerprint: str, dtype: str) -> Path:
    """The ONNX file of the encoder in ``dtype`` (``fp32`` or ``int8``), exported and quantised on first use."""
    if dtype not in ("fp32", "int8"):
        raise OnnxBackendError(f"dtype {dtype!r} has no ONNX model; allowed with --backend onnx: fp32, int8")
    folder = cache_dir(model_dir, fingerprint)
    target = folder / (dtype if dtype == "fp32" else f"int8-{recipe_tag()}") / MODEL_FILE
    if check_build(target.parent):
        return target
    from filelock import FileLock

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OnnxBackendError(f"{folder}: cannot create the ONNX cache ({e}); set {CACHE_ENV} to a writable "
                               "directory") from None
    fp32 = model_path(model_dir, fingerprint, "fp32") if dtype == "int8" else None  # int8 is quantised from it
    with FileLock(str(folder / ".lock")):
        if not check_build(target.parent):  # another process may have built it while this one waited for the lock
            if target.parent.exists():
                log.warning("%s: no %s with the sha256 of its files (built by an older xel); building it again",
                            target.parent, BUILD_FILE)
                shutil.rmtree(target.parent)
            if fp32 is None:
                _build(target.parent, lambda tmp: export_fp32(model_dir, tmp / MODEL_FILE))
            else:
                _build(target.parent, lambda tmp: quantize_int8(fp32, tmp / MODEL_FILE))
    return target


def check_cache(model_dir: str | Path, fingerprint: str, dtype: str) -> None:
    """Refuse a built model of ``dtype`` whose files changed since it was built (:func:`check_build`), before any
    actor starts; one not built yet is built by the first actor that needs it."""
    if dtype not in ("fp32", "int8"):
        return
    folder = cache_dir(model_dir, fingerprint)
    if dtype == "fp32" or not check_build(folder / f"int8-{recipe_tag()}"):
        check_build(folder / "fp32")  # int8 not built yet will be quantised from it


def _build(final: Path, write: Any) -> None:
    """Write a model directory under a temp name beside ``final`` and rename it into place (a directory, so that
    a model with external weight files appears whole)."""
    tmp = make_temp_dir(final)
    try:
        info = write(tmp)
        atomic_write_json(tmp / BUILD_FILE, {**info, "files": file_digests(tmp)})
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_digests(folder: Path) -> dict[str, str]:
    """The sha256 of every file in a model directory but :data:`BUILD_FILE`, by name."""
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != BUILD_FILE}


def check_build(folder: Path) -> bool:
    """Whether ``folder`` holds a model built by :func:`_build` whose files are unchanged: False when it does not
    exist or has no record of its files (build it); :class:`OnnxBackendError` naming the file when one differs."""
    try:
        recorded = json.loads((folder / BUILD_FILE).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not isinstance(recorded, dict) or MODEL_FILE not in recorded:
        return False
    fix = f"delete {folder} and rerun to build it again from the encoder"
    present = {p.name for p in folder.iterdir() if p.is_file() and p.name != BUILD_FILE}
    if present != set(recorded):
        raise OnnxBackendError(f"{folder}: holds files {sorted(present)}, its {BUILD_FILE} records "
                               f"{sorted(recorded)} (changed after it was built); {fix}")
    for name, want in recorded.items():
        got = file_sha256(folder / name)
        if got != want:
            raise OnnxBackendError(f"{folder / name}: sha256 {got[:16]}... differs from the {want[:16]}... recorded in "
                                   f"{BUILD_FILE} when it was built (the file was replaced or changed); {fix}")
    return True


def export_fp32(model_dir: str | Path, out: Path) -> dict[str, Any]:
    """``torch.onnx.export`` of the Hugging Face encoder: inputs ``input_ids`` and ``attention_mask`` (batch and
    length dynamic), outputs ``hidden_state_0`` (embeddings) .. ``hidden_state_L`` (last layer)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    n = model.config.num_hidden_layers + 1

    class HiddenStates(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                output_hidden_states=True).hidden_states

    names = [f"hidden_state_{i}" for i in range(n)]
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"}}
    axes.update({name: {0: "batch", 1: "length"} for name in names})
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.inference_mode():
        torch.onnx.export(HiddenStates(model), (ids, mask), str(out), input_names=["input_ids", "attention_mask"],
                          output_names=names, dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    log.info("exported %s to %s", model_dir, out)
    return {"source": str(Path(model_dir).resolve()), "torch": torch.__version__, "opset": OPSET, "outputs": n}


RUNTIME_MODULES = ("onnxruntime", "onnx")


def check_dependencies() -> None:
    """Refuse, before any work starts, a run of this backend without the packages it needs (the ``encoder``
    extra): without this check the first actor failed after Ray had started."""
    import importlib.util

    missing = [m for m in RUNTIME_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise OnnxBackendError(f"--backend onnx (and int8, which runs on it: --dtype int8, or --dtype auto on a CPU "
                               f"with VNNI) needs {', '.join(missing)}, which is not installed; install the encoder "
                               "extra: pip install -e '.[encoder]' (or pip install onnxruntime onnx), or pass --dtype "
                               "fp32 --backend torch")


def quantize_int8(fp32: Path, out: Path) -> dict[str, Any]:
    """ONNX Runtime's dynamic quantisation of ``fp32``: int8 weights per channel (:data:`QUANTIZE`)."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = ffn_down_projections(fp32) if QUANTIZE["fp32_nodes"] == "ffn_down" else []
    quantize_dynamic(str(fp32), str(out), per_channel=QUANTIZE["per_channel"],
                     reduce_range=QUANTIZE["reduce_range"], weight_type=QuantType[QUANTIZE["weight_type"]],
                     nodes_to_exclude=keep)
    log.info("quantised %s to int8 at %s (%d MatMuls kept in fp32)", fp32, out, len(keep))
    return {"source": str(fp32), "onnxruntime": onnxruntime.__version__, **QUANTIZE, "fp32_node_names": keep}


def ffn_down_projections(path: Path) -> list[str]:
    """The MatMuls of the feed-forward down-projections, by the module path ``torch.onnx.export`` names them with
    (``.../layer.N/output/dense/MatMul`` in BERT-family encoders; attention's ``output/dense`` excluded)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "MatMul" and "/output/dense/" in n.name
            and "/attention/" not in n.name]


def recipe_tag() -> str:
    """A short digest of :data:`QUANTIZE`: an int8 model quantised another way is cached under another name."""
    return hashlib.sha256(json.dumps(QUANTIZE, sort_keys=True).encode()).hexdigest()[:8]


def gate_passed(fingerprint: str) -> bool | None:
    """Whether int8 quantised as :data:`QUANTIZE` passed the quality gate for the encoder with this fingerprint
    (:data:`GATE_FILE`); None when it was never measured."""
    try:
        return bool(json.loads(GATE_FILE.read_text(encoding="utf-8"))[fingerprint][recipe_tag()]["passed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_gate(fingerprint: str, verdict: dict[str, Any]) -> None:
    """Record the quality gate's ``verdict`` (``passed`` and what it measured) for this encoder and recipe."""
    try:
        verdicts = json.loads(GATE_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        verdicts = {}
    verdicts.setdefault(fingerprint, {})[recipe_tag()] = {**verdict, "quantize": dict(QUANTIZE)}
    atomic_write_json(GATE_FILE, verdicts)


@dataclass
class OnnxConfig:
    """The few fields of the Hugging Face config that :class:`~precompute.encoding.TextEncoder` reads."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    max_position_embeddings: int


class OnnxEncoder:
    """An exported encoder in an ONNX Runtime session, ``threads`` intra-op threads (the actor's CPUs)."""

    def __init__(self, path: str | Path, config: Any, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise OnnxBackendError(f"{path}: ONNX Runtime cannot load it ({e}); delete it to export again") from None
        self.path = Path(path)
        self.config = OnnxConfig(config.model_type, config.hidden_size,
                                 getattr(config, "intermediate_size", 4 * config.hidden_size),
                                 config.num_hidden_layers, config.max_position_embeddings)

    def hidden_state(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                     layer: int | Sequence[int]) -> np.ndarray:
        """Hidden states ``[batch, length, hidden]`` (float32) of ``layer`` (-1: the last); of several layers, in
        one run, concatenated along the last axis (``[batch, length, hidden * len(layer)]``)."""
        layers = [layer] if isinstance(layer, int) else list(layer)
        names = [f"hidden_state_{x % (self.config.num_hidden_layers + 1)}" for x in layers]
        outs = self.session.run(names, {"input_ids": input_ids, "attention_mask": attention_mask})
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=-1)
