"""Input schema: load and validate ``kb.jsonl``, ``mentions.jsonl`` and ``text.jsonl`` (see docs/input-schema.md).

Every record is checked before anything is written, in one streaming pass per file (:func:`scan_inputs`) whose
memory grows by a few bytes an id, not by the records. A bad record raises :class:`InputError` whose message
names the file, the line, the field, the bad value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from array import array
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
_UNSTORABLE = re.compile("[\ud800-\udfff\x00]")  # see check_string


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
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    i, ch = found.start(), found.group()
    if ch == "\x00":
        return f"holds a NUL character at character {i}; remove it"
    return f"holds a lone surrogate {ch!r} at character {i}; text must be valid Unicode"


def iter_records(path: Path):
    """Yield ``(line_number, record)`` for each non-blank line, rejecting bad encoding and bad JSON."""
    for lineno, _, record in iter_records_at(path):
        yield lineno, record


def iter_records_at(path: Path, begin: int = 0, end: int | None = None, first_line: int = 1):
    """Yield ``(line_number, byte_offset, record)`` for each non-blank line whose first byte lies in
    ``[begin, end)`` (``begin`` must be a line start, ``first_line`` its line number), rejecting bad encoding and
    bad JSON; the bytes are read in blocks, so memory does not grow with the file."""
    if path.is_dir():
        raise InputError(f"{path}: is a directory; a JSONL file is required")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with open(path, "rb") as f:
        f.seek(begin)
        offset = begin
        for lineno, raw in enumerate(f, start=first_line):
            if end is not None and offset >= end:
                return
            at, offset = offset, offset + len(raw)
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
            yield lineno, at, record


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


def parse_kb_entry(path: Path, lineno: int, record: dict[str, Any], kb_ids: Container[str] | None = None) -> KBEntry:
    c = _Checker(path, lineno, record)
    ident = c.text("id")
    links = c.integer("links", optional=True)
    if links is not None and links < 0:
        raise c.fail("links", f"is {links}; a count >= 0 or null is required")
    return KBEntry(ident, c.text("name", words=True), c.text("description", optional=True, words=True), c.lang(), links)


def parse_mention(path: Path, lineno: int, record: dict[str, Any], kb_ids: Container[str] | None = None) -> Mention:
    """One mention record; with ``kb_ids``, its gold and candidates must be in the KB (else that is not checked)."""
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
    if gold is not None and kb_ids is not None and gold not in kb_ids:
        raise c.fail("gold", f"is {gold!r}, which is not an id in the KB; a KB id or null (NIL) is required")
    candidates = record.get("candidates")
    if candidates is not None:
        if not isinstance(candidates, list) or not all(isinstance(x, str) for x in candidates):
            raise c.fail("candidates", f"is {_short(candidates)}; a list of KB id strings or null is required")
        missing = [x for x in candidates if x not in kb_ids] if kb_ids is not None else []
        if missing:
            raise c.fail("candidates", f"holds {missing[0]!r}, which is not an id in the KB")
        candidates = tuple(candidates)
    mtype = record.get("type")
    if mtype is not None and mtype not in MENTION_TYPES:
        raise c.fail("type", f"is {mtype!r}; one of {', '.join(MENTION_TYPES)} or null is required")
    return Mention(ident, lang, sentence, start, end, context if context is not None else sentence, gold,
                   candidates, mtype)


def parse_text(path: Path, lineno: int, record: dict[str, Any], kb_ids: Container[str] | None = None) -> Text:
    c = _Checker(path, lineno, record)
    ident = c.text("id")
    return Text(ident, c.lang(), c.text("text", words=True))


Record = KBEntry | Mention | Text
PARSERS: dict[str, Callable[..., Record]] = {"kb": parse_kb_entry, "mentions": parse_mention, "text": parse_text}
FILES = {"kb": "kb.jsonl", "mentions": "mentions.jsonl", "text": "text.jsonl"}


def id_digest(ident: str) -> int:
    """An id's 8-byte digest (blake2b), as an unsigned integer."""
    return int.from_bytes(hashlib.blake2b(ident.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class StringColumn(Sequence[str]):
    """Strings packed as UTF-8 in one buffer with their end offsets (8 bytes a string plus its bytes)."""

    def __init__(self) -> None:
        self._blob = bytearray()
        self._ends = array("q")

    def append(self, text: str) -> None:
        self._blob += text.encode("utf-8", "surrogatepass")
        self._ends.append(len(self._blob))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"string {i} of {len(self)}")
        start = self._ends[i - 1] if i else 0
        return self._blob[start : self._ends[i]].decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


class DigestLookup:
    """Positions by the 8-byte digest (:func:`id_digest`) of a string: sorted digests and the position of each
    (12 bytes a string). :meth:`positions` may return a position whose string only shares the digest; callers
    compare the strings (:class:`IdDigests`, :class:`retrieval.kb_table.KBTable`)."""

    def __init__(self, digests: array):
        values = np.frombuffer(digests, dtype=np.uint64) if len(digests) else np.zeros(0, np.uint64)
        order = np.argsort(values, kind="stable")
        self.sorted = values[order]
        self.order = order.astype(np.uint32 if len(order) < 2**32 else np.int64)  # 4 bytes a string below 4G

    def positions(self, key: str) -> list[int]:
        d = np.uint64(id_digest(key))
        lo, hi = np.searchsorted(self.sorted, d, "left"), np.searchsorted(self.sorted, d, "right")
        return self.order[lo:hi].tolist()


class IdDigests:
    """The ids of one input file held as 8-byte digests with their line numbers (12 bytes an id, not the ids):
    enough to find duplicates, exactly (ids whose digests collide are read again from the file and compared).
    With ``keep_ids`` the ids' UTF-8 bytes are kept too, packed in one buffer, so that after :meth:`freeze`
    ``id in digests`` is an exact membership test (the KB: a mention's gold and candidates must be in it)."""

    def __init__(self, path: Path, keep_ids: bool = False):
        self.path = path
        self._digests = array("Q")
        self._lines = array("I")
        self._ids: StringColumn | None = StringColumn() if keep_ids else None
        self._lookup: DigestLookup | None = None

    def __len__(self) -> int:
        return len(self._digests)

    def add(self, ident: str, lineno: int) -> None:
        self._digests.append(id_digest(ident))
        self._lines.append(lineno)
        if self._ids is not None:
            self._ids.append(ident)

    def duplicate(self) -> InputError | None:
        """The error for the first line (in file order) whose id an earlier line already has, or None."""
        digests = np.frombuffer(self._digests, dtype=np.uint64) if len(self) else np.zeros(0, np.uint64)
        order = np.argsort(digests, kind="stable")
        same = np.flatnonzero(digests[order][1:] == digests[order][:-1])
        if not len(same):
            return None
        lines = np.frombuffer(self._lines, dtype=np.uint32)
        suspects = set(lines[np.concatenate([order[same], order[same + 1]])].tolist())
        first: dict[str, int] = {}
        last = max(suspects)
        for lineno, _, record in iter_records_at(self.path):  # colliding digests: compare the ids themselves
            if lineno in suspects:
                ident = record["id"]
                if ident in first:
                    return InputError(f"{self.path}:{lineno}: field 'id' is {ident!r}, a duplicate of line "
                                      f"{first[ident]}; must be unique")
                first[ident] = lineno
            if lineno >= last:
                break
        return None

    def freeze(self) -> IdDigests:
        """Sort the digests for membership tests; no ids can be added after."""
        self._lookup = DigestLookup(self._digests)
        self._digests, self._lines = array("Q"), array("I")  # the sorted copy replaces them
        return self

    def __contains__(self, ident: object) -> bool:
        if self._lookup is None or self._ids is None:
            raise TypeError("membership needs IdDigests(keep_ids=True) and freeze()")
        if not isinstance(ident, str):
            return False
        return any(self._ids[p] == ident for p in self._lookup.positions(ident))


@dataclass(frozen=True)
class FileIndex:
    """One validated input file: its record count and, for every ``every``-th record, where it starts (byte
    offset, line number), so that a reader can take any run of ``every`` records by byte range."""

    name: str
    path: Path
    rows: int
    every: int
    starts: tuple[tuple[int, int], ...]
    size: int
    no_description: int = 0  # KB entries without a description

    def ranges(self) -> list[tuple[int, int, int, int]]:
        """``(first row, rows, begin byte, end byte)`` of each run of ``every`` records, with the first line in
        ``starts``."""
        bounds = [offset for offset, _ in self.starts[1:]] + [self.size]
        return [(i * self.every, min(self.every, self.rows - i * self.every), begin, end)
                for i, ((begin, _), end) in enumerate(zip(self.starts, bounds))]


def scan_file(name: str, path: Path, every: int, kb_ids: IdDigests | None = None,
              keep_ids: bool = False) -> tuple[FileIndex, IdDigests]:
    """Validate every record of one input file in one streaming pass (ids unique, a mention's gold and
    candidates in ``kb_ids``); the first bad line, in file order, raises :class:`InputError`."""
    parse = PARSERS[name]
    ids = IdDigests(path, keep_ids=keep_ids)
    starts: list[tuple[int, int]] = []
    no_description = 0
    size = path.stat().st_size if path.is_file() else 0
    try:
        for lineno, offset, record in iter_records_at(path):
            parsed = parse(path, lineno, record, kb_ids)
            if len(ids) % every == 0:
                starts.append((offset, lineno))
            ids.add(parsed.id, lineno)
            no_description += isinstance(parsed, KBEntry) and parsed.description is None
    except InputError as e:
        raise ids.duplicate() or e from None  # a duplicate on an earlier line is the first error
    error = ids.duplicate()
    if error is not None:
        raise error
    return FileIndex(name, path, len(ids), every, tuple(starts), size, no_description), ids


def read_records(path: Path, name: str, begin: int = 0, end: int | None = None, first_line: int = 1) -> list[Record]:
    """The records of ``name``'s file whose lines start in ``[begin, end)``, parsed (the KB membership of golds
    and candidates is not checked again: :func:`scan_inputs` did)."""
    parse = PARSERS[name]
    return [parse(path, lineno, record) for lineno, _, record in iter_records_at(path, begin, end, first_line)]


@dataclass(frozen=True)
class ScannedInputs:
    """Validated input files (``kb``, ``mentions``, optional ``text``), indexed for reading by byte range."""

    files: dict[str, FileIndex]

    @property
    def paths(self) -> dict[str, Path]:
        return {name: index.path for name, index in self.files.items()}


def scan_inputs(data_dir: str | Path, every: int = 4096) -> ScannedInputs:
    """Validate a data directory in one streaming pass per file, with memory that grows by ~12 bytes an id
    (~12 more plus the id's bytes for the KB), not by the records: ``kb.jsonl`` and ``mentions.jsonl`` required,
    ``text.jsonl`` optional."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: no such data directory; it must hold kb.jsonl and mentions.jsonl")
    kb, kb_ids = scan_file("kb", data_dir / FILES["kb"], every, keep_ids=True)
    if not kb.rows:
        raise InputError(f"{kb.path}: the KB is empty; at least one entity is required")
    mentions, _ = scan_file("mentions", data_dir / FILES["mentions"], every, kb_ids=kb_ids.freeze())
    del kb_ids
    if not mentions.rows:
        raise InputError(f"{mentions.path}: no mentions; at least one is required")
    files = {"kb": kb, "mentions": mentions}
    text_path = data_dir / FILES["text"]
    if text_path.exists() or text_path.is_symlink():
        files["text"] = scan_file("text", text_path, every)[0]
    return ScannedInputs(files)


@dataclass(frozen=True)
class Inputs:
    kb: list[KBEntry]
    mentions: list[Mention]
    text: list[Text]
    files: dict[str, Path]


def load_inputs(data_dir: str | Path) -> Inputs:
    """Load and validate a whole data directory into memory (small inputs; ``xel-precompute`` streams them)."""
    scanned = scan_inputs(data_dir)
    records = {name: read_records(index.path, name) for name, index in scanned.files.items()}
    return Inputs(records["kb"], records["mentions"], records.get("text", []), scanned.paths)  # type: ignore[arg-type]
