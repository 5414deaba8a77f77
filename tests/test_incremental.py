"""Incremental precompute: a changed KB or mention file re-encodes only its new or changed rows.

    pytest tests/test_incremental.py

Rows are reused by their row hash (text, spans, encoder settings), whatever shard they were in before, so an
insertion that shifts every later row into another shard still costs only the inserted rows. The count is the
number of items the actors handed to the encoder (``encoded_rows``), and the store must equal a from-scratch
run on the new input.
"""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
from xel.precompute.config import PrecomputeConfig
from xel.precompute.plan import PREV_DIR
from xel.precompute.run import run
from xel.precompute.shards import read_shard
from xel.precompute.store import open_store

from tests.conftest import write_jsonl

pytestmark = pytest.mark.ray

WORDS = "Barack Obama Moscow Paris London Tokyo Senate Republic Berlin Merkel city river capital".split()
N_KB = 300
SHARD = 64


def kb_entries(n: int, seed: int = 0, prefix: str = "Q") -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"{prefix}{i}", "name": " ".join(rng.choices(WORDS, k=rng.randint(1, 3))) + f" {prefix}{i}",
             "description": " ".join(rng.choices(WORDS, k=rng.randint(3, 8))) if i % 5 else None, "lang": "en",
             "links": i}
            for i in range(n)]


MENTIONS = [{"id": f"m{i}", "lang": "en", "sentence": f"Obama visited Moscow {i}.", "start": 0, "end": 5,
             "context": None, "gold": None} for i in range(10)]


def write(data, kb, mentions=MENTIONS):
    write_jsonl(data / "kb.jsonl", kb)
    write_jsonl(data / "mentions.jsonl", mentions)


def cfg(data, model, out, kinds=("es", "ec")):
    return PrecomputeConfig(data=data, model=model, out=out, dtype="fp32", shard_size=SHARD, kinds=kinds,
                            cpus_per_actor=1)


def assert_same_store(a, b, kinds):
    sa, sb = open_store(a), open_store(b)
    for kind in kinds:
        ids_a, feats_a, langs_a = sa.load(kind)
        ids_b, feats_b, langs_b = sb.load(kind)
        assert ids_a == ids_b and langs_a == langs_b, f"{kind}: ids or order differ from a from-scratch run"
        # fp32 with one thread: reused rows were encoded in other batches, so allow the last fp16 bit
        np.testing.assert_allclose(feats_a.astype(np.float32), feats_b.astype(np.float32), atol=2e-3, rtol=2e-3)


@pytest.fixture(scope="module")
def first_store(tiny_model_dir, ray_session, tmp_path_factory):
    """The store of a first run on ``kb_entries(N_KB)`` (``es``, ``ec``) and that run's summary; the tests that change
    its input work on a copy (:func:`copy_of_first`)."""
    root = tmp_path_factory.mktemp("incremental-first")
    write(root / "data", kb_entries(N_KB))
    summary = run(cfg(root / "data", tiny_model_dir, root / "h5"))
    return root, summary


def copy_of_first(first_store, tmp_path):
    """The data and store of :func:`first_store`, copied into ``tmp_path`` (a run into a store rewrites it)."""
    root, _ = first_store
    for part in ("data", "h5"):
        shutil.copytree(root / part, tmp_path / part)
    return tmp_path / "data", tmp_path / "h5"


def test_adding_12_entities_encodes_12_rows_and_equals_a_fresh_run(tiny_model_dir, first_store, tmp_path):
    data, out = copy_of_first(first_store, tmp_path)
    kb = kb_entries(N_KB)
    first = first_store[1]
    assert first["encoded_rows"] == 2 * N_KB and first["reused_rows"] == 0

    # 12 new entities: 4 at the front (every later row moves to another shard), 4 in the middle, 4 at the end
    new = kb_entries(12, seed=1, prefix="N")
    changed = new[:4] + kb[:150] + new[4:8] + kb[150:] + new[8:]
    write(data, changed)
    second = run(cfg(data, tiny_model_dir, out))
    assert second["rows"]["es"]["encoded"] == 12 and second["rows"]["ec"]["encoded"] == 12
    assert second["reused_rows"] == 2 * N_KB
    assert second["manifest"]["last_run_rows"]["es"] == {"encoded": 12, "reused": N_KB, "kept": 0}
    assert not (out / "es" / PREV_DIR).exists(), "set-aside shards were not removed after the manifest"

    fresh = tmp_path / "fresh"
    run(cfg(data, tiny_model_dir, fresh))
    assert_same_store(out, fresh, ("es", "ec"))


def test_changes_deletions_and_appends_cost_only_what_changed(tiny_model_dir, first_store, tmp_path):
    data, out = copy_of_first(first_store, tmp_path)
    kb = kb_entries(N_KB)

    edited = [dict(e) for e in kb]
    edited[10]["name"] = "Renamed entity"  # es and ec (its description is null: ec encodes the name) change
    edited[20]["description"] = "A changed description"  # only ec changes
    del edited[100:103]  # deleted rows are dropped
    edited += kb_entries(N_KB + 2)[N_KB:]  # two appended
    write(data, edited)
    summary = run(cfg(data, tiny_model_dir, out))
    assert summary["rows"]["es"]["encoded"] == 1 + 2
    assert summary["rows"]["ec"]["encoded"] == 2 + 2
    assert summary["kept_shards"] == 0  # every shard holds a changed or shifted row: all are rewritten ...
    assert summary["reused_rows"] == 2 * (N_KB - 3) - 1 - 2  # ... from the rows they already had
    store = open_store(out)
    ids = store.load("es")[0]
    assert "Q100" not in ids and ids == [e["id"] for e in edited]

    fresh = tmp_path / "fresh"
    run(cfg(data, tiny_model_dir, fresh))
    assert_same_store(out, fresh, ("es", "ec"))

    unchanged = run(cfg(data, tiny_model_dir, out))  # the same input again: nothing encoded, nothing rewritten
    assert unchanged["encoded_rows"] == 0 and unchanged["encoded_shards"] == 0


def test_mentions_file_changes_reencode_only_changed_mentions(tiny_model_dir, ray_session, tmp_path):
    data, out = tmp_path / "data", tmp_path / "h5"
    kb = kb_entries(20)
    mentions = [dict(m) for m in MENTIONS]
    write(data, kb, mentions)
    run(cfg(data, tiny_model_dir, out, kinds=("ms", "mc")))
    mentions[3]["sentence"] = "Obama flew to Paris."  # ms and mc (context null: the sentence) change
    mentions[5]["context"] = "Some context. Obama visited Moscow 5."  # only mc changes
    write(data, kb, mentions)
    summary = run(cfg(data, tiny_model_dir, out, kinds=("ms", "mc")))
    assert summary["rows"]["ms"]["encoded"] == 1 and summary["rows"]["mc"]["encoded"] == 2


def test_a_run_killed_after_setting_shards_aside_reuses_them(tiny_model_dir, ray_session, tmp_path, monkeypatch):
    """Shards moved to .prev by a run that then died are still found by the next run. The run dies as the encoding
    starts (an actor dying on every retry ends it there too, after four restarts: tests/test_faults.py)."""
    from xel.precompute import run as run_module
    from xel.precompute.config import PrecomputeError

    data, out = tmp_path / "data", tmp_path / "h5"
    kb = kb_entries(N_KB)
    write(data, kb)
    run(cfg(data, tiny_model_dir, out, kinds=("es",)))
    write(data, kb_entries(1, seed=2, prefix="N") + kb)  # every shard changes

    def dies(*args, **kwargs):
        raise PrecomputeError("shard es:0 failed; rerun the same command")

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "execute", dies)
        with pytest.raises(PrecomputeError):
            run(cfg(data, tiny_model_dir, out, kinds=("es",)))
    assert list((out / "es" / PREV_DIR).glob("*.h5")), "the killed run set nothing aside"
    summary = run(cfg(data, tiny_model_dir, out, kinds=("es",)))
    assert summary["rows"]["es"]["encoded"] == 1
    assert not (out / "es" / PREV_DIR).exists()


def test_shards_carry_row_hashes_in_their_checksum(tiny_model_dir, ray_session, tmp_path):
    data, out = tmp_path / "data", tmp_path / "h5"
    write(data, kb_entries(10))
    run(cfg(data, tiny_model_dir, out, kinds=("es",)))
    shard = read_shard(out / "es" / "shard-00000.h5")
    assert shard.row_hashes is not None and len(set(shard.row_hashes)) == 10
