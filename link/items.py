"""A mention to link (:class:`Item`) and the check of one input record (:func:`check_item`): the rules
``xel-link``, ``xel-serve`` and the :class:`link.linker.Linker` API apply to each mention, precompute's own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from xel.precompute.schema import ISO_639_1, MAX_TEXT_CHARS, check_string, has_word, iter_records

T = TypeVar("T")

DEFAULT_LANG = "en"
ITEM_FIELDS = ("id", "text", "sentence", "start", "end", "lang", "context", "gold", "type")


class LinkError(ValueError):
    """An item, run directory or index cannot be used; the message names it, the field and what is allowed."""


@dataclass(frozen=True)
class Item:
    """One mention to link: ``sentence[start:end]`` in language ``lang``; ``context`` defaults to the sentence."""

    id: str
    sentence: str
    start: int
    end: int
    lang: str = DEFAULT_LANG
    context: str | None = None
    gold: str | None = None  # only for metrics (xel-link); never seen by the linker
    type: str | None = None

    @property
    def surface(self) -> str:
        return self.sentence[self.start:self.end]


def check_item(record: Any, where: str, default_id: str) -> Item:
    """An :class:`Item` from ``{id?, text or sentence, start, end, lang?, context?, gold?}``; a bad field raises
    :class:`LinkError` naming ``where`` (``file:line`` or ``items[i]``), the field and what is allowed."""
    def fail(field: str, problem: str) -> LinkError:
        return LinkError(f"{where}: field {field!r} {problem}")

    def storable(field: str, value: str, text: bool = False) -> None:  # precompute's rules (precompute.schema)
        if text and len(value) > MAX_TEXT_CHARS:
            raise fail(field, f"is {len(value):,} characters long; at most {MAX_TEXT_CHARS:,} are allowed (only a "
                              "window of the encoder's length limit is encoded: cut the text around the mention)")
        problem = check_string(value)
        if problem:
            raise fail(field, problem)

    if not isinstance(record, dict):
        raise LinkError(f"{where}: expected a JSON object {{text, start, end, lang?, id?, context?}}, got {record!r}")
    unknown = sorted(set(record) - set(ITEM_FIELDS))
    if unknown:
        raise fail(unknown[0], f"is unknown; allowed fields: {', '.join(ITEM_FIELDS)}")
    if ("text" in record) == ("sentence" in record):
        raise fail("text", "is missing (or given together with 'sentence'); exactly one of 'text' or 'sentence' "
                           "(the sentence holding the mention) is required")
    key = "text" if "text" in record else "sentence"
    sentence = record[key]
    if isinstance(sentence, str):
        storable(key, sentence, text=True)
    if not isinstance(sentence, str) or not sentence.strip():
        raise fail(key, f"is {sentence!r}; a non-empty string is required")
    for name in ("start", "end"):
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(name, f"is {value!r}; an integer character offset into {key!r} is required")
    start, end = record["start"], record["end"]
    if not 0 <= start < end <= len(sentence):
        raise fail("start/end", f"is [{start}, {end}); a non-empty span 0 <= start < end <= {len(sentence)} "
                                "(character offsets) is required")
    if not sentence[start:end].strip() or not has_word(sentence[start:end]):
        raise fail("start/end", f"covers {sentence[start:end]!r}, which holds no word (only spaces, invisible or "
                                "combining characters); the span must cover text")
    lang = record.get("lang", DEFAULT_LANG)
    if lang not in ISO_639_1:
        raise fail("lang", f"is {lang!r}; an ISO 639-1 code (en, de, ru, ...) is required")
    ident = record.get("id", default_id)
    if not isinstance(ident, str | int) or isinstance(ident, bool) or not str(ident).strip():
        raise fail("id", f"is {ident!r}; a non-empty string is required")
    storable("id", str(ident))
    context = record.get("context")
    if isinstance(context, str):
        storable("context", context, text=True)
    if context is not None and (not isinstance(context, str) or not context.strip()):
        raise fail("context", f"is {context!r}; a non-empty string or null is required")
    gold = record.get("gold")
    if gold is not None and not isinstance(gold, str):
        raise fail("gold", f"is {gold!r}; a KB id string or null (NIL) is required")
    mtype = record.get("type")
    if mtype is not None and not isinstance(mtype, str):
        raise fail("type", f"is {mtype!r}; a string (PER, ORG, ...) or null is required")
    for name, value in (("gold", gold), ("type", mtype)):
        if value is not None:
            storable(name, value)
    return Item(str(ident), sentence, start, end, lang, context, gold, mtype)


def read_checked(path: Path, check: Callable[[Any, str, str], T], empty: str) -> list[tuple[dict, T]]:
    """Each line of the JSONL file ``path`` with what ``check(record, "path:line", "line-N")`` made of it (an
    object with an ``id``), in file order; a duplicate id, or a file without lines (``empty`` says what one
    holds), is refused naming the line."""
    out: list[tuple[dict, T]] = []
    seen: dict[str, int] = {}
    for lineno, record in iter_records(path):
        obj = check(record, f"{path}:{lineno}", f"line-{lineno}")
        ident = obj.id  # type: ignore[attr-defined]
        if ident in seen:
            raise LinkError(f"{path}:{lineno}: field 'id' is {ident!r}, a duplicate of line {seen[ident]}; ids "
                            "must be unique")
        seen[ident] = lineno
        out.append((record, obj))
    if not out:
        raise LinkError(f"{path}: {empty}")
    return out
