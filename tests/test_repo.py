"""The README's promises about the repository itself: two set-up commands, CI runs the test one verbatim, and
every relative link of README.md and docs/*.md leads to a file that exists."""

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


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_in_the_docs_exists():
    missing = []
    for doc in _markdown_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            path = target.split("#", 1)[0]
            if not path or re.match(r"[a-z][a-z0-9+.-]*:", path):  # an anchor in the same file, or a URL
                continue
            if not (doc.parent / path).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not missing, missing


def test_the_docs_point_nowhere_outside_the_repository():
    for doc in _markdown_files():
        assert "../shared" not in doc.read_text(encoding="utf-8"), doc
