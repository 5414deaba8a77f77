"""``xel-link``: link a JSONL file of mentions with a trained run, e.g.
``xel-link --model runs/sample/train/en+A/seed-0 --in mentions.jsonl --out links.jsonl``."""

from __future__ import annotations

import logging

import click
from xel.detect.detector import DetectorError
from xel.link.batch import LinkConfig, run
from xel.link.items import LinkError
from xel.link.options import FiniteFloat
from xel.precompute.files import exit_on_sigterm
from xel.precompute.identity import EncodeError
from xel.precompute.schema import InputError
from xel.precompute.store import StoreError
from xel.retrieval.files import CandidatesError
from xel.retrieval.index import RetrievalError
from xel.retrieval.metrics import format_table
from xel.train.checkpoint import CheckpointError
from xel.train.config import ConfigError
from xel.train.data import DataError

# what a run directory, an index or an input file can be refused with; each message names the file and field
ERRORS = (LinkError, InputError, EncodeError, StoreError, RetrievalError, CheckpointError, ConfigError, DataError,
          CandidatesError, DetectorError)


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, type=click.Path(file_okay=False, exists=True),
              help="a trained run directory (config.json, model.safetensors, metrics.json)")
@click.option("--in", "input", required=True, type=click.Path(dir_okay=False),
              help="JSONL, one mention a line: {id?, text or sentence, start, end, lang?, context?, gold?}; with "
                   "--detect one document a line: {id, text, lang?}")
@click.option("--out", "output", required=True, type=click.Path(dir_okay=False),
              help="the Links file to write; not --in, nor inside the run directory, its store or its index")
@click.option("--k", type=click.IntRange(min=1), default=10, help="candidates kept per mention")
@click.option("--threshold", type=FiniteFloat(), default=None, help="NIL threshold  [default: the run's tuned one]")
@click.option("--features", type=click.Path(file_okay=False), default=None,
              help="the feature store whose KB (es/ec rows) to link against, encoded with the run's encoder  "
                   "[default: the run's training store]")
@click.option("--index", type=click.Path(file_okay=False), default=None,
              help="FAISS index of that store  [default: <store>/../index, as xel-experiment lays it out]")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, help="mentions encoded and scored at once")
@click.option("--actors", type=click.IntRange(min=0), default=0,
              help="0: encode in this process; N >= 1: encode with N precompute Ray actors into a temporary store "
                   "beside --out, then score in batches (large inputs; a cluster through ray job submit)")
@click.option("--address", default=None,
              help="Ray cluster address for --actors: host:port, ray://host:port or auto; checked to answer within "
                   "10 s  [default: a local Ray, or the job's own inside ray job submit]")
@click.option("--detect", is_flag=True,
              help="--in holds raw documents {id, text, lang?}: find every mention (xel-detect's tagger, or "
                   "--spotter gazetteer), link each; --out gets {id, mentions: [...]} per document")
@click.option("--spotter", type=click.Choice(["tagger", "gazetteer"]), default="tagger",
              help="with --detect: the run's trained detector (RUN/detector/), or the KB's names and alias table")
@click.option("--progress/--no-progress", default=True, help="a progress bar with mentions/s")
@click.option("-v", "--verbose", is_flag=True)
def main(verbose: bool, **flags) -> None:
    """Link every mention of --in with the trained run --model; print metrics when the input has gold links."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    cfg = LinkConfig(**flags)
    exit_on_sigterm()  # a SIGTERM removes the temporary Links file, as Ctrl-C does
    try:
        summary = run(cfg)
    except ERRORS as e:
        raise click.ClickException(str(e)) from None
    if summary["kb"] is not None:
        click.echo("linked against the KB of {features}, not the run's: candidate alias prior {candidate_prior}, "
                   "pair alias prior {pair_prior}, popularity {popularity} (each line's 'kb' field says so too)"
                   .format(**summary["kb"]))
    if cfg.detect:
        click.echo(f"found {summary['mentions']} mentions in {summary['documents']} documents ({summary['linked']} "
                   f"linked to an entity, the rest NIL) in {summary['seconds']:.1f} s; wrote {cfg.output}")
        return
    if summary["metrics"] is not None:
        click.echo(format_table(summary["metrics"], title=f"metrics over the mentions of {cfg.input} with a gold"))
    click.echo(f"linked {summary['mentions']} mentions ({summary['linked']} to an entity, the rest NIL) in "
               f"{summary['seconds']:.1f} s; wrote {cfg.output}")
