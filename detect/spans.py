"""Span data for the detector: span-sentence files, or a mentions file whose mentions are grouped by sentence.

**Span-sentence files** (``data/spans/*.jsonl``, written by ``data/spans/convert.py``): one sentence a line,
``{"id", "doc", "lang", "split"?, "text", "spans": [{"start", "end", "type"?, "gold"?}]}``, offsets into ``text``.
Every mention of the sentence is marked and sentences without mentions are there too: the data a detector should
learn from and be scored on. :func:`read_span_sentences` checks each line (the bad value, ``file:line``, what is
allowed); ``split`` defaults to the document's split.

**Mentions files** (the linking data):

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

from xel.precompute.schema import ISO_639_1, InputError, iter_records
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

    @property
    def corpus(self) -> str:
        """The corpus of the sentence: its document id up to the first colon (``hipe/hipe2020/dev``)."""
        return self.doc.split(":", 1)[0]


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


SPLITS = ("train", "dev", "test")


def check_span_sentence(record: Any, where: str, *, dev_fraction: float = DEV_FRACTION,
                        test_fraction: float = TEST_FRACTION) -> SpanSentence:
    """A :class:`SpanSentence` from a span-sentence record (module docstring); a bad field raises
    :class:`precompute.schema.InputError` naming ``where``, the field and what is allowed."""
    def fail(field: str, problem: str) -> InputError:
        return InputError(f"{where}: field {field!r} {problem}")

    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object {{id, doc, lang, split, text, spans}}, "
                         f"got {str(record)[:100]!r}")
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise fail("text", f"is {repr(text)[:100]}; a non-empty string is required")
    lang = record.get("lang")
    if lang not in ISO_639_1:
        raise fail("lang", f"is {repr(lang)[:20]}; an ISO 639-1 code (en, de, ru, ...) is required")
    doc = record.get("doc", record.get("id"))
    if not isinstance(doc, str) or not doc:
        raise fail("doc", f"is {repr(doc)[:100]}; a non-empty string (the document id) is required")
    split = record.get("split") or split_of(doc, dev_fraction=dev_fraction, test_fraction=test_fraction)
    if split not in SPLITS:
        raise fail("split", f"is {repr(split)[:20]}; one of {', '.join(SPLITS)} is required")
    spans = record.get("spans")
    if not isinstance(spans, list):
        raise fail("spans", f"is {repr(spans)[:100]}; a list of {{start, end, type?, gold?}} is required")
    marked: list[tuple[int, int, str | None]] = []
    for i, span in enumerate(spans):
        start, end = (span.get("start"), span.get("end")) if isinstance(span, dict) else (None, None)
        if not (type(start) is int and type(end) is int and 0 <= start < end <= len(text)):
            raise fail(f"spans[{i}]", f"is {repr(span)[:100]}; {{start, end}} with 0 <= start < end <= "
                                      f"{len(text)} (the text's length) is required")
        if not text[start:end].strip() or text[start:end] != text[start:end].strip():
            raise fail(f"spans[{i}]", f"covers {text[start:end]!r}; a span must not start or end with a space")
        if marked and start < marked[-1][1]:
            raise fail(f"spans[{i}]", f"starts at {start}, inside or before the span before it (ending at "
                                      f"{marked[-1][1]}); spans must be sorted and non-overlapping")
        gold = span.get("gold")
        if gold is not None and not isinstance(gold, str):
            raise fail(f"spans[{i}].gold", f"is {repr(gold)[:40]}; a KB id string or null is required")
        marked.append((start, end, gold))
    return SpanSentence(doc, lang, text, tuple((a, b) for a, b, _ in marked), tuple(g for _, _, g in marked),
                        split)


def span_files(path: Path) -> list[Path]:
    """The JSONL files of ``path``: itself, or a directory's ``mentions.jsonl``, or else its ``*.jsonl``."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    if (path / "mentions.jsonl").is_file():
        return [path / "mentions.jsonl"]
    found = sorted(path.glob("*.jsonl"))
    if not found:
        raise InputError(f"{path}: a directory with neither mentions.jsonl nor span-sentence *.jsonl files")
    return found


def is_span_sentence(record: Any) -> bool:
    """Whether a record has the span-sentence shape (``text`` and ``spans``) rather than a mention's."""
    return isinstance(record, dict) and "spans" in record and "text" in record


def read_span_sentences(path: Path, **fractions: float) -> list[SpanSentence]:
    """The sentences of ``path`` (:func:`span_files`): each file read as span sentences when its first record has
    ``text`` and ``spans``, else as mentions (:func:`span_sentences`)."""
    out: list[SpanSentence] = []
    for file in span_files(path):
        records = iter_records(file)
        first = next(records, None)
        if first is None:
            raise InputError(f"{file}: no records; one JSON object a line is required")
        if is_span_sentence(first[1]):
            out.extend(check_span_sentence(r, f"{file}:{n}", **fractions) for n, r in [first, *records])
        else:
            out.extend(span_sentences((r for _, r in [first, *records]), **fractions))
    return out


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
