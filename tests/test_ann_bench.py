"""Index presets for large KBs (built through the factory, checked against numpy brute force) and the benchmarks'
recall/latency frontier: ``xel-nn bench`` and ``python -m bench.retrieval`` on tiny sizes.

    pytest tests/test_ann_bench.py
"""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from click.testing import CliRunner
from xel.precompute.store import open_store
from xel.retrieval.bench import pareto_frontier
from xel.retrieval.build import build_index
from xel.retrieval.factory import INDEX_PRESETS, build_lang_index, make_index
from xel.retrieval.index import RetrievalError
from xel.retrieval.index_files import open_index_and_store
from xel.retrieval.vectors import l2_normalise

from tests.fakes import make_store

DIM = 96
PRESET_DIM = 192  # ann-1m's PQ192 needs a dimension divisible by 192
PRESET_ROWS = 8500  # and its 8,192 inverted lists at least 8,192 training rows


def lowrank(n: int, seed: int = 0, queries: int = 40, dim: int = DIM) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = l2_normalise(rng.normal(size=(n, 12)) @ rng.normal(size=(12, dim)) + 0.3 * rng.normal(size=(n, dim)))
    q = base[rng.choice(n, queries)] + 0.05 * rng.normal(size=(queries, dim))
    return base.astype(np.float32), l2_normalise(q).astype(np.float32)


def brute_force(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(found, exact)]))


def refine_factor(index: faiss.Index) -> float:
    return faiss.downcast_index(index).k_factor


@pytest.mark.parametrize("name", sorted(INDEX_PRESETS))
def test_preset_builds_through_the_factory_and_matches_brute_force(name):
    """The preset's search parameters are set on the index it makes; searching every list with the whole KB as
    the shortlist gives the brute-force order and scores (its recall at its own parameters is measured at 1M by
    ``bench.retrieval``: a tiny KB spread over 8,192 lists says nothing about it)."""
    base, queries = lowrank(PRESET_ROWS, dim=PRESET_DIM)
    exact = brute_force(base, queries, 10)
    index = build_lang_index(base, name)
    want = dict(item.split("=") for item in INDEX_PRESETS[name].search_params.split(","))
    assert refine_factor(index) == float(want["k_factor_rf"])
    ivf = faiss.extract_index_ivf(index)
    assert ivf.nprobe == int(want["nprobe"]) < ivf.nlist
    faiss.ParameterSpace().set_index_parameters(index, f"nprobe={ivf.nlist},k_factor_rf={len(base) // 10 + 1}")
    scores, got = index.search(queries, 10)
    np.testing.assert_array_equal(got, exact)  # re-ranked exactly: the brute-force order
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ base.T, exact, axis=1), rtol=1e-5, atol=1e-5)


def test_preset_search_params_survive_xel_nn_build_and_load(tmp_path):
    name = "ann-1m"
    base, queries = lowrank(PRESET_ROWS, dim=PRESET_DIM)
    ids = [f"Q{i}" for i in range(len(base))]
    make_store(tmp_path / "h5", {"es": (ids, base, ["en"] * len(ids))}, shard_size=400)
    build_index(open_store(tmp_path / "h5"), tmp_path / "index", factory=name)
    index, _ = open_index_and_store(tmp_path / "index")
    assert index.manifest["factory"] == name and index.langs["en"].reranker is None  # exact in-index re-ranking
    loaded, made = index.langs["en"].index, make_index(name, PRESET_DIM)
    assert refine_factor(loaded) == refine_factor(made) > 1
    assert faiss.extract_index_ivf(loaded).nprobe == faiss.extract_index_ivf(made).nprobe > 1
    index.set_search_params(f"nprobe={faiss.extract_index_ivf(loaded).nlist},k_factor_rf={len(base) // 10 + 1}")
    _, got = index.langs["en"].search(queries, 10)
    exact = brute_force(base.astype(np.float16).astype(np.float32), queries, 10)
    assert recall(np.array([[int(i[1:]) for i in row] for row in got]), exact) == 1.0


def test_unknown_factory_error_lists_the_presets():
    with pytest.raises(RetrievalError, match="or a preset: ann-1m"):
        make_index("NoSuchIndex9", DIM)
    with pytest.raises(RetrievalError, match="'ann-1m' needs at least 8192 training rows .* has 1500 entities"):
        build_lang_index(lowrank(1500, dim=PRESET_DIM)[0], "ann-1m")
    with pytest.raises(RetrievalError, match=r"rejects preset 'ann-1m' \('IVF8192,PQ192x4fs,RFlat'\) at dim 96"):
        make_index("ann-1m", DIM)  # PQ192 needs a dimension divisible by 192


def test_pareto_frontier_hand_computed_and_never_dominated():
    rows = [("a", 0.90, 1.0), ("b", 0.95, 1.0), ("c", 0.95, 2.0), ("d", 0.99, 3.0), ("e", 0.80, 0.5),
            ("f", 0.99, 3.0), ("g", 0.85, 4.0)]
    got = pareto_frontier(rows, lambda r: r[1], lambda r: r[2])
    assert [r[0] for r in got] == ["e", "b", "d"]
    rng = np.random.default_rng(0)
    rows = [(i, float(x), float(y)) for i, (x, y) in enumerate(rng.random((200, 2)).round(2))]
    front = pareto_frontier(rows, lambda r: r[1], lambda r: r[2])
    assert_pareto(front, rows, "recall", "cost", key=lambda r: {"recall": r[1], "cost": r[2]})


def assert_pareto(front, rows, recall_key, cost_key, key=lambda r: r):
    """No frontier row is dominated by any row; every other row is dominated by (or equal to) a frontier row."""
    f, a = [key(r) for r in front], [key(r) for r in rows]

    def dominates(x, y):
        return (x[recall_key] >= y[recall_key] and x[cost_key] <= y[cost_key]
                and (x[recall_key] > y[recall_key] or x[cost_key] < y[cost_key]))

    assert f and all(r in a for r in f)
    assert not any(dominates(x, y) for y in f for x in a)
    assert all(any(dominates(x, y) or x == y for x in f) for y in a)
    assert [r[cost_key] for r in f] == sorted(r[cost_key] for r in f)


def test_xel_nn_bench_prints_and_writes_the_frontier(tmp_path):
    from xel.retrieval.cli import main

    from tests.test_large_kb import random_store

    random_store(tmp_path / "h5")
    out = tmp_path / "bench.json"
    specs = ["Flat", "IVF8,PQ4x4|nprobe=1,rerank=1", "IVF8,PQ4x4|nprobe=8,rerank=1",
             "IVF8,PQ4x4|nprobe=8,rerank=60",
             "HNSW8|efSearch=16"]
    args = ["bench", "--features", str(tmp_path / "h5"), "--queries", "50", "--out", str(out)]
    r = CliRunner().invoke(main, args + [x for s in specs for x in ("--index", s)])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    rows, front = report["rows"], report["frontier"]
    assert len(rows) == len(specs) and report["threads"] == faiss.omp_get_max_threads()
    assert_pareto(front, rows, "recall", "ms_per_query")
    assert max(r["recall"] for r in front) == 1.0  # exact search is never dominated on recall
    ivf = [r for r in rows if r["factory"] == "IVF8,PQ4x4"]
    assert len({r["build_s"] for r in ivf}) == 1  # one build, searched with three parameter sets
    assert ivf[0]["recall"] < ivf[1]["recall"] < ivf[2]["recall"] == 1.0
    text = r.output.split("frontier")[1]
    table = [line.split() for line in text.splitlines()[2:] if line and not line.startswith("WARNING")]
    assert [(x[0], x[-1]) for x in table] == [(x["factory"], f"{x['recall']:.4f}") for x in front]


SMALL_IVF = "IVF16,PQ48x4fs,RFlat"  # the bench's --index specs on a tiny KB


def test_bench_retrieval_module_tiny_run(tmp_path):
    from bench.retrieval import exact_topk, main, make_data

    out = tmp_path / "retrieval.json"
    r = CliRunner().invoke(main, [
        "--entities", "3000", "--queries", "40", "--dim", str(DIM), "--data", "lowrank", "--latency-queries", "5",
        "--train-rows", "3000", "--threads", "2,1", "--out", str(out),
        "--index", "Flat", "--index", f"{SMALL_IVF}|nprobe=16,k_factor_rf=8", "--index", f"{SMALL_IVF}|k_factor_rf=1",
        "--index", "HNSW8|efSearch=8", "--index", "HNSW8|efSearch=64"])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert {(x["factory"], x["search"], x["threads"]) for x in report["results"]} == {
        (f, s, t) for f, s in [("Flat", ""), (SMALL_IVF, "nprobe=16,k_factor_rf=8"), (SMALL_IVF, "k_factor_rf=1"),
                               ("HNSW8", "efSearch=8"), ("HNSW8", "efSearch=64")] for t in (1, 2)}
    for threads in ("1", "2"):
        rows = [x for x in report["results"] if str(x["threads"]) == threads]
        assert_pareto(report["frontier"][threads], rows, "recall_at_10", "ms_per_query_batch")
    by = {(x["factory"], x["search"], x["threads"]): x for x in report["results"]}
    refined = by[(SMALL_IVF, "nprobe=16,k_factor_rf=8", 2)]["recall_at_10"]
    assert by[("Flat", "", 2)]["recall_at_10"] == 1.0 and refined >= 0.99
    assert by[(SMALL_IVF, "k_factor_rf=1", 2)]["recall_at_10"] < refined  # nprobe kept, shortlist cut
    assert "frontier at 2 thread(s)" in r.output and "frontier at 1 thread(s)" in r.output
    base, queries = make_data(report_config(report))
    np.testing.assert_array_equal(exact_topk(base, queries), brute_force(base, queries, 10))


def report_config(report):
    from bench.retrieval import BenchConfig

    cfg = dict(report["config"])
    cfg["indexes"], cfg["threads"] = tuple(cfg["indexes"]), tuple(cfg["threads"])
    return BenchConfig(**cfg)


def test_bench_retrieval_real_vectors_are_replicated_with_small_perturbations(tmp_path):
    from bench.retrieval import BenchConfig, make_data

    rng = np.random.default_rng(0)
    real, mentions = rng.standard_normal((50, DIM)), rng.standard_normal((7, DIM))
    np.save(tmp_path / "names.npy", real.astype(np.float16))
    np.save(tmp_path / "mentions.npy", mentions)
    cfg = BenchConfig(entities=500, queries=5, dim=DIM, data="real", vectors=str(tmp_path / "names.npy"),
                      query_vectors=str(tmp_path / "mentions.npy"), spread=0.3)
    base, queries = make_data(cfg)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(base[:50], unit(real.astype(np.float16).astype(np.float32)), atol=1e-6)
    np.testing.assert_allclose(queries, unit(mentions)[:5], atol=1e-6)
    copies = (base[50:] * base[np.arange(50, 500) % 50]).sum(1)  # each copy against its original
    assert base.shape == (500, DIM) and np.allclose(np.linalg.norm(base, axis=1), 1, atol=1e-5)
    assert 0.9 < copies.min() and copies.max() < 0.999
    with pytest.raises(RetrievalError, match="--vectors"):
        make_data(BenchConfig(entities=100, dim=DIM, data="real"))
