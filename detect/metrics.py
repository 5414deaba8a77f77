"""Exact-match precision, recall and F1 of detected spans, alone (span) or with their entity (end to end)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def prf(gold: Sequence[Iterable[Any]], pred: Sequence[Iterable[Any]]) -> dict[str, float | int]:
    """Micro P, R and F1 over texts: ``gold[i]`` and ``pred[i]`` are the items of text ``i`` (``(start, end)``
    for span scores, ``(start, end, kb id or None)`` end to end); an item counts when it is in both."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold texts but {len(pred)} predicted")
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred):
        g, p = set(g), set(p)
        tp += len(g & p)
        n_gold += len(g)
        n_pred += len(p)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"p": precision, "r": recall, "f1": f1, "tp": tp, "gold": n_gold, "pred": n_pred}
