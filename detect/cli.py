"""``xel-detect``: train a run's mention detector, e.g. ``xel-detect --model runs/sample/train/en/seed-0``; then
``xel-link --detect --model RUN --in docs.jsonl --out doclinks.jsonl`` links raw text."""

from __future__ import annotations

import logging

import click
from xel.detect.train import DetectConfig, run
from xel.precompute.schema import ISO_639_1


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, type=click.Path(file_okay=False, exists=True),
              help="a trained run directory (xel-train's); the detector is written to its detector/ folder")
@click.option("--data", type=click.Path(exists=True), default=None,
              help="span-sentence files (every mention marked: data/spans/ ships English, German and French) or "
                   "a mentions file, or a directory of either, whose --lang train sentences teach the spans  "
                   "[default: the mentions the run's store was computed from, whose sentences miss mentions "
                   "that had no KB entry]")
@click.option("--lang", default="en", help="the language whose train-document sentences are learnt from")
@click.option("--epochs", type=click.IntRange(min=1), default=20)
@click.option("--seed", type=int, default=0)
@click.option("--hidden", type=click.IntRange(min=1), default=64, help="the tagger's hidden width")
@click.option("--layer", "layers", type=int, multiple=True,
              help="a hidden-state index of the encoder (0: embeddings, -1: the last) whose token features the "
                   "tagger reads; repeat it to read several, concatenated  [default: the middle and the last: "
                   "--layer 6 --layer -1 for a 12-layer encoder]")
@click.option("-v", "--verbose", is_flag=True)
def main(verbose: bool, **flags) -> None:
    """Train the mention detector of the run --model on its --lang sentences; print the held-out span scores."""
    from xel.link.cli import ERRORS

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if flags["lang"] not in ISO_639_1:
        raise click.BadParameter(f"{flags['lang']!r}; an ISO 639-1 code is required", param_hint="--lang")
    cfg = DetectConfig(**{**flags, "layers": tuple(flags["layers"]) or None})
    try:
        info = run(cfg)
    except ERRORS as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"trained on {info['train_sentences']} {cfg.lang} sentences ({info['train_tokens']} tokens) in "
               f"{info['train_seconds']:.1f} s; token features {info['encode_seconds']:.1f} s")
    for corpus, held in info["held_out_by_corpus"].items():
        click.echo(f"held-out {cfg.lang} documents of {corpus}: span P {held['p']:.3f} R {held['r']:.3f} "
                   f"F1 {held['f1']:.3f} ({held['gold']} gold spans)")
    click.echo(f"wrote {cfg.model}/detector/")
