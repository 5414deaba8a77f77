"""Benchmark the precompute hot path against its baselines, all in one run on the same texts.

    python bench/precompute.py [--model models/multilingual-e5-small] [--texts 512] [--skip-base]

For each encoder (the real one, and a random XLM-R-base-shaped model: hidden 768, 12 layers) it measures
tokens/s of

* ``naive``: one text at a time, fp32, no bucketing (the baseline);
* ``in-process``: :class:`precompute.worker.ShardWorker` (bf16 autocast, length-bucketed batches) in this process,
  and the same worker in fp32 (``in-process fp32``), which separates what batching gives from what bf16 gives;
* ``ray``: the same worker as a warm Ray actor (the task a byte range of a mentions file the actor reads, the
  shard written by the actor), checked to write the same shard checksum as in-process;

and reports the speed-up over naive, the Ray overhead over in-process, the padding fraction, and the fraction of
the matmul roofline (the better of the bf16 and fp32 GEMM peaks measured in this run; FLOPs/token from the model
config). The ``ray`` path runs the dtype ``xel-precompute`` picks by default on this machine (``--dtype auto``).
Writes ``bench/results/precompute.json`` and prints a table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from precompute.encoding import (  # noqa: E402
    EncodeItem,
    EncoderSettings,
    TextEncoder,
    cpu_has_native_bf16,
    mention_item,
    resolve_dtype,
    resolve_encoder,
)
from precompute.ray_session import ray_session  # noqa: E402
from precompute.run import PrecomputeConfig, actor_options, plan_tasks, run_settings  # noqa: E402
from precompute.schema import scan_inputs  # noqa: E402
from precompute.worker import ShardTask, ShardWorker  # noqa: E402


def sample_items(n: int) -> list:
    rows = [json.loads(line) for line in open(ROOT / "data/sample/mentions.jsonl", encoding="utf-8")]
    rng = np.random.default_rng(0)
    picked = [rows[i] for i in rng.choice(len(rows), size=min(n, len(rows)), replace=False)]
    return [mention_item(r["id"], r["lang"], r["context"], *_span_in_context(r)) for r in picked]


def write_data(items: list[EncodeItem], data: Path) -> Path:
    """The items as a mentions file whose ``ms`` rows encode exactly them (the sentence is the text, the span the
    item's pooled span), and a one-entity KB: what the shard tasks read by byte range."""
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "mentions.jsonl", "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps({"id": it.id, "lang": it.lang, "sentence": it.text, "start": it.pool[0],
                                "end": it.pool[1], "context": None, "gold": None}, ensure_ascii=False) + "\n")
    (data / "kb.jsonl").write_text('{"id": "Q1", "name": "Moscow", "description": null, "lang": "en"}\n')
    return data


def plan_shards(data: Path, model: Path, out: Path, settings: EncoderSettings, shard_size: int) -> list[ShardTask]:
    """The ``ms`` shard tasks of ``data`` with ``shard_size`` rows each, as xel-precompute plans them."""
    cfg = PrecomputeConfig(data=data, model=model, out=out, kinds=("ms",), shard_size=shard_size, dtype=settings.dtype)
    return plan_tasks(cfg, scan_inputs(data, shard_size), run_settings(cfg, settings)).tasks["ms"]


def _span_in_context(r: dict) -> tuple[int, int]:
    at = r["context"].find(r["sentence"])
    return (at + r["start"], at + r["end"]) if at >= 0 else (0, len(r["context"]))


def matmul_peak(dtype: torch.dtype = torch.bfloat16, seconds: float = 3.0) -> float:
    """Best FLOP/s of a large GEMM in ``dtype`` on this machine (the roofline for a compute-bound encoder)."""
    a = torch.randn(2048, 1024, dtype=dtype)
    b = torch.randn(1024, 4096, dtype=dtype)
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * a.shape[0] * a.shape[1] * b.shape[1] / (time.perf_counter() - t0))
    return best


def flops_per_token(config: dict, seq_len: float) -> float:
    """Forward FLOPs per token: 2 x non-embedding weights + attention scores and mixing."""
    h, layers, ffn = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    weights = layers * (4 * h * h + 2 * h * ffn)
    return 2 * weights + layers * 4 * seq_len * h


def naive_tokens_per_s(enc: TextEncoder, items: list, budget_s: float) -> float:
    """One text at a time, fp32, the whole input tokenized with specials each time."""
    tokens, t0 = 0, time.perf_counter()
    for it in items:
        ids = enc.tokenizer(enc.prefix + it.text, truncation=True, max_length=enc.max_length,
                            return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            enc.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.max(dim=1)
        tokens += ids.shape[1]
        if time.perf_counter() - t0 > budget_s:
            break
    return tokens / (time.perf_counter() - t0)


def bench_model(name: str, model_dir: Path, items: list, peak: float, out_dir: Path) -> dict:
    """Naive loop, then the shard worker in this process, then the same worker as a warm Ray actor."""
    import ray

    dtype = resolve_dtype("auto", on_gpu=False)  # what xel-precompute runs on this machine by default
    settings = resolve_encoder(model_dir, prefix="", dtype="bf16", device="cpu", max_tokens_per_batch=16384)
    threads = torch.get_num_threads()
    fp32 = TextEncoder.load(dataclasses.replace(settings, dtype="fp32", max_tokens_per_batch=None), threads)
    naive = naive_tokens_per_s(fp32, items, budget_s=60)
    del fp32

    data = write_data(items, out_dir / name / "data")

    def task(tag: str, rows: int) -> ShardTask:
        """The first ``rows`` texts as one shard task, planned as xel-precompute plans it (a byte range)."""
        return plan_shards(data, model_dir, out_dir / name / tag, settings, rows)[0]

    t0 = time.perf_counter()
    worker = ShardWorker(settings, threads)
    load_s = time.perf_counter() - t0
    worker.run(task("warm", 16))
    t0 = time.perf_counter()
    local = worker.run(task("local", len(items)))
    in_process_s = in_process_bf16_s = time.perf_counter() - t0
    tokens = local["tokens"]
    del worker
    # the same worker in fp32: separates what batching gives from what bf16 gives on this CPU
    worker = ShardWorker(dataclasses.replace(settings, dtype="fp32"), threads)
    worker.run(task("warm-fp32", 16))
    t0 = time.perf_counter()
    local_fp32 = worker.run(task("local-fp32", len(items)))
    in_process_fp32_s = time.perf_counter() - t0
    del worker
    if dtype == "fp32":  # the Ray path below runs the default dtype; compare it with the same in-process
        local, in_process_s, settings = local_fp32, in_process_fp32_s, dataclasses.replace(settings, dtype="fp32")

    cfg = PrecomputeConfig(data=ROOT, model=model_dir, out=out_dir / name, actors=1, cpus_per_actor=threads)
    options = actor_options(cfg, threads)
    t0 = time.perf_counter()
    actor = ray.remote(ShardWorker).options(**options).remote(settings, threads)
    ray.get(actor.run.remote(task("warm-ray", 16)))
    actor_start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    remote = ray.get(actor.run.remote(task("ray", len(items))))
    ray_s = time.perf_counter() - t0
    ray.kill(actor)
    assert remote["tokens"] == tokens and remote["checksum"] == local["checksum"], "Ray and in-process differ"

    seq = tokens / len(items)
    config = json.loads((model_dir / "config.json").read_text())
    fpt = flops_per_token(config, seq)
    forward = tokens / local["forward_seconds"]
    return {
        "model": name, "texts": len(items), "tokens": tokens, "mean_tokens_per_text": seq,
        "naive_tokens_per_s": naive, "in_process_tokens_per_s": tokens / in_process_s,
        "default_dtype": dtype, "in_process_fp32_tokens_per_s": tokens / in_process_fp32_s,
        "in_process_bf16_tokens_per_s": tokens / in_process_bf16_s,
        "bf16_over_fp32": in_process_fp32_s / in_process_bf16_s,
        "ray_tokens_per_s": tokens / ray_s, "forward_tokens_per_s": forward,
        "speedup_vs_naive": (tokens / ray_s) / naive, "ray_overhead": ray_s / in_process_s - 1,
        "padding_fraction": 1 - tokens / local["padded_tokens"], "flops_per_token": fpt,
        "roofline_fraction": forward * fpt / peak, "model_load_s": load_s, "actor_start_s": actor_start_s,
    }


def make_base_model(path: Path, tokenizer_dir: Path) -> Path:
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = XLMRobertaConfig(vocab_size=len(tok), hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072, max_position_embeddings=514, pad_token_id=1)
    torch.manual_seed(0)
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@click.command()
@click.option("--model", type=click.Path(path_type=Path), default=ROOT / "models/multilingual-e5-small",
              show_default=True, help="The real encoder (xel-encoder build).")
@click.option("--texts", default=1024, show_default=True, help="Mention contexts from data/sample to encode.")
@click.option("--skip-base", is_flag=True, help="Skip the XLM-R-base-shaped random model.")
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "bench/results/precompute.json")
def main(model: Path, texts: int, skip_base: bool, out: Path) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    items = sample_items(texts)
    peaks = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    peak = max(peaks.values())  # the roofline: the machine's best matmul rate in either dtype
    rows = []
    with ray_session(), tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        rows.append(bench_model("multilingual-e5-small", model, items, peak, tmp_path))
        if not skip_base:
            base = make_base_model(tmp_path / "xlmr-base-random", model)
            rows.append(bench_model("xlmr-base-shape-random", base, items, peak, tmp_path))
    result = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu": platform.processor(),
                    "amx_bf16": cpu_has_native_bf16()},
        "matmul_peak_flops": peaks, "roofline_flops": peak, "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    cols = [("model", "{:<24}"), ("naive_tokens_per_s", "{:>10,.0f}"), ("in_process_fp32_tokens_per_s", "{:>10,.0f}"),
            ("in_process_bf16_tokens_per_s", "{:>10,.0f}"), ("bf16_over_fp32", "{:>6.2f}x"), ("default_dtype", "{:>5}"),
            ("ray_tokens_per_s", "{:>10,.0f}"), ("speedup_vs_naive", "{:>8.2f}x"), ("ray_overhead", "{:>8.1%}"),
            ("padding_fraction", "{:>8.1%}"), ("roofline_fraction", "{:>8.1%}")]
    click.echo(f"matmul peak on this machine: bf16 {peaks['bf16'] / 1e9:,.1f}, fp32 {peaks['fp32'] / 1e9:,.1f} "
               f"GFLOP/s (AMX: {cpu_has_native_bf16()}); roofline = the better; {len(items)} texts")
    click.echo(" | ".join(["model", "naive tok/s", "in-proc fp32 tok/s", "in-proc bf16 tok/s", "bf16/fp32",
                           "default", "ray tok/s (default)", "vs naive", "ray overhead",
                           "padding", "roofline"]))
    for r in rows:
        click.echo(" | ".join(fmt.format(r[c]) for c, fmt in cols))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
