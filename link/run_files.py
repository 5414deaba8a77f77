"""What a trained run directory tells the linker: its config with paths resolved, the candidate settings and the
index of the KB it links against, its +P and its NIL rule (see :mod:`link.linker`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from xel.link.items import LinkError
from xel.retrieval.kb_table import KBTable
from xel.retrieval.splits import DEV_FRACTION, TEST_FRACTION
from xel.train.config import TrainConfig
from xel.train.data import popularity_features
from xel.train.nil import NilRule, NilRuleError
from xel.train.splits import Loaded, mention_popularity, training_link_counts

log = logging.getLogger(__name__)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise LinkError(f"{path}: no such file; {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LinkError(f"{path}: not JSON ({e})") from None


def resolve_run_path(value: str, run_dir: Path, field: str) -> str:
    """A path of a run's ``config.json``: as written when it exists from here; a relative one (``xel-experiment``
    writes them relative to where it ran) is otherwise looked up under each ancestor of the run directory."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return value
    for ancestor in run_dir.resolve().parents:
        if (ancestor / path).exists():
            log.info("%s/config.json: %s %s resolved to %s", run_dir, field, value, ancestor / path)
            return str(ancestor / path)
    raise LinkError(f"{run_dir}/config.json: {field} {value!r} exists neither from {Path.cwd()} nor under any "
                    "parent of the run directory; run from the directory the run was trained in")


def run_popularity(cfg: TrainConfig, loaded: Loaded, kb: KBTable) -> np.ndarray:
    """+P of every KB entry as the run's training computed it for its own candidates (:mod:`train.splits`)."""
    if not cfg.popularity:
        return np.zeros((len(kb), 0), np.float32)
    if cfg.popularity_source == "mentions":
        return mention_popularity(list(kb.ids), training_link_counts(loaded.splits))
    return popularity_features(kb.link_counts(), cfg.popularity_missing, "kb.jsonl")


def candidate_settings(config_file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``k``, ``max_prior``, ``train_lang``, ``kb_lang`` and the split fractions of the alias prior of the
    ``xel-nn candidates`` run whose ``config.json`` is ``config_file`` (beside the candidates file it wrote; files
    written before the fractions were recorded counted the default split), and its search options: the index it
    searched and the FAISS search parameters (``nprobe=64``...), which the linker applies to that index so that its
    dense candidates are the ones the run was trained on."""
    cfg = _read_json(config_file, "the config.json that xel-nn candidates writes beside candidates.jsonl")
    return ({"k": cfg["k"], "max_prior": cfg["max_prior"], "train_lang": cfg["train_lang"],
             "kb_lang": cfg["search"].get("kb_lang"), "dev_fraction": cfg.get("dev_fraction", DEV_FRACTION),
             "test_fraction": cfg.get("test_fraction", TEST_FRACTION)}, cfg["search"])


def same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def resolve_run_config(run: Path) -> TrainConfig:
    """The run's ``config.json`` with its store and candidates paths resolved (:func:`resolve_run_path`)."""
    cfg = TrainConfig.from_dict(_read_json(run / "config.json", "the run's config is required"))
    return cfg.with_(**{name: resolve_run_path(getattr(cfg, name), run, name)
                        for name in ("features", "candidates", "eval_features", "eval_candidates")
                        if getattr(cfg, name)})


def kb_index_dir(store: str, own: bool, index_dir: str | Path | None) -> Path:
    """The index to search: ``index_dir``, else ``<store>/../index`` (where ``xel-experiment`` builds a store's
    index: ``<run root>/index`` for the training store); refused without a ``manifest.json``."""
    index = Path(index_dir) if index_dir is not None else Path(store).parent / "index"
    if (index / "manifest.json").is_file():
        return index
    if own or index_dir is not None:
        raise LinkError(f"{index}: no FAISS index (manifest.json); pass the index of {store} "
                        "(xel-nn build --features ...) as --index")
    raise LinkError(f"--features {store}: no FAISS index at {index} (its manifest.json), where the index built on "
                    f"that store is looked for; pass it as --index DIR (build one with xel-nn build --features "
                    f"{store} --out DIR)")


def kb_candidates_configs(cfg: TrainConfig, store: str, own: bool) -> list[Path]:
    """Where the ``config.json`` of the ``xel-nn candidates`` run whose candidates the trainer used for
    ``store``'s mentions is looked for, in order: beside the run's ``candidates`` for its training store; for
    another store, beside ``eval_candidates`` when it is the run's ``--eval-features`` store, then in
    ``<store>/../candidates`` (where ``xel-experiment`` writes it); last, the run's own."""
    own_config = Path(cfg.candidates).parent / "config.json"
    if own:
        return [own_config]
    paths = []
    if cfg.eval_features and cfg.eval_candidates and same_path(cfg.eval_features, store):
        paths.append(Path(cfg.eval_candidates).parent / "config.json")
    return [*paths, Path(store).parent / "candidates" / "config.json", own_config]


def kb_candidates_config(cfg: TrainConfig, store: str, own: bool) -> Path:
    """The first of :func:`kb_candidates_configs` that exists; the run's own (with a warning) for another store
    that has none."""
    *found, own_config = kb_candidates_configs(cfg, store, own)
    for path in found:
        if path.is_file():
            return path
    if found:
        log.warning("--features %s: no xel-nn candidates config.json for it (looked for %s); its candidates are "
                    "drawn with the run's candidate settings (%s)", store, ", ".join(map(str, found)), own_config)
    return own_config


def run_nil_rule(run: Path, cfg: TrainConfig) -> NilRule:
    """The NIL rule the run's evaluation used (``metrics.json``'s ``nil_rule``); for a run written before rules
    were saved, its tuned ``nil_threshold`` with the config's NIL score, uncalibrated."""
    path = run / "metrics.json"
    metrics = _read_json(path, "") if path.is_file() else {}
    if not isinstance(metrics, dict):
        raise LinkError(f"{path}: expected a JSON object (xel-train's metrics), got {type(metrics).__name__}")
    if metrics.get("nil_rule") is not None:
        try:
            return NilRule.from_dict(metrics["nil_rule"], str(path))
        except NilRuleError as e:
            raise LinkError(str(e)) from None
    tuned = metrics.get("nil_threshold")
    # such a run's threshold was tuned on the NIL score its version defaulted to: cosine for the residual scorer
    score = cfg.nil_score or ("model" if cfg.scorer == "paper" else "cosine")
    return NilRule(score, float(tuned if tuned is not None else cfg.nil_threshold))


