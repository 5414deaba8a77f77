"""Input schema: load and validate ``kb.jsonl``, ``mentions.jsonl`` and ``text.jsonl`` (see README, "Input schema").

Every record is checked before anything is written. A bad record raises :class:`InputError` whose
message names the file, the line, the field, the bad value and what is allowed.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ISO 639-1 two-letter codes.
ISO_639_1 = frozenset(
    """aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv
    dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik
    io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn
    mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg
    si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa
    wo xh yi yo za zh zu""".split()
)
MENTION_TYPES = ("PER", "ORG", "GPE", "LOC", "FAC")
# Longest text field accepted (characters). A text is windowed to the encoder's limit (512 subwords, a few thousand
# characters) around its mention, but it is tokenized whole first: one 10 MB sentence made an actor peak at 2.9 GB.
MAX_TEXT_CHARS = 100_000
# Unicode categories of characters that a tokenizer turns into a subword: letters, digits, symbols, punctuation.
# Spaces (Z*), controls (Cc), format characters (Cf: zero-width space, soft hyphen) and lone combining marks
# (M*) are dropped or become <unk>, so a span or text of only those holds no word.
_WORD_CATEGORIES = ("L", "N", "S", "P")


class InputError(ValueError):
    """A record in an input file breaks the schema."""


@dataclass(frozen=True)
class KBEntry:
    id: str
    name: str
    description: str | None
    lang: str
    links: int | None


@dataclass(frozen=True)
class Mention:
    id: str
    lang: str
    sentence: str
    start: int
    end: int
    context: str
    gold: str | None
    candidates: tuple[str, ...] | None
    type: str | None


@dataclass(frozen=True)
class Text:
    id: str
    lang: str
    text: str


def has_word(text: str) -> bool:
    """True when ``text`` holds a character a tokenizer keeps as a word piece (see ``_WORD_CATEGORIES``)."""
    return any(unicodedata.category(ch)[0] in _WORD_CATEGORIES for ch in text)


def check_string(value: str) -> str | None:
    """What makes ``value`` unusable as stored text, or None: a lone surrogate (not encodable as UTF-8, so it
    cannot be written to the store) or a NUL character (HDF5 strings end at NUL)."""
    for i, ch in enumerate(value):
        if "\ud800" <= ch <= "\udfff":
            return f"holds a lone surrogate {ch!r} at character {i}; text must be valid Unicode"
        if ch == "\x00":
            return f"holds a NUL character at character {i}; remove it"
    return None


def iter_records(path: Path):
    """Yield ``(line_number, record)`` for each non-blank line, rejecting bad encoding and bad JSON."""
    if path.is_dir():
        raise InputError(f"{path}: is a directory; a JSONL file is required")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start}); save the file as UTF-8")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            except ValueError as e:  # e.g. an integer of more than 4,300 digits
                raise InputError(f"{path}:{lineno}: invalid JSON ({e})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


class _Checker:
    """Field accessors that raise ``InputError`` with file, line, field, value and what is allowed."""

    def __init__(self, path: Path, lineno: int, record: dict[str, Any]):
        self.where = f"{path}:{lineno}"
        self.record = record

    def fail(self, field: str, problem: str) -> InputError:
        return InputError(f"{self.where}: field {field!r} {problem}")

    def text(self, field: str, optional: bool = False, words: bool = False) -> str | None:
        """A non-empty string; with ``words``, one that holds a word (text to encode) and is at most
        ``MAX_TEXT_CHARS`` long."""
        if field not in self.record or self.record[field] is None:
            if optional:
                return None
            raise self.fail(field, "is missing; a non-empty string is required")
        value = self.record[field]
        if not isinstance(value, str):
            raise self.fail(field, f"is {_short(value)} ({type(value).__name__}); a string is required")
        problem = check_string(value)
        if problem:
            raise self.fail(field, problem)
        if not value.strip():
            hint = " (use null)" if optional else ""
            raise self.fail(field, f"is {_short(value)}; an empty string is not allowed{hint}")
        if words and len(value) > MAX_TEXT_CHARS:
            raise self.fail(field, f"is {len(value):,} characters long; at most {MAX_TEXT_CHARS:,} are allowed "
                            "(only a window of the encoder's length limit is encoded: cut the text around the mention)")
        if words and not has_word(value):
            raise self.fail(field, f"is {_short(value)}, which holds no word (only spaces, invisible or combining "
                            "characters); give text")
        return value

    def integer(self, field: str, optional: bool = False) -> int | None:
        value = self.record.get(field)
        if value is None:
            if optional:
                return None
            raise self.fail(field, "is missing; an integer is required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"is {_short(value)} ({type(value).__name__}); an integer is required")
        return value

    def lang(self) -> str:
        value = self.text("lang")
        if value not in ISO_639_1:
            raise self.fail("lang", f"is {value!r}; an ISO 639-1 code (en, ru, ...) is required")
        return value


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _check_unique(path: Path, lineno: int, ident: str, seen: dict[str, int]) -> None:
    if ident in seen:
        raise InputError(f"{path}:{lineno}: field 'id' is {ident!r}, a duplicate of line {seen[ident]}; must be unique")
    seen[ident] = lineno


def load_kb(path: str | Path) -> list[KBEntry]:
    path = Path(path)
    entries: list[KBEntry] = []
    seen: dict[str, int] = {}
    for lineno, record in iter_records(path):
        c = _Checker(path, lineno, record)
        ident = c.text("id")
        links = c.integer("links", optional=True)
        if links is not None and links < 0:
            raise c.fail("links", f"is {links}; a count >= 0 or null is required")
        entry = KBEntry(ident, c.text("name", words=True), c.text("description", optional=True, words=True), c.lang(),
                        links)
        _check_unique(path, lineno, ident, seen)
        entries.append(entry)
    if not entries:
        raise InputError(f"{path}: the KB is empty; at least one entity is required")
    return entries


def load_mentions(path: str | Path, kb_ids: set[str] | frozenset[str]) -> list[Mention]:
    path = Path(path)
    mentions: list[Mention] = []
    seen: dict[str, int] = {}
    for lineno, record in iter_records(path):
        c = _Checker(path, lineno, record)
        ident = c.text("id")
        lang = c.lang()
        sentence = c.text("sentence", words=True)
        start, end = c.integer("start"), c.integer("end")
        if not 0 <= start < end <= len(sentence):
            raise c.fail(
                "start/end", f"is [{start}, {end}); a non-empty span 0 <= start < end <= {len(sentence)} "
                "(character offsets into 'sentence') is required",
            )
        if not sentence[start:end].strip() or not has_word(sentence[start:end]):
            raise c.fail("start/end", f"covers {sentence[start:end]!r}, which holds no word (only spaces, invisible "
                         "or combining characters); the span must cover text")
        context = c.text("context", optional=True, words=True)
        gold = c.text("gold", optional=True)
        if gold is not None and gold not in kb_ids:
            raise c.fail("gold", f"is {gold!r}, which is not an id in the KB; a KB id or null (NIL) is required")
        candidates = record.get("candidates")
        if candidates is not None:
            if not isinstance(candidates, list) or not all(isinstance(x, str) for x in candidates):
                raise c.fail("candidates", f"is {_short(candidates)}; a list of KB id strings or null is required")
            missing = [x for x in candidates if x not in kb_ids]
            if missing:
                raise c.fail("candidates", f"holds {missing[0]!r}, which is not an id in the KB")
            candidates = tuple(candidates)
        mtype = record.get("type")
        if mtype is not None and mtype not in MENTION_TYPES:
            raise c.fail("type", f"is {mtype!r}; one of {', '.join(MENTION_TYPES)} or null is required")
        _check_unique(path, lineno, ident, seen)
        mentions.append(
            Mention(ident, lang, sentence, start, end, context if context is not None else sentence, gold,
                    candidates, mtype)
        )
    if not mentions:
        raise InputError(f"{path}: no mentions; at least one is required")
    return mentions


def load_text(path: str | Path) -> list[Text]:
    path = Path(path)
    texts: list[Text] = []
    seen: dict[str, int] = {}
    for lineno, record in iter_records(path):
        c = _Checker(path, lineno, record)
        ident = c.text("id")
        text = Text(ident, c.lang(), c.text("text", words=True))
        _check_unique(path, lineno, ident, seen)
        texts.append(text)
    return texts


@dataclass(frozen=True)
class Inputs:
    kb: list[KBEntry]
    mentions: list[Mention]
    text: list[Text]
    files: dict[str, Path]


def load_inputs(data_dir: str | Path) -> Inputs:
    """Load and validate a data directory: ``kb.jsonl`` and ``mentions.jsonl`` required, ``text.jsonl`` optional."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: no such data directory; it must hold kb.jsonl and mentions.jsonl")
    files = {"kb": data_dir / "kb.jsonl", "mentions": data_dir / "mentions.jsonl"}
    kb = load_kb(files["kb"])
    mentions = load_mentions(files["mentions"], frozenset(e.id for e in kb))
    text: list[Text] = []
    if (data_dir / "text.jsonl").exists() or (data_dir / "text.jsonl").is_symlink():
        files["text"] = data_dir / "text.jsonl"
        text = load_text(files["text"])
    return Inputs(kb, mentions, text, files)
