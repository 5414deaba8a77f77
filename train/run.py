"""Library entry of ``xel-train``: :func:`run` trains (optionally after a search, over several seeds), writes
the run directory and returns the final metrics."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from precompute.store import atomic_write_json, check_out_dir
from retrieval.metrics import __doc__ as METRIC_DEFINITIONS
from train.config import ConfigError, TrainConfig
from train.fit import fit
from train.outputs import mean_std, run_metrics, write_fit
from train.prepare import prepare
from train.search import search

log = logging.getLogger(__name__)


def set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)
    else:
        torch.set_num_threads(max(1, min(len(os.sched_getaffinity(0)), 16)))


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train per ``cfg``; returns ``{"config", "test", "dev", "best_epoch", "nil_threshold", "seeds", "std",
    "search"}`` where ``test``/``dev`` are per-group scores (the mean over seeds when ``seeds > 1``)."""
    if cfg.out:  # new, empty, or an earlier run (its config.json): never a directory of something else
        check_out_dir(cfg.out, "config.json", "an xel-train run", ConfigError)
    set_threads(cfg.threads)
    data = prepare(cfg)
    trials: list[dict[str, Any]] = []
    if cfg.search:
        cfg, trials = search(cfg, data)
    out = Path(cfg.out) if cfg.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", cfg.to_dict())
        if trials:
            atomic_write_json(out / "search.json", trials)
    per_seed = []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        seed_dir = None if out is None else out if cfg.seeds == 1 else out / f"seed-{seed}"
        if seed_dir is not None:
            seed_dir.mkdir(parents=True, exist_ok=True)
        result = fit(cfg, data, seed, run_dir=seed_dir)
        if seed_dir is not None:
            write_fit(result, data.splits.test, seed_dir, cfg.plots)
        per_seed.append(run_metrics(result))
    test_mean, test_std = mean_std([r["test"] for r in per_seed])
    dev_mean = mean_std([r["dev"] for r in per_seed])[0] if per_seed[0]["dev"] is not None else None
    summary = {
        "config": cfg.to_dict(), "test": test_mean, "std": test_std, "dev": dev_mean,
        "best_epoch": [r["best_epoch"] for r in per_seed], "nil_threshold": [r["nil_threshold"] for r in per_seed],
        "seeds": [{k: r[k] for k in ("seed", "best_epoch", "nil_threshold", "test", "probe", "tied_top")}
                  for r in per_seed],
        "search": trials, "definitions": METRIC_DEFINITIONS,
    }
    if out is not None and cfg.seeds > 1:
        atomic_write_json(out / "metrics.json", {**summary, "per_seed_dirs": [f"seed-{r['seed']}" for r in per_seed]})
    return summary
