"""Library entry of ``xel-train``: :func:`run` trains (optionally after a search, over several seeds), writes
the run directory and returns the final metrics."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from xel.precompute.files import check_writable, make_temp_dir, remove_stale_temp_dirs, replace_dir, resolve_out
from xel.precompute.store import atomic_write_json, check_out_dir
from xel.retrieval.metrics import __doc__ as METRIC_DEFINITIONS
from xel.train.config import ConfigError, TrainConfig
from xel.train.fit import fit
from xel.train.outputs import mean_std, run_metrics, write_fit
from xel.train.prepare import prepare
from xel.train.resume import config_differences
from xel.train.search import search

log = logging.getLogger(__name__)


def set_threads(threads: int) -> None:
    """torch's intra-op threads for the process (``--threads``; 0: the cores this process may use, at most 16).
    For entry points (``xel-train``, ``xel-experiment``'s Ray tasks): :func:`run` leaves process state alone."""
    if threads:
        torch.set_num_threads(threads)
    else:
        torch.set_num_threads(max(1, min(len(os.sched_getaffinity(0)), 16)))


def run_title(cfg: TrainConfig, train_langs: tuple[str, ...], seed: int) -> str:
    """The setting and seed of a run as its plots name it: ``train en+A+P, seed 0``."""
    langs = ",".join(train_langs)
    return f"train {langs}{'+A' if cfg.adversarial else ''}{'+P' if cfg.popularity else ''}, seed {seed}"


def check_previous_run(out: Path, cfg: TrainConfig, overwrite: bool) -> bool:
    """Whether ``out`` holds an earlier run (its ``config.json``). One with another config is refused (a run
    directory holds one run), unless ``overwrite`` replaces it; ``--resume`` always needs the same config."""
    config_file = out / "config.json"
    if not config_file.is_file():
        return False
    try:
        saved = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        saved = {"<unreadable config.json>": str(e)}
    differences = config_differences(saved if isinstance(saved, dict) else {}, cfg.to_dict())
    if differences and (cfg.resume or not overwrite):
        fix = "resume with the same flags, or rerun without --resume" if cfg.resume else \
            "use another --out, or pass --overwrite to replace that run"
        raise ConfigError(f"--out {out}: holds a run with another config ({'; '.join(differences)}); {fix}")
    return True


def run(cfg: TrainConfig, overwrite: bool = False) -> dict[str, Any]:
    """Train per ``cfg``; returns ``{"config", "test", "dev", "best_epoch", "nil_threshold", "seeds", "std",
    "search"}`` where ``test``/``dev`` are per-group scores (the mean over seeds when ``seeds > 1``).

    A run directory holds one run. Into a new or empty ``--out`` (or with ``--resume``) the run is written in
    place, so that a killed run can be resumed. Into a directory that holds an earlier run (the same config, or
    any with ``overwrite``), the new run is written to a temp directory beside it and swapped in when complete,
    so that a kill leaves the old run whole, never a mix of the two."""
    staging: Path | None = None
    final: Path | None = None
    if cfg.out:  # new, empty, or an earlier run (its config.json): never a directory of something else
        final = resolve_out(cfg.out, ConfigError)
        check_out_dir(final, "config.json", "an xel-train run", ConfigError)
        check_writable(final, ConfigError)
        remove_stale_temp_dirs(final)
        if check_previous_run(final, cfg, overwrite) and not cfg.resume:
            check_writable(final, ConfigError, beside=True)
            staging = make_temp_dir(final)
    try:
        summary = _run(cfg, staging or final)
        if staging is not None:
            replace_dir(staging, final)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return summary


def _run(cfg: TrainConfig, out: Path | None) -> dict[str, Any]:
    data = prepare(cfg)
    trials: list[dict[str, Any]] = []
    if cfg.search:
        cfg, trials = search(cfg, data)
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
            write_fit(result, data.splits.test, seed_dir, cfg.plots, run_title(cfg, tuple(data.train_langs), seed))
        per_seed.append(run_metrics(result))
    test_mean, test_std = mean_std([r["test"] for r in per_seed])
    dev_mean = mean_std([r["dev"] for r in per_seed])[0] if per_seed[0]["dev"] is not None else None
    summary = {
        "config": cfg.to_dict(), "test": test_mean, "std": test_std, "dev": dev_mean,
        "best_epoch": [r["best_epoch"] for r in per_seed], "nil_threshold": [r["nil_threshold"] for r in per_seed],
        "seeds": [{k: r[k] for k in ("seed", "best_epoch", "nil_threshold", "test", "probe", "tied_top", "nil_rules")}
                  for r in per_seed],
        "search": trials, "definitions": METRIC_DEFINITIONS,
    }
    if out is not None and cfg.seeds > 1:
        atomic_write_json(out / "metrics.json", {**summary, "per_seed_dirs": [f"seed-{r['seed']}" for r in per_seed]})
    return summary
