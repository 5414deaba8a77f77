"""Indexes, candidates, recall@k and the nn baseline against brute force and hand-computed cases: ``pytest``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from xel.precompute.store import StoreError, open_store
from xel.retrieval.build import build_index
from xel.retrieval.candidates import (
    AliasPrior,
    MentionRef,
    NameMatcher,
    generate_candidates,
    merge,
    normalise_mention,
    prior_candidates,
)
from xel.retrieval.devices import TorchExactSearcher, select_search_device
from xel.retrieval.factory import build_lang_index
from xel.retrieval.index import ALL_LANGS, RetrievalError
from xel.retrieval.index_files import load_index, open_index_and_store
from xel.retrieval.kb_table import KBTable
from xel.retrieval.metrics import format_recall_table, recall_at_k, recall_table, score
from xel.retrieval.nn import nn_link, nn_scores
from xel.retrieval.query import Query, query_span, search_queries
from xel.retrieval.splits import document_unit
from xel.retrieval.vectors import l2_normalise

from tests.fakes import make_store

DIM = 16


def random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    return l2_normalise(np.random.default_rng(seed).standard_normal((n, dim)))


def brute_force(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = queries @ base.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


@pytest.fixture
def kb_store(tmp_path):
    """Two KBs (en: 60, es: 40 entities); en training mentions and es test mentions near their gold ``es`` row."""
    rng = np.random.default_rng(0)
    kb_ids = [f"Q{i}" for i in range(100)]
    kb_langs = ["en"] * 60 + ["es"] * 40
    es = rng.standard_normal((100, DIM))
    ec = rng.standard_normal((100, DIM))
    kb = [{"id": q, "name": f"Entity {i}", "description": None, "lang": lang, "links": i}
          for i, (q, lang) in enumerate(zip(kb_ids, kb_langs))]
    mentions, ms, mc = [], [], []
    for i in range(50):  # en training mentions, aliases shared by pairs
        gold = kb_ids[i % 30]
        surface = f"alias {i % 30}"
        mentions.append({"id": f"m-en-{i}", "lang": "en", "sentence": f"{surface} here", "start": 0,
                         "end": len(surface), "gold": gold, "type": "PER" if i % 2 else "ORG"})
        ms.append(es[i % 30] + 0.3 * rng.standard_normal(DIM))
        mc.append(rng.standard_normal(DIM))
    for i in range(20):  # es test mentions; the last 4 are NIL, 2 carry their own candidates
        gold = kb_ids[60 + i] if i < 16 else None
        sentence = f"Entity {60 + i} en Madrid"
        record = {"id": f"m-es-{i}", "lang": "es", "sentence": sentence, "start": 0, "end": len(f"Entity {60 + i}"),
                  "gold": gold, "type": "GPE"}
        if i in (0, 1):
            record["candidates"] = ["Q70", "Q71", kb_ids[60 + i]]
        mentions.append(record)
        ms.append((es[60 + i] if gold else rng.standard_normal(DIM)) + 0.3 * rng.standard_normal(DIM))
        mc.append(rng.standard_normal(DIM))
    mids = [m["id"] for m in mentions]
    mlangs = [m["lang"] for m in mentions]
    root = make_store(tmp_path / "h5", {
        "es": (kb_ids, es, kb_langs), "ec": (kb_ids, ec, kb_langs),
        "ms": (mids, np.array(ms), mlangs), "mc": (mids, np.array(mc), mlangs),
    }, kb=kb, mentions=mentions, shard_size=32)
    return open_store(root)


# ----------------------------------------------------------------------------------------------- indexes


def test_flat_search_equals_numpy_brute_force():
    base, queries = random_unit(500, DIM, 1), random_unit(40, DIM, 2)
    index = build_lang_index(base, "Flat")
    scores, rows = index.search(queries, 10)
    ref_scores, ref_rows = brute_force(base, queries, 10)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-6)


def test_hnsw_recall_at_10_vs_exact():
    base, queries = random_unit(3000, 32, 3), random_unit(200, 32, 4)
    index = build_lang_index(base, "HNSW32")
    index.hnsw.efSearch = 128
    _, rows = index.search(queries, 10)
    _, exact = brute_force(base, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact)])
    assert recall >= 0.99


def test_torch_exact_searcher_equals_flat():
    pytest.importorskip("torch")
    base, queries = random_unit(300, DIM, 5), random_unit(30, DIM, 6)
    index = build_lang_index(base, "HNSW32")
    scores, rows = TorchExactSearcher(index, device="cpu", chunk=7).search(queries, 5)
    ref_scores, ref_rows = brute_force(base, queries, 5)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_ivf_needs_more_training_rows_than_the_kb_has():
    with pytest.raises(RetrievalError, match=r"'IVF4096,Flat' needs at least 4096 training rows.*KB 'xx' has 500"):
        build_lang_index(random_unit(500, DIM, 7), "IVF4096,Flat", lang="xx")


def test_ivf_pq_trains_on_a_seeded_sample_and_searches():
    base = random_unit(2000, DIM, 8)
    a = build_lang_index(base, "IVF16,PQ4x4", seed=3, train_rows=1000)
    b = build_lang_index(base, "IVF16,PQ4x4", seed=3, train_rows=1000)
    assert a.ntotal == 2000
    np.testing.assert_array_equal(a.search(base[:5], 3)[1], b.search(base[:5], 3)[1])


def test_bad_factory_string_is_refused():
    with pytest.raises(RetrievalError, match=r"FAISS rejects the factory string 'HNSWfoo'.*allowed|use one such as"):
        build_lang_index(random_unit(10, DIM, 9), "HNSWfoo")


def test_select_search_device():
    assert select_search_device(faiss_gpus=0, torch_cuda=False) == "cpu"
    assert select_search_device(faiss_gpus=1, torch_cuda=True) == "faiss-gpu"
    assert select_search_device(faiss_gpus=0, torch_cuda=True) == "torch"
    assert select_search_device("cpu", faiss_gpus=1, torch_cuda=True) == "cpu"
    with pytest.raises(ValueError, match="FAISS sees no GPU"):
        select_search_device("faiss-gpu", faiss_gpus=0, torch_cuda=False)
    with pytest.raises(ValueError, match="allowed"):
        select_search_device("tpu")


def test_index_dir_round_trip_per_kb_language(kb_store, tmp_path):
    built = build_index(kb_store, tmp_path / "index", factory="Flat")
    loaded = load_index(tmp_path / "index", kb_store)
    assert sorted(loaded.langs) == ["en", "es"]
    assert loaded.langs["es"].ids == [f"Q{i}" for i in range(60, 100)]
    assert loaded.store_path() == kb_store.root.resolve()
    q = l2_normalise(kb_store.load("es")[1][60:63].astype(np.float32))
    s1, ids1 = built.langs["es"].search(q, 3)
    s2, ids2 = loaded.langs["es"].search(q, 3)
    assert ids1 == ids2 and [row[0] for row in ids2] == ["Q60", "Q61", "Q62"]
    np.testing.assert_array_equal(s1, s2)
    # k larger than the KB returns the whole KB
    assert len(loaded.langs["es"].search(q, 500)[1][0]) == 40


def test_index_store_encoder_mismatch_is_refused(kb_store, tmp_path):
    build_index(kb_store, tmp_path / "index")
    other = make_store(tmp_path / "other", {"es": (["Q0"], np.ones((1, DIM)), ["en"])},
                       encoder={"name": "another", "fingerprint": "other-encoder"})
    with pytest.raises(StoreError, match="different|built from a store with encoder"):
        load_index(tmp_path / "index", open_store(other))
    with pytest.raises(StoreError, match="other-encoder"):
        open_index_and_store(tmp_path / "index", other)


def test_kb_lang_for(kb_store, tmp_path):
    index = build_index(kb_store, tmp_path / "index")
    assert index.kb_lang_for("es") == ALL_LANGS and index.scope_langs(ALL_LANGS) == ["en", "es"]
    assert index.kb_lang_for("ru", "en") == "en"
    with pytest.raises(RetrievalError, match="'fa' is not in index"):
        index.kb_lang_for("es", "fa")


def test_a_kb_with_labels_in_two_languages_is_one_kb(kb_store, tmp_path):
    """An es mention whose gold only has an en label is reachable by default, and merged by score; --kb-lang es
    narrows the search to the es labels."""
    index = build_index(kb_store, tmp_path / "index")
    _, es, _ = kb_store.load("es")
    q = l2_normalise(es[[5, 70]].astype(np.float32))  # an en-labelled and an es-labelled entity
    scopes, hits = index.search_kbs(q, ["es", "es"], 3)
    assert scopes == [ALL_LANGS, ALL_LANGS] and hits[0][0][0] == "Q5" and hits[1][0][0] == "Q70"
    assert all(h[i][1] >= h[i + 1][1] for h in hits for i in range(2))
    brute = l2_normalise(es.astype(np.float32)) @ q.T
    assert [kb for kb, _ in hits[0]] == [f"Q{i}" for i in np.argsort(-brute[:, 0])[:3]]
    _, narrowed = index.search_kbs(q, ["es", "es"], 3, "es")
    assert all(int(kb[1:]) >= 60 for h in narrowed for kb, _ in h)


# ----------------------------------------------------------------------------------------------- candidates


def test_normalise_mention():
    assert normalise_mention("  U.S.A. ") == "usa"
    assert normalise_mention("Ｓｅｎａｄｏ  de\tla República") == "senado de la república"
    assert normalise_mention("O'Brien-Smith") == "obriensmith"


def test_alias_prior_leave_one_out():
    train = [
        MentionRef("a", "en", "Paris", "Q1", None),
        MentionRef("b", "en", "paris!", "Q1", None),
        MentionRef("c", "en", "Paris", "Q2", None),
        MentionRef("d", "en", "Lonely", "Q9", None),
        MentionRef("e", "es", "Paris", "Q7", None),  # not the train language: not counted
    ]
    prior = AliasPrior(train, "en")
    # a mention never gets a prior candidate purely from its own gold
    assert prior.lookup(train[3]) == []
    assert prior.lookup(train[2]) == [("Q1", 1.0)]
    assert prior.lookup(train[0]) == [("Q1", 0.5), ("Q2", 0.5)]
    # a test mention with the same alias sees all the counts
    assert prior.lookup(MentionRef("t", "es", "PARIS", "Q1", None)) == [("Q1", 2 / 3), ("Q2", 1 / 3)]


def test_alias_prior_counts_the_training_split_of_the_fractions_given():
    """A document in the test bucket of --test-fraction 0.3 and in the training one of the defaults: its gold
    feeds the prior with the defaults only."""
    doc = next(f"doc-{i}" for i in range(1000) if 0.28 <= document_unit(f"doc-{i}") < 0.3)
    record = {"id": f"{doc}:0-5", "lang": "en", "sentence": "Paris", "start": 0, "end": 5, "gold": "Q1"}
    other = MentionRef("t", "en", "Paris", None, None)
    default = AliasPrior([MentionRef.from_record(record)], "en")
    held_out = AliasPrior([MentionRef.from_record(record, dev_fraction=0.1, test_fraction=0.3)], "en")
    assert default.lookup(other) == [("Q1", 1.0)] and held_out.lookup(other) == []


def test_prior_candidates_restrict_to_kb_and_add_name_matches():
    prior = AliasPrior([MentionRef("a", "en", "Paris", "Q1", None), MentionRef("b", "en", "Paris", "Q5", None)], "en")
    names = NameMatcher(KBTable([
        {"id": "Q3", "name": "Paris", "lang": "es", "links": 1},
        {"id": "Q4", "name": "paris", "lang": "es", "links": 9},
        {"id": "Q5", "name": "Lyon", "lang": "es", "links": 0},
    ]))
    got = prior_candidates(MentionRef("t", "es", "Paris", None, None), prior, names)
    assert got == [("Q3", 1.0), ("Q5", 0.5), ("Q4", 0.5)]  # Q1 is not in this KB


def test_merge_prior_first_then_dense_without_duplicates():
    merged = merge([("A", 0.9), ("B", 0.1)], [("B", 0.8), ("C", 0.7), ("D", 0.6), ("E", 0.5)], k=3, max_prior=5,
                   ngram=[("F", 0.9), ("A", 0.8), ("G", 0.7)], max_ngram=2)
    # every dense hit within k is kept (D would be cut by a list capped at k); n-gram extras come last
    assert merged == [("A", 0.9, "prior"), ("B", 0.1, "prior"), ("C", 0.7, "dense"), ("D", 0.6, "dense"),
                      ("F", 0.9, "ngram")]


def test_merge_never_loses_a_dense_hit_within_k():
    rng = np.random.default_rng(0)
    ids = [f"Q{i}" for i in range(40)]
    for _ in range(200):
        k = int(rng.integers(1, 15))
        pick = lambda n: [(ids[j], float(rng.random())) for j in rng.permutation(40)[:n]]  # noqa: E731
        prior, dense, ngram = pick(int(rng.integers(0, 12))), pick(30), pick(int(rng.integers(0, 12)))
        merged = [kb for kb, _, _ in merge(prior, dense, k, int(rng.integers(0, 6)), ngram, int(rng.integers(0, 6)))]
        assert {kb for kb, _ in dense[:k]} <= set(merged) and len(merged) == len(set(merged))
    assert merge([("A", 1.0), ("B", 1.0)], [("C", 0.5)], k=5, max_prior=1) == [("A", 1.0, "prior"), ("C", 0.5, "dense")]


def test_recall_at_k_hand_computed():
    lists = [["a", "b", "c"], ["x", "y"], ["g"], ["q"]]
    golds = ["b", "z", "g", None]  # rank 2, miss, rank 1, NIL skipped
    assert recall_at_k(lists, golds, (1, 2, 5)) == {"n": 3, "R@1": 1 / 3, "R@2": 2 / 3, "R@5": 2 / 3}
    table = recall_table({"dense": lists}, golds, ["en", "en", "es", "es"], (1, 2))
    assert table["lang:en"]["dense"] == {"n": 2, "R@1": 0.0, "R@2": 0.5}
    assert table["lang:es"]["dense"] == {"n": 1, "R@1": 1.0, "R@2": 1.0}
    text = format_recall_table(table, (1, 2))
    assert text.splitlines()[0].split() == ["group", "source", "n", "R@1", "R@2"]
    assert "lang:es" in text


def test_generate_candidates_on_a_store(kb_store, tmp_path):
    index = build_index(kb_store, tmp_path / "index")
    cands = generate_candidates(kb_store, index, k=5, max_prior=2)
    by_id = {m.id: i for i, m in enumerate(cands.mentions)}
    # given lists are used whole, tagged given
    given = cands.merged[by_id["m-es-0"]]
    assert sorted(kb for kb, _, _ in given) == ["Q60", "Q70", "Q71"] and {s for _, _, s in given} == {"given"}
    # by default the whole KB (both label languages) is searched; --kb-lang narrows it
    assert any(int(kb[1:]) < 60 for kb, _ in cands.ngram[by_id["m-es-5"]] + cands.dense[by_id["m-es-5"]])
    narrowed = generate_candidates(kb_store, index, k=5, max_prior=2, kb_lang="es")
    assert all(int(kb[1:]) >= 60 for kb, _, _ in narrowed.merged[by_id["m-es-5"]])
    # dense top-k, up to max_prior prior and up to max_ngram (10) n-gram candidates
    assert all(len(c) <= 5 + 2 + 10 for i, c in enumerate(cands.merged) if cands.mentions[i].given is None)
    # the es mention "Entity 65" has an exact KB name match
    assert cands.merged[by_id["m-es-5"]][0] == ("Q65", 1.0, "prior")
    # en mention 45 has alias "alias 15" which mention 15 shares (leave-one-out keeps that one)
    assert cands.prior[by_id["m-en-45"]] == [("Q15", 1.0)]
    table = cands.recall()
    assert table["lang:es"]["merged"]["n"] == 16 and table["lang:es"]["merged"]["R@1"] == 1.0
    assert set(table["all"]) == {"prior", "dense", "ngram", "merged"}


def test_candidates_never_inject_gold(kb_store, tmp_path):
    """A training mention whose alias nobody else uses and whose vector is far from its gold gets no gold."""
    index = build_index(kb_store, tmp_path / "index")
    cands = generate_candidates(kb_store, index, k=3, max_prior=3, dense_k=3)
    for i, m in enumerate(cands.mentions):
        dense_ids = {kb for kb, _ in cands.dense[i]}
        prior_ids = {kb for kb, _ in cands.prior[i]}
        ngram_ids = {kb for kb, _ in cands.ngram[i]}
        merged_ids = {kb for kb, _, _ in cands.merged[i]}
        if m.given is None:
            assert merged_ids <= dense_ids | prior_ids | ngram_ids
            if m.gold is not None and m.gold not in dense_ids | prior_ids | ngram_ids:
                assert m.gold not in merged_ids


# ----------------------------------------------------------------------------------------------- nn


def test_nn_link_argmax_and_threshold():
    entities = {"A": np.array([1.0, 0.0]), "B": np.array([0.0, 1.0]), "C": l2_normalise(np.array([[1.0, 1.0]]))[0]}
    m = np.array([0.6, 0.8], np.float32)
    p = nn_link(m, ["A", "B", "C"], entities.__getitem__)
    assert p.pred == "C" and p.score == pytest.approx((0.6 + 0.8) / np.sqrt(2))
    assert [kb for kb, _ in p.candidates] == ["C", "B", "A"]
    assert nn_link(m, ["A"], entities.__getitem__, threshold=0.7).pred is None
    assert nn_link(m, ["A"], entities.__getitem__, threshold=0.6).pred == "A"
    assert nn_link(m, [], entities.__getitem__).pred is None


def test_nn_metrics_hand_computed():
    e = {"A": np.array([1.0, 0.0]), "B": np.array([0.0, 1.0])}
    vecs = [np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.9, 0.1]), np.array([0.5, 0.5])]
    preds = [nn_link(v, ["A", "B"], e.__getitem__, threshold=0.6) for v in vecs]
    assert [p.pred for p in preds] == ["A", "B", "A", None]
    golds = ["A", "A", "A", None]  # right, wrong, right, right NIL
    scores = nn_scores(golds, preds, ["en", "en", "es", "es"], ["PER", "PER", None, None])
    assert scores["all"] == score(golds, [p.pred for p in preds])
    assert scores["all"].micro == 0.75  # 3 of 4 right, the NIL included
    assert scores["all"].p == pytest.approx(2 / 3) and scores["all"].r == pytest.approx(2 / 3)
    assert scores["lang:en"].micro == 0.5 and scores["lang:es"].micro == 1.0
    assert "type:en:PER" in scores


# ----------------------------------------------------------------------------------------------- queries


def test_query_span():
    assert query_span(Query("Senado", "es")) == ("Senado", 0, 6)
    assert query_span(Query("Senado", "es", "El Senado aprobó; el Senado")) == ("El Senado aprobó; el Senado", 3, 9)
    with pytest.raises(RetrievalError, match="does not occur in its context"):
        query_span(Query("Congreso", "es", "El Senado aprobó"))


def test_search_queries_with_given_vectors(kb_store, tmp_path):
    index = build_index(kb_store, tmp_path / "index")
    vecs = l2_normalise(kb_store.load("es")[1][[61, 5]])
    hits = search_queries(index, kb_store, [Query("x", "es"), Query("y", "en")], 2, vectors=vecs)
    assert hits[0][0]["id"] == "Q61" and hits[0][0]["name"] == "Entity 61"
    assert hits[1][0]["id"] == "Q5" and len(hits[1]) == 2
    assert json.dumps(hits)
