"""Forward speed of an encoder on this machine: batch 32 x 128 subwords, fp32 against bf16 autocast, one run.

    python bench/encoder.py [--model models/multilingual-e5-small] [--batch 32] [--length 128] [--repeats 10]

Random token ids (no padding, so every position is a real token) through ``AutoModel`` under
``torch.inference_mode()``; two warm-up forwards per dtype, then ``--repeats`` timed ones, fp32 and bf16
interleaved so that both see the same machine load. Reports tokens/s (median over repeats) and the bf16/fp32
ratio; writes ``bench/results/encoder.json``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import click
import torch

ROOT = Path(__file__).resolve().parent.parent


@click.command()
@click.option("--model", type=click.Path(path_type=Path, file_okay=False),
              default=ROOT / "models" / "multilingual-e5-small", show_default=True)
@click.option("--batch", default=32, show_default=True)
@click.option("--length", default=128, show_default=True)
@click.option("--repeats", default=10, show_default=True)
@click.option("--threads", default=0, show_default=True, help="torch threads (0: all cores)")
@click.option("--out", "out_json", type=click.Path(path_type=Path, dir_okay=False),
              default=ROOT / "bench" / "results" / "encoder.json", show_default=True)
def main(model: Path, batch: int, length: int, repeats: int, threads: int, out_json: Path) -> None:
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    net = AutoModel.from_pretrained(model).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, net.config.vocab_size, (batch, length), generator=gen)
    mask = torch.ones_like(ids)

    def forward(dtype: str) -> float:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            t0 = time.perf_counter()
            net(input_ids=ids, attention_mask=mask)
            return time.perf_counter() - t0

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for dtype in times:
        forward(dtype), forward(dtype)
    for _ in range(repeats):
        for dtype in times:
            times[dtype].append(forward(dtype))
    tokens = batch * length
    rate = {d: tokens / statistics.median(t) for d, t in times.items()}
    result = {"model": str(model), "batch": batch, "length": length, "repeats": repeats,
              "threads": torch.get_num_threads(), "machine": platform.node(), "torch": torch.__version__,
              "tokens_per_s": {d: round(r, 1) for d, r in rate.items()},
              "seconds": {d: [round(x, 4) for x in t] for d, t in times.items()},
              "bf16_over_fp32": round(rate["bf16"] / rate["fp32"], 3)}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{model.name}: batch {batch} x {length}, {torch.get_num_threads()} threads, median of {repeats}")
    print(f"{'dtype':<6} {'tokens/s':>10}")
    for d, r in rate.items():
        print(f"{d:<6} {r:>10,.0f}")
    print(f"bf16 / fp32: {result['bf16_over_fp32']:.2f}x\nwrote {out_json}")


if __name__ == "__main__":
    main()
