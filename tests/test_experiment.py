"""xel-experiment end to end on the tiny model: every stage runs, the table and report are written, a rerun resumes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from xel.retrieval.files import read_predictions
from xel.retrieval.metrics import score
from xel.train.cli import experiment as main

from tests.train_fixtures import capital_cities

pytestmark = [pytest.mark.ray, pytest.mark.slow]



def _f1(golds: dict, preds: list[dict], lang_of: dict, lang: str) -> float:
    rows = [p for p in preds if lang_of[p["id"]] == lang]
    return score([golds[p["id"]] for p in rows], [p["pred"] for p in rows]).f1


def test_experiment_runs_every_stage_and_resumes(tiny_model_dir, tmp_path, ray_session):
    data = capital_cities(tmp_path / "data")
    out = tmp_path / "run"
    flags = ["--data", str(data), "--out", str(out), "--model", str(tiny_model_dir), "--seeds", "2", "--epochs", "2",
             "--k", "5", "--adv-modes", "grl,uniform", "--lambdas", "0.1"]
    result = CliRunner().invoke(main, flags)
    assert result.exit_code == 0, result.output
    for setting in ("nn", "en", "en+A", "en+P", "en+PA", "paper:en", "paper:en+A"):
        assert f"\n{setting} " in result.output
    assert "de: zero-shot target language" in result.output and "candidate recall@k" in result.output
    report = (out / "report.md").read_text()
    assert "## Table 4" in report and "f1_by_setting.png" in report and "## +A: mode and lambda" in report
    results = json.loads((out / "results.json").read_text())
    assert set(results["table"]) == {"nn", "en", "en+A", "en+P", "en+PA", "paper:en", "paper:en+A", "paper:en+P",
                                     "paper:en+PA"}
    # +A's setting is the grid's best English dev F1 (never a target-language score)
    grid = results["adversarial_grid"]
    assert set(grid) == {"grl:0.1", "uniform:0.1"}
    mode, lam = results["chosen_adversarial"]
    assert grid[f"{mode}:{lam:g}"]["dev_f1"] == max(g["dev_f1"] for g in grid.values())
    # every cell is the mean over seeds of F1 recomputed from that seed's predictions.jsonl
    records = [json.loads(line) for line in (data / "mentions.jsonl").read_text().splitlines()]
    golds, lang_of = {r["id"]: r["gold"] for r in records}, {r["id"]: r["lang"] for r in records}
    for setting, run_dir in (("en", "en"), ("en+P", "en+P"), ("paper:en", "paper-en")):
        f1s = [_f1(golds, read_predictions(out / "train" / run_dir / f"seed-{seed}" / "predictions.jsonl"), lang_of,
                   "de") for seed in (0, 1)]
        assert results["table"][setting]["lang:de"]["f1"][0] == pytest.approx(sum(f1s) / 2, abs=1e-9)
    # nn predicts the candidate with the highest cosine, or NIL where its csls (that cosine minus the mean of the
    # next 10), shifted by its language's calibration, is below the threshold tuned on English dev
    rule = json.loads((out / "train" / "nn" / "metrics.json").read_text())["nil_rule"]
    assert rule["score"] == "csls"
    checked = 0
    for p in read_predictions(out / "train" / "nn" / "predictions.jsonl"):
        if p["candidates"]:
            cosines = sorted((c[1] for c in p["candidates"]), reverse=True)
            best = max(p["candidates"], key=lambda c: c[1])
            assert p["score"] == pytest.approx(best[1], abs=1e-6)
            csls = cosines[0] - (sum(cosines[1:11]) / len(cosines[1:11]) if len(cosines) > 1 else 0.0)
            decision = csls + rule["shifts"].get(lang_of[p["id"]], 0.0) - rule["threshold"]
            if abs(decision) > 1e-5:  # the file's scores are rounded
                assert p["pred"] == (best[0] if decision > 0 else None)
                checked += 1
    assert checked > 0
    again = CliRunner().invoke(main, flags)
    assert again.exit_code == 0, again.output
    assert "wrote 0 shards (0 rows encoded" in again.output and "reusing" in again.output
    assert json.loads((out / "results.json").read_text())["table"] == results["table"]


def test_xel_train_with_no_quality_flag_trains_the_experiments_shipped_linker(tmp_path):
    """The experiment's ``en`` row (the linker the README reports) is ``xel-train --features h5/`` with no quality
    flag: its config differs from xel-train's defaults only in where things are and what is evaluated."""
    from dataclasses import fields, replace

    from xel.train.config import TrainConfig
    from xel.train.experiment import SETTINGS, ExperimentConfig, base_config

    stores = {"features": tmp_path / "h5", "candidates": tmp_path / "candidates.jsonl"}
    shipped = replace(base_config(ExperimentConfig(data=tmp_path, out=tmp_path / "x"), stores, ["de"]),
                      **SETTINGS["en"])
    user = TrainConfig(features=str(stores["features"]), candidates=str(stores["candidates"]))
    differs = {f.name for f in fields(TrainConfig) if getattr(shipped, f.name) != getattr(user, f.name)}
    # train_lang: en, xel-train's own default when the store has it; tune_nil: the residual scorer's default
    # (on, with a dev split), the threshold then tuned; threads and progress: how it runs, not what it learns
    assert differs <= {"eval_lang", "train_lang", "tune_nil", "nil_threshold", "threads", "progress"}, differs
    assert shipped.train_lang == ("en",) and shipped.tune_nil and user.scorer_kind.name == "residual"
    assert user.dev_fraction > 0  # so xel-train tunes the NIL threshold as the experiment does


@pytest.mark.parametrize("modes, lambdas", [(("grl",), (0.01,)), (("grl", "uniform"), (0.1,))])
def test_one_adversarial_setting_trains_with_the_others_and_several_are_a_grid_first(tmp_path, modes, lambdas):
    """With one +A setting there is nothing to choose: its run (en+A seed 0, in the grid's directory) trains in
    the same batch as every other run instead of alone before them (one core idle); with several the grid trains
    first and English dev F1 chooses. Either way the results hold the grid's runs and en+A seed 0 is one of them."""
    from xel.train.experiment import ExperimentConfig, base_config, train_all

    cfg = ExperimentConfig(data=tmp_path, out=tmp_path / "x", seeds=2, adv_modes=modes, lambdas=lambdas)
    base = base_config(cfg, {"features": tmp_path / "h5", "candidates": tmp_path / "c.jsonl"}, ["de"])
    batches: list[tuple[str, list[str]]] = []

    def run_jobs(jobs, force, desc):
        batches.append((desc, sorted(jobs)))
        # a result per run, its English dev F1 set by its directory (so that the grid's choice is known)
        return {key: {"dev": {"all": {"f1": 0.9 if "uniform" in job.out else 0.5}}, "out": job.out}
                for key, job in jobs.items()}

    adv_grid, chosen, jobs, done = train_all(cfg, base, ["de"], run_jobs)
    descs = [d for d, _ in batches]
    if len(modes) == 1:
        assert descs == ["training"] and chosen == ("grl", 0.01)
        assert set(adv_grid) == {"grl:0.01"} and adv_grid["grl:0.01"] is done["en+A|0"]
    else:
        assert descs == ["+A grid", "training"] and chosen == ("uniform", 0.1)  # the better dev F1
        assert set(adv_grid) == {"grl:0.1", "uniform:0.1"}
    assert "en+A|0" in batches[-1][1] and "en+A|1" in batches[-1][1]
    assert jobs[("en+A", 0)].out.endswith(f"adv-grid/{chosen[0]}-{chosen[1]:g}")
    assert (jobs[("en+A", 1)].adv_mode, jobs[("en+A", 1)].lambda_adv) == chosen
