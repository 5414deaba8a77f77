"""``xel-precompute``: the flags of :func:`precompute.run.run`, e.g.
``xel-precompute --data data/sample --model models/multilingual-e5-small --out h5/`` (see :mod:`precompute.run`)."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click
from xel.precompute.config import PrecomputeConfig, PrecomputeError
from xel.precompute.identity import EncodeError
from xel.precompute.run import run, summary_table
from xel.precompute.schedule import Stopped, stop_on_sigterm
from xel.precompute.schema import InputError
from xel.precompute.store import KINDS

DEFAULTS = PrecomputeConfig  # every flag's default is the config's (class attributes of the frozen dataclass)


def _kinds(value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise click.BadParameter(f"{value!r}: allowed kinds are {','.join(KINDS)}")
    return kinds


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Input directory with kb.jsonl, mentions.jsonl and optional text.jsonl (docs/input-schema.md).")
@click.option("--model", type=click.Path(path_type=Path), required=True,
              help="Hugging Face model directory (fast tokenizer required), e.g. models/multilingual-e5-small.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Store directory to write or resume.")
@click.option("--kinds", default=",".join(DEFAULTS.kinds), show_default=True, callback=lambda c, p, v: _kinds(v),
              help="Feature kinds: ms mention span, mc mention context, es entity name, ec description, text.")
@click.option("--layer", type=int, default=DEFAULTS.layer, show_default=True, help="Hidden layer to pool (-1: last).")
@click.option("--max-length", type=click.IntRange(min=8), default=DEFAULTS.max_length,
              help="Subword limit per text, specials included [default: the encoder's limit].")
@click.option("--prefix", default=DEFAULTS.prefix,
              help="Text put before every input [default: the encoder's, e5: 'query: '].")
@click.option("--dtype", type=click.Choice(["auto", "bf16", "fp32", "int8"]), default=DEFAULTS.dtype,
              show_default=True,
              help="bf16: autocast (weights in bf16 on GPU); fp32: exact reference; int8: dynamic int8 quantisation "
              "(ONNX Runtime); auto: bf16 on GPU or on a CPU with AMX, int8 on a CPU with VNNI once int8 passed "
              "the quality gate for this encoder (bench/int8_gate.py), else fp32. The store records the one used "
              "and why.")
@click.option("--backend", type=click.Choice(["torch", "onnx"]), default=DEFAULTS.backend,
              help="torch: the Hugging Face model in PyTorch; onnx: the encoder exported once to ONNX (and quantised "
              "for int8), cached in the model directory's onnx/ ($XEL_ONNX_CACHE to move it), run by ONNX Runtime "
              "on the CPU [default: onnx for int8, else torch].")
@click.option("--max-tokens-per-batch", type=click.IntRange(min=64), default=DEFAULTS.max_tokens_per_batch,
              help="Token budget per forward batch (rows x longest row) [default: 16384 on CPU, sized from free "
              "memory on GPU].")
@click.option("--shard-size", type=click.IntRange(min=1), default=DEFAULTS.shard_size, show_default=True,
              help="Rows per shard.")
@click.option("--actors", type=click.IntRange(min=1), default=DEFAULTS.actors, show_default=True,
              help="Encoder actors.")
@click.option("--cpus-per-actor", type=click.FloatRange(min=0.5), default=DEFAULTS.cpus_per_actor,
              help="CPUs per actor, also its torch threads [default: all CPUs / actors].")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0), default=DEFAULTS.gpus_per_actor, show_default=True,
              help="GPUs per actor; 1 places one actor per GPU.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=DEFAULTS.device, show_default=True)
@click.option("--address", default=DEFAULTS.address,
              help="Ray cluster address [default: the Ray job's, else a local Ray].")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def main(verbose: bool, **flags: Any) -> None:
    """Encode mentions, entity names, contexts, descriptions and text into a resumable HDF5 feature store."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    cfg = PrecomputeConfig(**flags)
    stop_on_sigterm()
    try:
        summary = run(cfg)
    except (InputError, PrecomputeError, EncodeError) as e:
        raise click.ClickException(str(e)) from None
    except (KeyboardInterrupt, Stopped, SystemError) as e:
        if isinstance(e, SystemError):  # a Stopped raised inside a C extension (outside the deferring driver loop)
            if not isinstance(e.__cause__, Stopped):
                raise
            e = e.__cause__
        signum = e.args[0] if isinstance(e, Stopped) else signal.SIGINT
        click.echo(f"xel-precompute: stopped by {signal.Signals(signum).name}; finished shards are kept, rerun the "
                   "same command to resume", err=True)
        sys.exit(128 + signum)
    click.echo(summary_table(summary))
