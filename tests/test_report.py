"""bench/report.py renders docs/results.md from bench/results/*.json: every file gets a section, nothing renders as nan.

    pytest tests/test_report.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from bench import report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _headings(text: str) -> set[str]:
    return set(re.findall(r"^### (.+)$", text, flags=re.M))


def test_every_result_file_gets_a_section_and_nothing_is_nan(tmp_path):
    out = tmp_path / "results.md"
    result = CliRunner().invoke(report.main, ["--results", str(RESULTS), "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    files = sorted(RESULTS.glob("*.json"))
    assert files
    assert _headings(text) == {f"bench/results/{path.name}" for path in files}
    assert not re.search(r"\bnan\b", text, flags=re.I)
    for section in re.split(r"^### ", text, flags=re.M)[1:]:  # each file says where and when, or that it is unknown
        for field in ("machine", "load", "commit", "date"):
            assert re.search(rf"^- {field}: \S", section, flags=re.M), (field, section[:200])
    assert "| 6M | candidates |" in text  # the end-to-end KB table, as bench/kb_scale.py prints it


def test_the_committed_page_covers_every_result_file():
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    missing = {f"bench/results/{p.name}" for p in RESULTS.glob("*.json")} - _headings(page)
    assert not missing, f"rerun: python bench/report.py --out docs/results.md ({sorted(missing)} have no section)"


def test_unknown_files_missing_fields_and_non_finite_numbers(tmp_path):
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (results / "mystery.json").write_text(json.dumps({"speed": float("nan"), "rows": [{"a": 1}, {"a": None}]}))
    (results / "serve.json").write_text(json.dumps({"machine": {"cpus": 2, "load_avg": [0.5, 0.7, 1.0]},
                                                    "load": {"p99_ms": float("inf"), "requests_per_s": 12.0}}))
    text = report.render(results)
    assert "### mystery.json" in text and "## Other results" in text
    assert "### serve.json" in text and "## Serving" in text
    assert not re.search(r"\bnan\b|\binf\b", text, flags=re.I)
    assert "non-finite" in text
    assert "load average 0.5, 0.7, 1.0 (quiet: below the CPU count)" in text
    mystery = text.split("### mystery.json", 1)[1]
    assert "- machine: not recorded" in mystery and "- load: not recorded" in mystery
    assert "- commit: not recorded" in mystery  # not in a git repository


def test_no_result_files_is_an_error(tmp_path):
    result = CliRunner().invoke(report.main, ["--results", str(tmp_path)])
    assert result.exit_code != 0 and "no *.json result files" in result.output
