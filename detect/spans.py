"""Span data for the detector from a mentions file: the mentions grouped by sentence, each sentence with every
span marked in it, split train / dev / test by document (:mod:`retrieval.splits`, as the linker's data is).

A sentence is keyed by its document, its text and, where the mention id says it (``doc:start-end`` offsets into
the document, as the converted sets write them), its offset in the document, so that two equal sentences of one
document stay two. Nested or overlapping spans (``Louis VIII, Landgrave of Hesse-Darmstadt`` around
``Hesse-Darmstadt``) keep the longest one; those dropped are counted. The sets were built for linking, so a
sentence misses the spans of mentions whose entity had no KB name (counted upstream, in their ``stats.json``),
and sentences without any mention are absent: :func:`span_stats` reports what is there.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xel.precompute.schema import iter_records
from xel.retrieval.splits import DEV_FRACTION, TEST_FRACTION, document_of, split_of

DOC_OFFSETS = re.compile(r":(\d+)-(\d+)$")


@dataclass(frozen=True)
class SpanSentence:
    doc: str
    lang: str
    text: str
    spans: tuple[tuple[int, int], ...]  # sorted, non-overlapping
    golds: tuple[str | None, ...]  # the gold KB id of each span (None: NIL)
    split: str
    nested_dropped: int = 0


def sentence_key(record: dict[str, Any]) -> tuple[str, str, int]:
    doc = document_of(record)
    found = DOC_OFFSETS.search(str(record["id"]))
    at = int(found[1]) - int(record["start"]) if found else -1
    return doc, record["sentence"], at


def span_sentences(records: Iterable[dict[str, Any]], *, dev_fraction: float = DEV_FRACTION,
                   test_fraction: float = TEST_FRACTION) -> list[SpanSentence]:
    """The sentences of mention records (``id``, ``lang``, ``sentence``, ``start``, ``end``, ``gold``?), in order
    of first appearance (see the module docstring)."""
    grouped: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[sentence_key(record)].append(record)
    out = []
    for (doc, text, _), group in grouped.items():
        marked = {(r["start"], r["end"]): r.get("gold") for r in group}
        kept: list[tuple[int, int]] = []
        for a, b in sorted(marked, key=lambda s: (s[0] - s[1], s[0])):  # longest first
            if all(b <= x or a >= y for x, y in kept):
                kept.append((a, b))
        kept.sort()
        out.append(SpanSentence(doc, group[0]["lang"], text, tuple(kept), tuple(marked[s] for s in kept),
                                split_of(doc, dev_fraction=dev_fraction, test_fraction=test_fraction),
                                len(marked) - len(kept)))
    return out


def read_span_sentences(path: Path, **fractions: float) -> list[SpanSentence]:
    """:func:`span_sentences` of a mentions file (a directory: its ``mentions.jsonl``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "mentions.jsonl"
    return span_sentences((r for _, r in iter_records(path)), **fractions)


def span_stats(sentences: Iterable[SpanSentence]) -> dict[str, dict[str, Any]]:
    """Per language and split: sentences, documents, spans (NIL among them), nested spans dropped."""
    stats: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(Counter))
    docs: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in sentences:
        row = stats[s.lang][s.split]
        row["sentences"] += 1
        row["spans"] += len(s.spans)
        row["nested_dropped"] += s.nested_dropped
        row["nil_spans"] += sum(g is None for g in s.golds)
        docs[(s.lang, s.split)].add(s.doc)
    for (lang, split), found in docs.items():
        stats[lang][split]["documents"] = len(found)
    return {lang: {split: dict(c) for split, c in rows.items()} for lang, rows in stats.items()}
