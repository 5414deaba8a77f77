"""Large KBs in bounded memory: row reads from the store, shard-by-shard index builds, and exact re-ranking of a
compressed index's shortlist against the stored fp16 features.

    pytest tests/test_large_kb.py
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from xel.precompute.store import StoreError, open_store
from xel.retrieval.build import build_index
from xel.retrieval.index_files import open_index_and_store
from xel.retrieval.rerank import Reranker, is_compressed
from xel.retrieval.vectors import l2_normalise, load_features

from tests.fakes import make_store

DIM = 32


def random_store(root, n=600, shard_size=64, seed=0, langs=("en",)):
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 8)) @ rng.normal(size=(8, DIM)) + 0.3 * rng.normal(size=(n, DIM))
    ids = [f"Q{i}" for i in range(n)]
    row_langs = [langs[i % len(langs)] for i in range(n)]
    kb = [{"id": i, "name": i, "description": None, "lang": x, "links": None} for i, x in zip(ids, row_langs)]
    queries = latent[rng.choice(n, 50)] + 0.3 * rng.normal(size=(50, DIM))
    mids = [f"m{i}" for i in range(50)]
    mentions = [{"id": m, "lang": "en", "sentence": "x", "start": 0, "end": 1, "context": None, "gold": None}
                for m in mids]
    make_store(root, {"es": (ids, latent, row_langs), "ec": (ids, latent[::-1].copy(), row_langs),
                      "ms": (mids, queries, ["en"] * 50), "mc": (mids, queries, ["en"] * 50)},
               kb=kb, mentions=mentions, shard_size=shard_size)
    return open_store(root)


def test_read_rows_and_load_ids_equal_a_full_load(tmp_path):
    store = random_store(tmp_path / "h5")
    ids, feats, langs = store.load("es")
    rows = np.array([599, 0, 64, 63, 64, 300, 1])  # across shards, unsorted, repeated
    np.testing.assert_array_equal(store.read_rows("es", rows), feats[rows])
    assert store.load_ids("es") == (ids, langs)
    assert store.read_rows("es", []).shape == (0, DIM)
    with pytest.raises(StoreError, match=r"rows must lie in \[0, 600\)"):
        store.read_rows("es", [600])


@pytest.mark.parametrize("kind", ["es", "es+ec"])
def test_shard_by_shard_build_equals_brute_force(kind, tmp_path):
    store = random_store(tmp_path / "h5", langs=("en", "de"))
    index = build_index(store, tmp_path / "index", kind=kind)
    ids, vectors, langs = load_features(store, kind)
    queries = l2_normalise(np.random.default_rng(1).normal(size=(20, vectors.shape[1])))
    for lang in ("en", "de"):
        rows = [r for r, x in enumerate(langs) if x == lang]
        want = np.argsort(-(queries @ vectors[rows].T), axis=1, kind="stable")[:, :10]
        _, got = index.langs[lang].search(queries, 10)
        assert got == [[ids[rows[j]] for j in row] for row in want]


def faiss_code_is_lossy(factory: str, dim: int = 96) -> bool:
    """FAISS's own answer: the index FAISS builds for ``factory`` stores codes smaller than the float32 vectors
    and has no exact refine stage (``IndexRefine``) of its own."""
    built = faiss.index_factory(dim, factory, faiss.METRIC_L2)  # kept referenced: the downcasts borrow it
    index = faiss.downcast_index(built)
    if isinstance(index, faiss.IndexRefine):
        return False
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    ivf = faiss.try_extract_index_ivf(index)
    code_size = ivf.code_size if ivf is not None else index.sa_code_size()
    return code_size < 4 * dim


@pytest.mark.parametrize("factory", [
    "Flat", "HNSW32", "HNSW32,Flat", "IVF256,Flat", "IVF64,PQ8", "IVF256,SQ8", "IVF64,SQfp16", "PQ16", "LSH",
    "OPQ16_64,IVF256,PQ16", "HNSW32,SQ8", "RaBitQ", "IVF64,RaBitQ", "IVF1024,PQ96x4fs,RFlat", "PQ16,RFlat",
    "IVF64,PQ8,Refine(Flat)",
])
def test_compressed_factory_strings_agree_with_faiss(factory):
    assert is_compressed(factory) == faiss_code_is_lossy(factory)


def test_rerank_restores_exact_order_and_recall(tmp_path):
    store = random_store(tmp_path / "h5")
    build_index(store, tmp_path / "pq", factory="IVF8,PQ4", train_rows=600)
    build_index(store, tmp_path / "flat")
    index, _ = open_index_and_store(tmp_path / "pq")
    exact, _ = open_index_and_store(tmp_path / "flat")
    assert isinstance(index.langs["en"].reranker, Reranker) and exact.langs["en"].reranker is None
    queries = l2_normalise(store.load("ms")[1])
    k = 10
    index.set_search_params("nprobe=8")
    truth_scores, truth = exact.langs["en"].search(queries, k)

    def recall(got):
        return np.mean([len(set(a) & set(b)) / k for a, b in zip(got, truth)])

    index.set_search_params("rerank=1")  # off: PQ's own approximate order
    _, plain = index.langs["en"].search(queries, k)
    index.set_search_params("rerank=60")  # the shortlist is the whole KB: exactly the Flat answer
    scores, full = index.langs["en"].search(queries, k)
    assert full == truth
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)
    index.set_search_params("rerank=4")
    _, default = index.langs["en"].search(queries, k)
    assert recall(default) >= recall(plain) and recall(default) > 0.9, (recall(plain), recall(default))


@pytest.mark.parametrize("factory", ["IVF8,PQ4", "PQ4", "PQ16,RFlat", "IVF64,PQ8,Refine(Flat)"])
def test_pq_codes_are_trained_without_the_polysemous_ordering_xel_never_searches_with(factory):
    """FAISS renumbers 8-bit PQ codes for polysemous (Hamming-threshold) search by default, which cost the 600-row
    ``IVF8,PQ4`` build 15-23 s on 2 busy cores; xel searches without the threshold, so its indexes skip that
    training."""
    from xel.retrieval.factory import _wrapped, make_index

    index = make_index(factory, DIM)
    ivf = faiss.try_extract_index_ivf(index)
    parts = [*_wrapped(index), *([faiss.downcast_index(ivf)] if ivf is not None else [])]
    pq_parts = [part for part in parts if hasattr(part, "do_polysemous_training")]
    assert pq_parts and not any(part.do_polysemous_training for part in pq_parts)


def test_the_polysemous_threshold_is_refused_saying_why(tmp_path):
    from xel.retrieval.index import RetrievalError

    build_index(random_store(tmp_path / "h5", n=300), tmp_path / "pq", factory="IVF8,PQ4", train_rows=300)
    index, _ = open_index_and_store(tmp_path / "pq")
    with pytest.raises(RetrievalError, match=r"search parameter 'ht=20': polysemous filtering \(ht\) is not"):
        index.set_search_params("nprobe=8,ht=20")


def test_bench_command_reports_recall_against_exact_and_warns(tmp_path):
    import json

    from click.testing import CliRunner
    from xel.retrieval.cli import main

    random_store(tmp_path / "h5")
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(main, ["bench", "--features", str(tmp_path / "h5"), "--index", "Flat",
                                  "--index", "IVF8,PQ4|nprobe=8,rerank=1", "--index", "IVF8,PQ4|nprobe=8,rerank=60",
                                  "--queries", "50", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = {(x["factory"], x["params"]): x for x in json.loads(out.read_text())["rows"]}
    assert rows[("Flat", "")]["recall"] == 1.0
    assert rows[("IVF8,PQ4", "nprobe=8,rerank=60")]["recall"] == 1.0  # the shortlist is the whole KB
    assert rows[("IVF8,PQ4", "nprobe=8,rerank=1")]["recall"] < 0.99
    assert "WARNING: IVF8,PQ4 nprobe=8,rerank=1: recall@10" in r.output
    assert "WARNING: Flat" not in r.output and "recall@10" in r.output.splitlines()[1]


def test_streamed_exact_topk_equals_brute_force(tmp_path):
    from xel.retrieval.bench import exact_topk

    store = random_store(tmp_path / "h5", langs=("en", "de"))
    ids, vectors, langs = load_features(store, "es")
    queries = l2_normalise(np.random.default_rng(3).normal(size=(23, DIM)))
    rows = [r for r, x in enumerate(langs) if x == "de"]
    want = np.argsort(-(queries @ vectors[rows].T), axis=1, kind="stable")[:, :10]
    assert exact_topk(store, "es", "de", queries, 10, block=7) == [[ids[rows[j]] for j in row] for row in want]


def test_build_candidates_and_eval_never_load_a_whole_table(tmp_path, monkeypatch):
    """Store.load reads all rows of a kind; the linking path must get by with ids, shards and row reads."""
    from click.testing import CliRunner
    from xel.precompute.store import Store
    from xel.retrieval.cli import main

    random_store(tmp_path / "h5")

    def refuse(self, kind):
        raise AssertionError(f"Store.load({kind!r}) read a whole [N, D] table")

    monkeypatch.setattr(Store, "load", refuse)
    runner = CliRunner()
    for args in (["build", "--features", tmp_path / "h5", "--out", tmp_path / "index", "--index", "IVF8,PQ4",
                  "--train-rows", "600"],
                 ["candidates", "--index", tmp_path / "index", "--out", tmp_path / "cands", "--k", "5"],
                 ["eval", "--index", tmp_path / "index", "--out", tmp_path / "eval", "--k", "5"]):
        r = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert r.exit_code == 0, r.output


def test_memory_mapped_index_searches_like_a_loaded_one_and_survives_a_rebuild(tmp_path):
    from click.testing import CliRunner
    from xel.retrieval.cli import main
    from xel.retrieval.index_files import load_index

    store = random_store(tmp_path / "h5")
    build_index(store, tmp_path / "index", factory="Flat")
    queries = l2_normalise(store.load("ms")[1])
    mapped, loaded = load_index(tmp_path / "index"), load_index(tmp_path / "index", mmap=False)
    want = loaded.langs["en"].search(queries, 10)
    got = mapped.langs["en"].search(queries, 10)
    assert got[1] == want[1] and np.array_equal(got[0], want[0])
    random_store(tmp_path / "h5b", seed=5)  # a rebuild replaces the files (new inodes) under the mapped index
    r = CliRunner().invoke(main, ["build", "--features", str(tmp_path / "h5b"), "--out", str(tmp_path / "index"),
                                  "--overwrite"])
    assert r.exit_code == 0, r.output
    assert mapped.langs["en"].search(queries, 10)[1] == want[1]
