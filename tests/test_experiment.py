"""xel-experiment end to end on the tiny model: every stage runs, the table and report are written, a rerun resumes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.conftest import write_jsonl
from train.cli import experiment as main

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CITIES = ["Paris", "Berlin", "Moscow", "London", "Tokyo", "Madrid", "Rome", "Vienna", "Prague", "Oslo"]
GERMAN = {"Paris": "Paris", "Berlin": "Berlin", "Moscow": "Moskau", "London": "London", "Tokyo": "Tokio",
          "Madrid": "Madrid", "Rome": "Rom", "Vienna": "Wien", "Prague": "Prag", "Oslo": "Oslo"}


def _data(root):
    kb = [{"id": f"Q{i}", "name": c, "description": f"{c} is a capital city", "lang": "en", "links": None}
          for i, c in enumerate(CITIES)]
    mentions = []
    for rep in range(6):
        for i, c in enumerate(CITIES):
            s = f"Last year we visited {c} with friends."
            mentions.append({"id": f"en{rep}-{i}", "lang": "en", "sentence": s, "start": 21, "end": 21 + len(c),
                             "context": s, "gold": f"Q{i}" if i < 8 else None, "type": "GPE"})
    for i, c in enumerate(CITIES):
        g = GERMAN[c]
        s = f"Wir waren in {g} im Urlaub."
        mentions.append({"id": f"de-{i}", "lang": "de", "sentence": s, "start": 13, "end": 13 + len(g),
                         "context": s, "gold": f"Q{i}", "type": "GPE"})
    write_jsonl(root / "kb.jsonl", kb)
    write_jsonl(root / "mentions.jsonl", mentions)
    return root


def test_experiment_runs_every_stage_and_resumes(tiny_model_dir, tmp_path, ray_session):
    data = _data(tmp_path / "data")
    out = tmp_path / "run"
    flags = ["--data", str(data), "--out", str(out), "--model", str(tiny_model_dir), "--seeds", "2", "--epochs", "2",
             "--k", "5"]
    result = CliRunner().invoke(main, flags)
    assert result.exit_code == 0, result.output
    for setting in ("nn", "en", "en+A", "en+P", "en+PA"):
        assert f"\n{setting} " in result.output
    assert "de: zero-shot target language" in result.output and "candidate recall@k" in result.output
    report = (out / "report.md").read_text()
    assert "## Table 4" in report and "f1_by_setting.png" in report
    assert (out / "f1_by_setting.png").stat().st_size > 0 and (out / "f1_by_epoch.png").stat().st_size > 0
    for setting in ("en", "en+A", "en+P", "en+PA"):
        for seed in (0, 1):
            preds = (out / "train" / setting / f"seed-{seed}" / "predictions.jsonl").read_text().splitlines()
            assert {json.loads(p)["id"] for p in preds} >= {f"de-{i}" for i in range(10)}
    results = json.loads((out / "results.json").read_text())
    assert set(results["table"]) == {"same", "nn", "en", "en+A", "en+P", "en+PA"}
    again = CliRunner().invoke(main, flags)
    assert again.exit_code == 0, again.output
    assert "wrote 0 shards (0 rows encoded" in again.output
