"""Every NIL rule on the same trained models: test F1 per language from the ``nil_rules`` of finished runs.

    python bench/nil_rules.py --runs sample-enA='runs/x/en+A/seed-*' --runs wikidata-el-enA='runs/w/seed-*' \\
        --out bench/results/nil-rules.json

Each run's ``metrics.json`` holds ``nil_rules`` (:func:`train.fit.compare_nil_rules`): its test scores under each
NIL score (``model``, ``cosine``, ``csls``, ``shared`` with +A, ``learned``), uncalibrated or calibrated per
language from unlabelled mentions (``+q``), each threshold tuned on English dev, and with NIL off (``off``: the
top candidate always linked; its ``r`` is top-candidate recall). The ranking is the same in every column: only
the NIL decision differs. Mean ± std over the runs of each name.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import commit, machine  # noqa: E402


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per language and rule: mean and std of test F1 (``off``: of recall, the top-candidate recall)."""
    rules = [r for r in runs[0] if all(r in x for x in runs)]
    langs = sorted(k for k in runs[0]["off"]["test"] if k.startswith("lang:"))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for lang in langs:
        out[lang.split(":", 1)[1]] = {}
        for rule in rules:
            values = [x[rule]["test"][lang]["r" if rule == "off" else "f1"] for x in runs]
            out[lang.split(":", 1)[1]][rule] = {"mean": statistics.mean(values),
                                                "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", action="append", required=True, help="NAME=GLOB of run directories (repeatable)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "nil-rules.json")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    for spec in args.runs:
        name, _, pattern = spec.partition("=")
        dirs = sorted(glob.glob(pattern))
        if not name or not dirs:
            raise SystemExit(f"--runs {spec!r}: NAME=GLOB matching run directories (with metrics.json) is required")
        runs = [json.loads((Path(d) / "metrics.json").read_text())["nil_rules"] for d in dirs]
        results[name] = {"runs": dirs, "langs": summary(runs)}
    out = {"benchmark": "nil-rules", "machine": machine(), "commit": commit(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    shown = ("off", "csls", "csls+q", "shared", "shared+q", "learned+q")
    print("| runs | lang | " + " | ".join(shown) + " |")
    print("|---|---|" + "---|" * len(shown))
    for name, r in results.items():
        for lang, rules in r["langs"].items():
            print(f"| {name} ({len(r['runs'])}) | {lang} | " + " | ".join(
                f"{rules[x]['mean']:.3f} ± {rules[x]['std']:.3f}" if x in rules else "–" for x in shown) + " |")


if __name__ == "__main__":
    main()
