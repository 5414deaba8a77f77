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


def end_to_end(gold: Sequence[Iterable[tuple[int, int, str | None]]],
               pred: Sequence[Iterable[tuple[int, int, str | None]]], with_nil: bool = False) -> dict[str, float | int]:
    """End-to-end P, R and F1: a predicted ``(start, end, kb id or None)`` is right when the gold of text ``i``
    has the same span with the same entity.

    ``with_nil=False`` (the convention of ``docs/metrics.md``): NIL is no link, so a span predicted NIL is not a
    prediction and a gold NIL span is not in the recall; on gold spans this is exactly
    :func:`retrieval.metrics.score`'s ``p``, ``r`` and ``f1``. ``with_nil=True`` (TAC's strong all match): NIL is
    a label like a KB id, so a gold NIL span predicted NIL at the same span is right, and a span found where the
    gold has none counts against precision even when linked to NIL."""
    def keep(items: Iterable[tuple[int, int, str | None]]) -> set[tuple[int, int, str | None]]:
        return {(a, b, e) for a, b, e in items if with_nil or e is not None}

    return prf([keep(g) for g in gold], [keep(p) for p in pred])
