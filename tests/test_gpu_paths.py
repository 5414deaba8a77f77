"""The GPU code paths, testable on a CPU-only machine: device choice, actor placement, batch sizing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from xel.precompute.config import PrecomputeConfig, PrecomputeError, actor_device
from xel.precompute.encoding import CPU_TOKEN_BUDGET, TextEncoder, token_budget
from xel.precompute.hardware import pick_device
from xel.precompute.identity import EncodeError
from xel.precompute.schedule import actor_options
from xel.precompute.settings import resolve_encoder


def _cfg(**kw) -> PrecomputeConfig:
    return PrecomputeConfig(data=Path("d"), model=Path("m"), out=Path("o"), **kw)


def test_one_gpu_per_actor_asks_ray_for_a_gpu_and_runs_on_cuda():
    options = actor_options(_cfg(gpus_per_actor=1), cpus=4)
    assert actor_device(_cfg(gpus_per_actor=1)) == "cuda" and options["num_gpus"] == 1 and options["num_cpus"] == 4


def test_cpu_actors_by_default_and_conflicting_device_flags_are_refused():
    assert actor_device(_cfg()) == "cpu"
    with pytest.raises(PrecomputeError, match="--gpus-per-actor > 0 with --device cpu"):
        actor_device(_cfg(gpus_per_actor=1, device="cpu"))
    with pytest.raises(PrecomputeError, match="--device cuda needs --gpus-per-actor"):
        actor_device(_cfg(device="cuda"))


def test_actors_cap_the_cpu_kernel_caches_unless_the_user_set_them(monkeypatch):
    """Without the caps a bf16 CPU actor grew by ~800 MB over 200k texts (bench/soak.py)."""
    monkeypatch.delenv("LRU_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")
    env = actor_options(_cfg(), cpus=2)["runtime_env"]["env_vars"]
    assert env["LRU_CACHE_CAPACITY"] == "64" and env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "256"


def test_token_budget_cpu_fixed_gpu_sized_by_memory():
    assert token_budget(torch.device("cpu"), 768, 3072) == CPU_TOKEN_BUDGET
    free = 8 * 2**30
    budget = token_budget(torch.device("cuda"), 768, 3072, free_bytes=free)
    assert budget == free // 3 // (2 * (8 * 768 + 2 * 3072)) and 100_000 < budget < 130_000
    assert token_budget(torch.device("cuda"), 768, 3072, free_bytes=10**15) == 262144
    assert token_budget(torch.device("cuda"), 768, 3072, free_bytes=10**6) == CPU_TOKEN_BUDGET


def test_auto_device_is_cpu_without_a_gpu_and_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert pick_device("auto").type == "cpu"
    with pytest.raises(EncodeError, match="no CUDA GPU is visible"):
        pick_device("cuda")


def test_encoder_on_cpu_uses_the_cpu_budget(tiny_model_dir):
    assert TextEncoder.load(resolve_encoder(tiny_model_dir, device="cpu")).max_tokens_per_batch == CPU_TOKEN_BUDGET


@pytest.mark.gpu
def test_bf16_on_gpu_matches_fp32(tiny_model_dir):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from xel.precompute.items import mention_item

    items = [mention_item("a", "en", "Barack Obama visited Moscow", 0, 12)]
    cpu = TextEncoder.load(resolve_encoder(tiny_model_dir, device="cpu", dtype="fp32")).encode(items)
    gpu = TextEncoder.load(resolve_encoder(tiny_model_dir, device="cuda", dtype="bf16")).encode(items)
    cos = torch.nn.functional.cosine_similarity(torch.tensor(cpu).float(), torch.tensor(gpu).float())
    assert float(cos.min()) > 0.99


def test_auto_dtype_is_bf16_on_gpu_or_amx_and_fp32_on_other_cpus():
    from xel.precompute.hardware import resolve_dtype

    amx = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    avx512_bf16_only = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
    assert resolve_dtype("auto", on_gpu=True, cpuinfo=avx512_bf16_only) == "bf16"
    assert resolve_dtype("auto", on_gpu=False, cpuinfo=amx) == "bf16"
    assert resolve_dtype("auto", on_gpu=False, cpuinfo=avx512_bf16_only) == "fp32"
    assert resolve_dtype("bf16", on_gpu=False, cpuinfo=avx512_bf16_only) == "bf16"
    assert resolve_dtype("fp32", on_gpu=True) == "fp32"


def test_auto_device_means_the_same_for_queries_and_actors(monkeypatch, tiny_model_dir):
    """``--device auto``: a GPU when the process that runs the encoder has one. A query process decides from what it
    sees; a precompute actor has a GPU only when Ray gave it one (Ray does not hide the others from it)."""
    from xel.precompute import hardware
    from xel.precompute.settings import EncoderSettings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.resolve_device("auto") == "cuda" == actor_device(_cfg(gpus_per_actor=1))
    assert actor_device(_cfg()) == "cpu"  # an actor Ray gave no GPU
    settings = resolve_encoder(tiny_model_dir, dtype="fp32", device="auto")
    manifest = {**settings.manifest_fields(), "dtype": "fp32", "backend": "torch"}
    assert EncoderSettings.from_manifest(manifest, tiny_model_dir).device == "auto"  # decided where it loads
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.resolve_device("auto") == "cpu"
