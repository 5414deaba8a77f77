"""N-gram candidates: the exact top-k while the KB's postings fit; beyond, only the names that share a rarer
n-gram with the query are scored, each exactly (retrieval/ngram.py).

    pytest tests/test_ngram_postings.py
"""

from __future__ import annotations

import random

import numpy as np
import xel.retrieval.ngram as ngram
from sklearn.feature_extraction.text import TfidfVectorizer
from xel.retrieval.names import latin
from xel.retrieval.ngram import NgramIndex

SYLLABLES = "ka ro mel vin tu sa lo ber gan di na tor phi lex mar quin zo ra li en".split()


def names(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join("".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))).title() for _ in range(2))
            for _ in range(n)]


def brute_force(index: NgramIndex, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
    scores = (index.vectorizer.transform([latin(q) for q in queries]) @ index.matrix.T).toarray()[:, index.form_of]
    out = []
    for row in scores:
        order = np.lexsort((np.arange(len(row)), -row))[:k]
        out.append([(index.ids[j], float(row[j])) for j in order if row[j] > 0])
    return out


def test_search_is_exact_while_the_postings_fit():
    kb = names(300, 0)
    index = NgramIndex([f"Q{i}" for i in range(300)], kb)
    queries = names(40, 1) + [kb[5], kb[7].split()[1], "zzz", "Ка Ро"]
    got, want = index.search(queries, 10), brute_force(index, queries, 10)
    assert [[kb for kb, _ in row] for row in got] == [[kb for kb, _ in row] for row in want]
    np.testing.assert_allclose([s for row in got for _, s in row], [s for row in want for _, s in row], rtol=1e-6)


def test_beyond_the_budget_only_rarer_ngrams_pick_the_names_scored_exactly(monkeypatch):
    kb = names(300, 0)
    index = NgramIndex([f"Q{i}" for i in range(300)], kb)
    monkeypatch.setattr(ngram, "POSTINGS", 20)  # below the KB size: the pruned path
    queries = names(30, 2)
    got = index.search(queries, 10)
    exact = {q: dict(row) for q, row in zip(queries, brute_force(index, queries, 300))}
    assert sum(len(row) for row in got) > 0
    for q, row in zip(queries, got):
        scores = [s for _, s in row]
        assert scores == sorted(scores, reverse=True)
        for kb_id, score in row:
            assert abs(exact[q][kb_id] - score) < 1e-6  # a name it scores gets its exact cosine
    assert got != brute_force(index, queries, 10)  # and fewer names are scored than by brute force


def test_chunked_fit_equals_fitting_every_name_at_once():
    kb = names(500, 3) + ["", "Москва", "Köln am Rhein", "!!"]
    vectorizer, matrix = ngram.fit_chunked(kb, chunk=37)
    want = TfidfVectorizer(analyzer="char_wb", ngram_range=ngram.NGRAM_RANGE, sublinear_tf=True,
                           dtype=np.float32).fit([latin(n) for n in kb])
    assert vectorizer.vocabulary_ == want.vocabulary_
    np.testing.assert_array_equal(vectorizer.idf_, want.idf_)
    np.testing.assert_allclose(matrix.toarray(), want.transform([latin(n) for n in kb]).toarray(), rtol=1e-6)
    queries = ["Karo Melvin", "Moskva"]
    np.testing.assert_allclose(vectorizer.transform(queries).toarray(), want.transform(queries).toarray())


def per_entry_search(kb: list[str], queries: list[str], k: int, postings: int) -> list[list[tuple[str, float]]]:
    """The search as it scored every entry's own row (before entries with the same vector were scored once), ties
    by KB order: the slow reference."""
    vectorizer, matrix = ngram.fit_chunked(kb)
    entry_postings = matrix.T.tocsr()
    frequency = np.diff(entry_postings.indptr)
    out = []
    q = vectorizer.transform([latin(t) for t in queries]).tocsr()
    for i in range(q.shape[0]):
        if len(kb) <= postings:
            scored = np.arange(len(kb))
        else:
            grams = q.indices[q.indptr[i]:q.indptr[i + 1]]
            if not len(grams):
                out.append([])
                continue
            rarest = grams[np.argsort(frequency[grams], kind="stable")]
            fit = rarest[: max(1, int(np.searchsorted(np.cumsum(frequency[rarest]), postings, "right")))]
            starts = entry_postings.indptr
            scored = np.unique(np.concatenate([entry_postings.indices[starts[g]:starts[g + 1]] for g in fit]))
        row = (matrix[scored] @ q[i].T).toarray().ravel()
        top = np.lexsort((scored, -row))[:k]
        out.append([(f"Q{scored[j]}", float(row[j])) for j in top if row[j] > 0])
    return out


def test_entries_sharing_a_name_are_scored_once_and_listed_as_each_entry_would_be(monkeypatch):
    rng = random.Random(5)
    kb = [rng.choice(["Berlin", "berlin!", "Berlin Mitte", "Bern"]) if i % 3 else name
          for i, name in enumerate(names(900, 4))]
    index = NgramIndex([f"Q{i}" for i in range(len(kb))], kb)
    assert len(index.member_starts) - 1 < len(kb) - 500  # the Berlins are one form (with "berlin!"), not 600
    queries = ["Berlin", "Bern", "Berlin Mitte", "Mitte", kb[1], kb[3], "zzz"]
    for budget in (10_000, 50):  # every name scored; the pruned path
        monkeypatch.setattr(ngram, "POSTINGS", budget)
        for k in (1, 5, 30):
            assert index.search(queries, k) == per_entry_search(kb, queries, k, budget), (budget, k)
