"""Raw text in, entities out: the documents file of ``xel-link --detect`` (the documents contract of
``CONTRACTS.md``), checked line by line, and :func:`link_documents`, which links the spans a spotter finds.

Input: one JSON object a line, ``{"id", "text", "lang"?}`` (``lang`` an ISO 639-1 code, default ``en``). Output:
one line per document, ``{"id", "mentions": [{"start", "end", "text", "pred", "name", "score", "candidates"}]}``,
spans as character offsets into ``text``, sorted and non-overlapping; ``pred`` null where the linker's NIL rule
says the span names nothing in the KB. Each detected span is linked as a mention of the sentence around it, with
that sentence and its neighbours as context, the shape of the mentions the linker was trained on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from xel.detect.tagger import Span
from xel.link.items import read_checked
from xel.link.linker import Item, Linker, LinkError
from xel.precompute.schema import ISO_639_1, check_string

DOCUMENT_FIELDS = ("id", "text", "lang")
MAX_DOCUMENT_CHARS = 1_000_000
SENTENCE_END = re.compile(r"(?<=[.!?;:。！？])\s+|\n+")


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    lang: str = "en"


class Spotter(Protocol):
    """What finds the mentions of texts: :class:`detect.detector.Detector` or :class:`detect.gazetteer.Gazetteer`
    (through :class:`GazetteerSpotter`)."""

    def spans(self, texts: Sequence[str]) -> list[list[Span]]: ...


class GazetteerSpotter:
    def __init__(self, gazetteer: Any):
        self.gazetteer = gazetteer

    def spans(self, texts: Sequence[str]) -> list[list[Span]]:
        return [self.gazetteer.spot(t) for t in texts]


def check_document(record: Any, where: str, default_id: str, max_chars: int = MAX_DOCUMENT_CHARS) -> Document:
    """A :class:`Document` from ``{id?, text, lang?}``; a bad field raises :class:`link.linker.LinkError` naming
    ``where`` (``file:line`` or ``documents[i]``), the field and what is allowed."""
    def fail(field: str, problem: str) -> LinkError:
        return LinkError(f"{where}: field {field!r} {problem}")

    if not isinstance(record, dict):
        raise LinkError(f"{where}: expected a JSON object {{id, text, lang}}, got {str(record)[:100]!r}")
    unknown = sorted(set(record) - set(DOCUMENT_FIELDS))
    if unknown:
        hint = " (a document has no spans: the detector finds them; mentions with spans go without --detect)" \
            if unknown[0] in ("start", "end", "sentence") else ""
        raise fail(unknown[0], f"is unknown; allowed fields: {', '.join(DOCUMENT_FIELDS)}{hint}")
    text = record.get("text")
    if not isinstance(text, str):
        raise fail("text", f"is {repr(text)[:100]}; a string (the document's raw text) is required")
    if len(text) > max_chars:
        raise fail("text", f"is {len(text):,} characters long; at most {max_chars:,} are allowed: split the document")
    problem = check_string(text)
    if problem:
        raise fail("text", problem)
    lang = record.get("lang", "en")
    if lang not in ISO_639_1:
        raise fail("lang", f"is {repr(lang)[:20]}; an ISO 639-1 code (en, de, ru, ...) is required")
    ident = record.get("id", default_id)
    if not isinstance(ident, str | int) or isinstance(ident, bool) or not str(ident).strip():
        raise fail("id", f"is {repr(ident)[:100]}; a non-empty string is required")
    problem = check_string(str(ident))
    if problem:
        raise fail("id", problem)
    return Document(str(ident), text, lang)


def read_documents(path: Path) -> list[Document]:
    """The checked documents of a JSONL file; ids must be unique."""
    return [doc for _, doc in read_checked(path, check_document,
                                           "no documents; at least one line {id, text, lang} is required")]


def sentences(text: str) -> list[tuple[int, int]]:
    """Character ranges of the sentences of ``text``: cut after ``.!?;:`` followed by spaces, and at newlines."""
    bounds, start = [], 0
    for m in SENTENCE_END.finditer(text):
        if m.start() > start:
            bounds.append((start, m.start()))
        start = m.end()
    if start < len(text):
        bounds.append((start, len(text)))
    return bounds or [(0, len(text))]


def mention_items(doc: Document, spans: Sequence[Span]) -> list[Item]:
    """Each span as an :class:`link.linker.Item`: its sentence (widened to hold the whole span) with the
    neighbouring sentences as context; the item id is ``{doc id}:{start}-{end}``."""
    bounds = sentences(doc.text)
    items = []
    for s in spans:
        first = next((i for i, (a, b) in enumerate(bounds) if b > s.start), len(bounds) - 1)
        last = next((i for i, (a, b) in enumerate(bounds) if b >= s.end), len(bounds) - 1)
        lo, hi = min(bounds[first][0], s.start), max(bounds[last][1], s.end)
        ctx_lo, ctx_hi = bounds[max(0, first - 1)][0], bounds[min(len(bounds) - 1, last + 1)][1]
        ctx_lo, ctx_hi = min(ctx_lo, lo), max(ctx_hi, hi)
        items.append(Item(f"{doc.id}:{s.start}-{s.end}", doc.text[lo:hi], s.start - lo, s.end - lo, doc.lang,
                          doc.text[ctx_lo:ctx_hi]))
    return items


def link_documents(linker: Linker, spotter: Spotter, docs: Sequence[Document], k: int = 10,
                   threshold: float | None = None) -> list[dict[str, Any]]:
    """The output line of each document (see the module docstring): the spotter's spans, linked in one batch."""
    found = spotter.spans([d.text for d in docs])
    items = [mention_items(d, spans) for d, spans in zip(docs, found)]
    links = linker.link([it for row in items for it in row], k=k, threshold=threshold)
    out, at = [], 0
    for doc, spans in zip(docs, found):
        mentions = []
        for s, link in zip(spans, links[at : at + len(spans)]):
            line = link.to_json()
            mentions.append({"start": s.start, "end": s.end, "text": doc.text[s.start : s.end], "pred": line["pred"],
                             "name": line["name"], "score": line["score"], "detect_score": round(s.score, 6),
                             "candidates": line["candidates"]})
        at += len(spans)
        out.append({"id": doc.id, "mentions": mentions})
    return out


SPOTTERS = ("tagger", "gazetteer")


def spotter_of(linker: Linker, kind: str) -> Spotter:
    """``tagger``: the run's detector (``RUN/detector/``) on the linker's encoder; ``gazetteer``: the names of
    the KB the linker links against and its candidates' alias table (:mod:`detect.gazetteer`)."""
    from xel.detect.detector import DETECTOR_DIR, Detector, DetectorError
    from xel.detect.gazetteer import Gazetteer

    if kind == "gazetteer":
        return GazetteerSpotter(Gazetteer(linker.kb.table.names, linker.generator.prior.counts))
    if kind != "tagger":
        raise LinkError(f"spotter {kind!r} is unknown; allowed: {', '.join(SPOTTERS)}")
    if linker.run_dir is None:
        raise DetectorError("this linker has no run directory (Linker.nn), so no trained detector; use the "
                            "gazetteer spotter, or load a run with Linker.load")
    return Detector.load(linker.run_dir / DETECTOR_DIR, linker.encoder, linker.encoder_settings)
