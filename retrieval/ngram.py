"""Character n-gram candidates: TF-IDF over transliterated KB names, the third source of ``xel-nn candidates``.

Dense retrieval misses a name written in another script or spelled apart ("Москва" / "Moscow", "Köln" /
"Cologne" is beyond it, but "Mockba"-style transliterations and OCR'd historical spellings are within reach of
character overlap). Names and mention strings are transliterated to Latin script with ``anyascii`` and
normalised (:func:`retrieval.names.latin`), then compared by the cosine of scikit-learn's
TF-IDF vectors of character 2- to 4-grams within word boundaries (``analyzer="char_wb"``, sublinear tf). The
matrix product runs per block of mentions, so memory is bounded by the block, not by the number of mentions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from retrieval.names import latin

NGRAM_RANGE = (2, 4)
BLOCK = 512


class NgramIndex:
    """TF-IDF character n-gram vectors of KB names; :meth:`search` returns each query's top-k by cosine."""

    def __init__(self, ids: Sequence[str], names: Sequence[str]):
        self.ids = list(ids)
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAM_RANGE, sublinear_tf=True,
                                          dtype=np.float32)
        self.matrix = self.vectorizer.fit_transform([latin(n) for n in names]).T.tocsr()  # [V, E]

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """Per query, up to ``k`` ``(kb id, cosine)`` with cosine > 0, best first (ties by KB order)."""
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(queries), BLOCK):
            q = self.vectorizer.transform([latin(t) for t in queries[start : start + BLOCK]])
            scores = (q @ self.matrix).toarray()  # [b, E]
            for row in scores:
                top = np.argpartition(-row, min(k, len(row) - 1))[:k] if len(row) > k else np.arange(len(row))
                top = top[np.lexsort((top, -row[top]))]
                out.append([(self.ids[j], float(row[j])) for j in top if row[j] > 0])
        return out
