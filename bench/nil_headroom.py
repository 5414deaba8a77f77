"""How much F1 any NIL threshold could add, per language, from finished runs' test predictions.

    python bench/nil_headroom.py --data sample=data/sample/mentions.jsonl:runs/x/en/seed-* \\
        --data sample-nn=data/sample/mentions.jsonl:runs/x/nn/seed-0 --out bench/results/nil-headroom.json

For each run and language: the run's own F1 (its saved NIL rule), F1 with NIL off (the top candidate always
linked), and the **oracle**: the best F1 over every threshold on the mention's score margin (top score minus
the mean of the 2nd to 11th, the csls form), chosen on the test mentions themselves. The oracle reads gold and
is not a method; it bounds what a better threshold rule could gain on the same ranking. For nn the scores are
cosines, so its oracle is the csls rule's; for a trained run they are the model's scores. Mean ± std over runs.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import commit, machine  # noqa: E402
from xel.retrieval.metrics import score  # noqa: E402
from xel.train.evaluate import BACKGROUND_K, tie_noise  # noqa: E402


def top_candidate(row: dict) -> str | None:
    """The run's choice with NIL off: ``pred``, or for a NIL line the best-scored candidate (ties as pick_best)."""
    if row["pred"] is not None:
        return row["pred"]
    if not row["candidates"]:
        return None
    best = row["candidates"][0][1]
    return max((k for k, s in row["candidates"] if s == best), key=lambda k: tie_noise(row["id"], k))


def margin(row: dict) -> float:
    s = [x for _, x in row["candidates"]]
    return s[0] - float(np.mean(s[1:1 + BACKGROUND_K])) if len(s) > 1 else s[0] if s else -np.inf


def run_cells(mentions: dict[str, tuple[str | None, str]], run: Path) -> dict[str, dict[str, float]]:
    by_lang: dict[str, list[dict]] = {}
    for line in (run / "predictions.jsonl").open(encoding="utf-8"):
        row = json.loads(line)
        if row["id"] in mentions:
            by_lang.setdefault(mentions[row["id"]][1], []).append(row)
    cells = {}
    for lang, rows in sorted(by_lang.items()):
        gold = [mentions[r["id"]][0] for r in rows]
        tops = [top_candidate(r) for r in rows]
        margins = np.array([margin(r) for r in rows])
        oracle = max(score(gold, [t if m >= th else None for t, m in zip(tops, margins)]).f1
                     for th in np.unique(margins))
        cells[lang] = {"own": score(gold, [r["pred"] for r in rows]).f1, "nil_off": score(gold, tops).f1,
                       "oracle": oracle, "mentions": len(rows)}
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", required=True,
                    help="NAME=MENTIONS_JSONL:RUN_GLOB (runs whose predictions.jsonl score those mentions)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result = {"benchmark": "nil_headroom", "machine": machine(), "commit": commit(), "rows": []}
    for spec in args.data:
        name, rest = spec.split("=", 1)
        mentions_file, pattern = rest.split(":", 1)
        mentions = {}
        for line in open(mentions_file, encoding="utf-8"):
            m = json.loads(line)
            mentions[m["id"]] = (m.get("gold"), m.get("lang"))
        runs = sorted(Path(p) for p in glob.glob(pattern))
        if not runs:
            sys.exit(f"--data {spec}: no run matches {pattern}")
        per_run = [run_cells(mentions, r) for r in runs]
        for lang in sorted(per_run[0]):
            row = {"data": name, "lang": lang, "runs": len(runs), "mentions": per_run[0][lang]["mentions"]}
            for key in ("own", "nil_off", "oracle"):
                vals = [c[lang][key] for c in per_run]
                row[key] = [round(float(np.mean(vals)), 4), round(float(np.std(vals)), 4)]
            result["rows"].append(row)
            print(f"{name:<12} {lang}  own {row['own'][0]:.3f}±{row['own'][1]:.3f}  NIL off {row['nil_off'][0]:.3f}"
                  f"  oracle threshold {row['oracle'][0]:.3f}±{row['oracle'][1]:.3f}  ({len(runs)} runs)")
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
