"""``xel-link`` refuses what would hurt the user before it loads a model: a non-finite --threshold, an --out over
a file it reads, mentions precompute would refuse, a malformed or dead --address; and a rerun cleans what a
killed run left beside --out.

    pytest tests/test_link_cli_guards.py

The run directory here is only its config.json (the checks come before the model is loaded), so no model, Ray
or encoder is needed; where a case gets as far as loading, the fake run is refused for its fake index.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from xel.link.cli import main as link_main
from xel.precompute.store import MANIFEST

from tests.conftest import write_jsonl

ROME = {"id": "a", "text": "We were in Rome.", "start": 11, "end": 15}


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """``runs/h5`` (a store: its manifest and a shard), ``runs/index``, ``runs/cands`` and the run
    ``runs/train/en`` whose config.json names them, as xel-experiment lays them out; ``in.jsonl`` to link."""
    runs = tmp_path / "runs"
    store = runs / "h5"
    (store / "ms").mkdir(parents=True)
    (store / MANIFEST).write_text(json.dumps({"kinds": {"ms": []}}))
    (store / "ms" / "shard-00000.h5").write_bytes(b"shard")
    (runs / "index").mkdir()
    (runs / "index" / "manifest.json").write_text("{}")
    (runs / "cands").mkdir()
    (runs / "cands" / "candidates.jsonl").write_text("")
    (runs / "cands" / "config.json").write_text("{}")
    run = runs / "train" / "en"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"features": str(store),
                                                 "candidates": str(runs / "cands" / "candidates.jsonl")}))
    for name in ("model.safetensors", "metrics.json"):
        (run / name).write_text("{}")
    return {"run": run, "store": store, "index": runs / "index", "cands": runs / "cands",
            "in": write_jsonl(tmp_path / "in.jsonl", [ROME])}


def link(layout: dict[str, Path], *flags: str, out: Path | str | None = None):
    out = out if out is not None else layout["in"].parent / "links.jsonl"
    return CliRunner().invoke(link_main, ["--model", str(layout["run"]), "--in", str(layout["in"]),
                                          "--out", str(out), "--no-progress", *flags])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_a_threshold_that_is_not_a_finite_number_is_a_usage_error(layout, value):
    result = link(layout, "--threshold", value)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--threshold': {value!r} is not a finite number" in result.output
    assert len(result.output.strip().splitlines()[-1]) < 200 and "Traceback" not in result.output


@pytest.mark.parametrize("target, what", [
    (lambda lay: lay["in"], "is --in"),
    (lambda lay: lay["store"] / MANIFEST, "is a feature store"),  # refuse_store_out: it lies inside the store
    (lambda lay: lay["store"] / "ms" / "shard-00000.h5", "a feature store"),
    (lambda lay: lay["run"] / "model.safetensors", "lies inside the run directory --model"),
    (lambda lay: lay["run"] / "config.json", "lies inside the run directory --model"),
    (lambda lay: lay["run"] / "metrics.json", "lies inside the run directory --model"),
    (lambda lay: lay["run"] / "links.jsonl", "lies inside the run directory --model"),
    (lambda lay: lay["index"] / "manifest.json", "lies inside the index"),
    (lambda lay: lay["index"] / "index-en.faiss", "lies inside the index"),
    (lambda lay: lay["cands"] / "candidates.jsonl", "is the run's candidates file"),
    (lambda lay: lay["cands"] / "config.json", "is the candidates run's config"),
])
def test_out_may_not_overwrite_a_file_xel_link_reads(layout, target, what):
    before = snapshot(layout["in"].parent)
    result = link(layout, out=target(layout))
    assert result.exit_code == 1 and what in result.output and "which xel-link reads" in result.output \
        or "only xel-precompute writes into a store" in result.output, result.output
    assert snapshot(layout["in"].parent) == before


def test_out_through_a_symbolic_or_hard_link_to_an_input_is_refused(layout, tmp_path):
    symlink = tmp_path / "via-symlink.jsonl"
    symlink.symlink_to(layout["run"] / "model.safetensors")
    result = link(layout, out=symlink)
    assert result.exit_code == 1 and "lies inside the run directory --model" in result.output, result.output
    hardlink = tmp_path / "via-hardlink.jsonl"
    os.link(layout["in"], hardlink)
    result = link(layout, out=hardlink)
    assert result.exit_code == 1 and "is --in" in result.output, result.output
    assert layout["in"].read_text() == json.dumps(ROME) + "\n"


def test_out_with_the_index_flag_is_checked_against_that_index(layout, tmp_path):
    other = tmp_path / "other-index"
    other.mkdir()
    result = link(layout, "--index", str(other), out=other / "links.jsonl")
    assert result.exit_code == 1 and "lies inside the index" in result.output, result.output


@pytest.mark.parametrize("record, problem", [
    ({**ROME, "text": "Rome \ud800", "start": 0, "end": 4}, "in.jsonl:1: field 'text' holds a lone surrogate"),
    ({**ROME, "context": "\udfff"}, "in.jsonl:1: field 'context' holds a lone surrogate"),
    ({**ROME, "id": "a\u0000b"}, "in.jsonl:1: field 'id' holds a NUL character at character 1"),
    ({**ROME, "text": "Rome " + "x" * 100_000, "start": 0, "end": 4},
     "in.jsonl:1: field 'text' is 100,005 characters long; at most 100,000"),
    ({**ROME, "text": "in \u200b\u200b here", "start": 3, "end": 5}, "covers '\\u200b\\u200b', which holds no word"),
])
def test_xel_link_refuses_what_precompute_refuses(layout, record, problem):
    src = layout["in"]
    src.write_text(json.dumps(record) + "\n")  # json.dumps escapes the surrogate: the file is valid UTF-8
    result = link(layout)
    assert result.exit_code == 1 and problem in result.output, result.output
    assert "Traceback" not in result.output and not (src.parent / "links.jsonl").exists()


def test_a_rerun_removes_the_temp_files_a_killed_run_left(layout, tmp_path):
    from xel.link.batch import remove_stale_temp_files

    out = tmp_path / "links.jsonl"
    legacy = tmp_path / ".links.jsonl.k3j_9xq2.tmp"  # atomic_path's name, as xel-link wrote it before
    legacy.write_text("half a file")
    dead = tmp_path / ".links.jsonl.999999999.abcdefgh.tmp"  # links_file's, of a process that is gone
    dead.mkdir()
    (dead / "links.jsonl").write_text("half")
    alive = tmp_path / f".links.jsonl.{os.getpid()}.abcdefgh.tmp"  # a run still writing: kept
    alive.mkdir()
    others = [tmp_path / ".other.jsonl.k3j_9xq2.tmp", tmp_path / ".links.jsonl.xel-link"]
    others[0].write_text("not ours")
    others[1].mkdir()  # --actors' work directory, kept for the rerun
    result = link(layout, out=out)
    assert result.exit_code == 1 and "rebuild the index" in result.output  # the fake run, refused on loading
    assert not legacy.exists() and not dead.exists() and alive.exists() and all(p.exists() for p in others)
    assert remove_stale_temp_files(str(out)) == []


def test_a_sigterm_leaves_no_temp_file(layout, tmp_path, monkeypatch):
    from xel.link import batch

    def killed(self, batch_items, **kwargs):
        raise SystemExit(143)  # what exit_on_sigterm raises in the main thread

    class Fake:
        link = killed

    monkeypatch.setattr(batch.Linker, "load", lambda *a, **k: Fake())
    result = link(layout, out=tmp_path / "links.jsonl")
    assert result.exit_code == 143
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".links.jsonl")]


@pytest.mark.parametrize("address", ["10.0.0.5", "host:port", "ray://", "10.0.0.5:99999", "a b:1", "http://x:1"])
def test_a_malformed_address_is_a_one_line_error(layout, address):
    result = link(layout, "--actors", "1", "--address", address)
    assert result.exit_code == 1 and f"--address {address!r}: not a Ray address" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_an_address_where_nothing_answers_fails_fast_naming_it(layout):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    result = link(layout, "--actors", "1", "--address", f"127.0.0.1:{port}")
    assert result.exit_code == 1 and f"--address 127.0.0.1:{port}: nothing answers" in result.output, result.output
    assert time.monotonic() - t0 < 20


def test_an_address_without_actors_is_refused(layout):
    result = link(layout, "--address", "127.0.0.1:6379")
    assert result.exit_code == 1 and "used only with --actors N" in result.output, result.output


@pytest.mark.parametrize("target, what", [
    (lambda lay: lay["eval"] / "candidates" / "config.json", "is the candidates run's config of --features"),
    (lambda lay: lay["eval"] / "index" / "manifest.json", "lies inside the index"),
    (lambda lay: lay["eval"] / "h5" / "links.jsonl", "a feature store"),
])
def test_out_may_not_overwrite_what_features_reads(layout, target, what):
    """--features S: S, its index (S/../index) and its candidates run's config are read too."""
    other = layout["in"].parent / "runs" / "eval"
    store = other / "h5"
    store.mkdir(parents=True)
    (store / MANIFEST).write_text(json.dumps({"kinds": {"ms": []}}))
    for name in ("index", "candidates"):
        (other / name).mkdir()
    (other / "index" / "manifest.json").write_text("{}")
    (other / "candidates" / "config.json").write_text("{}")
    layout = {**layout, "eval": other}
    before = snapshot(layout["in"].parent)
    result = link(layout, "--features", str(store), out=target(layout))
    assert result.exit_code == 1 and what in result.output, result.output
    assert snapshot(layout["in"].parent) == before
