"""Two or more linker variants on the same stores and candidates: F1, P, R (the default NIL rule, csls calibrated)
and top-candidate recall with NIL off, per language, mean ± std over seeds, and each variant's difference from
the first.

    python bench/feature_groups.py --run sample/default=RUN_A --run sample/names=RUN_B \\
        [--run wikidata-el/default=... ...] --out bench/results/feature-groups-names.json [--note "how"]

Each ``--run DATA/VARIANT=DIR`` is an ``xel-train --seeds N --out DIR`` run directory (``DIR/seed-*/metrics.json``);
the first variant named for a dataset is the baseline the others are compared with. Runs of one dataset must
score the same test mentions (the same evaluation store, candidates and split): runs whose predicted test
mentions differ are refused. Nothing is computed but the table; the numbers are the runs' own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import commit, machine  # noqa: E402

RULE = "csls+q"


def seed_metrics(run: Path) -> list[dict[str, Any]]:
    seeds = sorted(run.glob("seed-*/metrics.json")) or sorted(run.glob("metrics.json"))
    return [json.loads(p.read_text(encoding="utf-8")) for p in seeds]


def mean_std(values: list[float]) -> list[float]:
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def predicted_ids(run: Path) -> list[str]:
    """The ids of the test mentions the run's first seed predicted (its ``predictions.jsonl``), in order."""
    path = next(iter(sorted(run.glob("seed-*/predictions.jsonl"))), run / "predictions.jsonl")
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def variant_rows(run: Path) -> dict[str, dict[str, Any]]:
    """Language -> {f1, p, r, top_r: [mean, std], seeds} over the run's seeds."""
    seeds = seed_metrics(run)
    if not seeds:
        raise SystemExit(f"{run}: no seed-*/metrics.json (an xel-train --out directory is required)")
    out: dict[str, dict[str, Any]] = {}
    langs = sorted(k[5:] for k in seeds[0]["nil_rules"][RULE]["test"] if k.startswith("lang:"))
    for lang in langs:
        cells = [m["nil_rules"][RULE]["test"][f"lang:{lang}"] for m in seeds]
        off = [m["nil_rules"]["off"]["test"][f"lang:{lang}"] for m in seeds]
        out[lang] = {"f1": mean_std([c["f1"] for c in cells]), "p": mean_std([c["p"] for c in cells]),
                     "r": mean_std([c["r"] for c in cells]), "top_r": mean_std([c["r"] for c in off]),
                     "seeds": len(seeds)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="DATA/VARIANT=DIR")
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    datasets: dict[str, dict[str, dict[str, Any]]] = {}
    tested: dict[str, list[str]] = {}
    for spec in args.run:
        name, _, run = spec.partition("=")
        data, _, variant = name.partition("/")
        if not data or not variant or not run:
            parser.error(f"--run {spec!r}: DATA/VARIANT=DIR is required")
        datasets.setdefault(data, {})[variant] = variant_rows(Path(run))
        ids = predicted_ids(Path(run))
        if tested.setdefault(data, ids) != ids:
            parser.error(f"--run {spec!r}: its test mentions differ from the first {data} run's; compare runs on the "
                         "same evaluation store, candidates and split")
    lines = ["| data | lang | variant | F1 | P | R | top-candidate R | F1 − first | top R − first |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for data, variants in datasets.items():
        first = next(iter(variants.values()))
        for lang in first:
            for variant, rows in variants.items():
                row = rows.get(lang)
                if row is None:
                    continue
                row["f1_minus_first"] = row["f1"][0] - first[lang]["f1"][0]
                row["top_r_minus_first"] = row["top_r"][0] - first[lang]["top_r"][0]
                lines.append(f"| {data} | {lang} | {variant} | {row['f1'][0]:.3f} ± {row['f1'][1]:.3f} | "
                             f"{row['p'][0]:.3f} | {row['r'][0]:.3f} | {row['top_r'][0]:.3f} ± {row['top_r'][1]:.3f}"
                             f" | {row['f1_minus_first']:+.3f} | {row['top_r_minus_first']:+.3f} |")
    result = {"benchmark": "feature-groups", "machine": machine(), "commit": commit(),
              "date": time.strftime("%Y-%m-%d"), "nil_rule": RULE, "datasets": datasets, "notes": args.note}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
