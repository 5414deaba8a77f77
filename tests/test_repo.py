"""The README's promises about the repository itself: two set-up commands, CI runs the test one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", quick, flags=re.S)]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = _setup_commands()
    assert len(commands) == 2
    main, tests = commands
    assert "xel-experiment --data data/sample" in main and "pip install torch==2.13.0" in main
    assert "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_readme_has_no_unfilled_placeholders():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not re.findall(r"\b(?:RESULT|BENCH|TROUBLE|RETRIEVAL|TRAIN|ENCODER|DATA)_[A-Z]+\b", readme)
