"""Character n-gram candidates: TF-IDF over transliterated KB names, the third source of ``xel-nn candidates``.

Dense retrieval misses a name written in another script or spelled apart ("Москва" / "Moscow", "Köln" /
"Cologne" is beyond it, but "Mockba"-style transliterations and OCR'd historical spellings are within reach of
character overlap). Names and mention strings are transliterated to Latin script with ``anyascii`` and
normalised, each followed by its Snowball stem in its own language where that differs
(:func:`retrieval.names.ngram_form`: "Helsingissä" and "Helsinki" share "helsing"), then compared by the cosine of
scikit-learn's TF-IDF vectors of character 2- to 4-grams within word boundaries (``analyzer="char_wb"``, sublinear
tf). The stem was measured on the n-gram source alone (top 10 of each mention's KB scope): recall@1 sample de
0.527 -> 0.535, wikidata-el de 0.494 -> 0.517, nerel-rukb ru (a Russian KB) 0.692 -> 0.751, wikidata-el ru (an
English KB) 0.465 -> 0.462; recall@10 equal or higher in every language. Stemming the forms in place of the plain
ones lost recall across scripts (wikidata-el ru 0.431).

A KB of up to ``POSTINGS`` names is scored whole, a block of queries at a time: the exact top-k. In a larger KB
a common bigram ("an") is in most names, and scoring every name would cost queries x KB (10k x 6M), so each
query scores only the names that share one of its rarer n-grams: its n-grams are taken rarest first while their
posting lists hold at most ``POSTINGS`` names in all, and those names are scored exactly (cosine of the full
vectors); a name that shares only common n-grams with the query is not scored.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from xel.precompute.schema import StringColumn
from xel.retrieval.index import RetrievalError
from xel.retrieval.names import ngram_form

NGRAM_RANGE = (2, 4)
BLOCK = 512
POSTINGS = 10_000
CHUNK = 100_000


def _vectorizer(vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
    return TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAM_RANGE, sublinear_tf=True, dtype=np.float32,
                           vocabulary=vocabulary)


def fit_chunked(names: Sequence[str], chunk: int = CHUNK, langs: Sequence[str | None] | None = None,
                ) -> tuple[TfidfVectorizer, sp.csr_matrix]:
    """``TfidfVectorizer(...).fit_transform([ngram_form(n, lang) for n, lang in zip(names, langs)])`` (sorted
    vocabulary, smooth idf in float32, sublinear tf, l2 rows; no ``langs``: nothing stemmed), computed ``chunk``
    names at a time (see the module docstring)."""
    latins = StringColumn()
    frequency: dict[str, int] = {}
    for start in range(0, len(names), chunk):
        block = [ngram_form(names[i], langs[i] if langs is not None else None)
                 for i in range(start, min(start + chunk, len(names)))]
        for text in block:
            latins.append(text)
        counts = CountVectorizer(analyzer="char_wb", ngram_range=NGRAM_RANGE, binary=True)
        try:
            present = counts.fit_transform(block)
        except ValueError as e:  # every name of the block is empty after transliteration: no n-grams
            if "empty vocabulary" not in str(e):
                raise
            continue
        in_names = np.diff(present.tocsc().indptr)
        for gram, column in counts.vocabulary_.items():
            frequency[gram] = frequency.get(gram, 0) + int(in_names[column])
    if not frequency:
        raise RetrievalError(f"the {len(names)} KB names hold no character n-grams (empty or punctuation only after "
                             "transliteration); give the entries names with letters or digits")
    grams = sorted(frequency)
    vectorizer = _vectorizer({g: i for i, g in enumerate(grams)})
    df = np.asarray([frequency[g] for g in grams], dtype=np.float32) + 1  # as TfidfTransformer(smooth_idf=True)
    vectorizer.idf_ = np.log((len(names) + 1) / df) + 1
    del frequency, grams, df
    data, indices, indptr = array("f"), array("i"), [np.zeros(1, np.int64)]
    for start in range(0, len(names), chunk):
        block = vectorizer.transform([latins[i] for i in range(start, min(start + chunk, len(names)))]).tocsr()
        block.sort_indices()
        data.frombytes(block.data.astype(np.float32, copy=False).tobytes())
        indices.frombytes(block.indices.astype(np.int32, copy=False).tobytes())
        indptr.append(block.indptr[1:].astype(np.int64) + indptr[-1][-1])
    matrix = sp.csr_matrix((np.frombuffer(data, np.float32), np.frombuffer(indices, np.int32),
                            np.concatenate(indptr)), shape=(len(names), len(vectorizer.vocabulary_)))
    return vectorizer, matrix


def same_rows(matrix: sp.csr_matrix) -> np.ndarray:
    """Per row of ``matrix`` (sorted indices), the first row whose n-grams and weights are exactly its own: found by
    two random projections and the row's length, then compared value by value (a row whose projections only
    collide is its own)."""
    rng = np.random.default_rng(0)
    keys = [matrix @ rng.random(matrix.shape[1]), np.diff(matrix.indptr)]
    keys.append(sp.csr_matrix((np.ones_like(matrix.data), matrix.indices, matrix.indptr), shape=matrix.shape)
                @ rng.random(matrix.shape[1]))
    order = np.lexsort((np.arange(matrix.shape[0]), *keys))
    same = np.ones(len(order), dtype=bool)
    same[0:1] = False
    same[1:] = np.logical_and.reduce([k[order[1:]] == k[order[:-1]] for k in keys])
    first = order[np.maximum.accumulate(np.where(same, 0, np.arange(len(order))))]
    rep = np.empty(len(order), dtype=np.int64)
    rep[order] = first
    lengths = np.diff(matrix.indptr)
    offsets = np.arange(lengths.sum()) - np.repeat(matrix.indptr[:-1], lengths)
    mine, theirs = np.repeat(matrix.indptr[:-1], lengths) + offsets, np.repeat(matrix.indptr[rep], lengths) + offsets
    equal = (matrix.data[mine] == matrix.data[theirs]) & (matrix.indices[mine] == matrix.indices[theirs])
    row_of = np.repeat(np.arange(matrix.shape[0]), lengths)
    differs = np.zeros(matrix.shape[0], dtype=bool)
    differs[row_of[~equal]] = True
    return np.where(differs, np.arange(matrix.shape[0]), rep)


class NgramIndex:
    """TF-IDF character n-gram vectors of KB names; :meth:`search` returns each query's top-k by cosine. Names
    with the same vector (50,000 entries named "Berlin") are scored once, as one ``form``, and their entries are
    listed from it in KB order."""

    def __init__(self, ids: Sequence[str], names: Sequence[str], langs: Sequence[str | None] | None = None):
        self.ids = ids
        self.vectorizer, matrix = fit_chunked(names, langs=langs)  # [E, V]; langs: each name's, for its stem
        rep = same_rows(matrix)
        forms, self.form_of = np.unique(rep, return_inverse=True)  # form f: the entries whose row is row forms[f]
        self.matrix = matrix[forms]  # [F, V]
        del matrix
        self.members = np.argsort(self.form_of, kind="stable")  # entries by form, in KB order within each
        self.member_starts = np.searchsorted(self.form_of[self.members], np.arange(len(forms) + 1))
        postings = self.matrix.T.tocsr()  # [V, F]: the forms holding each n-gram; their weights are not needed
        self.posting_starts, self.posting_names = postings.indptr, postings.indices
        del postings
        held = np.r_[0, np.cumsum(np.diff(self.member_starts)[self.posting_names])]
        self.frequency = held[self.posting_starts[1:]] - held[self.posting_starts[:-1]]  # entries holding each n-gram

    def top_entries(self, forms: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Up to ``k`` ``(kb id, score)`` of the entries of ``forms`` scored ``scores`` (> 0), best first, ties by
        KB order: the entries of the forms that score at least the ``k``-th best form, at most ``k`` of each."""
        keep = scores > 0
        forms, scores = forms[keep], scores[keep]
        if len(forms) > k:
            cut = np.partition(scores, len(scores) - k)[len(scores) - k]
            forms, scores = forms[scores >= cut], scores[scores >= cut]
        firsts = self.member_starts[forms]
        sizes = np.minimum(self.member_starts[forms + 1] - firsts, k)
        offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        entries, entry_scores = self.members[np.repeat(firsts, sizes) + offsets], np.repeat(scores, sizes)
        top = np.lexsort((entries, -entry_scores))[:k]
        return [(self.ids[e], s) for e, s in zip(entries[top].tolist(), entry_scores[top].tolist())]

    def search(self, queries: Sequence[str], k: int, langs: Sequence[str | None] | None = None,
               ) -> list[list[tuple[str, float]]]:
        """Per query (in its language of ``langs``, for its stem; none: not stemmed), up to ``k`` ``(kb id,
        cosine)`` with cosine > 0, best first (ties by KB order), among the names sharing one of its rarer n-grams
        (see the module docstring)."""
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(queries), BLOCK):
            block = range(start, min(start + BLOCK, len(queries)))
            q = self.vectorizer.transform([ngram_form(queries[i], langs[i] if langs is not None else None)
                                           for i in block]).tocsr()
            if len(self.ids) <= POSTINGS:  # every posting fits: score every name at once, one block of queries
                for row in (q @ self.matrix.T).toarray():
                    out.append(self.top_entries(np.arange(len(row)), row, k))
                continue
            for i in range(q.shape[0]):
                grams = q.indices[q.indptr[i]:q.indptr[i + 1]]
                if not len(grams):
                    out.append([])
                    continue
                rarest = grams[np.argsort(self.frequency[grams], kind="stable")]
                fit = rarest[: max(1, int(np.searchsorted(np.cumsum(self.frequency[rarest]), POSTINGS, "right")))]
                names = np.unique(np.concatenate([self.posting_names[self.posting_starts[g]:self.posting_starts[g + 1]]
                                                  for g in fit]))
                out.append(self.top_entries(names, (self.matrix[names] @ q[i].T).toarray().ravel(), k))
        return out
