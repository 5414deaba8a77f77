"""``bench/nil_rules.py``: mean and std over runs of each NIL rule's test F1 per language, recall for NIL off."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def rules(f1: float, recall: float) -> dict:
    return {"off": {"test": {"all": {}, "lang:de": {"r": recall, "f1": 0.1}}},
            "csls+q": {"test": {"all": {}, "lang:de": {"f1": f1, "r": 0.2}}}}


def test_nil_rules_summarises_runs(tmp_path):
    for i, (f1, recall) in enumerate([(0.5, 0.6), (0.7, 0.8)]):
        (tmp_path / f"seed-{i}").mkdir()
        (tmp_path / f"seed-{i}" / "metrics.json").write_text(json.dumps({"nil_rules": rules(f1, recall)}))
    out = tmp_path / "nil-rules.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "nil_rules.py"), "--runs", f"x={tmp_path}/seed-*",
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    langs = json.loads(out.read_text())["results"]["x"]["langs"]
    assert langs["de"]["csls+q"] == {"mean": pytest.approx(0.6), "std": pytest.approx(0.1414, abs=1e-4)}
    assert langs["de"]["off"]["mean"] == pytest.approx(0.7)  # NIL off reports top-candidate recall
    assert "| x (2) | de |" in done.stdout
