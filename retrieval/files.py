"""Readers and writers of the files retrieval and the trainer exchange; their format, defined here, is the one the
docs/commands.md documents under ``xel-nn`` (outputs) and ``xel-train`` (inputs).

* ``candidates.jsonl``: ``{"id": mention id, "candidates": [[kb id, score, source], ...]}``, best first,
  ``source`` one of ``prior``, ``dense``, ``given``, ``ngram``. The gold is never injected.
* ``predictions.jsonl``: ``{"id", "pred": kb id or null, "score": float, "candidates": [[kb id, score], ...]}``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

from xel.precompute.files import atomic_write_bytes
from xel.precompute.store import to_json

CANDIDATE_SOURCES = ("prior", "dense", "given", "ngram")
Candidate = tuple[str, float, str]


class CandidatesError(ValueError):
    """A candidates file is malformed."""


def write_candidates(path: str | os.PathLike, rows: Iterable[tuple[str, list[Candidate]]]) -> None:
    lines = [
        to_json({"id": mid, "candidates": [[k, round(float(s), 6), src] for k, s, src in cands]}, path,
                ensure_ascii=False)
        for mid, cands in rows
    ]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8") if lines else b"")


def read_candidates(path: str | os.PathLike) -> dict[str, list[Candidate]]:
    """The candidates file ``path``: UTF-8 JSONL, one object a line; anything else raises :class:`CandidatesError`
    naming the line."""
    path = Path(path)
    out: dict[str, list[Candidate]] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CandidatesError(f"{path}:{lineno}: not UTF-8 text ({e}); a candidates file is JSONL, one "
                                      "JSON object a line") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                cands = [(str(k), float(s), str(src)) for k, s, src in row["candidates"]]
                mid = str(row["id"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise CandidatesError(
                    f"{path}:{lineno}: expected {{\"id\": str, \"candidates\": [[kb id, score, source], ...]}} ({e})"
                ) from None
            bad = [src for _, _, src in cands if src not in CANDIDATE_SOURCES]
            if bad:
                raise CandidatesError(f"{path}:{lineno}: source {bad[0]!r}; allowed: {list(CANDIDATE_SOURCES)}")
            odd = [s for _, s, _ in cands if not math.isfinite(s)]
            if odd:
                raise CandidatesError(f"{path}:{lineno}: score {odd[0]!r}; allowed: finite numbers")
            if mid in out:
                raise CandidatesError(f"{path}:{lineno}: mention id {mid!r} appears twice")
            out[mid] = cands
    return out


def write_predictions(
    path: str | os.PathLike, rows: Iterable[tuple[str, str | None, float, list[tuple[str, float]]]],
    names: dict[str, str] | None = None,
) -> None:
    """Rows are ``(mention id, predicted kb id or None, score, [(kb id, score), ...])``. With ``names`` (KB id ->
    name) each line also says ``"name"``: the predicted entity's name, null for NIL (as ``xel-nn batch`` does)."""
    lines = []
    for mid, pred, score, cands in rows:
        record = {"id": mid, "pred": pred, "score": round(float(score), 6),
                  "candidates": [[k, round(float(s), 6)] for k, s in cands]}
        if names is not None:
            record["name"] = names.get(pred) if pred is not None else None
        lines.append(to_json(record, path, ensure_ascii=False))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8") if lines else b"")


def read_predictions(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
