"""Bad input across the commands that read a store, an index or a run directory: one table, one test.

    pytest tests/test_bad_input.py

Each case builds what it needs in ``tmp_path`` (small fake stores, no encoder, no Ray), runs one command through
``CliRunner`` and checks that it exits non-zero, that its message names the file/flag, the bad value or what is
allowed, and that it leaves nothing behind: the output path it was given does not exist afterwards, or holds
exactly what it held before. The input-file cases of ``xel-precompute`` (invalid JSON, encoding, fields, spans,
ids, languages, empty KB, model directory, output directory) are the table in ``tests/test_precompute.py``;
this table covers the rest, so the two together are the corpus docs/troubleshooting.md lists.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from xel.encoder import cli as encoder_cli
from xel.precompute.store import MANIFEST
from xel.retrieval import cli as nn_cli
from xel.train import cli as train_cli

from tests.train_fixtures import synthetic_store


@dataclass(frozen=True)
class Case:
    name: str
    command: click.Command
    argv: Callable[[Path], list[str]]  # tmp_path -> argv; may build stores/indexes under tmp_path first
    message: str  # must appear in the output
    out: str  # the output path (relative to tmp_path) that must be left as it was


def store(tmp: Path, name: str = "h5", **kw) -> Path:
    root = tmp / name
    if not (root / MANIFEST).exists():
        synthetic_store(root, langs={"en": 30, "de": 10}, **kw)
    return root


def index(tmp: Path, name: str = "index", features: str = "h5") -> Path:
    out = tmp / name
    if not (out / "manifest.json").exists():
        result = CliRunner().invoke(nn_cli.main, ["build", "--features", str(store(tmp, features)), "--out", str(out)])
        assert result.exit_code == 0, result.output
    return out


def precomputed_store(tmp: Path) -> Path:
    """A store with the config.json xel-precompute writes first (the fakes write only the manifest)."""
    root = store(tmp)
    (root / "config.json").write_text(json.dumps({"settings": {"encoder": "fake"}, "encoder": {}, "config": {}}))
    return root


def evil_lang_store(tmp: Path) -> Path:
    """A store whose KB language is a path: index-<lang>.faiss would be written outside the index directory."""
    from tests.fakes import make_store

    root = tmp / "h5-evil"
    evil = "x/../../../elsewhere/pwned"
    make_store(root, {"es": (["Q1", "Q2"], np.eye(2, 8), [evil, evil])},
               kb=[{"id": q, "name": q, "description": None, "lang": evil, "links": None} for q in ("Q1", "Q2")])
    return root


def dangling_link(tmp: Path, name: str) -> Path:
    link = tmp / name
    link.symlink_to(tmp / "nowhere" / name)
    return link


def other_encoder_store(tmp: Path) -> Path:
    return store(tmp, "h5-other", encoder={"name": "another-encoder"})


def other_kb_store(tmp: Path) -> Path:
    return store(tmp, "h5-other-kb", n_entities=41)  # same fake encoder, one more entity


def unfinished_store(tmp: Path) -> Path:
    root = store(tmp, "h5-unfinished")
    (root / MANIFEST).unlink()
    return root


def write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def occupied(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    return path


def nn(*args) -> list[str]:
    return [str(a) for a in args]


CASES = [
    # xel-nn build
    Case("faiss-rejects-factory", nn_cli.main,
         lambda t: nn("build", "--features", store(t), "--out", t / "o", "--index", "Nonsense"),
         "FAISS rejects the factory string 'Nonsense'", "o"),
    Case("ivf-larger-than-kb", nn_cli.main,
         lambda t: nn("build", "--features", store(t), "--out", t / "o", "--index", "IVF4096,Flat"),
         "needs at least 4096 training rows", "o"),
    Case("index-out-holds-something-else", nn_cli.main,
         lambda t: nn("build", "--features", store(t), "--out", occupied(t, "o")),
         "holds files that are not an xel index", "o"),
    Case("index-out-holds-an-index", nn_cli.main,
         lambda t: nn("build", "--features", store(t), "--out", index(t, "o")),
         "already holds an index; pass --overwrite", "o"),
    Case("unfinished-store", nn_cli.main,
         lambda t: nn("build", "--features", unfinished_store(t), "--out", t / "o"),
         "did not finish", "o"),
    Case("store-lang-is-a-path", nn_cli.main,
         lambda t: nn("build", "--features", evil_lang_store(t), "--out", t / "o"),
         "language 'x/../../../elsewhere/pwned' is not an ISO 639-1 code", "o"),
    Case("index-out-dangling-symlink", nn_cli.main,
         lambda t: nn("build", "--features", store(t), "--out", dangling_link(t, "o")),
         "is a symbolic link to", "o"),
    Case("features-not-a-directory", nn_cli.main,
         lambda t: nn("build", "--features", t / "nowhere", "--out", t / "o"),
         "no such store directory", "o"),
    # xel-nn candidates / eval / batch / query
    Case("store-from-another-encoder", nn_cli.main,
         lambda t: nn("eval", "--index", index(t), "--features", other_encoder_store(t), "--out", t / "o"),
         "rebuild the index with xel-nn build --features", "o"),
    Case("index-from-another-store", nn_cli.main,
         lambda t: nn("candidates", "--index", index(t), "--features", other_kb_store(t), "--out", t / "o"),
         "entities differ from those indexed; rebuild the index", "o"),
    Case("index-dir-not-an-index", nn_cli.main,
         lambda t: nn("candidates", "--index", store(t), "--out", t / "o"),
         "not an index directory", "o"),
    Case("threshold-out-of-range", nn_cli.main,
         lambda t: nn("eval", "--index", index(t), "--out", t / "o", "--threshold", "2"),
         "a cosine threshold in [-1, 1] is required", "o"),
    Case("k-zero", nn_cli.main,
         lambda t: nn("candidates", "--index", index(t), "--out", t / "o", "--k", "0"),
         "must be >= 1", "o"),
    Case("candidates-file-invalid-json", nn_cli.main,
         lambda t: nn("eval", "--index", index(t), "--out", t / "o",
                      "--candidates", write(t, "c.jsonl", b'{"id": "en-0", "candidates": [\n')),
         "c.jsonl:1", "o"),
    Case("candidates-file-not-utf8", nn_cli.main,
         lambda t: nn("eval", "--index", index(t), "--out", t / "o",
                      "--candidates", write(t, "c.jsonl", b'{"id": "en-0", "candidates": []}\n\x89PNG\r\n\x1a\n\xff')),
         "c.jsonl:2: not UTF-8 text", "o"),
    Case("unknown-kb-lang", nn_cli.main,
         lambda t: nn("eval", "--index", index(t), "--out", t / "o", "--kb-lang", "xx"),
         "KB language 'xx' is not in index", "o"),
    Case("batch-invalid-json", nn_cli.main,
         lambda t: nn("batch", "--index", index(t), "--in", write(t, "q.jsonl", b'{"query": \n'),
                      "--out", t / "o.jsonl"),
         "q.jsonl:1: invalid JSON", "o.jsonl"),
    Case("batch-record-without-query", nn_cli.main,
         lambda t: nn("batch", "--index", index(t), "--in", write(t, "q.jsonl", b'{"text": "Moscow"}\n'),
                      "--out", t / "o.jsonl"),
         'record 1: expected {"query": str', "o.jsonl"),
    Case("batch-huge-integer", nn_cli.main,
         lambda t: nn("batch", "--index", index(t), "--in", write(t, "q.jsonl", b'{"query": "x", "id": ' + b"9" * 5000
                                                                   + b"}\n"), "--out", t / "o.jsonl"),
         "q.jsonl:1: invalid JSON (Exceeds the limit", "o.jsonl"),
    Case("bad-search-params", nn_cli.main,
         lambda t: nn("eval", "--index", index(t), "--out", t / "o", "--search-params", "efSearch"),
         "efSearch", "o"),
    Case("candidates-out-is-the-store", nn_cli.main,
         lambda t: nn("candidates", "--features", precomputed_store(t), "--index", index(t), "--out", t / "h5"),
         "is a feature store (xel-precompute); only xel-precompute writes into a store", "h5"),
    Case("eval-out-inside-the-store", nn_cli.main,
         lambda t: nn("eval", "--index", index(t), "--out", precomputed_store(t) / "nn"),
         "lies inside", "h5"),
    Case("build-out-is-the-store", nn_cli.main,
         lambda t: nn("build", "--features", store(t), "--out", store(t)),
         "only xel-precompute writes into a store", "h5"),
    Case("batch-out-inside-the-store", nn_cli.main,
         lambda t: nn("batch", "--index", index(t), "--in", write(t, "q.jsonl", b'{"query": "Q1"}\n'),
                      "--out", precomputed_store(t) / "results.jsonl"),
         "only xel-precompute writes into a store", "h5"),
    # xel-train
    Case("train-out-is-the-store", train_cli.main,
         lambda t: nn("--features", precomputed_store(t), "--out", t / "h5", "--epochs", "1"),
         "only xel-precompute writes into a store", "h5"),
    Case("train-out-dangling-symlink", train_cli.main,
         lambda t: nn("--features", store(t), "--out", dangling_link(t, "o"), "--epochs", "1"),
         "is a symbolic link to", "o"),
    Case("train-eval-store-from-another-encoder", train_cli.main,
         lambda t: nn("--features", store(t), "--eval-features", other_encoder_store(t), "--out", t / "o",
                      "--epochs", "1"),
         "re-encode it with the training store's encoder", "o"),
    Case("train-conflicting-flags", train_cli.main,
         lambda t: nn("--features", store(t), "--out", t / "o", "--tune-nil", "--dev-fraction", "0"),
         "--tune-nil True: allowed only with --dev-fraction > 0", "o"),
    Case("train-dropout-out-of-range", train_cli.main,
         lambda t: nn("--features", store(t), "--out", t / "o", "--dropout", "1.5"),
         "--dropout 1.5: allowed 0 <= p < 1", "o"),
    Case("train-popularity-without-links", train_cli.main,
         lambda t: nn("--features", store(t, "h5-nolinks", links=False), "--out", t / "o", "--popularity"),
         "--popularity-missing median", "o"),
    Case("train-unknown-language", train_cli.main,
         lambda t: nn("--features", store(t), "--out", t / "o", "--eval-lang", "fr"),
         "['fr'] have no mentions", "o"),
    Case("train-out-holds-something-else", train_cli.main,
         lambda t: nn("--features", store(t), "--out", occupied(t, "o"), "--epochs", "1"),
         "holds files that are not an xel-train run", "o"),
    Case("train-config-unknown-key", train_cli.main,
         lambda t: nn("--config", write(t, "c.json", json.dumps({"features": "h5", "epoch": 3}).encode()),
                      "--out", t / "o"),
         "config keys ['epoch'] are unknown", "o"),
    Case("train-features-not-a-store", train_cli.main,
         lambda t: nn("--features", occupied(t, "notastore"), "--out", t / "o"),
         "did not finish", "o"),
    Case("train-one-entry-kb", train_cli.main,
         lambda t: nn("--features", store(t, "h5-one", n_entities=1), "--out", t / "o", "--epochs", "1"),
         "reach 1 KB entry; allowed: at least 2", "o"),
    Case("train-candidates-not-utf8", train_cli.main,
         lambda t: nn("--features", store(t), "--out", t / "o", "--epochs", "1",
                      "--candidates", write(t, "c.jsonl", b"PK\x03\x04\xff\xfe\x00zipped\n")),
         "c.jsonl:1: not UTF-8 text", "o"),
    Case("train-candidates-nan-score", train_cli.main,
         lambda t: nn("--features", store(t), "--out", t / "o", "--epochs", "1",
                      "--candidates", write(t, "c.jsonl", b'{"id": "en-0", "candidates": [["Q1", NaN, "dense"]]}\n')),
         "c.jsonl:1: score nan; allowed: finite numbers", "o"),
    # xel-encoder, xel-experiment
    Case("encoder-info-not-a-build", encoder_cli.main,
         lambda t: nn("info", "--out", occupied(t, "o")),
         "holds no complete build; run: xel-encoder build", "o"),
    Case("experiment-data-without-kb", train_cli.experiment,
         lambda t: nn("--data", occupied(t, "data"), "--out", t / "o", "--model", t / "model"),
         "kb.jsonl", "o"),
]


def snapshot(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_the_corpus_is_large_and_its_names_unique():
    from tests.test_precompute import BAD_INPUTS

    names = [c.name for c in CASES] + [b[0] for b in BAD_INPUTS]
    assert len(names) == len(set(names)) and len(names) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_exits_nonzero_names_the_problem_and_leaves_nothing(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths (a config's "features": "h5") resolve under tmp_path
    argv = case.argv(tmp_path)
    out = tmp_path / case.out
    before = snapshot(out)
    result = CliRunner().invoke(case.command, argv)
    assert result.exit_code != 0, f"{case.name}: exit 0\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{case.name}: a traceback, not a message: {result.exception!r}\n{result.output}")
    assert case.message in result.output, result.output
    assert snapshot(out) == before, f"{case.name}: {out} changed: {before} -> {snapshot(out)}"
    assert not list(tmp_path.rglob("*.tmp")), "a temp file was left behind"
    assert not list(tmp_path.parent.parent.rglob("pwned*")), "a file was written outside --out"


def test_fake_stores_differ_only_where_the_cases_say(tmp_path):
    """The fixtures themselves: the 'other KB' store has the same encoder, the 'other encoder' store another."""
    from xel.precompute.store import open_store

    a, b = open_store(store(tmp_path)), open_store(other_kb_store(tmp_path))
    c = open_store(other_encoder_store(tmp_path))
    assert a.encoder_signature() == b.encoder_signature() != c.encoder_signature()
    assert a.count("es") + 1 == b.count("es")
    assert np.isfinite(a.load("es")[1]).all()
