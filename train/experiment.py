"""The paper's Table 4 as one command: encoder -> precompute -> index -> candidates -> nn and the trainer settings.

    xel-experiment --data data/sample --out runs/sample
    xel-experiment --data wikidata-el/ --eval-data nerel-rukb/ --out runs/nerel   # a KB in the new language

With local Ray: builds the encoder when missing, precomputes the store (resumable), builds the FAISS index and the
candidate lists, and trains each setting over ``--seeds`` seeds as Ray tasks (one CPU each): ``en`` (trained on
English), ``en+A`` (adversarial language objective), ``en+P`` (popularity), ``en+PA`` (both), with the default
residual scorer, and the same four with the paper's scorer (``paper:``), and ``nn``: the residual scorer before
training, cos(ms, es) over the same candidates, scored on the same test mentions with the same NIL rule.

+A's mode and lambda are chosen on **English dev F1 only** (zero-shot: no target-language labels are used), from
``--adv-modes`` x ``--lambdas`` run with the first seed (default: grl x 0.01, the full grid's choice on the
sample); every grid run's language-probe accuracy is reported.
The NIL threshold is tuned on English dev for every row, nn included (``--nil-threshold -1`` for the paper's
never-NIL rule). ``--ablation`` adds the residual scorer with one feature group removed at a time.

Prints a Table-4-style table (mean ± std over seeds) per target language, the +A grid and the candidate recall@k
table, and writes ``report.md``, ``results.json`` and every run's outputs. A rerun reuses the store, the index,
the candidates and every finished training run whose config and inputs are unchanged (``--force`` retrains).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
from tqdm import tqdm
from xel.encoder.build import build_encoder
from xel.precompute.config import PrecomputeConfig
from xel.precompute.files import atomic_write_bytes, file_sha256
from xel.precompute.ray_session import ray_session
from xel.precompute.run import run as run_precompute
from xel.precompute.run import summary_table
from xel.precompute.schema import load_inputs
from xel.precompute.store import atomic_write_json, open_store
from xel.retrieval.build import BuildConfig, run_build
from xel.retrieval.candidate_lists import CandidatesConfig, run_candidates
from xel.retrieval.metrics import __doc__ as METRIC_DEFINITIONS
from xel.retrieval.search import SearchOptions
from xel.train.config import DEFAULT_FEATURE_GROUPS, FEATURE_GROUPS, TrainConfig
from xel.train.outputs import mean_std
from xel.train.plots import experiment_figures
from xel.train.run import run as run_train
from xel.train.run import set_threads
from xel.train.scorers import PAPER, RESIDUAL

log = logging.getLogger(__name__)
DEFAULT_MODEL = Path("models/multilingual-e5-small")
METRICS = ("p", "r", "f1", "nonnil_f1", "nil_p", "nil_r", "nil_f1")
# Table 4 settings: name -> trainer flags (popularity from training-mention links: the KBs here have no counts)
SETTINGS: dict[str, dict[str, Any]] = {
    "en": {},
    "en+A": {"adversarial": True},
    "en+P": {"popularity": True, "popularity_source": "mentions", "popularity_missing": "median"},
    "en+PA": {"adversarial": True, "popularity": True, "popularity_source": "mentions", "popularity_missing": "median"},
}


@dataclass(frozen=True)
class ExperimentConfig:
    data: Path
    out: Path
    model: Path = DEFAULT_MODEL
    eval_data: Path | None = None
    seeds: int = 3
    # xel-train's default, so that `xel-train --features h5/` trains the linker the experiment reports
    epochs: int = TrainConfig.epochs
    train_lang: str = "en"
    # +A's setting: the one the full grid (--adv-modes alternating,grl,uniform --lambdas 0.01,0.1,1) chose on the
    # sample's English dev; a grid of one keeps the default run to the Table 4 rows
    adv_modes: tuple[str, ...] = ("grl",)
    lambdas: tuple[float, ...] = (0.01,)
    paper: bool = True
    ablation: bool = False
    nil_threshold: float | None = None  # None: tuned on English dev
    k: int = 30
    actors: int = 1
    force: bool = False


class ExperimentError(RuntimeError):
    """The experiment cannot start; the message says why and what to do."""


def say(text: str) -> None:
    """A progress line of the run, printed between the tqdm bars (the command's output)."""
    tqdm.write(text)


def ensure_encoder(model: Path) -> Path:
    """The default encoder is built on first use; any other ``--model`` must already exist."""
    if (model / "config.json").is_file():
        return model
    if model.resolve() != DEFAULT_MODEL.resolve():
        raise ExperimentError(f"--model {model}: no Hugging Face model there (config.json missing)")
    say(f"building the encoder into {model} (once; about 15 s)")
    return build_encoder(model)


def precompute(cfg: ExperimentConfig, data: Path, out: Path) -> Path:
    say(f"precomputing features of {data} into {out}")
    summary = run_precompute(PrecomputeConfig(data=data, model=cfg.model, out=out, actors=cfg.actors))
    say(summary_table(summary))
    return out


def retrieve(cfg: ExperimentConfig, store_dir: Path, out: Path) -> tuple[Path, str]:
    """Index (updated in place when present) and candidates of one store; returns (candidates file, recall table)."""
    index_dir = out / "index"
    exists = (index_dir / "manifest.json").is_file()
    say(f"{'updating' if exists else 'building'} the FAISS index {index_dir}")
    run_build(BuildConfig(features=str(store_dir), out=str(index_dir), update=exists))
    search = SearchOptions(index=str(index_dir), features=str(store_dir))
    cand_dir = out / "candidates"
    say(f"generating candidates (prior, dense, n-gram) into {cand_dir}")
    recall = run_candidates(CandidatesConfig(search=search, out=str(cand_dir), k=cfg.k, train_lang=cfg.train_lang))
    return cand_dir / "candidates.jsonl", recall


def run_inputs(cfg: TrainConfig) -> dict[str, str]:
    """What a finished run depends on besides its config: the stores' manifests and the candidate files."""
    files = {"features": Path(cfg.features) / "manifest.json", "candidates": Path(cfg.candidates)}
    if cfg.eval_features:
        files["eval_features"] = Path(cfg.eval_features) / "manifest.json"
        files["eval_candidates"] = Path(cfg.eval_candidates)
    return {k: file_sha256(v) for k, v in files.items()}


def finished_run(cfg: TrainConfig) -> dict[str, Any] | None:
    """The summary of a finished run in ``cfg.out`` with the same config and inputs, else None."""
    out = Path(cfg.out)
    try:
        same = (json.loads((out / "config.json").read_text()) == cfg.to_dict()
                and json.loads((out / "inputs.json").read_text()) == run_inputs(cfg))
        return json.loads((out / "summary.json").read_text()) if same else None
    except (OSError, ValueError):
        return None


def _train_one(train_cfg: TrainConfig) -> dict[str, Any]:
    logging.getLogger("xel.train").setLevel(logging.WARNING)
    set_threads(train_cfg.threads)  # this Ray task's process
    summary = run_train(train_cfg, overwrite=True)  # the experiment owns its run directories
    out = Path(train_cfg.out)
    atomic_write_json(out / "inputs.json", run_inputs(train_cfg))
    atomic_write_json(out / "summary.json", summary)
    return summary


def run_all(jobs: dict[str, TrainConfig], force: bool, desc: str) -> dict[str, dict[str, Any]]:
    """Every config as a one-CPU Ray task, unless a finished run with the same config and inputs is there."""
    results: dict[str, dict[str, Any]] = {}
    todo = {}
    for key, job in jobs.items():
        done = None if force else finished_run(job)
        if done is not None:
            results[key] = done
        else:
            todo[key] = job
    if results:
        say(f"{desc}: reusing {len(results)} finished runs (same config and inputs; --force retrains)")
    task = ray.remote(num_cpus=1)(_train_one)
    refs = {task.remote(job): key for key, job in todo.items()}
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit="run", disable=not refs) as bar:
        while pending:
            done_refs, pending = ray.wait(pending, num_returns=1)
            results[refs[done_refs[0]]] = ray.get(done_refs[0])
            bar.update(1)
    return results


def base_config(cfg: ExperimentConfig, stores: dict[str, Path], targets: list[str]) -> TrainConfig:
    tune = cfg.nil_threshold is None
    extra: dict[str, Any] = {}
    if "eval_features" in stores:
        extra = {"eval_features": str(stores["eval_features"]), "eval_candidates": str(stores["eval_candidates"]),
                 "eval_lang": tuple(targets)}
    else:
        extra = {"eval_lang": tuple([cfg.train_lang, *targets])}
    return TrainConfig(
        features=str(stores["features"]), candidates=str(stores["candidates"]), train_lang=(cfg.train_lang,),
        epochs=cfg.epochs, tune_nil=tune, nil_threshold=-1.0 if tune else cfg.nil_threshold, threads=1,
        progress=False, **extra,
    )


def grid(cfg: ExperimentConfig, base: TrainConfig) -> dict[str, TrainConfig]:
    """+A's mode x lambda candidates, seed 0, residual scorer."""
    return {f"{mode}:{lam:g}": replace(base, seed=0, adversarial=True, adv_mode=mode, lambda_adv=lam,
                                       out=str(cfg.out / "train" / "adv-grid" / f"{mode}-{lam:g}"))
            for mode in cfg.adv_modes for lam in cfg.lambdas}


def pick_adversarial(results: dict[str, dict[str, Any]]) -> tuple[str, float]:
    """The (mode, lambda) with the best English dev F1 (the only labels a zero-shot run has)."""
    key = max(sorted(results), key=lambda k: results[k]["dev"]["all"]["f1"])
    mode, lam = key.split(":")
    return mode, float(lam)


def settings_jobs(
    cfg: ExperimentConfig, base: TrainConfig, adv: tuple[str, float]
) -> dict[tuple[str, int], TrainConfig]:
    jobs: dict[tuple[str, int], TrainConfig] = {}
    root = cfg.out / "train"
    jobs[("nn", 0)] = replace(base, epochs=0, centre=False, out=str(root / "nn"))  # cos(ms, es) as it is
    scorers = [("", RESIDUAL)] + ([("paper:", PAPER)] if cfg.paper else [])
    for prefix, scorer in scorers:
        for name, flags in SETTINGS.items():
            flags = dict(flags)
            if flags.get("adversarial") and scorer is RESIDUAL:  # the grid tuned +A on the residual scorer
                flags.update(adv_mode=adv[0], lambda_adv=adv[1])
            for seed in range(cfg.seeds):
                run_dir = root / f"{prefix}{name}".replace(":", "-") / f"seed-{seed}"
                if name == "en+A" and scorer is RESIDUAL and seed == 0:
                    run_dir = root / "adv-grid" / f"{adv[0]}-{adv[1]:g}"  # the grid's run of the chosen setting
                jobs[(prefix + name, seed)] = replace(base, scorer=scorer.name, seed=seed, **flags,
                                                      out=str(run_dir))
    if cfg.ablation:
        for name, groups in ablation_groups().items():
            for seed in range(cfg.seeds):
                jobs[(name, seed)] = replace(base, seed=seed, feature_groups=groups,
                                             out=str(root / "ablation" / name / f"seed-{seed}"))
    return jobs


def ablation_groups() -> dict[str, tuple[str, ...]]:
    """The default groups with one removed (``en-g``), and with one of the others added (``en+g``)."""
    out = {f"en-{g}": tuple(x for x in DEFAULT_FEATURE_GROUPS if x != g) for g in DEFAULT_FEATURE_GROUPS}
    out.update({f"en+{g}": (*DEFAULT_FEATURE_GROUPS, g) for g in FEATURE_GROUPS if g not in DEFAULT_FEATURE_GROUPS})
    return out


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per group and metric, (mean, std) over the seeds' test scores, with the tied share and probe accuracy."""
    mean, std = mean_std([r["test"] for r in per_seed])
    rows = {g: {m: (mean[g][m], std[g][m]) for m in METRICS} for g in mean}
    probes = [s["probe"]["probe_accuracy"] for r in per_seed for s in r["seeds"] if s.get("probe")]
    for g in rows:
        top = [s["nil_rules"]["off"]["test"].get(g, {}).get("r", np.nan) for r in per_seed for s in r["seeds"]
               if s.get("nil_rules")]
        rows[g]["top_r"] = (float(np.mean(top)), float(np.std(top))) if top else (float("nan"), 0.0)
        tied = [s["tied_top"].get(g, np.nan) for r in per_seed for s in r["seeds"]]
        rows[g]["tied"] = (float(np.mean(tied)), float(np.std(tied)))
        rows[g]["probe"] = (float(np.mean(probes)), float(np.std(probes))) if probes else (float("nan"), 0.0)
    return rows


def table4(rows: dict[str, dict[str, dict[str, tuple[float, float]]]], langs: list[str], train_lang: str) -> str:
    """One block per language; rows are settings, cells mean ± std over seeds (nn: deterministic)."""
    lines = []
    cols = (*METRICS, "top_r", "tied", "probe")
    for lang in langs:
        group = f"lang:{lang}"
        kind = "in-language (held-out test documents)" if lang == train_lang else "zero-shot target language"
        lines.append(f"{lang}: {kind}")
        lines.append(f"{'setting':<14}" + "".join(f"{m:>15}" for m in cols))
        for name, scores in rows.items():
            if group not in scores:
                continue
            cells = "".join(f"{scores[group][m][0]:>8.3f} ± {scores[group][m][1]:.3f}" for m in cols)
            lines.append(f"{name:<14}{cells}")
        lines.append("")
    return "\n".join(lines)


NIL_TABLE_SETTINGS = ("nn", "en", "en+A", "paper:en")


def nil_rows(per_setting: dict[str, list[dict[str, Any]]], langs: list[str]) -> dict[str, dict[str, dict]]:
    """Setting -> NIL rule -> language -> ``{"f1": (mean, std), "p": ..., "r": ...}`` over the seeds: the same
    trained models under each NIL score (threshold tuned on English dev) and with NIL off."""
    out: dict[str, dict[str, dict]] = {}
    for name in NIL_TABLE_SETTINGS:
        seeds = [s["nil_rules"] for r in per_setting.get(name, []) for s in r["seeds"] if s.get("nil_rules")]
        for rule in seeds[0] if seeds else []:
            for lang in langs:
                got = [g for x in seeds if rule in x for g in [x[rule]["test"].get(f"lang:{lang}")] if g]
                if got:
                    out.setdefault(name, {}).setdefault(rule, {})[lang] = {
                        m: (float(np.mean([g[m] for g in got])), float(np.std([g[m] for g in got])))
                        for m in ("f1", "p", "r")}
    return out


def nil_table(rows: dict[str, dict[str, dict]], langs: list[str]) -> str:
    """:func:`nil_rows` as text: F1 (R), mean ± std over seeds, per language."""
    lines = ["NIL rules: the same models, only the NIL decision differs (threshold tuned on English dev; +q: "
             "calibrated per language from unlabelled mentions; off: never NIL, R = top-candidate recall); "
             "F1 (R), mean ± std over seeds",
             f"{'setting':<14}{'NIL':<10}" + "".join(f"{x:>26}" for x in langs)]
    for name, rules in rows.items():
        for rule, by_lang in rules.items():
            cells = [f"{'-':>26}" if lang not in by_lang else
                     f"{by_lang[lang]['f1'][0]:>9.3f} ± {by_lang[lang]['f1'][1]:.3f} ({by_lang[lang]['r'][0]:.3f})"
                     for lang in langs]
            lines.append(f"{name:<14}{rule:<10}" + "".join(cells))
    return "\n".join(lines)


def grid_table(results: dict[str, dict[str, Any]], langs: list[str], chosen: tuple[str, float]) -> str:
    lines = ["+A mode x lambda (residual scorer, seed 0; chosen on English dev F1 only; test F1 shown, not used)",
             f"{'mode':<12}{'lambda':>8}{'dev F1':>9}" + "".join(f"{'test ' + x:>10}" for x in langs)
             + f"{'probe':>8}{'chance':>8}"]
    for key in sorted(results):
        r = results[key]
        mode, lam = key.split(":")
        seed = r["seeds"][0]
        probe = seed.get("probe") or {}
        mark = "  <- chosen" if (mode, float(lam)) == chosen else ""
        lines.append(f"{mode:<12}{lam:>8}{r['dev']['all']['f1']:>9.3f}"
                     + "".join(f"{r['test'].get(f'lang:{x}', {}).get('f1', float('nan')):>10.3f}" for x in langs)
                     + f"{probe.get('probe_accuracy', np.nan):>8.3f}{probe.get('probe_chance', np.nan):>8.3f}" + mark)
    return "\n".join(lines)


def train_all(cfg: ExperimentConfig, base: TrainConfig, targets: list[str], run_jobs: Callable[..., dict]) -> tuple[
        dict[str, dict[str, Any]], tuple[str, float], dict[tuple[str, int], TrainConfig], dict[str, dict[str, Any]]]:
    """+A's grid, then every setting's runs, through ``run_jobs`` (:func:`run_all`): the grid's results, the chosen
    (mode, lambda), the jobs and their results. With several +A settings the grid trains first and English dev F1
    chooses; with one there is nothing to choose, so its run (en+A seed 0) trains beside the others."""
    candidates = grid(cfg, base) if targets else {}
    adv_grid = run_jobs(candidates, cfg.force, "+A grid") if len(candidates) > 1 else {}
    chosen = pick_adversarial(adv_grid) if adv_grid else (cfg.adv_modes[0], cfg.lambdas[0])
    if adv_grid:
        say(f"+A: chose --adv-mode {chosen[0]} --lambda {chosen[1]:g} on English dev F1")
    jobs = settings_jobs(cfg, base, chosen)
    if not targets:
        jobs = {k: v for k, v in jobs.items() if not v.adversarial}
    done = run_jobs({f"{n}|{s}": j for (n, s), j in jobs.items()}, cfg.force, "training")
    if len(candidates) == 1:
        adv_grid = {next(iter(candidates)): done["en+A|0"]}  # the run the grid would have trained, in its directory
    return adv_grid, chosen, jobs, done


def run(cfg: ExperimentConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    load_inputs(cfg.data)  # bad input fails here, before the encoder build and before --out is created
    if cfg.eval_data is not None:
        load_inputs(cfg.eval_data)
    ensure_encoder(cfg.model)
    cfg.out.mkdir(parents=True, exist_ok=True)
    with ray_session():
        stores: dict[str, Path] = {"features": precompute(cfg, cfg.data, cfg.out / "h5")}
        stores["candidates"], recall = retrieve(cfg, stores["features"], cfg.out)
        recalls = [recall]
        langs = sorted({m["lang"] for m in open_store(stores["features"]).records("mentions")})
        targets = [x for x in langs if x != cfg.train_lang]
        if cfg.eval_data is not None:
            stores["eval_features"] = precompute(cfg, cfg.eval_data, cfg.out / "eval" / "h5")
            stores["eval_candidates"], eval_recall = retrieve(cfg, stores["eval_features"], cfg.out / "eval")
            recalls.append(f"evaluation data {cfg.eval_data}:\n{eval_recall}")
            targets = sorted({m["lang"] for m in open_store(stores["eval_features"]).records("mentions")})
        base = base_config(cfg, stores, targets)
        adv_grid, chosen, jobs, done = train_all(cfg, base, targets, run_all)
    per_setting: dict[str, list] = {}
    for (name, seed) in jobs:
        per_setting.setdefault(name, []).append(done[f"{name}|{seed}"])
    rows = {name: aggregate(runs) for name, runs in per_setting.items()}
    shown = [*targets, cfg.train_lang] if cfg.eval_data is None else targets
    main_rows = {k: v for k, v in rows.items() if k not in ablation_groups()}
    table = table4(main_rows, shown, cfg.train_lang)
    ablation = ablation_table(rows, shown) if cfg.ablation else ""
    nil_by_rule = nil_rows(per_setting, shown)
    nil_text = nil_table(nil_by_rule, shown)
    adv_table = grid_table(adv_grid, shown, chosen) if adv_grid else ""
    recall_text = "\n\n".join(recalls)
    seconds = time.perf_counter() - t0
    figs = experiment_figures(cfg.out, main_rows, shown, {k: v for k, v in per_setting.items() if k in main_rows})
    report = render_report(cfg, table, nil_text, adv_table, ablation, recall_text, figs, seconds, per_setting)
    atomic_write_bytes(cfg.out / "report.md", report.encode("utf-8"))
    atomic_write_json(cfg.out / "results.json", {
        # a cell no run measured (no language probe, say) is NaN in the table and null here
        "table": {k: {g: {m: [x if np.isfinite(x) else None for x in v] for m, v in s.items()} for g, s in r.items()}
                  for k, r in rows.items()},
        "adversarial_grid": {k: {"dev_f1": r["dev"]["all"]["f1"], "test": r["test"],
                                 "probe": r["seeds"][0].get("probe")} for k, r in adv_grid.items()},
        "nil_rules": nil_by_rule, "chosen_adversarial": list(chosen), "seconds": seconds,
        "config": {k: str(v) for k, v in cfg.__dict__.items()},
    })
    return {"table": table, "nil": nil_text, "grid": adv_table, "ablation": ablation, "recall": recall_text,
            "seconds": seconds, "rows": rows}


def ablation_table(rows: dict[str, dict[str, dict[str, tuple[float, float]]]], langs: list[str]) -> str:
    """Test F1 of the residual ``en`` with the default groups, with each removed, and with each other added."""
    lines = [f"ablation: residual en, default groups {'+'.join(DEFAULT_FEATURE_GROUPS)}, one removed (en-g) or one "
             "added (en+g); test F1, mean ± std over seeds",
             f"{'setting':<18}" + "".join(f"{x:>16}" for x in langs)]
    for name in ["nn", "en", *ablation_groups()]:
        if name in rows:
            lines.append(f"{name:<18}" + "".join(
                f"{rows[name][f'lang:{x}']['f1'][0]:>9.3f} ± {rows[name][f'lang:{x}']['f1'][1]:.3f}"
                for x in langs if f"lang:{x}" in rows[name]))
    return "\n".join(lines)


def render_report(cfg: ExperimentConfig, table: str, nil_text: str, adv_table: str, ablation: str, recall: str,
                  figs: list[Path], seconds: float, per_setting: dict[str, list]) -> str:
    epochs = {name: [r["best_epoch"][0] for r in runs] for name, runs in per_setting.items()}
    nil = "tuned on English dev" if cfg.nil_threshold is None else f"fixed at {cfg.nil_threshold}"
    lines = [
        f"# xel experiment: {cfg.data}" + (f" -> {cfg.eval_data}" if cfg.eval_data else ""), "",
        f"Encoder `{cfg.model}`; {cfg.seeds} seeds per setting; up to {cfg.epochs} epochs, epoch chosen on English "
        f"dev F1 (the residual scorer's epoch 0, = nn, included); trained on `{cfg.train_lang}`; NIL threshold {nil}. "
        f"Wall time {seconds:.0f} s.", "",
        "## Table 4 (mean ± std over seeds)", "", "```", table, "```", "",
        "`nn` = cos(ms, es) over the same candidates (the residual scorer before training), same test mentions, "
        "same NIL rule. Rows without a prefix use the residual scorer; `paper:` rows the paper's ranker. "
        "`nil_*` score the NIL decision (precision/recall of predicting NIL); `tied` is the share of test mentions "
        "whose top score is shared by several candidates (same-name KB entries; broken by cos(mc, ec)); `probe` is "
        "the held-out accuracy of a fresh logistic-regression language classifier on the model's `hs0` (without "
        "+A: the standardized name features; chance = 1 / languages). `+P` counts gold links among the English "
        "training mentions (`--popularity-source mentions`): the KBs here carry no link counts.", "",
        f"Chosen epochs per seed: {json.dumps(epochs)}", "",
        "## NIL rules", "", "```", nil_text, "```", "",
    ]
    if adv_table:
        lines += ["## +A: mode and lambda", "", "```", adv_table, "```", ""]
    if ablation:
        lines += ["## Ablation", "", "```", ablation, "```", ""]
    lines += [
        "## Candidate recall@k", "", "```", recall, "```", "",
        "Merged lists hold the dense top-k, up to 10 prior and up to 10 n-gram candidates.", "",
        "## Figures", "", *[f"![{p.stem}]({p.name})" for p in figs], "![recall](candidates/recall.png)", "",
        "## Metric definitions", "", "```", (METRIC_DEFINITIONS or "").strip(), "```", "",
        "Per-run outputs: `train/<setting>/seed-<n>/` (metrics.json, predictions.jsonl, model.safetensors, plots).",
    ]
    return "\n".join(lines) + "\n"
