"""Benchmark the precompute hot path against its baselines, all in one run on the same texts.

    python bench/precompute.py [--model models/multilingual-e5-small] [--texts 1024] [--skip-base] [--skip-bf16]

For each encoder (the real one, and a random XLM-R-base-shaped model: hidden 768, 12 layers) it measures
tokens/s of

* ``naive``: one text at a time, fp32, no bucketing (the baseline);
* ``in-process`` (the worker's steady state): :class:`precompute.worker.ShardWorker` (length-bucketed batches,
  warm) in this process, once per backend and dtype: torch fp32, torch bf16 autocast, onnx fp32, onnx int8
  (ONNX Runtime; the export and quantisation are cached before the timing, and the cosine of each variant's rows
  to torch fp32's is reported);
* ``ray``: the same worker as a warm Ray actor (the task a byte range of a mentions file the actor reads, the
  shard written by the actor), in the dtype ``--dtype auto`` picks here, checked to write the same shard checksum
  as in-process;
* ``end to end``: ``xel-precompute`` itself (``precompute.run.run``: a new local Ray, the actor, the store, the
  manifest) on the same texts as ``mc`` rows, once per torch fp32, onnx fp32 and onnx int8;

``--default-vs-naive`` measures only what a user gets (the issue's goal, as one ratio): on a sample of the bundled
data (at least ``--mentions`` mentions, whole sentences at random with every mention of each, and ``--kb`` KB
entries), the naive loop end to end (load the model, then every mention sentence, context and KB name one text at a
time in torch fp32) against ``xel-precompute`` with default flags (``--kinds ms,mc,es``: a new local Ray, the
actors, the store), alternating ``--repeats`` times; writes ``bench/results/precompute_default_vs_naive.json``
(``--sample mentions``: single mentions at random, ``..._random_mentions.json``).

The full run reports the speed-ups over naive, the Ray overhead over in-process, the padding fraction, and each
variant's fraction of its own GEMM peak (fp32 and bf16 with torch, fp32 and int8 with ONNX Runtime, all measured in
this run on a 2048 x 1024 x 4096 product; FLOPs/token from the model config). Writes ``bench/results/precompute.json``
and prints the tables.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xel.precompute.config import PrecomputeConfig, run_settings  # noqa: E402
from xel.precompute.encoding import TextEncoder  # noqa: E402
from xel.precompute.hardware import cpu_has_native_bf16, cpu_has_vnni, resolve_dtype  # noqa: E402
from xel.precompute.items import EncodeItem, EncodeStats, mention_item  # noqa: E402
from xel.precompute.plan import plan_tasks  # noqa: E402
from xel.precompute.ray_session import ray_session  # noqa: E402
from xel.precompute.run import run as run_precompute  # noqa: E402
from xel.precompute.schedule import actor_options  # noqa: E402
from xel.precompute.schema import load_inputs, scan_inputs  # noqa: E402
from xel.precompute.settings import EncoderSettings, resolve_encoder  # noqa: E402
from xel.precompute.shards import read_shard  # noqa: E402
from xel.precompute.worker import ShardTask, ShardWorker, build_items  # noqa: E402

VARIANTS = (("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"), ("onnx", "int8"))  # in-process steady state
END_TO_END = (("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8"))


def sample_rows(n: int) -> list[dict]:
    rows = [json.loads(line) for line in open(ROOT / "data/sample/mentions.jsonl", encoding="utf-8")]
    rng = np.random.default_rng(0)
    return [rows[i] for i in rng.choice(len(rows), size=min(n, len(rows)), replace=False)]


def sample_items(rows: list[dict]) -> list:
    return [mention_item(r["id"], r["lang"], r["context"], *_span_in_context(r)) for r in rows]


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


def ort_matmul_peak(dtype: str, seconds: float = 3.0, threads: int | None = None) -> float:
    """Best operations/s of the same GEMM in ONNX Runtime: ``MatMul`` (fp32) or ``MatMulInteger`` (uint8 x int8, the
    kernel a dynamically quantised model runs), one node with the weight as an initializer."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = 2048, 1024, 4096
    rng = np.random.default_rng(0)
    if dtype == "int8":
        a = rng.integers(0, 255, (m, k), dtype=np.uint8)
        weight = numpy_helper.from_array(rng.integers(-127, 127, (k, n), dtype=np.int8), "b")
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        a = rng.standard_normal((m, k), dtype=np.float32)
        weight = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "b")
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", a_type, [m, k])],
                              [helper.make_tensor_value_info("y", y_type, [m, n])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        session.run(None, {"a": a})
        best = max(best, 2 * m * k * n / (time.perf_counter() - t0))
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


def bench_model(name: str, model_dir: Path, items: list, peaks: dict[str, float], out_dir: Path,
                variants: tuple[tuple[str, str], ...]) -> dict:
    """Naive loop, then the shard worker in this process per backend and dtype, then the worker as a warm Ray actor."""
    import ray

    dtype = resolve_dtype("auto", on_gpu=False)  # what xel-precompute runs on this machine by default
    settings = resolve_encoder(model_dir, prefix="", dtype="fp32", device="cpu", max_tokens_per_batch=16384)
    threads = torch.get_num_threads()
    fp32 = TextEncoder.load(dataclasses.replace(settings, max_tokens_per_batch=None), threads)
    naive = naive_tokens_per_s(fp32, items, budget_s=60)
    del fp32

    data = write_data(items, out_dir / name / "data")

    def task(tag: str, rows: int, variant: EncoderSettings = settings) -> ShardTask:
        """The first ``rows`` texts as one shard task, planned as xel-precompute plans it (a byte range)."""
        return plan_shards(data, model_dir, out_dir / name / tag, variant, rows)[0]

    config = json.loads((model_dir / "config.json").read_text())
    in_process: dict[str, dict] = {}
    results: dict[str, dict] = {}
    for backend, variant_dtype in variants:
        key = f"{backend}-{variant_dtype}"
        variant = dataclasses.replace(settings, backend=backend, dtype=variant_dtype)
        t0 = time.perf_counter()
        worker = ShardWorker(variant, threads)  # an onnx variant exports and quantises here, once (cached)
        load_s = time.perf_counter() - t0
        worker.run(task(f"warm-{key}", 16, variant))
        timed = task(key, len(items), variant)
        t0 = time.perf_counter()
        results[key] = {**worker.run(timed), "path": timed.path}
        seconds = time.perf_counter() - t0
        del worker
        tokens = results[key]["tokens"]
        fpt = flops_per_token(config, tokens / len(items))
        forward = tokens / results[key]["forward_seconds"]
        peak_key = {"torch": {"fp32": "torch_fp32", "bf16": "torch_bf16"},
                    "onnx": {"fp32": "ort_fp32", "int8": "ort_int8"}}[backend][variant_dtype]
        in_process[key] = {"tokens_per_s": tokens / seconds, "forward_tokens_per_s": forward,
                           "speedup_vs_naive": tokens / seconds / naive, "load_s": load_s,
                           "roofline_fraction": forward * fpt / peaks[peak_key], "peak": peak_key}
    reference = read_shard(results["torch-fp32"]["path"]).features.astype(np.float64)
    for key, r in results.items():
        got = read_shard(r["path"]).features.astype(np.float64)
        cos = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
        in_process[key].update(cos_vs_torch_fp32_mean=float(cos.mean()), cos_vs_torch_fp32_min=float(cos.min()))
    local, tokens = results[f"torch-{dtype}"], results["torch-fp32"]["tokens"]
    in_process_s = tokens / in_process[f"torch-{dtype}"]["tokens_per_s"]
    settings = dataclasses.replace(settings, dtype=dtype)

    cfg = PrecomputeConfig(data=ROOT, model=model_dir, out=out_dir / name, actors=1, cpus_per_actor=threads)
    options = actor_options(cfg, threads)
    t0 = time.perf_counter()
    actor = ray.remote(ShardWorker).options(**options).remote(settings, threads)
    ray.get(actor.run.remote(task("warm-ray", 16, settings)))
    actor_start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    remote = ray.get(actor.run.remote(task("ray", len(items), settings)))
    ray_s = time.perf_counter() - t0
    ray.kill(actor)
    assert remote["tokens"] == tokens and remote["checksum"] == local["checksum"], "Ray and in-process differ"

    seq = tokens / len(items)
    return {
        "model": name, "texts": len(items), "tokens": tokens, "mean_tokens_per_text": seq,
        "naive_tokens_per_s": naive, "default_dtype": dtype, "in_process": in_process,
        "ray_tokens_per_s": tokens / ray_s, "ray_speedup_vs_naive": (tokens / ray_s) / naive,
        "ray_overhead": ray_s / in_process_s - 1, "padding_fraction": 1 - tokens / local["padded_tokens"],
        "flops_per_token": flops_per_token(config, seq), "actor_start_s": actor_start_s,
    }


def end_to_end(model_dir: Path, rows: list[dict], out_dir: Path, naive: float) -> dict[str, dict]:
    """``xel-precompute`` itself on the benchmark's texts (``mc`` rows: the same contexts, windowed around the same
    mentions), a fresh local Ray each time: from ``run()`` to the manifest, Ray's start included."""
    data = out_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "data/sample/kb.jsonl", data / "kb.jsonl")
    (data / "mentions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    result = {}
    for backend, dtype in END_TO_END:
        t0 = time.perf_counter()
        summary = run_precompute(PrecomputeConfig(data=data, model=model_dir, out=out_dir / f"{backend}-{dtype}",
                                                  kinds=("mc",), dtype=dtype, backend=backend))
        seconds = time.perf_counter() - t0
        result[f"{backend}-{dtype}"] = {"seconds": seconds, "tokens": summary["tokens"],
                                        "tokens_per_s": summary["tokens"] / seconds,
                                        "speedup_vs_naive": summary["tokens"] / seconds / naive}
    return result


def pick_rows(records: list[dict], n: int, rng: np.random.Generator) -> list[dict]:
    """``n`` records at random (all when fewer), in file order."""
    return [records[i] for i in sorted(rng.choice(len(records), size=min(n, len(records)), replace=False))]


def pick_mentions(records: list[dict], n: int, sample: str, rng: np.random.Generator) -> list[dict]:
    """``n`` mentions at random (``sample="mentions"``), or whole sentences at random, every mention of each, until
    at least ``n`` (``"sentences"``: how documents come, each mention linked); in file order."""
    if sample == "mentions":
        return pick_rows(records, n, rng)
    by_sentence: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_sentence.setdefault(r["sentence"], []).append(i)
    groups = list(by_sentence.values())
    chosen: list[int] = []
    for g in rng.permutation(len(groups)):
        if len(chosen) >= n:
            break
        chosen += groups[g]
    return [records[i] for i in sorted(chosen)]


def measure_default_vs_naive(model_dir: Path, mentions: int, kb: int, out_dir: Path, repeats: int,
                             sample: str = "sentences") -> dict:
    """The naive loop and ``xel-precompute`` with default flags, end to end on the same data, alternating."""
    rng = np.random.default_rng(0)
    data = out_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    picked = {}
    for name, n in (("kb", kb), ("mentions", mentions)):
        records = [json.loads(line) for line in (ROOT / f"data/sample/{name}.jsonl").open(encoding="utf-8")]
        picked[name] = pick_mentions(records, n, sample, rng) if name == "mentions" else pick_rows(records, n, rng)
    kb_ids = {e["id"] for e in picked["kb"]}
    for m in picked["mentions"]:  # a gold outside the sampled KB is NIL here (speed only; no scores are computed)
        m["gold"] = m["gold"] if m["gold"] in kb_ids else None
    for name, records in picked.items():
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                            encoding="utf-8")
    kinds = ("ms", "mc", "es")
    inputs = load_inputs(data)
    items = [it for kind in kinds for it in build_items(inputs.kb if kind == "es" else inputs.mentions, kind)]
    runs: dict[str, list[dict]] = {"naive": [], "default": []}
    for repeat in range(repeats):
        t0 = time.perf_counter()
        encoder = TextEncoder.load(resolve_encoder(model_dir, dtype="fp32", backend="torch", device="cpu"))
        stats = EncodeStats()
        for it in items:
            encoder.encode([it], stats)
        runs["naive"].append({"seconds": time.perf_counter() - t0, "tokens": stats.tokens})
        del encoder
        t0 = time.perf_counter()
        summary = run_precompute(PrecomputeConfig(data=data, model=model_dir, out=out_dir / f"store-{repeat}",
                                                  kinds=kinds))
        seconds = time.perf_counter() - t0
        m = summary["manifest"]
        runs["default"].append({"seconds": seconds, "tokens": summary["tokens"], "shared": summary["shared"],
                                "dtype": m["dtype"],
                                "backend": m["backend"], "dtype_reason": m.get("dtype_reason", ""),
                                "padding_fraction": summary["padding_fraction"]})
        shutil.rmtree(out_dir / f"store-{repeat}")
    naive_s = [r["seconds"] for r in runs["naive"]]
    default_s = [r["seconds"] for r in runs["default"]]
    return {"sample": sample, "mentions": len(inputs.mentions),
            "sentences": len({m.sentence for m in inputs.mentions}), "kb": len(inputs.kb), "texts": len(items),
            "kinds": list(kinds),
            "tokens": runs["naive"][0]["tokens"], "runs": runs,
            "ratio_per_repeat": [a / b for a, b in zip(naive_s, default_s)],
            "ratio_of_medians": float(np.median(naive_s) / np.median(default_s))}


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
@click.option("--skip-bf16", is_flag=True, help="Skip torch bf16 autocast in-process (slower than fp32 without AMX).")
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "bench/results/precompute.json")
@click.option("--default-vs-naive", is_flag=True, help="Only xel-precompute's default flags against the naive loop, "
              "end to end on mention sentences, contexts and KB names.")
@click.option("--mentions", default=400, show_default=True, help="With --default-vs-naive: mentions sampled.")
@click.option("--kb", default=600, show_default=True, help="With --default-vs-naive: KB entries sampled.")
@click.option("--repeats", default=2, show_default=True, help="With --default-vs-naive: alternating repeats.")
@click.option("--sample", type=click.Choice(["sentences", "mentions"]), default="sentences", show_default=True,
              help="With --default-vs-naive: whole sentences at random, every mention of each (as documents come), "
              "or single mentions at random (the rounds before sentence sharing; written to "
              "precompute_default_vs_naive_random_mentions.json).")
def main(model: Path, texts: int, skip_base: bool, skip_bf16: bool, out: Path, default_vs_naive: bool,
         mentions: int, kb: int, repeats: int, sample: str) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if default_vs_naive:
        load_before = os.getloadavg()
        with tempfile.TemporaryDirectory() as tmp:
            result = measure_default_vs_naive(model, mentions, kb, Path(tmp), repeats, sample)
        result["machine"] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "vnni": cpu_has_vnni(), "amx_bf16": cpu_has_native_bf16(),
                             "load_average_before": load_before, "load_average_after": os.getloadavg()}
        result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        name = "precompute_default_vs_naive" + ("_random_mentions" if sample == "mentions" else "") + ".json"
        out = out.with_name(name) if out.name == "precompute.json" else out
        out.write_text(json.dumps(result, indent=2) + "\n")
        first = result["runs"]["default"][0]
        click.echo(f"{result['texts']:,} texts ({result['mentions']} mentions in {result['sentences']} sentences, "
                   f"sampled by {sample}: sentences and contexts, {first['shared']:,} of them sharing an encoder "
                   f"input; {result['kb']} "
                   f"KB names), {result['tokens']:,} tokens; default flags ran {first['dtype']} on {first['backend']} "
                   f"({first['dtype_reason'] or 'given'}); load average {load_before[0]:.1f} -> "
                   f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        click.echo(f"{'repeat':<8}{'naive s':>10}{'default s':>11}{'ratio':>8}")
        for i, (a, b) in enumerate(zip(result["runs"]["naive"], result["runs"]["default"])):
            click.echo(f"{i:<8}{a['seconds']:>10.1f}{b['seconds']:>11.1f}{a['seconds'] / b['seconds']:>7.2f}x")
        click.echo(f"ratio of medians: {result['ratio_of_medians']:.2f}x; wrote {out}")
        return
    rows_in = sample_rows(texts)
    items = sample_items(rows_in)
    variants = tuple(v for v in VARIANTS if not (skip_bf16 and v == ("torch", "bf16")))
    peaks = {"torch_fp32": matmul_peak(torch.float32), "ort_fp32": ort_matmul_peak("fp32"),
             "ort_int8": ort_matmul_peak("int8")}
    if not skip_bf16:
        peaks["torch_bf16"] = matmul_peak(torch.bfloat16)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        models = {"multilingual-e5-small": model}
        if not skip_base:
            models["xlmr-base-shape-random"] = make_base_model(tmp_path / "xlmr-base-random", model)
        with ray_session():
            for name, model_dir in models.items():
                rows.append(bench_model(name, model_dir, items, peaks, tmp_path, variants))
        for row, (name, model_dir) in zip(rows, models.items()):  # each run starts its own Ray
            row["end_to_end"] = end_to_end(model_dir, rows_in, tmp_path / f"e2e-{name}", row["naive_tokens_per_s"])
    result = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu": platform.processor(),
                    "amx_bf16": cpu_has_native_bf16(), "vnni": cpu_has_vnni(), "load_average": os.getloadavg()},
        "matmul_peak_ops": peaks, "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    click.echo("GEMM peak (2048 x 1024 x 4096), GOP/s: " + ", ".join(f"{k} {v / 1e9:,.1f}" for k, v in peaks.items())
               + f"; int8 / fp32 (ONNX Runtime): {peaks['ort_int8'] / peaks['ort_fp32']:.2f}x; VNNI: {cpu_has_vnni()}, "
               f"AMX: {cpu_has_native_bf16()}; load average {os.getloadavg()[0]:.1f}; {len(items)} texts")
    for r in rows:
        click.echo(f"\n{r['model']}: {r['tokens']:,} tokens ({r['mean_tokens_per_text']:.0f} per text), padding "
                   f"{r['padding_fraction']:.1%}; naive (one text at a time, torch fp32) "
                   f"{r['naive_tokens_per_s']:,.0f} tok/s")
        click.echo(f"{'steady state (in-process)':<27}{'tok/s':>9}{'vs naive':>10}{'roofline':>10}{'cos mean':>10}"
                   f"{'cos min':>9}")
        for key, v in r["in_process"].items():
            click.echo(f"{key:<27}{v['tokens_per_s']:>9,.0f}{v['speedup_vs_naive']:>9.2f}x{v['roofline_fraction']:>10.1%}"
                       f"{v['cos_vs_torch_fp32_mean']:>10.5f}{v['cos_vs_torch_fp32_min']:>9.5f}")
        click.echo(f"{'end to end (xel-precompute)':<27}{'tok/s':>9}{'vs naive':>10}{'seconds':>10}")
        for key, v in r["end_to_end"].items():
            click.echo(f"{key:<27}{v['tokens_per_s']:>9,.0f}{v['speedup_vs_naive']:>9.2f}x{v['seconds']:>10.1f}")
        click.echo(f"warm Ray actor ({r['default_dtype']}): {r['ray_tokens_per_s']:,.0f} tok/s, "
                   f"{r['ray_speedup_vs_naive']:.2f}x naive, Ray overhead {r['ray_overhead']:.1%} over in-process; "
                   f"actor start {r['actor_start_s']:.1f}s")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
