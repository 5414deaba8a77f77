"""``xel-nn build --update`` compares the store's row hashes, not vectors: it reads the vectors of the new and
changed rows only, and the result equals a fresh index.

    pytest tests/test_update_by_digest.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from xel.precompute.store import Store
from xel.retrieval.build import build_index
from xel.retrieval.index_files import load_index
from xel.retrieval.update import update_index

from tests.test_index_update import DIM, mutate, write_store


@pytest.mark.parametrize("factory,kind,params", [("Flat", "es", None), ("IVF4,Flat", "es+ec", "nprobe=4")])
def test_update_reads_only_new_and_changed_rows_and_equals_a_fresh_index(factory, kind, params, tmp_path,
                                                                         monkeypatch):
    rng = np.random.default_rng(7)
    entities = {f"Q{i}": ("en", rng.normal(size=DIM).astype(np.float16)) for i in range(150)}
    build_index(write_store(tmp_path / "h5", entities), tmp_path / "index", factory=factory, kind=kind, seed=0)
    before, entities = entities, mutate(entities, rng, 0)
    store = write_store(tmp_path / "h5", entities)
    ids = list(entities)
    touched = {r for r, i in enumerate(ids) if i not in before or not np.array_equal(before[i][1], entities[i][1])}
    assert 10 <= len(touched) < len(ids) // 5
    seen: dict[str, set[int]] = {}
    read_rows, iter_shards = Store.read_rows, Store.iter_shards

    def refuse(self, kind):
        raise AssertionError(f"whole {kind!r} table or shards read")

    def record(self, kind, rows):
        seen.setdefault(kind, set()).update(int(r) for r in np.asarray(rows).ravel())
        return read_rows(self, kind, rows)

    with monkeypatch.context() as patch:
        patch.setattr(Store, "load", refuse)
        patch.setattr(Store, "iter_shards", refuse)
        patch.setattr(Store, "read_rows", record)
        report = update_index(load_index(tmp_path / "index", mmap=False), store, tmp_path / "index")
    assert report["en"]["added"] == len(touched)
    assert seen == {part: touched for part in kind.split("+")}  # no vector of an unchanged row was read
    assert Store.iter_shards is iter_shards
    updated, fresh = load_index(tmp_path / "index"), build_index(store, tmp_path / "fresh", factory=factory,
                                                                 kind=kind, seed=0)
    for idx in (updated, fresh):
        idx.set_search_params(params)
    queries = np.random.default_rng(99).normal(size=(40, DIM * len(kind.split("+")))).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    got, want = updated.langs["en"].search(queries, 10), fresh.langs["en"].search(queries, 10)
    assert got[1] == want[1]
    np.testing.assert_allclose(got[0], want[0], atol=1e-4)
    assert sorted(updated.langs["en"].ids) == sorted(ids)


def test_an_index_with_vector_digests_is_rebuilt_and_upgraded(tmp_path):
    """Format 3 kept a digest of each row's vector: such an index is rebuilt once, then updated by digest."""
    rng = np.random.default_rng(3)
    entities = {f"Q{i}": ("en", rng.normal(size=DIM).astype(np.float16)) for i in range(30)}
    store = write_store(tmp_path / "h5", entities)
    build_index(store, tmp_path / "index")
    manifest_path = tmp_path / "index" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 3
    manifest.pop("manifest_sha256")  # as an index from before format 5
    manifest_path.write_text(json.dumps(manifest))
    report = update_index(load_index(tmp_path / "index", mmap=False), store, tmp_path / "index")
    assert report["en"]["how"] == "built (the index predates row digests)"
    assert update_index(load_index(tmp_path / "index", mmap=False), store, tmp_path / "index")["en"]["how"] \
        == "unchanged"
