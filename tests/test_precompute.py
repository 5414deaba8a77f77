"""The Ray precompute job: store contents, invariance across actors/shards, crash and resume, CLI, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from xel.precompute.cli import main
from xel.precompute.config import PrecomputeConfig, PrecomputeError
from xel.precompute.run import run
from xel.precompute.store import StoreError, open_store

from tests.conftest import KB, MENTIONS, write_jsonl

pytestmark = pytest.mark.ray


def _cfg(data: Path, model: Path, out: Path, **kw) -> PrecomputeConfig:
    return PrecomputeConfig(data=data, model=model, out=out, dtype="fp32", **kw)


def _assert_same_store(a: Path, b: Path, atol: float = 0.0) -> None:
    sa, sb = open_store(a), open_store(b)
    assert sa.kinds == sb.kinds
    for kind in sa.kinds:
        ia, fa, la = sa.load(kind)
        ib, fb, lb = sb.load(kind)
        assert ia == ib and la == lb
        assert len(set(ia)) == len(ia)
        np.testing.assert_allclose(fa.astype(np.float32), fb.astype(np.float32), atol=atol)


def test_store_rows_follow_input_order_and_features_match_in_process(tiny_store, tiny_model_dir):
    store = open_store(tiny_store)
    assert store.kinds == ["ec", "es", "mc", "mn", "ms", "text"]
    ids, feats, langs = store.load("ms")
    assert ids == [m["id"] for m in MENTIONS] and langs == [m["lang"] for m in MENTIONS]
    assert feats.dtype == np.float16 and feats.shape == (len(MENTIONS), 32)
    assert store.load("es")[0] == [e["id"] for e in KB]
    assert store.manifest["ec_from_name"] == 1
    assert [r["id"] for r in store.records("mentions")] == ids
    from xel.precompute.encoding import TextEncoder
    from xel.precompute.items import mention_item

    enc = TextEncoder.from_manifest(store.manifest, device="cpu")
    m = MENTIONS[2]
    again = enc.encode([mention_item(m["id"], m["lang"], m["sentence"], m["start"], m["end"])])
    np.testing.assert_array_equal(again[0], feats[2])


def test_mn_rows_are_the_mention_strings_encoded_alone_as_names_are(tiny_store):
    """mn: the mention string alone, encoded exactly as es encodes a name (the oracle: each one by itself), and
    not the mention in its sentence (ms)."""
    from xel.precompute.encoding import TextEncoder
    from xel.precompute.items import entity_item

    store = open_store(tiny_store)
    ids, mn, langs = store.load("mn")
    assert ids == [m["id"] for m in MENTIONS] and langs == [m["lang"] for m in MENTIONS]
    enc = TextEncoder.from_manifest(store.manifest, device="cpu")
    for i, m in enumerate(MENTIONS):
        alone = enc.encode([entity_item(m["id"], m["lang"], m["sentence"][m["start"]:m["end"]])])
        np.testing.assert_array_equal(alone[0], mn[i])
    assert not np.array_equal(mn, store.load("ms")[1])


def test_adding_a_kind_to_a_store_encodes_only_that_kind(tiny_data, tiny_model_dir, tmp_path, ray_session):
    """A store made without mn (as every store before it) gets it by the same command with more kinds: no other
    row is encoded again, and the rows already there are unchanged."""
    from xel.precompute.store import KINDS

    out = tmp_path / "h5"
    run(_cfg(tiny_data, tiny_model_dir, out, kinds=tuple(k for k in KINDS if k != "mn")))  # the old default
    before = {kind: open_store(out).load(kind)[1] for kind in ("ms", "mc", "es", "ec")}
    summary = run(_cfg(tiny_data, tiny_model_dir, out))
    encoded = {kind: rows["encoded"] for kind, rows in summary["rows"].items() if rows["encoded"]}
    assert encoded == {"mn": len(MENTIONS)}, summary["rows"]
    store = open_store(out)
    for kind, rows in before.items():
        np.testing.assert_array_equal(store.load(kind)[1], rows)
    with pytest.raises(PrecomputeError, match="kinds: store has"):
        run(_cfg(tiny_data, tiny_model_dir, out, kinds=("ms", "mc")))  # fewer kinds would drop some: refused


def test_one_vs_two_actors_and_shard_sizes_give_the_same_store(tiny_store, tiny_data, tiny_model_dir, tmp_path,
                                                              ray_session):
    run(_cfg(tiny_data, tiny_model_dir, tmp_path / "two", actors=2, shard_size=2, cpus_per_actor=1))
    _assert_same_store(tiny_store, tmp_path / "two", atol=1e-3)


def test_rerun_resumes_and_keeps_every_shard(tiny_data, tiny_model_dir, tmp_path, ray_session):
    out = tmp_path / "h5"
    first = run(_cfg(tiny_data, tiny_model_dir, out, shard_size=2))
    second = run(_cfg(tiny_data, tiny_model_dir, out, shard_size=2))
    assert first["encoded_shards"] > 0 and second["encoded_shards"] == 0
    assert second["kept_shards"] == first["encoded_shards"]


def test_changed_input_reencodes_only_changed_shards(tiny_data, tiny_model_dir, tmp_path, ray_session):
    out = tmp_path / "h5"
    run(_cfg(tiny_data, tiny_model_dir, out, shard_size=2, kinds=("ms",)))
    changed = [dict(m) for m in MENTIONS]
    changed[-1]["sentence"] = "El Senado de Mexico aprobó la ley."
    write_jsonl(tiny_data / "mentions.jsonl", changed)
    again = run(_cfg(tiny_data, tiny_model_dir, out, shard_size=2, kinds=("ms",)))
    assert again["encoded_shards"] == 1
    run(_cfg(tiny_data, tiny_model_dir, tmp_path / "fresh", shard_size=2, kinds=("ms",)))
    _assert_same_store(out, tmp_path / "fresh")


def test_killed_actor_is_restarted_and_the_store_equals_a_clean_run(tiny_store, tiny_data, tiny_model_dir, tmp_path,
                                                                   monkeypatch, ray_session):
    monkeypatch.setenv("XEL_FAULT_SHARD", "ms:1:encoded")
    monkeypatch.setenv("XEL_FAULT_MARKER", str(tmp_path / "fired"))
    run(_cfg(tiny_data, tiny_model_dir, tmp_path / "h5", shard_size=3))
    assert (tmp_path / "fired").exists(), "the fault never fired"
    _assert_same_store(tiny_store, tmp_path / "h5")


def test_run_that_dies_is_resumed_by_the_same_command(tiny_store, tiny_data, tiny_model_dir, tmp_path, monkeypatch,
                                                      ray_session):
    out = tmp_path / "h5"
    monkeypatch.setenv("XEL_FAULT_SHARD", "mc:2:written")  # no marker: the actor dies on every retry
    with pytest.raises(PrecomputeError, match="rerun the same command"):
        run(_cfg(tiny_data, tiny_model_dir, out, shard_size=3, actors=2, cpus_per_actor=1))
    assert not (out / "manifest.json").exists()
    import time

    for _ in range(50):  # the other actor, alive, was killed too: the shared Ray has all its CPUs back (15.14)
        if ray_session.available_resources().get("CPU") == 2:
            break
        time.sleep(0.1)
    assert ray_session.available_resources().get("CPU") == 2, ray_session.available_resources()
    with pytest.raises(StoreError, match="did not finish"):
        open_store(out)
    monkeypatch.delenv("XEL_FAULT_SHARD")
    resumed = run(_cfg(tiny_data, tiny_model_dir, out, shard_size=3))
    assert resumed["kept_shards"] > 0
    _assert_same_store(tiny_store, out)


def test_different_settings_into_the_same_out_are_refused(tiny_store, tiny_model_dir, tmp_path):
    out = tmp_path / "h5"
    shutil.copytree(tiny_store, out)  # a store precompute wrote (fp32, shard size 3), as tiny_store's run left it
    with pytest.raises(PrecomputeError, match="layer: store has -1, this run asks 1"):
        run(_cfg(tiny_store.parent / "data", tiny_model_dir, out, shard_size=3, layer=1))


def test_auto_dtype_is_decided_by_the_actor_and_recorded_per_shard(tiny_data, tiny_model_dir, tmp_path,
                                                                   ray_session):
    """The actor decides ``auto`` on its machine; each shard and the manifest record what it ran, the guard what was
    asked (so a resumed run keeps shards whichever machine wrote them, and another dtype is refused)."""
    from xel.precompute.hardware import resolve_dtype

    out = tmp_path / "h5"
    run(PrecomputeConfig(data=tiny_data, model=tiny_model_dir, out=out, kinds=("es",)))
    expected = resolve_dtype("auto", on_gpu=False)  # the tiny model has no int8 gate verdict
    store = open_store(out)
    assert store.manifest["dtype"] == expected and store.manifest["settings"]["dtype"] == "auto"
    assert [e["dtype"] for e in store.manifest["kinds"]["es"]["shards"]] == [expected]
    assert [shard.encoded_with["dtype"] for shard in store.iter_shards("es")] == [expected]
    assert run(PrecomputeConfig(data=tiny_data, model=tiny_model_dir, out=out, kinds=("es",)))["kept_shards"] == 1
    with pytest.raises(PrecomputeError, match=f"dtype: store has 'auto', this run asks '{expected}'"):
        run(PrecomputeConfig(data=tiny_data, model=tiny_model_dir, out=out, kinds=("es",), dtype=expected))


def test_corrupted_shard_is_detected_with_its_path(tiny_store, tmp_path):
    out = tmp_path / "h5"
    shutil.copytree(tiny_store, out)  # a store precompute wrote, corrupted below
    shard = out / "es" / "shard-00000.h5"
    import h5py

    with h5py.File(shard, "r") as f:  # flip bytes inside the stored features (contiguous dataset)
        offset, size = f["features"].id.get_offset(), f["features"].id.get_storage_size()
    data = bytearray(shard.read_bytes())
    data[offset:offset + min(size, 64)] = bytes(b ^ 0xFF for b in data[offset:offset + min(size, 64)])
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="shard-00000.h5"):
        open_store(out).load("es")
    shard.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(StoreError, match="shard-00000.h5"):
        open_store(out)


def test_cli_writes_a_store_and_prints_a_summary(tiny_data, tiny_model_dir, tmp_path, ray_session):
    out = tmp_path / "h5"
    result = CliRunner().invoke(main, ["--data", str(tiny_data), "--model", str(tiny_model_dir), "--out", str(out),
                                       "--dtype", "fp32", "--shard-size", "4"])
    assert result.exit_code == 0, result.output
    assert "ms" in result.output and "NIL rate" in result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line[:2] in ("en", "de", "ru")}
    assert rows["de"].endswith("links to the en KB") and rows["en"].endswith("5 entities"), result.output
    assert open_store(out).count("ms") == len(MENTIONS)


def test_cli_help_explains():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "--max-tokens-per-batch" in result.output and "resumable" in result.output


def _bad(mention_patch=None, kb=None, raw_mentions=None, files=None):
    """(kb records or raw bytes, mention records or raw bytes, {extra file name: bytes, or None for a directory})."""
    mentions = [dict(m) for m in MENTIONS]
    if mention_patch:
        mentions[0].update(mention_patch)
        mentions[0] = {k: v for k, v in mentions[0].items() if v != "<drop>"}
    return (KB if kb is None else kb), raw_mentions if raw_mentions is not None else mentions, files or {}


def _ascii_jsonl(records: list[dict]) -> bytes:
    """JSONL with every non-ASCII character escaped, so that a lone surrogate ("\\ud800") can be written."""
    return "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in records).encode("ascii")


def _patched(patch: dict, records=MENTIONS) -> list[dict]:
    return [{**records[0], **patch}, *records[1:]]


# a sentence whose only character at [4, 5) is a combining acute accent (e + U+0301 = é)
_COMBINING = "Cafe\u0301 Obama visited Moscow."


BAD_INPUTS = [
    ("invalid-json", _bad(raw_mentions=b'{"id": "m1", "lang": \n'), "mentions.jsonl:1: invalid JSON"),
    ("wrong-encoding", _bad(raw_mentions='{"id": "m1", "lang": "en", "sentence": "Zürich"}\n'.encode("latin-1")),
     "mentions.jsonl:1: not UTF-8"),
    ("missing-field", _bad({"sentence": "<drop>"}), "field 'sentence' is missing"),
    ("mistyped-start", _bad({"start": "0"}), "field 'start' is '0' (str); an integer is required"),
    ("empty-sentence", _bad({"sentence": "  "}), "field 'sentence' is '  '; an empty string is not allowed"),
    ("span-out-of-range", _bad({"end": 500}), "field 'start/end' is [0, 500)"),
    ("empty-span", _bad({"start": 3, "end": 3}), "field 'start/end' is [3, 3)"),
    ("whitespace-span", _bad({"start": 12, "end": 13}), "holds no word"),
    ("duplicate-id", _bad({"id": "m2"}), "mentions.jsonl:2: field 'id' is 'm2', a duplicate of line 1"),
    ("gold-not-in-kb", _bad({"gold": "Q999"}), "field 'gold' is 'Q999', which is not an id in the KB"),
    ("candidate-not-in-kb", _bad({"candidates": ["Q1", "Q404"]}), "'Q404', which is not an id in the KB"),
    ("unknown-language", _bad({"lang": "english"}), "field 'lang' is 'english'; an ISO 639-1 code"),
    ("bad-type", _bad({"type": "PERSON"}), "field 'type' is 'PERSON'; one of PER, ORG, GPE, LOC, FAC"),
    ("empty-kb", _bad(kb=[]), "the KB is empty"),
    ("lone-surrogate-in-sentence", _bad(raw_mentions=_ascii_jsonl(_patched({"sentence": "Obama\ud800 visited"}))),
     "mentions.jsonl:1: field 'sentence' holds a lone surrogate"),
    ("lone-surrogate-in-id", _bad(raw_mentions=_ascii_jsonl(_patched({"id": "m\udc00"}))),
     "mentions.jsonl:1: field 'id' holds a lone surrogate"),
    ("lone-surrogate-in-kb-name", _bad(kb=_ascii_jsonl(_patched({"name": "Obama\ud800"}, KB))),
     "kb.jsonl:1: field 'name' holds a lone surrogate"),
    ("huge-integer", _bad(raw_mentions=b'{"id": "m1", "lang": "en", "sentence": "Obama", "start": ' + b"7" * 5000
                          + b', "end": 5}\n'), "mentions.jsonl:1: invalid JSON (Exceeds the limit"),
    ("nul-in-id", _bad({"id": "m\x001"}), "mentions.jsonl:1: field 'id' holds a NUL character"),
    ("span-of-a-combining-mark", _bad({"sentence": _COMBINING, "context": _COMBINING, "start": 4, "end": 5}),
     "mentions.jsonl:1: field 'start/end' covers '\u0301', which holds no word"),
    ("span-of-a-zero-width-space", _bad({"sentence": "Barack\u200bObama", "context": None, "start": 6, "end": 7}),
     "mentions.jsonl:1: field 'start/end' covers '\\u200b', which holds no word"),
    ("span-of-a-soft-hyphen", _bad({"sentence": "Barack Oba\u00adma", "context": None, "start": 10, "end": 11}),
     "mentions.jsonl:1: field 'start/end' covers '\\xad', which holds no word"),
    ("kb-name-of-invisible-characters", _bad(kb=_patched({"name": "\u200b\u00ad"}, KB)),
     "kb.jsonl:1: field 'name' is '\\u200b\\xad', which holds no word"),
    ("text-jsonl-is-a-directory", _bad(files={"text.jsonl": None}), "text.jsonl: is a directory; a JSONL file"),
    ("sentence-over-the-length-limit", _bad({"sentence": "Obama " * 20_000, "context": None}),
     "field 'sentence' is 120,000 characters long; at most 100,000 are allowed"),
]


@pytest.mark.parametrize("name,records,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_exits_nonzero_with_a_clear_message_and_writes_nothing(name, records, message, tiny_model_dir,
                                                                        tmp_path, monkeypatch):
    kb, mentions, files = records
    data = tmp_path / "data"
    for file_name, content in (("kb.jsonl", kb), ("mentions.jsonl", mentions)):
        if isinstance(content, bytes):
            data.mkdir(exist_ok=True)
            (data / file_name).write_bytes(content)
        else:
            write_jsonl(data / file_name, content)
    for file_name, content in files.items():
        (data / file_name).mkdir() if content is None else (data / file_name).write_bytes(content)
    import xel.precompute.run

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for input that validation must refuse")

    monkeypatch.setattr(xel.precompute.run, "ray_session", no_ray)
    out = tmp_path / "h5"
    result = CliRunner().invoke(main, ["--data", str(data), "--model", str(tiny_model_dir), "--out", str(out)])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert message in result.output, result.output
    assert not out.exists()


def test_model_dir_that_is_not_a_model(tiny_data, tmp_path):
    flags = ["--data", str(tiny_data), "--model", str(tmp_path), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, flags)
    assert result.exit_code != 0 and "not a Hugging Face model directory" in result.output
    assert not (tmp_path / "o").exists()


def test_a_model_that_needs_custom_code_is_refused_up_front(tiny_data, tiny_model_dir, tmp_path, monkeypatch):
    """Issue 15.13: an auto_map model once died in the actors after 40 s with a misleading trust_remote_code hint."""
    import xel.precompute.run

    model = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (model / "config.json").write_text(json.dumps(config))

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a model that must be refused up front")

    monkeypatch.setattr(xel.precompute.run, "ray_session", no_ray)
    result = CliRunner().invoke(main, ["--data", str(tiny_data), "--model", str(model), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and (result.exception is None or isinstance(result.exception, SystemExit))
    assert "'auto_map'" in result.output and "xel never runs a model's own code" in result.output
    assert not (tmp_path / "o").exists()


def test_out_dir_holding_something_else_is_refused(tiny_data, tiny_model_dir, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["--data", str(tiny_data), "--model", str(tiny_model_dir), "--out", str(out)])
    assert result.exit_code != 0 and "holds no xel store" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("config", [b'{"search": {"index": "index/"}, "out": "h5/", "k": 30}\n', b"{not json"])
def test_a_store_whose_config_another_command_overwrote_is_reported_in_one_message(config, tiny_data, tiny_model_dir,
                                                                                   tmp_path):
    """Issue 15.1: `xel-nn candidates --out h5/` once overwrote h5/config.json; the next precompute died with
    KeyError: 'settings'."""
    out = tmp_path / "h5"
    out.mkdir()
    (out / "config.json").write_bytes(config)
    (out / "es").mkdir()
    result = CliRunner().invoke(main, ["--data", str(tiny_data), "--model", str(tiny_model_dir), "--out", str(out)])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "config.json is" in result.output and "so the store's settings are unknown" in result.output
    assert f"delete {out}" in result.output
    assert (out / "config.json").read_bytes() == config


def test_bad_kinds_flag():
    result = CliRunner().invoke(main, ["--data", "d", "--model", "m", "--out", "o", "--kinds", "ms,xx"])
    assert result.exit_code != 0 and "allowed kinds are ms,mc,mn,es,ec,text" in result.output


def test_importing_the_store_does_not_import_torch_or_ray():
    code = "import sys, json, precompute.store; print(json.dumps([m for m in ('torch', 'ray') if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert json.loads(out.stdout.strip()) == []


def test_run_by_path_shows_help():
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "precompute/run.py", "--help"], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0 and "--data" in out.stdout


def test_relative_model_or_out_inside_a_ray_job_is_refused_saying_why(tiny_data, tiny_model_dir, tmp_path,
                                                                      monkeypatch):
    """Issue 15.2: inside `ray job submit`, relative paths point into the job's uploaded copy of the repo."""
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["--data", str(tiny_data), "--model", "models/e5", "--out", "h5/"])
    assert result.exit_code != 0 and (result.exception is None or isinstance(result.exception, SystemExit))
    assert "--model models/e5, --out h5: a relative path inside a Ray job" in result.output
    assert 'Pass absolute paths, e.g. --model "$PWD/models/e5" --out "$PWD/h5"' in result.output
    assert not (tmp_path / "h5").exists()


SIGTERM_DURING_ENCODING = """
import os, signal, sys
import xel.precompute.run
from xel.precompute.cli import main
real = xel.precompute.run.execute
def terminated(*args):
    os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` once Ray is up and the actors start
    return real(*args)
xel.precompute.run.execute = terminated
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_sigterm_ends_precompute_with_one_line_and_exit_143(tiny_data, tiny_model_dir, tmp_path):
    """Issue 15.14: SIGTERM once ended precompute with Ray's abort dump and exit -6; 15.3: and no token warning."""
    import os
    import signal

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # as a user runs it: Ray's default
    child = subprocess.run(
        [sys.executable, "-c", SIGTERM_DURING_ENCODING, "--data", str(tiny_data), "--model", str(tiny_model_dir),
         "--out", str(tmp_path / "h5"), "--cpus-per-actor", "1"],
        cwd=root, capture_output=True, text=True, timeout=300, env={**env, "PYTHONPATH": str(root)})
    assert child.returncode == 128 + signal.SIGTERM, child.stderr[-3000:]
    assert "xel-precompute: stopped by SIGTERM; finished shards are kept" in child.stderr
    assert "Token authentication is enabled" not in child.stderr and "Aborted" not in child.stderr


SIGTERM_INSIDE_RAY_WAIT = """
import os, signal, sys, threading
import ray
from xel.precompute.cli import main
real_wait = ray.wait
def wait(*args, **kwargs):  # the first wait with a timeout: SIGTERM lands while it blocks inside Ray's C++ wait
    if kwargs.get("timeout") and not getattr(wait, "fired", False):
        wait.fired = True
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
    return real_wait(*args, **kwargs)
ray.wait = wait
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_sigterm_inside_ray_wait_ends_precompute_with_one_line(tiny_data, tiny_model_dir, tmp_path):
    """Issue 25.4: SIGTERM while the driver waited on Ray printed `SystemError: <cyfunction CoreWorker.wait ...>
    returned a result with an exception set` and a traceback, not the documented line."""
    import os
    import signal

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    child = subprocess.run(
        [sys.executable, "-c", SIGTERM_INSIDE_RAY_WAIT, "--data", str(tiny_data), "--model", str(tiny_model_dir),
         "--out", str(tmp_path / "h5"), "--cpus-per-actor", "1"],
        cwd=root, capture_output=True, text=True, timeout=300, env={**env, "PYTHONPATH": str(root)})
    assert child.returncode == 128 + signal.SIGTERM, child.stderr[-3000:]
    assert "xel-precompute: stopped by SIGTERM; finished shards are kept" in child.stderr
    assert "Traceback" not in child.stderr and "SystemError" not in child.stderr, child.stderr[-3000:]


def test_sigterm_while_waiting_on_ray_is_deferred_to_the_driver_loop():
    """The handler raises nothing inside :meth:`STOP.deferred` (where Ray's wait runs); the loop's check does."""
    import os
    import signal

    from xel.precompute.schedule import STOP, Stopped, stop_on_sigterm

    previous = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_sigterm()
        with pytest.raises(Stopped) as stopped:
            with STOP.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(100):  # the handler runs between bytecodes: here, as Ray's wait returns
                    pass
                reached = True  # not raised where it landed
                STOP.check()
        assert reached and stopped.value.args == (signal.SIGTERM,)
        with STOP.deferred():  # a later run in the same process starts clean
            STOP.check()
        with pytest.raises(Stopped):  # outside the loop it raises at once, as before
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):
                pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ray_session_leaves_the_sigterm_handler_and_environment_as_it_found_them(monkeypatch):
    """ray.init installs a SIGTERM handler of its own; the session puts the entry point's back, and the worker
    niceness reaches the raylet without staying in the process's environment."""
    import os
    import signal

    from xel.precompute import ray_session as session

    seen = {}

    def fake_init(**kwargs):
        seen["niceness"] = os.environ.get(session.WORKER_NICENESS)
        signal.signal(signal.SIGTERM, lambda signum, frame: None)  # as ray.init does

    monkeypatch.setattr(session.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(session.ray, "init", fake_init)
    monkeypatch.setattr(session.ray, "shutdown", lambda: None)
    monkeypatch.delenv(session.WORKER_NICENESS, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = signal.getsignal(signal.SIGTERM)
    with session.ray_session():
        assert signal.getsignal(signal.SIGTERM) is before
    assert seen["niceness"] == "0" and session.WORKER_NICENESS not in os.environ
