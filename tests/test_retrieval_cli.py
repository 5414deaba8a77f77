"""``xel-nn`` through click's ``CliRunner``, and query-time encoding against a real tiny store: ``pytest``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from xel.precompute.store import open_store
from xel.retrieval.cli import main
from xel.retrieval.files import read_candidates, read_predictions
from xel.retrieval.index_files import load_index
from xel.retrieval.query import Query, encode_queries
from xel.retrieval.vectors import l2_normalise

from tests.test_retrieval import kb_store  # noqa: F401 (fixture)


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_build_candidates_eval_write_their_files(kb_store, tmp_path, caplog):  # noqa: F811
    caplog.set_level("INFO", logger="xel.retrieval")
    index, out = tmp_path / "index", tmp_path / "out"
    r = invoke("build", "--features", kb_store.root, "--out", index, "--index", "HNSW32")
    assert r.exit_code == 0, r.output
    assert "es: 40 entities" in r.output
    assert "building the 'HNSW32' index over 100 'es' rows" in caplog.text  # says what it does (15.3)
    assert {p.name for p in index.iterdir()} >= {"manifest.json", "index-en.faiss", "ids-es.json", "config.json"}
    assert load_index(index).manifest["factory"] == "HNSW32"

    r = invoke("candidates", "--index", index, "--out", out / "cands", "--k", "5")
    assert r.exit_code == 0, r.output
    cands = read_candidates(out / "cands" / "candidates.jsonl")
    own = [c for m, c in cands.items() if m not in ("m-es-0", "m-es-1")]
    # the dense top-5 (what prior did not list already), then up to 10 prior and 10 n-gram candidates
    assert len(cands) == 70 and all(len(c) <= 25 and sum(src == "dense" for _, _, src in c) <= 5 for c in own)
    for name in ("recall.txt", "recall.json", "recall.png", "config.json"):
        assert (out / "cands" / name).stat().st_size > 0
    assert "merged" in r.output and "R@100" in r.output
    assert "writing candidates (k=5) for 70 mentions" in caplog.text
    recorded = json.loads((out / "cands" / "config.json").read_text())
    assert (recorded["dev_fraction"], recorded["test_fraction"]) == (0.1, 0.2)  # xel-train checks these
    r = invoke("candidates", "--index", index, "--out", out / "cands-30", "--k", "5", "--test-fraction", "0.3")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "cands-30" / "config.json").read_text())["test_fraction"] == 0.3

    r = invoke("eval", "--index", index, "--features", kb_store.root, "--out", out / "eval", "--k", "10")
    assert r.exit_code == 0, r.output
    preds = read_predictions(out / "eval" / "predictions.jsonl")
    assert len(preds) == 70 and set(preds[0]) == {"id", "pred", "score", "candidates", "name"}
    names = {r["id"]: r["name"] for r in kb_store.records("kb")}
    assert all(p["name"] == names[p["pred"]] for p in preds if p["pred"] is not None)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["lang:es"]["n"] == 20 and metrics["lang:es"]["r"] == 1.0  # es mentions sit near their gold
    assert metrics["lang:es"]["micro"] == 0.8  # the 4 NIL mentions are linked (threshold -1: never NIL)
    assert "type:es:GPE" in metrics and (out / "eval" / "recall.png").is_file()

    r = invoke("eval", "--index", index, "--out", out / "eval2", "--threshold", "0.99",
               "--candidates", out / "cands" / "candidates.jsonl")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "eval2" / "metrics.json").read_text())["all"]["p"] == 0.0  # all NIL


def test_build_refuses_bad_flags(kb_store, tmp_path):  # noqa: F811
    r = invoke("build", "--features", kb_store.root, "--out", tmp_path / "i", "--index", "IVF4096,Flat")
    assert r.exit_code != 0 and "needs at least 4096 training rows" in r.output and "KB 'en' has 60" in r.output
    r = invoke("build", "--features", kb_store.root, "--out", tmp_path / "i", "--index", "Nonsense")
    assert r.exit_code != 0 and "FAISS rejects the factory string 'Nonsense'" in r.output
    r = invoke("build", "--features", tmp_path / "missing", "--out", tmp_path / "i")
    assert r.exit_code != 0 and "no such store directory" in r.output
    r = invoke("build", "--features", kb_store.root, "--out", tmp_path / "i", "--kind", "xx")
    assert r.exit_code != 0 and "'xx' is not one of" in r.output
    assert invoke("build", "--features", kb_store.root, "--out", tmp_path / "i").exit_code == 0
    r = invoke("build", "--features", kb_store.root, "--out", tmp_path / "i")
    assert r.exit_code != 0 and "--overwrite" in r.output


def test_eval_and_query_refuse_bad_flags(kb_store, tmp_path):  # noqa: F811
    index = tmp_path / "index"
    invoke("build", "--features", kb_store.root, "--out", index)
    r = invoke("eval", "--index", index, "--out", tmp_path / "o", "--k", "0")
    assert r.exit_code != 0 and "--k" in r.output and "must be >= 1" in r.output
    r = invoke("eval", "--index", index, "--out", tmp_path / "o", "--threshold", "2")
    assert r.exit_code != 0 and "[-1, 1]" in r.output
    r = invoke("eval", "--index", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert r.exit_code != 0 and "not an index directory" in r.output
    r = invoke("eval", "--index", index, "--out", tmp_path / "o", "--kb-lang", "fa")
    assert r.exit_code != 0 and "'fa' is not in index" in r.output
    r = invoke("eval", "--index", index, "--out", tmp_path / "o", "--search-params", "efSearch=64")
    assert r.exit_code != 0 and "efSearch=64" in r.output


# ----------------------------------------------------------------------------------------------- real encoder


@pytest.mark.ray
def test_query_encoding_equals_the_stored_ms_row(tiny_store):
    store = open_store(tiny_store)
    ids, stored, _ = store.load("ms")
    records = {r["id"]: r for r in store.records("mentions")}
    for mid in ("m7", "m2", "m4"):
        rec = records[mid]
        surface = rec["sentence"][rec["start"]:rec["end"]]
        assert rec["sentence"].find(surface) == rec["start"]  # the query's first occurrence is the mention
        got = encode_queries(store, [Query(surface, rec["lang"], rec["sentence"])])[0]
        want = l2_normalise(stored[[ids.index(mid)]].astype(np.float32))[0]
        np.testing.assert_allclose(got, want, atol=2e-3)
        assert float(got @ want) > 0.9999


@pytest.mark.ray
def test_query_and_batch_commands(tiny_store, tmp_path):
    index = tmp_path / "index"
    assert invoke("build", "--features", tiny_store, "--out", index).exit_code == 0
    r = invoke("query", "--index", index, "--lang", "es", "--k", "3",
               "--context", "El Senado de la República aprobó la ley.", "Senado")
    assert r.exit_code == 0, r.output
    assert len(r.output.strip().splitlines()) == 3 and "Q" in r.output
    r = invoke("query", "--index", index, "--context", "Nothing here", "Senado")
    assert r.exit_code != 0 and "does not occur in its context" in r.output

    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": "a", "query": "Moscow"}) + "\n"
                       + json.dumps({"query": "Obama", "lang": "ru", "context": "Барак Обама и Obama"}) + "\n")
    r = invoke("batch", "--index", index, "--in", queries, "--out", tmp_path / "r.jsonl", "--k", "2")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["a", None] and all(len(row["results"]) == 2 for row in rows)
    assert set(rows[0]["results"][0]) == {"id", "name", "score"}


def test_every_command_accepts_h() -> None:
    from xel.encoder.cli import main as encoder_main
    from xel.precompute.cli import main as precompute_main
    from xel.retrieval.cli import main as nn_main
    from xel.train.cli import experiment as experiment_main
    from xel.train.cli import main as train_main

    for command, argv in ((nn_main, ["-h"]), (nn_main, ["build", "-h"]), (nn_main, ["query", "-h"]),
                          (encoder_main, ["-h"]), (encoder_main, ["build", "-h"]), (train_main, ["-h"]),
                          (precompute_main, ["-h"]), (experiment_main, ["-h"])):
        result = CliRunner().invoke(command, argv)
        assert result.exit_code == 0 and "Usage:" in result.output, (command.name, argv, result.output)


def test_a_moved_model_is_found_with_model_and_the_fingerprint_ignores_the_folder_name(tiny_store, tmp_path):
    """Issue 15.13: identity by content: a copied or renamed model directory is the same encoder."""
    import shutil

    from xel.precompute.identity import encoder_identity

    store = tmp_path / "h5"
    shutil.copytree(tiny_store, store)
    manifest = json.loads((store / "manifest.json").read_text())
    moved = tmp_path / "renamed-model"
    shutil.copytree(manifest["model"], moved)
    assert encoder_identity(moved)["fingerprint"] == encoder_identity(manifest["model"])["fingerprint"]
    manifest["model"] = str(tmp_path / "gone" / "model")  # the model the store names is no longer there
    (store / "manifest.json").write_text(json.dumps(manifest))
    index = tmp_path / "index"
    assert invoke("build", "--features", store, "--out", index).exit_code == 0
    r = CliRunner().invoke(main, ["query", "--index", str(index), "Obama"])
    assert r.exit_code == 1 and (r.exception is None or isinstance(r.exception, SystemExit)), repr(r.exception)
    assert "pass its new place with --model DIR" in r.output
    r = invoke("query", "--index", index, "--model", moved, "--k", "2", "Obama")
    assert r.exit_code == 0 and len(r.output.strip().splitlines()) == 2, r.output


# ------------------------------------------------------------------ temp residue, symlinks, full disk (15.9, 15.10)

SIGTERM_DURING_BUILD = """
import os, signal, sys, time
import xel.retrieval.index_files
from xel.retrieval.cli import main
real = xel.retrieval.index_files.write_faiss
def write_then_terminated(index, path):
    result = real(index, path)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    return result
xel.retrieval.index_files.write_faiss = write_then_terminated
main(sys.argv[1:])
"""


def test_sigterm_during_build_leaves_no_temp_and_stale_temps_are_removed_by_the_next_build(kb_store, tmp_path):  # noqa: F811
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "index"
    child = subprocess.run([sys.executable, "-c", SIGTERM_DURING_BUILD, "build", "--features", str(kb_store.root),
                            "--out", str(out)], cwd=root, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(root)})
    assert child.returncode == 128 + signal.SIGTERM, child.stderr
    assert not out.exists() and not list(tmp_path.glob(".index.*")), list(tmp_path.iterdir())
    legacy = tmp_path / ".index.ab12cd34.tmp"  # as a build killed by SIGKILL (or an older xel) left it
    dead_pid = tmp_path / ".index.999999999.ab12cd34.tmp"
    for stale in (legacy, dead_pid):
        stale.mkdir()
        (stale / "index-en.faiss").write_bytes(b"x" * 1000)
    assert invoke("build", "--features", kb_store.root, "--out", out).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "h5") == ["index"]


def test_build_into_a_symlinked_out_works_and_overwrites(kb_store, tmp_path):  # noqa: F811
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    r = invoke("build", "--features", kb_store.root, "--out", link)
    assert r.exit_code == 0, r.output
    r = invoke("build", "--features", kb_store.root, "--out", link, "--overwrite", "--index", "HNSW32")
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and load_index(link).manifest["factory"] == "HNSW32"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "h5") == ["link", "real"]


def test_a_full_disk_during_build_is_one_message_and_the_old_index_stays(kb_store, tmp_path, monkeypatch):  # noqa: F811
    import errno

    import xel.retrieval.index_files

    out = tmp_path / "index"
    assert invoke("build", "--features", kb_store.root, "--out", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(index, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(xel.retrieval.index_files, "write_faiss", full)
    r = CliRunner().invoke(main, ["build", "--features", str(kb_store.root), "--out", str(out), "--overwrite"])
    assert r.exit_code == 1 and (r.exception is None or isinstance(r.exception, SystemExit)), repr(r.exception)
    assert "No space left on device" in r.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "h5") == ["index"]


def test_outputs_follow_the_umask(kb_store, tmp_path):  # noqa: F811
    """Issue 15.14: files were created 0600 and directories 0700 (mkstemp/mkdtemp) whatever the umask."""
    import stat

    from xel.precompute.files import atomic_write_bytes

    old = os.umask(0o022)
    try:
        assert invoke("build", "--features", kb_store.root, "--out", tmp_path / "index").exit_code == 0
        atomic_write_bytes(tmp_path / "f.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "index").stat().st_mode) == 0o755
    for path in [tmp_path / "f.json", *(tmp_path / "index").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
