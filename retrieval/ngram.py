"""Character n-gram candidates: TF-IDF over transliterated KB names, the third source of ``xel-nn candidates``.

Dense retrieval misses a name written in another script or spelled apart ("Москва" / "Moscow", "Köln" /
"Cologne" is beyond it, but "Mockba"-style transliterations and OCR'd historical spellings are within reach of
character overlap). Names and mention strings are transliterated to Latin script with ``anyascii`` and
normalised (:func:`retrieval.names.latin`), then compared by the cosine of scikit-learn's
TF-IDF vectors of character 2- to 4-grams within word boundaries (``analyzer="char_wb"``, sublinear tf).

A KB of up to ``POSTINGS`` names is scored whole, a block of queries at a time: the exact top-k. In a larger KB
a common bigram ("an") is in most names, and scoring every name would cost queries x KB (10k x 6M), so each
query scores only the names that share one of its rarer n-grams: its n-grams are taken rarest first while their
posting lists hold at most ``POSTINGS`` names in all, and those names are scored exactly (cosine of the full
vectors); a name that shares only common n-grams with the query is not scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from retrieval.names import latin

NGRAM_RANGE = (2, 4)
BLOCK = 512
POSTINGS = 10_000


class NgramIndex:
    """TF-IDF character n-gram vectors of KB names; :meth:`search` returns each query's top-k by cosine."""

    def __init__(self, ids: Sequence[str], names: Sequence[str]):
        self.ids = list(ids)
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAM_RANGE, sublinear_tf=True,
                                          dtype=np.float32)
        self.matrix = self.vectorizer.fit_transform([latin(n) for n in names]).tocsr()  # [E, V]
        self.postings = self.matrix.T.tocsr()  # [V, E]: the names holding each n-gram
        self.frequency = np.diff(self.postings.indptr)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """Per query, up to ``k`` ``(kb id, cosine)`` with cosine > 0, best first (ties by KB order), among the
        names sharing one of its rarer n-grams (see the module docstring)."""
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(queries), BLOCK):
            q = self.vectorizer.transform([latin(t) for t in queries[start : start + BLOCK]]).tocsr()
            if len(self.ids) <= POSTINGS:  # every posting fits: score every name at once, one block of queries
                for row in (q @ self.postings).toarray():
                    top = np.argpartition(-row, k)[:k] if len(row) > k else np.arange(len(row))
                    top = top[np.lexsort((top, -row[top]))]
                    out.append([(self.ids[j], float(row[j])) for j in top if row[j] > 0])
                continue
            for i in range(q.shape[0]):
                grams = q.indices[q.indptr[i]:q.indptr[i + 1]]
                if not len(grams):
                    out.append([])
                    continue
                rarest = grams[np.argsort(self.frequency[grams], kind="stable")]
                fit = rarest[: max(1, int(np.searchsorted(np.cumsum(self.frequency[rarest]), POSTINGS, "right")))]
                names = np.unique(np.concatenate([self.postings.indices[self.postings.indptr[g]:
                                                                        self.postings.indptr[g + 1]] for g in fit]))
                row = (self.matrix[names] @ q[i].T).toarray().ravel()
                top = np.argpartition(-row, k)[:k] if len(row) > k else np.arange(len(row))
                top = top[np.lexsort((names[top], -row[top]))]
                out.append([(self.ids[names[j]], float(row[j])) for j in top if row[j] > 0])
        return out
