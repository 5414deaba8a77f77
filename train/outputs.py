"""Write a run directory of ``xel-train --out``: config.json, metrics.json, predictions.jsonl, model.safetensors
and PNG plots for each seed (next to the resume state :mod:`train.resume` keeps), and the mean and std over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from xel.precompute.store import atomic_write_json
from xel.retrieval.files import write_predictions
from xel.train.checkpoint import CHECKPOINT, save_checkpoint
from xel.train.data import Mentions
from xel.train.evaluate import prediction_rows
from xel.train.fit import FitResult
from xel.train.plots import plot_run


def run_metrics(result: FitResult) -> dict[str, Any]:
    return {"seed": result.seed, "best_epoch": result.best_epoch, "nil_threshold": result.nil_threshold,
            "dev": result.dev, "test": result.test, "probe": result.probe,
            "tied_top": result.test_ranked.tied_by_group(result.test_langs or []),
            "nil_rule": result.nil_rule.to_dict() if result.nil_rule is not None else None,
            "nil_rules": result.nil_rules, "epochs": result.history}


def write_fit(result: FitResult, test: Mentions, out: Path, plots: bool, title: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", run_metrics(result))
    write_predictions(out / "predictions.jsonl", prediction_rows(result.test_ranked, test, result.nil_threshold))
    save_checkpoint(result.model, out / CHECKPOINT)
    if plots:
        plot_run(result.history, result.test, out, title or f"seed {result.seed}")


def mean_std(results: list[dict[str, dict[str, float]]]) -> tuple[dict[str, dict[str, float]], dict]:
    """Per group and metric, mean and (population) std over seeds; groups present in every seed."""
    groups = [g for g in results[0] if all(g in r for r in results)]
    mean, std = {}, {}
    for g in groups:
        mean[g] = {m: float(np.mean([r[g][m] for r in results])) for m in results[0][g]}
        std[g] = {m: float(np.std([r[g][m] for r in results])) for m in results[0][g]}
    return mean, std
