"""``xel-nn build --update``: an index follows its updated store, and its row -> id map never drifts.

    pytest tests/test_index_update.py

A fake store goes through a seeded sequence of updates (entities deleted, changed, added, a KB language added);
after each, the updated index must answer every query with the same ids (and, for exact indexes, the same
scores) as an index built from scratch on the same store.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from xel.precompute.store import open_store
from xel.retrieval.build import build_index
from xel.retrieval.cli import main
from xel.retrieval.index_files import load_index
from xel.retrieval.update import update_index
from xel.retrieval.vectors import ids_digest, load_features

from tests.fakes import make_store

DIM = 16


def write_store(root, entities: dict[str, tuple[str, np.ndarray]]):
    """``entities[id] = (lang, vector)``, in insertion order; a few mentions so that the store is complete."""
    ids = list(entities)
    langs = [entities[i][0] for i in ids]
    vecs = np.stack([entities[i][1] for i in ids])
    kb = [{"id": i, "name": i, "description": None, "lang": lang, "links": None} for i, lang in zip(ids, langs)]
    mentions = [{"id": "m0", "lang": "en", "sentence": "x", "start": 0, "end": 1, "context": None, "gold": None}]
    if root.exists():
        import shutil

        shutil.rmtree(root)
    return open_store(make_store(root, {"es": (ids, vecs, langs), "ec": (ids, vecs, langs),
                                        "ms": (["m0"], vecs[:1], ["en"]), "mc": (["m0"], vecs[:1], ["en"])},
                                 kb=kb, mentions=mentions))


def mutate(entities: dict, rng: np.random.Generator, step: int) -> dict:
    ids = list(entities)
    out = dict(entities)
    for i in rng.choice(ids, size=5, replace=False):  # deleted
        out.pop(str(i), None)
    for i in rng.choice(list(out), size=5, replace=False):  # changed in place
        out[str(i)] = (out[str(i)][0], rng.normal(size=DIM).astype(np.float16))
    for j in range(7):  # added
        out[f"S{step}-{j}"] = ("en", rng.normal(size=DIM).astype(np.float16))
    if step == 2:  # a KB language that is new
        for j in range(6):
            out[f"D{j}"] = ("de", rng.normal(size=DIM).astype(np.float16))
    return out


def search_all(index, store, k=10):
    queries = np.random.default_rng(99).normal(size=(40, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    result = {}
    for lang, lang_index in sorted(index.langs.items()):
        scores, ids = lang_index.search(queries, k)
        result[lang] = (np.round(scores, 5), ids)
    return result


@pytest.mark.parametrize("factory,how,params", [
    ("Flat", "in place", None),
    ("IVF4,Flat", "in place (training kept)", "nprobe=4"),
    ("HNSW32", "rebuilt (HNSW32 cannot delete rows)", "efSearch=256"),
])
def test_after_any_sequence_of_updates_results_equal_a_fresh_index(factory, how, params, tmp_path):
    rng = np.random.default_rng(0)
    entities = {f"Q{i}": ("en", rng.normal(size=DIM).astype(np.float16)) for i in range(120)}
    store = write_store(tmp_path / "h5", entities)
    build_index(store, tmp_path / "index", factory=factory, seed=0)
    for step in range(4):
        before, entities = entities, mutate(entities, rng, step)
        store = write_store(tmp_path / "h5", entities)
        report = update_index(load_index(tmp_path / "index", mmap=False), store, tmp_path / "index")
        new_or_changed = sum(1 for i, (lang, v) in entities.items()
                             if lang == "en" and (i not in before or not np.array_equal(before[i][1], v)))
        deleted_or_changed = sum(1 for i, (lang, v) in before.items()
                                 if lang == "en" and (i not in entities or not np.array_equal(entities[i][1], v)))
        assert report["en"] == {"how": how, "added": new_or_changed, "removed": deleted_or_changed}
        assert new_or_changed >= 9 and deleted_or_changed >= 9
        updated = load_index(tmp_path / "index")
        fresh = build_index(store, tmp_path / f"fresh-{step}", factory=factory, seed=0)
        for idx in (updated, fresh):
            idx.set_search_params(params)
        got, want = search_all(updated, store), search_all(fresh, store)
        assert sorted(got) == sorted(want)
        for lang in want:
            assert got[lang][1] == want[lang][1], f"step {step}, KB {lang}: ids differ from a fresh index"
            np.testing.assert_allclose(got[lang][0], want[lang][0], atol=1e-4)
        ids, _, langs = load_features(store, "es")
        for lang, lang_index in updated.langs.items():
            in_lang = sorted(i for i, x in zip(ids, langs) if x == lang)  # the manifest records the store's set
            assert updated.manifest["langs"][lang]["ids_set_sha256"] == ids_digest(in_lang)
            assert sorted(lang_index.ids) == sorted(i for i, x in zip(ids, langs) if x == lang)
            assert len(lang_index.digests) == len(lang_index.ids) == lang_index.index.ntotal


def test_flat_update_deletes_and_appends_rather_than_rebuilding(tmp_path):
    rng = np.random.default_rng(1)
    entities = {f"Q{i}": ("en", rng.normal(size=DIM).astype(np.float16)) for i in range(50)}
    store = write_store(tmp_path / "h5", entities)
    build_index(store, tmp_path / "index")
    del entities["Q3"]
    entities["Q7"] = ("en", rng.normal(size=DIM).astype(np.float16))
    entities["NEW"] = ("en", rng.normal(size=DIM).astype(np.float16))
    store = write_store(tmp_path / "h5", entities)
    report = update_index(load_index(tmp_path / "index", mmap=False), store, tmp_path / "index")
    assert report["en"] == {"how": "in place", "added": 2, "removed": 2}
    ids = load_index(tmp_path / "index").langs["en"].ids
    # the kept rows stay in their order, the changed and new ones come last
    assert ids == [f"Q{i}" for i in range(50) if i not in (3, 7)] + ["Q7", "NEW"]
    unchanged = update_index(load_index(tmp_path / "index", mmap=False), store, tmp_path / "index")
    assert unchanged["en"]["how"] == "unchanged"


def test_cli_update_reports_per_kb_and_refuses_a_different_factory(tmp_path):
    rng = np.random.default_rng(2)
    entities = {f"Q{i}": ("en", rng.normal(size=DIM).astype(np.float16)) for i in range(30)}
    write_store(tmp_path / "h5", entities)
    runner = CliRunner()
    base = ["build", "--features", str(tmp_path / "h5"), "--out", str(tmp_path / "index")]
    assert runner.invoke(main, base).exit_code == 0
    entities["NEW"] = ("en", rng.normal(size=DIM).astype(np.float16))
    write_store(tmp_path / "h5", entities)
    r = runner.invoke(main, [*base, "--update"])
    assert r.exit_code == 0, r.output
    assert "en: 31 entities" in r.output and "in place: +1 -0 rows" in r.output
    r = runner.invoke(main, [*base, "--update", "--index", "HNSW32"])
    assert r.exit_code != 0 and "is 'Flat' over 'es', this command asks 'HNSW32'" in r.output
    r = runner.invoke(main, [*base, "--update", "--overwrite"])
    assert r.exit_code != 0 and "--update and --overwrite: pick one" in r.output
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["langs"]["en"]["rows"] == 31 and "digests_file_sha256" in manifest["langs"]["en"]


def test_an_index_from_before_row_digests_is_rebuilt_and_upgraded(tmp_path):
    from xel.retrieval.index_files import INDEX_FORMAT_VERSION

    rng = np.random.default_rng(3)
    entities = {f"Q{i}": ("en", rng.normal(size=DIM).astype(np.float16)) for i in range(30)}
    store = write_store(tmp_path / "h5", entities)
    build_index(store, tmp_path / "index")
    manifest_path = tmp_path / "index" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())  # as format 2 wrote it: no digests
    manifest["format_version"] = 2
    manifest.pop("manifest_sha256")  # as an index from before format 5
    for info in manifest["langs"].values():
        info.pop("digests_file_sha256"), info.pop("ids_set_sha256")
    manifest_path.write_text(json.dumps(manifest))
    report = update_index(load_index(tmp_path / "index", mmap=False), store, tmp_path / "index")
    assert report["en"]["how"] == "built (the index predates row digests)"
    upgraded = json.loads(manifest_path.read_text())
    assert upgraded["format_version"] == INDEX_FORMAT_VERSION and "digests_file_sha256" in upgraded["langs"]["en"]

