"""Per-language centring (``train.centre``, the residual scorer's default) against the linker without it, on
existing stores: nn, the linker with ``--no-centre`` and the default (centred) linker, per target language, F1 / P /
R under the default NIL rule and top-candidate recall (NIL off), mean ± std over seeds, with a paired per-mention
count of top-1 hits that only one of the two linkers gets.

    python bench/centre.py --data sample=runs/sample --data wikidata-el=runs/exp-welx:eval --seeds 3 \\
        --work runs/centre --out bench/results/centre.json

``--data NAME=ROOT`` trains on ``ROOT/h5`` with ``ROOT/candidates/candidates.jsonl`` (xel-experiment's layout) and
evaluates English held-out documents and every other language of that store; ``NAME=ROOT:eval`` evaluates on
``ROOT/eval/h5`` with its candidates instead (xel-experiment's ``--eval-data``). Each run is written to
``WORK/NAME/ROW/seed-N`` (ROW: ``nn``, ``none``, ``all``) and a finished one (its ``metrics.json``) is reused.
The rows run like xel-experiment's ``nn`` and ``en`` rows: English training, NIL threshold tuned on English dev.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from math import comb
from pathlib import Path
from typing import Any

import numpy as np

RULE = "csls+q"  # the residual scorer's default NIL rule
ROWS = {"nn": "nn (cos(ms, es), never centred)", "none": "linker --no-centre (previous default)",
        "all": "linker (default: centred)"}


def machine() -> dict[str, Any]:
    load = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0))
    return {"cpu": platform.processor() or platform.machine(), "cores": cores, "load_1min": round(load, 2),
            "quiet": load < cores}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stores(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, where = spec.partition("=")
    root, _, mode = where.partition(":")
    base = {"features": f"{root}/h5", "candidates": f"{root}/candidates/candidates.jsonl"}
    if mode == "eval":
        base.update(eval_features=f"{root}/eval/h5", eval_candidates=f"{root}/eval/candidates/candidates.jsonl")
    elif mode:
        raise SystemExit(f"--data {spec!r}: NAME=ROOT or NAME=ROOT:eval")
    return name, base


def train(name: str, base: dict[str, Any], work: Path, seeds: int) -> None:
    from xel.train.config import TrainConfig  # here: bench/report.py renders this file's markdown without torch
    from xel.train.run import run as run_train

    langs = sorted({json.loads(line)["lang"] for line in
                    open(Path(base.get("eval_features", base["features"])) / "inputs" / "mentions.jsonl")})
    eval_lang = tuple(x for x in langs if x != "en") if "eval_features" in base else tuple(langs)
    for row in ROWS:
        for seed in range(1 if row == "nn" else seeds):
            out = work / name / row / f"seed-{seed}"
            if (out / "metrics.json").is_file():
                continue
            cfg = TrainConfig(**base, train_lang=("en",), eval_lang=eval_lang, tune_nil=True, nil_threshold=-1.0,
                              threads=0, progress=False, plots=False, seed=seed, out=str(out),
                              centre=row == "all", **({"epochs": 0} if row == "nn" else {}))
            run_train(cfg, overwrite=True)


def sign_test(b: int, c: int) -> float:
    n = b + c
    return 1.0 if n == 0 else min(1.0, 2 * sum(comb(n, i) for i in range(min(b, c) + 1)) / 2**n)


def top1(path: Path) -> dict[str, str | None]:
    rows = (json.loads(line) for line in path.open(encoding="utf-8"))
    return {r["id"]: r["candidates"][0][0] if r["candidates"] else None for r in rows}


def report(name: str, base: dict[str, Any], work: Path) -> dict[str, Any]:
    """Per language: each row's F1/P/R (RULE) and top-candidate recall over its seeds, and the paired count."""
    mentions = [json.loads(line) for line in
                open(Path(base.get("eval_features", base["features"])) / "inputs" / "mentions.jsonl")]
    gold = {m["id"]: m.get("gold") for m in mentions}
    lang = {m["id"]: m["lang"] for m in mentions}
    runs = {row: sorted((work / name / row).glob("seed-*/metrics.json")) for row in ROWS}
    metrics = {row: [json.loads(p.read_text()) for p in paths] for row, paths in runs.items()}
    langs = sorted({g[5:] for m in metrics["all"] for g in m["nil_rules"]["off"]["test"] if g.startswith("lang:")})
    out: dict[str, Any] = {}
    for x in langs:
        cell: dict[str, Any] = {}
        for row, ms in metrics.items():
            got = {k: [m["nil_rules"][RULE]["test"][f"lang:{x}"][k] for m in ms] for k in ("f1", "p", "r")}
            got["top_r"] = [m["nil_rules"]["off"]["test"][f"lang:{x}"]["r"] for m in ms]
            cell[row] = {"label": ROWS[row], "seeds": len(ms),
                         **{k: [float(np.mean(v)), float(np.std(v))] for k, v in got.items()},
                         "per_seed": got}
        only_centred = only_plain = n = 0
        for a_path, b_path in zip(runs["none"], runs["all"]):
            a, b = top1(a_path.parent / "predictions.jsonl"), top1(b_path.parent / "predictions.jsonl")
            for mid in a:
                if lang[mid] != x or gold[mid] is None:
                    continue
                n += 1
                only_centred += b.get(mid) == gold[mid] and a[mid] != gold[mid]
                only_plain += a[mid] == gold[mid] and b.get(mid) != gold[mid]
        cell["paired_top1"] = {"only_centred": only_centred, "only_no_centre": only_plain, "mention_seeds": n,
                               "sign_test_p": sign_test(only_centred, only_plain)}
        out[x] = cell
    return out


def markdown(data: dict[str, Any]) -> str:
    lines = ["| data | lang | row | F1 | P | R | top-candidate R |", "|---|---|---|---:|---:|---:|---:|"]
    for name, by_lang in data["datasets"].items():
        for x, cell in by_lang.items():
            for row in ROWS:
                c = cell[row]
                lines.append(f"| {name} | {x} | {c['label']} | {c['f1'][0]:.3f} ± {c['f1'][1]:.3f} | "
                             f"{c['p'][0]:.3f} | {c['r'][0]:.3f} | {c['top_r'][0]:.3f} ± {c['top_r'][1]:.3f} |")
            p = cell["paired_top1"]
            lines.append(f"| {name} | {x} | top-1 hits only centred / only --no-centre (sign test p) | "
                         f"{p['only_centred']} / {p['only_no_centre']} of {p['mention_seeds']} "
                         f"(p={p['sign_test_p']:.2g}) | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True, metavar="NAME=ROOT[:eval]")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", type=Path, required=True, help="run directories (finished ones are reused)")
    parser.add_argument("--note", action="append", default=[], help="a line on how the runs were made")
    parser.add_argument("--out", type=Path, help="write the JSON here (bench/results/centre.json)")
    args = parser.parse_args()
    from xel.train.run import set_threads

    set_threads(0)
    datasets = {}
    for spec in args.data:
        name, base = stores(spec)
        train(name, base, args.work, args.seeds)
        datasets[name] = report(name, base, args.work)
    data = {"benchmark": "centre", "machine": machine(), "commit": commit(), "date": time.strftime("%Y-%m-%d"),
            "rule": RULE, "datasets": datasets,
            "notes": ["F1/P/R mean ± std over seeds (population std); NIL threshold tuned on English dev only; "
                      "paired_top1 pools the seeds (the same mentions in each), so its p is optimistic", *args.note]}
    if args.out:
        args.out.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    print(markdown(data))


if __name__ == "__main__":
    main()
