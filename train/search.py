"""Random hyperparameter search over the paper's Table 3 (``xel-train --search N``), best trial by dev F1.

Trials run as parallel Ray tasks when ``ray.is_initialized()``, else one after another. Each trial trains with
the base seed and is scored by its best-epoch dev F1 (``all`` group).
"""

from __future__ import annotations

import logging
import random
from typing import Any

from xel.train.config import SEARCH_SPACE, TrainConfig
from xel.train.fit import fit
from xel.train.prepare import Prepared

log = logging.getLogger(__name__)


def sample_trials(cfg: TrainConfig, n: int) -> list[TrainConfig]:
    rng = random.Random(cfg.seed)
    return [cfg.with_(search=0, seeds=1, **{k: rng.choice(v) for k, v in SEARCH_SPACE.items()}) for _ in range(n)]


def trial_dev_f1(cfg: TrainConfig, data: Prepared) -> float:
    result = fit(cfg, data, cfg.seed, progress=False)
    assert result.dev is not None
    return float(result.dev["all"]["f1"])


def _run_trials(trials: list[TrainConfig], data: Prepared) -> list[float]:
    try:
        import ray
    except ImportError:
        ray = None
    if ray is not None and ray.is_initialized():
        remote = ray.remote(trial_dev_f1)
        data_ref = ray.put(data)
        log.info("search: %d trials as Ray tasks", len(trials))
        return list(ray.get([remote.remote(t, data_ref) for t in trials]))
    log.info("search: %d trials sequentially (Ray is not initialised)", len(trials))
    return [trial_dev_f1(t, data) for t in trials]


def search(cfg: TrainConfig, data: Prepared) -> tuple[TrainConfig, list[dict[str, Any]]]:
    """The best trial's config (with ``search=0``) and every trial's parameters and dev F1."""
    trials = sample_trials(cfg, cfg.search)
    scores = _run_trials(trials, data)
    report = [{**{k: getattr(t, k) for k in SEARCH_SPACE}, "dev_f1": f} for t, f in zip(trials, scores)]
    best = max(range(len(trials)), key=lambda i: (scores[i], -i))
    log.info("search: best trial %d, dev F1 %.3f", best, scores[best])
    return trials[best].with_(seeds=cfg.seeds), report
