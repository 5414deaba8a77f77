"""``bench/quality.py``: the README's rows from xel-train runs named by setting, composed as the experiment does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def seed(f1: float, recall: float) -> dict:
    cell = {"f1": f1, "p": f1, "r": recall}
    return {"nil_rules": {"off": {"test": {"all": cell, "lang:de": {"f1": 0.1, "p": 0.1, "r": recall}}},
                          "csls+q": {"test": {"all": cell, "lang:de": cell}}}}


def test_quality_composes_xel_train_runs_named_by_setting(tmp_path):
    runs = tmp_path / "runs"
    for name, seeds in {"nn": [seed(0.4, 0.5)], "en": [seed(0.5, 0.6), seed(0.7, 0.8)]}.items():
        (runs / name).mkdir(parents=True)
        # a one-seed run's metrics.json is the seed's own; a multi-seed run's lists its seeds
        metrics = seeds[0] if len(seeds) == 1 else {"seeds": seeds}
        (runs / name / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "quality.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--run", f"x={runs}", "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = {row["row"]: row for row in json.loads(out.read_text())["datasets"]["x"]["de"]}
    assert rows["linker (default)"]["f1"] == [pytest.approx(0.6), pytest.approx(0.1)]  # the experiment's std (ddof 0)
    assert rows["linker (default)"]["top_r"][0] == pytest.approx(0.7)
    assert rows["nn, default NIL"]["f1"][0] == pytest.approx(0.4)
    assert "linker +A" not in rows  # no en+A run, no row


def test_quality_names_what_a_run_directory_must_hold(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--run", f"x={tmp_path}"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "DIR/en+A from xel-train --out" in done.stderr
