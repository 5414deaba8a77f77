"""The nearest-neighbour baseline (paper §6, "nn"): ``xel-nn eval --features h5/ --index index/ --out DIR``.

For each mention, the candidate entity with the highest cosine between its ``ms`` and the entity's ``es``;
NIL when that best cosine is below ``threshold`` (default -1.0: never NIL). A mention's candidates are its own
list when the data gives one, else the top-k of its KB from the index (or the lists of a candidates file).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.metrics import Scores, score_groups

DEFAULT_THRESHOLD = -1.0


@dataclass(frozen=True)
class Prediction:
    pred: str | None
    score: float
    candidates: list[tuple[str, float]]


def nn_link(
    mention_vector: np.ndarray, candidates: Sequence[str], entity: Callable[[str], np.ndarray],
    threshold: float = DEFAULT_THRESHOLD,
) -> Prediction:
    """Score ``candidates`` by cosine (unit vectors: inner product) and pick the best; NIL below ``threshold``.

    Ties keep the earlier candidate. With no candidates the prediction is NIL with score ``-inf``.
    """
    if not candidates:
        return Prediction(None, float("-inf"), [])
    matrix = np.stack([entity(kb) for kb in candidates])
    scores = matrix @ np.asarray(mention_vector, dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    ranked = [(candidates[i], float(scores[i])) for i in order]
    best_id, best = ranked[0]
    return Prediction(best_id if best >= threshold else None, best, ranked)


def nn_scores(
    golds: Sequence[str | None], predictions: Sequence[Prediction], langs: Sequence[str],
    types: Sequence[str | None] | None = None,
) -> dict[str, Scores]:
    """The trainer's metrics (``retrieval.metrics.score_groups``) for nn predictions, overall, per lang and type."""
    return score_groups(golds, [p.pred for p in predictions], langs, types)
