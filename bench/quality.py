"""Linking quality per language against nn, from finished ``xel-experiment`` runs: a JSON file for
``bench/results/`` and the markdown table the README shows.

    python bench/quality.py --run sample=runs/sample --run wikidata-el=runs/wel --out bench/results/quality.json

A ``--run`` directory is an ``xel-experiment --out`` (its ``results.json``), or a directory of ``xel-train --out``
runs named by setting (``nn/``, ``en/``, ``en+A/``: the same rows, composed as the experiment composes them).

Per dataset and target language, rows: nn never NIL (the best candidate always linked), nn with the old
raw-cosine NIL rule, with csls uncalibrated and with the default NIL rule (csls, calibrated), the default linker
(``xel-train`` with no quality flags: the ``en`` row) with the old rule, with the learned NIL logit (calibrated;
``--nil-score learned``) and with its default, and +A; F1, P,
R and top-candidate recall (NIL off), mean ± std over the experiment's seeds. Every number is read from the
runs' ``results.json``; nothing is computed here but the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

DEFAULT_RULE = "csls+q"
ROWS = (  # label, setting, NIL rule (None: the setting's own row of the Table 4 block)
    ("nn, never NIL", "nn", "off"),
    ("nn, cosine NIL (old rule)", "nn", "cosine"),
    ("nn, csls NIL uncalibrated", "nn", "csls"),
    ("nn, default NIL", "nn", DEFAULT_RULE),
    ("linker, cosine NIL (old rule)", "en", "cosine"),
    ("linker, learned NIL", "en", "learned+q"),
    ("linker (default)", "en", DEFAULT_RULE),
    ("linker +A", "en+A", DEFAULT_RULE),
)


def composed_results(root: Path) -> dict[str, Any] | None:
    """``results.json``'s ``nil_rules`` from ``xel-train --out`` runs named by setting (``root/nn``, ``root/en``,
    ``root/en+A``), composed by the experiment's own :func:`nil_rows`; None when ``root`` holds none."""
    from xel.train.experiment import NIL_TABLE_SETTINGS, nil_rows

    per_setting = {}
    for name in NIL_TABLE_SETTINGS:
        path = root / name / "metrics.json"
        if path.is_file():
            metrics = json.loads(path.read_text(encoding="utf-8"))
            per_setting[name] = [metrics if "seeds" in metrics else {"seeds": [metrics]}]
    langs = sorted({key[5:] for runs in per_setting.values() for seed in runs[0]["seeds"]
                    for rule in seed.get("nil_rules", {}).values() for key in rule.get("test", {})
                    if key.startswith("lang:")})
    return {"nil_rules": nil_rows(per_setting, langs)} if per_setting else None


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    load = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0))
    return {"cpu": cpu, "cores": cores, "load_1min": round(load, 2), "quiet": load < cores}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dataset_rows(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Language -> rows of :data:`ROWS` (those the run has)."""
    rules = results.get("nil_rules", {})
    langs = sorted({lang for rule in rules.get("en", {}).values() for lang in rule})
    out: dict[str, list[dict[str, Any]]] = {}
    for lang in langs:
        rows = []
        for label, setting, rule in ROWS:
            cell = rules.get(setting, {}).get(rule, {}).get(lang)
            off = rules.get(setting, {}).get("off", {}).get(lang)
            if cell is None:
                continue
            rows.append({"row": label, "setting": setting, "nil": rule, "f1": cell["f1"], "p": cell["p"],
                         "r": cell["r"], "top_r": off["r"] if off else None})
        out[lang] = rows
    return out


def markdown(data: dict[str, Any]) -> str:
    lines = ["| data | lang | row | F1 | P | R | top-candidate R |", "|---|---|---|---:|---:|---:|---:|"]
    for name, by_lang in data["datasets"].items():
        for lang, rows in by_lang.items():
            for row in rows:
                f1, p, r, top = row["f1"], row["p"], row["r"], row["top_r"]
                top_cell = f"{top[0]:.3f}" if top else "-"
                lines.append(f"| {name} | {lang} | {row['row']} | {f1[0]:.3f} ± {f1[1]:.3f} | {p[0]:.3f} | "
                             f"{r[0]:.3f} | {top_cell} |")
    return "\n".join(lines)


def headline(data: dict[str, Any]) -> str:
    """F1 only, one line per dataset and language, one column per row of :data:`ROWS` (the README's table)."""
    labels = [label for label, _, _ in ROWS]
    lines = ["| data | lang | " + " | ".join(labels) + " |", "|---|---|" + "---:|" * len(labels)]
    for name, by_lang in data["datasets"].items():
        for lang, rows in by_lang.items():
            f1 = {row["row"]: row["f1"] for row in rows}
            cells = [f"{f1[x][0]:.3f} ± {f1[x][1]:.3f}" if x in f1 and f1[x][1] >= 0.0005 else
                     f"{f1[x][0]:.3f}" if x in f1 else "-" for x in labels]
            lines.append(f"| {name} | {lang} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=DIR",
                        help="an xel-experiment --out directory (holding results.json), or one holding xel-train "
                             "runs named nn, en, en+A; named as the table shows it")
    parser.add_argument("--note", action="append", default=[], help="a line on how the runs were made (repeatable)")
    parser.add_argument("--headline", action="store_true", help="print the F1-only table the README shows")
    parser.add_argument("--out", type=Path, help="write the JSON here (bench/results/quality.json)")
    args = parser.parse_args()
    datasets = {}
    for spec in args.run:
        name, _, run = spec.partition("=")
        path = Path(run) / "results.json"
        results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else composed_results(Path(run))
        if not name or results is None:
            parser.error(f"--run {spec!r}: NAME=DIR with DIR/results.json from xel-experiment, or DIR/nn, DIR/en, "
                         "DIR/en+A from xel-train --out, is required")
        datasets[name] = dataset_rows(results)
    data = {"benchmark": "quality", "machine": machine(), "commit": commit(),
            "date": time.strftime("%Y-%m-%d"), "datasets": datasets,
            "notes": ["F1/P/R mean ± std over the experiments' seeds; NIL thresholds tuned on English dev only",
                      *args.note]}
    if args.out:
        args.out.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    print(headline(data) if args.headline else markdown(data))


if __name__ == "__main__":
    main()
