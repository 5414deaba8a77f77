"""Render docs/results.md from the benchmark result files in bench/results/*.json.

    python bench/report.py --out docs/results.md [--results bench/results]

One section per benchmark family (precompute, encoder, Ray overhead, int8 gate, soak, trainer, retrieval/ANN,
large KBs, serving, xel-link at scale), one subsection per result file. Each subsection states where the file
was measured (machine, load average, whether the machine was quiet or loaded) and when (the commit that last
changed the file, and its date), writing "not recorded" where neither the file nor git says; then the file's
scalar fields as one table and each list of rows as a table of its own. The end-to-end KB-scale files are also
rendered by ``bench/kb_scale.py table``, the table their benchmark prints.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parent.parent
NOT_RECORDED = "not recorded"

# (family title, file-name prefixes, the command that writes such files)
FAMILIES: list[tuple[str, tuple[str, ...], str]] = [
    ("Linking quality against nn", ("quality",), "python bench/quality.py --run NAME=EXPERIMENT_DIR ..."),
    ("Mention detection (raw text)", ("detect",), "python bench/detect.py --data data/spans --data DATA_SPANS_RU "
     "--layers 6,-1 --layers 6 --layers -1 --layers 8"),
    ("Mention detection, end to end", ("detect-e2e",), "python bench/detect_e2e.py --run RUN_DIR --data DIR"),
    ("NIL headroom (oracle thresholds)", ("nil-headroom",), "python bench/nil_headroom.py --data ..."),
    ("NIL rules on the same models", ("nil-rules",), "python bench/nil_rules.py --runs NAME=GLOB ..."),
    ("Per-language centring", ("centre",), "python bench/centre.py --data NAME=ROOT[:eval] ... --work DIR"),
    ("Feature groups on the same stores", ("feature-groups",),
     "python bench/feature_groups.py --run DATA/VARIANT=RUN_DIR ..."),
    ("Precompute throughput", ("precompute",), "python bench/precompute.py"),
    ("Precompute start (driver and actor)", ("precompute_start",), "python bench/precompute_start.py"),
    ("Encoder forward", ("encoder",), "python bench/encoder.py"),
    ("Ray overhead", ("ray_overhead",), "python bench/ray_overhead.py"),
    ("int8 quality gate", ("int8_gate",), "python bench/int8_gate.py"),
    ("Precompute memory (soak)", ("soak",), "python bench/soak.py"),
    ("Trainer step", ("train",), "python -m bench.train"),
    ("Retrieval and ANN indexes", ("retrieval", "ann"), "python -m bench.retrieval; xel-nn bench --out FILE"),
    ("Large KBs, end to end", ("kb-scale-e2e",), "python bench/kb_scale.py e2e --entities N"),
    ("Large KBs, per index", ("kb-scale",), "python bench/kb_scale.py run"),
    ("Serving", ("serve",), "python bench/serve.py"),
    ("xel-link at scale", ("link-scale",), "python bench/link_scale.py"),
]
OTHER = ("Other results", (), "")
LOAD_KEYS = ("load", "load_average", "load_avg")
MAX_COLUMNS = 12


def family_of(path: Path) -> tuple[str, tuple[str, ...], str]:
    """The family of a result file: the first whose prefix its name starts with (longest prefixes listed first)."""
    for family in sorted(FAMILIES, key=lambda f: -max(len(p) for p in f[1])):
        if any(path.stem.startswith(prefix) for prefix in family[1]):
            return family
    return OTHER


def cell(value: Any) -> str:
    """A scalar as a table cell: finite floats rounded, missing and non-finite values spelled out."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "non-finite"
        if abs(value) >= 1e9:
            return f"{value:.4g}"
        if abs(value) >= 1000 or value == int(value):
            return f"{value:,.0f}"
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ") or "''"


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def is_rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists of scalars summarised; lists of rows left out (they become tables)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif is_scalar(value):
            flat[name] = value
        elif isinstance(value, list) and all(is_scalar(v) for v in value):
            flat[name] = summarise(value)
    return flat


def summarise(values: list[Any]) -> str:
    """A list of scalars: itself when short, else its length, median, minimum and maximum."""
    if len(values) <= 4:
        return ", ".join(cell(v) for v in values) if values else "[]"
    numbers = sorted(v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))
    if len(numbers) != len(values) or not all(math.isfinite(v) for v in numbers):
        return f"{len(values)} values"
    return (f"{len(values)} values, median {cell(float(numbers[len(numbers) // 2]))}, "
            f"min {cell(float(numbers[0]))}, max {cell(float(numbers[-1]))}")


def markdown_table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def rows_table(rows: list[dict[str, Any]]) -> list[str]:
    """Rows of dicts as one table over the union of their (flattened) keys, in first-seen order; a table wider
    than :data:`MAX_COLUMNS` is turned on its side (one line per key, one column per row)."""
    flat_rows = [flatten(row) for row in rows]
    header: list[str] = []
    for row in flat_rows:
        header += [key for key in row if key not in header]
    if len(header) > MAX_COLUMNS:
        return markdown_table(["field", *(f"row {i + 1}" for i in range(len(flat_rows)))],
                              ([f"`{key}`", *(cell(row.get(key)) for row in flat_rows)] for key in header))
    return markdown_table(header, ([cell(row.get(key)) for key in header] for row in flat_rows))


def row_lists(data: Any, prefix: str = "") -> list[tuple[str, list[dict[str, Any]]]]:
    """Every list of rows in ``data``, with its dotted path (e.g. ``frontier.2``)."""
    found: list[tuple[str, list[dict[str, Any]]]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{prefix}{key}"
            if is_rows(value):
                found.append((name, value))
            elif isinstance(value, dict):
                found += row_lists(value, f"{name}.")
    return found


def load_average(data: dict[str, Any]) -> list[float] | None:
    for holder in (data.get("machine") if isinstance(data.get("machine"), dict) else {}, data):
        for key in LOAD_KEYS:
            value = holder.get(key)
            if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
                return [float(v) for v in value]
    return None


def cpus(data: dict[str, Any]) -> int | None:
    machine = data.get("machine")
    for holder in (machine if isinstance(machine, dict) else {}, data, data.get("config") or {}):
        if isinstance(holder.get("cpus"), int):
            return holder["cpus"]
    return None


def machine_text(data: dict[str, Any]) -> str:
    machine = data.get("machine")
    parts: list[str] = []
    if isinstance(machine, dict):
        parts += [f"{key} {cell(value)}" for key, value in machine.items()
                  if key not in LOAD_KEYS and is_scalar(value) and value not in ("", None)]
    elif isinstance(machine, str) and machine:
        parts.append(machine)
    if cpus(data) is not None and not any(p.startswith("cpus ") for p in parts):
        parts.append(f"cpus {cpus(data)}")
    for key in ("torch", "faiss"):
        if isinstance(data.get(key), str):
            parts.append(f"{key} {data[key]}")
    return "; ".join(parts) or NOT_RECORDED


def load_text(data: dict[str, Any]) -> str:
    load = load_average(data)
    if load is None:
        return NOT_RECORDED
    n = cpus(data)
    verdict = "" if n is None else (" (quiet: below the CPU count)" if max(load) < n
                                    else f" (loaded: at or above the {n} CPUs)")
    return "load average " + ", ".join(f"{v:.1f}" for v in load) + verdict


def git_record(path: Path) -> tuple[str, str]:
    """The commit that last changed ``path`` and its date, or "not recorded" (untracked, or no git)."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%h %ad", "--date=short", "--", path.name],
                             cwd=path.parent, capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    return (out[0], out[1]) if len(out) == 2 else (NOT_RECORDED, NOT_RECORDED)


def kb_scale_e2e_table(paths: list[Path]) -> list[str]:
    """The table ``bench/kb_scale.py table`` prints for these end-to-end result files."""
    sys.path.insert(0, str(ROOT))
    from bench.kb_scale import table

    sorted_paths = sorted(paths, key=lambda p: json.loads(p.read_text(encoding="utf-8")).get("entities", 0))
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        table.callback(tuple(sorted_paths))
    return buffer.getvalue().rstrip("\n").splitlines()


def file_section(path: Path) -> list[str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    commit, date = git_record(path)
    heading = path.relative_to(ROOT) if ROOT in path.parents else path.name
    lines = [f"### {heading}",
             "",
             f"- machine: {machine_text(data) if isinstance(data, dict) else NOT_RECORDED}",
             f"- load: {load_text(data) if isinstance(data, dict) else NOT_RECORDED}",
             f"- commit: {commit}",
             f"- date: {date}",
             ""]
    if not isinstance(data, dict):
        return lines + ([*rows_table(data), ""] if is_rows(data) else [f"`{cell(str(data))}`", ""])
    headline = {key: value for key, value in flatten(data).items()
                if key.split(".")[0] not in ("machine",) and key not in ("torch", "faiss")}
    if headline:
        lines += markdown_table(["field", "value"], ([f"`{key}`", cell(value)] for key, value in headline.items()))
        lines.append("")
    for name, rows in row_lists(data):
        lines += [f"`{name}`:", "", *rows_table(rows), ""]
    return lines


def render(results_dir: Path) -> str:
    paths = sorted(results_dir.glob("*.json"))
    if not paths:
        raise click.ClickException(f"{results_dir}: no *.json result files; allowed: a bench/results directory")
    by_family: dict[str, list[Path]] = {}
    commands: dict[str, str] = {}
    for path in paths:
        title, _, command = family_of(path)
        by_family.setdefault(title, []).append(path)
        commands[title] = command
    order = [f[0] for f in FAMILIES] + [OTHER[0]]
    lines = ["# Benchmark results",
             "",
             "Generated by `python bench/report.py --out docs/results.md` from `bench/results/*.json`; do not edit by "
             "hand. Each file says where it was measured (machine, load average at the time where the benchmark "
             "recorded it: *quiet* when below the CPU count, *loaded* otherwise) and when (the commit that last "
             "changed the file, and its date). Machines here were shared and often loaded, so compare ratios "
             "measured in the same file, not absolute rates across files. Why the defaults are what they are: "
             "[design.md](design.md). Experiment results (Table 4) of earlier rounds: "
             "[CHANGELOG.md](../CHANGELOG.md).",
             ""]
    for title in (t for t in order if t in by_family):
        lines += [f"## {title}", ""]
        if commands[title]:
            lines += [f"Written by `{commands[title]}`.", ""]
        if title == "Linking quality against nn":
            sys.path.insert(0, str(ROOT))
            from bench.quality import markdown

            for path in by_family[title]:
                data = json.loads(path.read_text(encoding="utf-8"))
                lines += [f"`{path.name}` ({data.get('date', NOT_RECORDED)}, commit {data.get('commit')}):", "",
                          *[f"- {note}" for note in data.get("notes", [])], "", markdown(data), ""]
        if title == "Per-language centring":
            sys.path.insert(0, str(ROOT))
            from bench.centre import markdown as centre_markdown

            for path in by_family[title]:
                data = json.loads(path.read_text(encoding="utf-8"))
                lines += [f"`{path.name}` ({data.get('date', NOT_RECORDED)}, commit {data.get('commit')}):", "",
                          *[f"- {note}" for note in data.get("notes", [])], "", centre_markdown(data), ""]
        if title == "Large KBs, end to end":
            full = [p for p in by_family[title] if "before" not in p.stem]
            if full:
                lines += ["As `python bench/kb_scale.py table` prints it (peak private memory per process, MB):", "",
                          *kb_scale_e2e_table(full), ""]
        for path in by_family[title]:
            lines += file_section(path)
    return "\n".join(lines).rstrip("\n") + "\n"


@click.command()
@click.option("--results", "results_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=ROOT / "bench" / "results", show_default=True, help="directory of benchmark JSON files")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="markdown file to write  [default: print]")
def main(results_dir: Path, out: Path | None) -> None:
    """Render the benchmark results in --results as one markdown page."""
    text = render(results_dir.resolve())
    if out is None:
        click.echo(text, nl=False)
        return
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    click.echo(f"{out}: {len(text.splitlines())} lines from {len(list(results_dir.glob('*.json')))} result files")


if __name__ == "__main__":
    main()
