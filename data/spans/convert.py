"""Convert public NER/EL releases into span-complete sentences: ``python data/spans/convert.py --help``.

Developer tool.  Reads ELEVANT benchmarks, HIPE-2022 v2.1 ``hipe2020`` TSV files and NEREL v1.1 brat files from a
local clone, work tree or bare git mirror (``DIR`` or ``DIR@COMMIT``), and writes span-sentence JSONL, one sentence a
line, every named mention of a person, organisation or location marked::

    {"id": "<source>:<doc>:<start>-<end>", "doc": "<source>:<doc>", "lang": "en", "split": "train",
     "text": "<sentence>", "spans": [{"start": 0, "end": 12, "type": "PER", "gold": "Q42"}]}

``start``/``end`` are character offsets into ``text`` (``<start>-<end>`` in the id: the sentence's offsets in the
document), spans sorted and non-overlapping, ``gold`` a Wikidata QID or null.  Sentences without spans are kept.
The mention definition (see README.md): named mentions of persons (PER), organisations (ORG) and locations (LOC,
including geo-political entities and facilities), the outermost such span where they nest; never coreference
pronouns or nominals, dates, quantities, titles/occupations or other common-noun concepts.  Counts per file, and
what was dropped and why, go to ``stats.json`` next to the files.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from xel.retrieval.splits import split_of

logger = logging.getLogger("spans.convert")

TYPES = ("PER", "ORG", "LOC")
QID = re.compile(r"Q[1-9][0-9]*")

# ELEVANT: Wikidata type QIDs (the benchmark's coarse types, joined by "|")
ELEVANT_PERSON = "Q215627"
ELEVANT_ORGANIZATION = "Q43229"
# geographic entity, geographical feature, geographic location
ELEVANT_LOCATION = frozenset({"Q27096213", "Q618123", "Q2221906"})
# occupation, position, event, award: a label with one of these (and no location type) is a concept, not a name
ELEVANT_CONCEPT = frozenset({"Q12737077", "Q4164871", "Q1656682", "Q618779"})
ELEVANT_SETS = ("wiki-fair-v2", "news-fair-v2")

HIPE_TYPES = {"pers": "PER", "org": "ORG", "loc": "LOC"}
HIPE_FILE = re.compile(r"HIPE-2022-v2\.1-hipe2020-(train|dev|test)-([a-z]{2})\.tsv")

NEREL_TYPES = {
    "PERSON": "PER",
    "ORGANIZATION": "ORG",
    **{t: "LOC" for t in ("LOCATION", "CITY", "COUNTRY", "STATE_OR_PROVINCE", "DISTRICT", "FACILITY")},
}
NEREL_SPLITS = ("train", "dev", "test")

# conservative sentence end: ., ! or ? (maybe a closing quote or bracket), whitespace, then an upper-case letter, a
# digit or an opening quote; not after an abbreviation (one letter, a word with an inner dot, or a listed word)
SENTENCE_END = re.compile(r"[.!?…][\"'»”)\]]*\s+(?=[\"'«“„(\[]?(\w))")
ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr co inc ltd no nos vs gen col lt capt sgt rev prof mt ft fig op vol pp ca approx dept univ "
    "corp bros est jan feb mar apr jun jul aug sep sept oct nov dec "
    "гг им ул ст тыс млн млрд руб др пр см т.е т.д т.п ок".split()
)


class ConvertError(ValueError):
    """A source file breaks its format; the message names the file, the line and the bad value."""


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    type: str
    gold: str | None


@dataclass
class Document:
    """One source document: text, kept-type spans (maybe nested), spans that forbid a split point, and spans that
    make their sentence unusable (a name whose type the source does not give)."""

    source: str
    doc: str
    lang: str
    split: str
    text: str
    spans: list[Span]
    region: tuple[int, int]
    protected: list[tuple[int, int]] = field(default_factory=list)
    veto: list[tuple[int, int]] = field(default_factory=list)
    boundaries: list[int] | None = None  # sentence starts given by the source; None: split by the regex


class Tree:
    """Files of a release: a plain directory, or a bare git repository read at a commit (``DIR@COMMIT``)."""

    def __init__(self, spec: str) -> None:
        path, _, rev = spec.partition("@") if not Path(spec).exists() else (spec, "", "")
        self.root = Path(path)
        if not self.root.is_dir():
            raise ConvertError(f"{spec}: not a directory (give a clone, a work tree, or a bare git dir[@commit])")
        self.rev = rev or None
        if self.rev is None and not any(self.root.iterdir()):
            raise ConvertError(f"{spec}: empty directory")
        if self.rev is None and (self.root / "HEAD").is_file() and (self.root / "objects").is_dir():
            self.rev = "HEAD"
        self.files = self._list()

    def _git(self, *args: str) -> str:
        done = subprocess.run(["git", "-C", str(self.root), *args], capture_output=True)
        if done.returncode != 0:
            raise ConvertError(f"git {' '.join(args)} in {self.root}: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout.decode("utf-8")

    def _list(self) -> list[str]:
        if self.rev is not None:
            return sorted(self._git("ls-tree", "-r", "--name-only", self.rev).splitlines())
        files = (p.relative_to(self.root) for p in self.root.rglob("*") if p.is_file())
        return sorted(p.as_posix() for p in files if ".git" not in p.parts)

    def read(self, name: str) -> str:
        if self.rev is not None:
            return self._git("show", f"{self.rev}:{name}")
        return (self.root / name).read_bytes().decode("utf-8")  # no newline translation: offsets count \r

    def commit(self) -> str | None:
        """The commit read, or the clone's HEAD; None for a directory that is not a git checkout."""
        if self.rev is None and not (self.root / ".git").exists():
            return None
        try:
            return self._git("rev-parse", self.rev or "HEAD").strip()
        except ConvertError:
            return None


# ---------------------------------------------------------------------------------------------------------- ELEVANT

def elevant_type(types: str) -> str | None:
    """PER/ORG/LOC for an ELEVANT label's ``type`` field, or None (see the README's mention definition)."""
    qids = set(types.split("|"))
    if qids & ELEVANT_LOCATION:
        return "LOC"
    if qids & ELEVANT_CONCEPT:
        return None
    if ELEVANT_ORGANIZATION in qids:  # persons that are also organisations are groups and bands
        return "ORG"
    if ELEVANT_PERSON in qids:
        return "PER"
    return None


def read_elevant(tree: Tree, name: str, drops: Counter) -> Iterator[Document]:
    path = f"benchmarks/{name}.benchmark.jsonl"
    if path not in tree.files:
        raise ConvertError(f"{tree.root}: no {path} (ELEVANT sets: {', '.join(ELEVANT_SETS)})")
    source = f"elevant/{name}"
    for line_no, line in enumerate(tree.read(path).splitlines(), 1):
        where = f"{tree.root}/{path}:{line_no}"
        try:
            article = json.loads(line)
            text, (lo, hi), labels = article["text"], article["evaluation_span"], article["labels"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConvertError(f"{where}: not an ELEVANT article ({exc!r})") from exc
        doc = str(article["id"])
        spans, protected, veto = [], [], []
        for label in labels:
            start, end = label["span"]
            if not (lo <= start < end <= hi):
                continue  # outside the evaluated part (the title line)
            protected.append((start, end))
            kind = elevant_type(label.get("type", ""))
            surface = text[start:end]
            entity = label.get("entity_id", "")
            if label.get("coref"):
                drops["coreference"] += 1
            elif label.get("desc"):
                drops["descriptive phrase"] += 1
            elif kind is None and not QID.fullmatch(entity) and entity not in ("DATETIME", "QUANTITY") \
                    and surface[:1].isupper():
                veto.append((start, end))  # a NIL name of no given type: PER/ORG/LOC or not, the source does not say
                drops["untyped NIL name"] += 1
            elif kind is None:
                drops["not PER/ORG/LOC (concept, date, quantity, work, product, ...)"] += 1
            elif not (surface[:1].isupper() or surface[:1].isdigit()):
                drops["lower-case (a concept, not a name)"] += 1
            else:
                spans.append(Span(start, end, kind, entity if QID.fullmatch(entity) else None))
        yield Document(source, doc, "en", split_of(f"{source}:{doc}"), text, spans, (lo, hi), protected, veto)


# ------------------------------------------------------------------------------------------------------------- HIPE

def read_hipe(tree: Tree, path: str, split: str, lang: str, drops: Counter) -> Iterator[Document]:
    source = f"hipe/hipe2020/{split}"
    header: list[str] | None = None
    doc: str | None = None
    parts: list[str] = []
    pos = 0
    starts: list[int] = []
    spans: list[Span] = []
    extents: list[tuple[int, int]] = []  # every entity's full extent, kept or not: no sentence split inside
    open_entity: list | None = None  # [start, end, type, gold, [(token start, end, NE-FINE-COMP)]]
    current: str | None = None  # the source type of the entity being read, kept or not

    def close() -> None:
        nonlocal open_entity
        if open_entity is not None:
            start, end, kind, gold, parts_ = open_entity
            extents.append((start, end))
            open_entity = None
            if kind is None:
                return
            named = [(a, b) for a, b, comp in parts_ if comp.endswith("comp.name")]
            if kind != "PER" or all(comp in ("O", "_", "") for _, _, comp in parts_):
                spans.append(Span(start, end, kind, gold))
            elif named:  # a person with a title, function, ...: keep the name (see README)
                spans.append(Span(named[0][0], named[-1][1], kind, gold))
                drops["PER span cut to its comp.name tokens"] += (named[0][0], named[-1][1]) != (start, end)
            else:
                drops["PER span without a name (title or function only)"] += 1

    def flush() -> Iterator[Document]:
        close()
        if doc is not None:
            text = "".join(parts).rstrip()
            yield Document(source, doc, lang, split, text, list(spans), (0, len(text)),
                           list(extents), [], [0, *(s for s in starts if s < len(text))])

    for line_no, line in enumerate(tree.read(path).splitlines(), 1):
        where = f"{tree.root}/{path}:{line_no}"
        if line.startswith("#"):
            m = re.match(r"#\s*hipe2022:document_id\s*=\s*(\S+)", line)
            if m:
                yield from flush()
                doc, parts, pos, starts, spans, extents, current = m.group(1), [], 0, [], [], [], None
            continue
        if not line.strip():
            continue
        cols = line.split("\t")
        if header is None:
            header = cols
            missing = {"TOKEN", "NE-COARSE-LIT", "NEL-LIT", "MISC"} - set(header)
            if missing:
                raise ConvertError(f"{where}: header lacks {sorted(missing)}; got {header}")
            continue
        if doc is None:
            raise ConvertError(f"{where}: token before any '# hipe2022:document_id' line")
        if len(cols) != len(header):
            raise ConvertError(f"{where}: {len(cols)} columns, the header has {len(header)}")
        row = dict(zip(header, cols))
        token, tag, misc = row["TOKEN"], row["NE-COARSE-LIT"], row["MISC"].split("|")
        start, end = pos, pos + len(token)
        if tag == "O":
            close()
            current = None
        elif tag[:2] in ("B-", "I-") and len(tag) > 2:
            if tag.startswith("I-") and current == tag[2:]:
                if open_entity is not None:
                    open_entity[1] = end
                    open_entity[4].append((start, end, row.get("NE-FINE-COMP", "O")))
            else:
                close()
                current = tag[2:]
                if tag.startswith("I-"):
                    drops["I- tag without a B- tag (started a span)"] += 1
                kind = HIPE_TYPES.get(current)
                if kind is None:
                    drops[f"type {current}"] += 1
                link = row["NEL-LIT"]
                open_entity = [start, end, kind, link if QID.fullmatch(link) else None,
                               [(start, end, row.get("NE-FINE-COMP", "O"))]]
        else:
            raise ConvertError(f"{where}: NE-COARSE-LIT {tag!r} is not O, B-<type> or I-<type>")
        sep = "" if "NoSpaceAfter" in misc else " "
        parts.append(token + sep)
        pos = end + len(sep)
        if "EndOfSentence" in misc:
            starts.append(pos)
    yield from flush()


# ------------------------------------------------------------------------------------------------------------ NEREL

def read_nerel(tree: Tree, ann_path: str, split: str, drops: Counter) -> Document:
    txt_path = ann_path[: -len(".ann")] + ".txt"
    text = tree.read(txt_path)
    links: dict[str, str] = {}
    entities: list[tuple[str, int, int, str]] = []
    protected = []
    for line_no, line in enumerate(tree.read(ann_path).splitlines(), 1):
        cols = line.split("\t")
        if line.startswith("N") and len(cols) >= 2:
            ref = cols[1].split()
            if len(ref) == 3 and ref[0] == "Reference":
                target = ref[2].removeprefix("Wikidata:")
                links[ref[1]] = target if QID.fullmatch(target) else ""
            continue
        if not line.startswith("T"):
            continue
        try:
            kind, offsets = cols[1].split(" ", 1)
            pieces = [tuple(int(x) for x in piece.split()) for piece in offsets.split(";")]
        except (IndexError, ValueError) as exc:
            raise ConvertError(f"{tree.root}/{ann_path}:{line_no}: not a brat entity line: {line!r}") from exc
        protected.append((pieces[0][0], pieces[-1][1]))
        if kind not in NEREL_TYPES:
            drops[f"type {kind}"] += 1
        elif len(pieces) > 1:
            drops["discontinuous span"] += 1
        else:
            entities.append((cols[0], pieces[0][0], pieces[0][1], NEREL_TYPES[kind]))
    spans = []
    for tid, start, end, kind in entities:
        if not 0 <= start < end <= len(text):
            raise ConvertError(f"{tree.root}/{ann_path}: {tid} span {start}-{end} outside the text ({len(text)})")
        spans.append(Span(start, end, kind, links.get(tid) or None))
    doc = Path(ann_path).name[: -len(".ann")]
    return Document(f"nerel/{split}", doc, "ru", split, text, spans, (0, len(text)), protected)


# ----------------------------------------------------------------------------------------------------------- common

def outermost(spans: Iterable[Span], drops: Counter) -> list[Span]:
    """Spans sorted, non-overlapping: a span inside a kept one goes, and so do a span crossing a kept one and a
    second label of the same characters (ELEVANT gives some spans two entities)."""
    kept: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):  # stable: of equal spans, the source's first wins
        if kept and (span.start, span.end) == (kept[-1].start, kept[-1].end):
            drops["same span as a kept one (first label kept)"] += 1
            continue
        if kept and span.start < kept[-1].end:
            drops["nested inside a kept span" if span.end <= kept[-1].end else "crosses a kept span"] += 1
            continue
        kept.append(span)
    return kept


def strip_span(text: str, span: Span, drops: Counter) -> Span | None:
    start, end = span.start, span.end
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start == end:
        drops["blank span"] += 1
        return None
    if (start, end) != (span.start, span.end):
        drops["span trimmed of white space (kept)"] += 1
    return Span(start, end, span.type, span.gold)


def is_abbreviation(text: str, dot: int) -> bool:
    """Whether the full stop at ``dot`` ends an abbreviation or an initial (``J.``, ``U.S.``, ``Dr.``, ``г.``)."""
    word = re.search(r"(\S*)$", text[:dot]).group(1).lstrip("\"'«“([")
    return len(word) <= 1 or "." in word or word.lower() in ABBREVIATIONS


def regex_boundaries(text: str, lo: int, hi: int) -> list[int]:
    """Sentence starts in ``text[lo:hi]``: after each line break, and after a conservative sentence end."""
    starts = [lo]
    for m in re.finditer(r"\n\s*", text[lo:hi]):
        starts.append(lo + m.end())
    for m in SENTENCE_END.finditer(text, lo, hi):
        following = m.group(1)
        if not (following.isupper() or following.isdigit()):
            continue
        if text[m.start()] == "." and is_abbreviation(text, m.start()):
            continue
        starts.append(m.end())
    return sorted(set(starts))


def sentences(doc: Document, drops: Counter) -> Iterator[dict]:
    lo, hi = doc.region
    starts = doc.boundaries if doc.boundaries is not None else regex_boundaries(doc.text, lo, hi)
    kept_starts = []
    for s in starts:
        if any(a < s < b for a, b in doc.protected):
            drops["sentence boundary inside an annotation (not split)"] += 1
        else:
            kept_starts.append(s)
    spans = [s for s in (strip_span(doc.text, s, drops) for s in doc.spans) if s is not None]
    spans = outermost(spans, drops)
    ends = [*kept_starts[1:], hi]
    i = 0
    for a, b in zip(kept_starts, ends):
        while a < b and doc.text[a].isspace():
            a += 1
        while b > a and doc.text[b - 1].isspace():
            b -= 1
        inside = []
        while i < len(spans) and spans[i].start < b:
            if spans[i].start >= a:
                inside.append(spans[i])
            i += 1
        if a == b:
            continue
        if any(v0 < b and a < v1 and not any(s.start <= v0 and v1 <= s.end for s in inside) for v0, v1 in doc.veto):
            drops["sentences with an untyped name (sentence dropped)"] += 1
            drops["spans in dropped sentences"] += len(inside)
            continue
        sentence = doc.text[a:b]
        yield {
            "id": f"{doc.source}:{doc.doc}:{a}-{b}",
            "doc": f"{doc.source}:{doc.doc}",
            "lang": doc.lang,
            "split": doc.split,
            "text": sentence,
            "spans": [{"start": s.start - a, "end": s.end - a, "type": s.type, "gold": s.gold} for s in inside],
        }


def file_stats(rows: list[dict], drops: Counter) -> dict:
    spans = [s for r in rows for s in r["spans"]]
    return {
        "sentences": len(rows),
        "sentences_without_spans": sum(not r["spans"] for r in rows),
        "docs": len({r["doc"] for r in rows}),
        "spans": len(spans),
        "linked": sum(s["gold"] is not None for s in spans),
        "nil": sum(s["gold"] is None for s in spans),
        "types": dict(sorted(Counter(s["type"] for s in spans).items())),
        "per_split": {
            split: {
                "sentences": sum(r["split"] == split for r in rows),
                "spans": sum(len(r["spans"]) for r in rows if r["split"] == split),
                "types": dict(sorted(Counter(s["type"] for r in rows if r["split"] == split
                                             for s in r["spans"]).items())),
            }
            for split in sorted({r["split"] for r in rows})
        },
        "dropped": dict(sorted((k, v) for k, v in drops.items() if v)),
    }


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def convert_documents(docs: Iterable[Document], drops: Counter) -> list[dict]:
    return [row for doc in docs for row in sentences(doc, drops)]


def convert(out: Path, elevant: str | None = None, elevant_sets: Iterable[str] = ("wiki-fair-v2",),
            hipe: str | None = None, hipe_langs: Iterable[str] = ("de", "fr", "en"),
            hipe_splits: Iterable[str] = ("dev",), nerel: str | None = None,
            nerel_splits: Iterable[str] = ("dev", "test")) -> dict:
    """Convert the given releases into ``out/<name>.jsonl`` and ``out/stats.json``; return the statistics."""
    jobs: list[tuple[str, str, Tree, list]] = []  # (file name, source label, tree, [(reader, args)])
    if elevant is not None:
        tree = Tree(elevant)
        for name in elevant_sets:
            if name not in ELEVANT_SETS:
                raise ConvertError(f"ELEVANT set {name!r} is not one of {', '.join(ELEVANT_SETS)}")
            jobs.append((f"elevant-{name}.en", "elevant", tree, [(read_elevant, (name,))]))
    if hipe is not None:
        tree = Tree(hipe)
        found = {}
        for name in tree.files:
            m = HIPE_FILE.fullmatch(Path(name).name)
            if m and "/hipe2020/" in f"/{name}":
                found[(m.group(1), m.group(2))] = name
        for split in hipe_splits:
            for lang in hipe_langs:
                if (split, lang) not in found:
                    raise ConvertError(f"{hipe}: no HIPE-2022-v2.1-hipe2020-{split}-{lang}.tsv under hipe2020/")
                jobs.append((f"hipe2020-{split}.{lang}", "hipe", tree,
                             [(read_hipe, (found[(split, lang)], split, lang))]))
    if nerel is not None:
        tree = Tree(nerel)
        for split in nerel_splits:
            if split not in NEREL_SPLITS:
                raise ConvertError(f"NEREL split {split!r} is not one of {', '.join(NEREL_SPLITS)}")
            anns = [n for n in tree.files if re.fullmatch(rf"(.*/)?NEREL-v1\.1/{split}/[^/]+\.ann", n)]
            if not anns:
                raise ConvertError(f"{nerel}: no NEREL-v1.1/{split}/*.ann files")
            jobs.append((f"nerel-{split}.ru", "nerel", tree, [(read_nerel_all, (anns, split))]))
    if not jobs:
        raise ConvertError("nothing to convert: give at least one of --elevant, --hipe, --nerel")
    out.mkdir(parents=True, exist_ok=True)
    stats: dict = {"sources": {}, "files": {}}
    for file_name, label, tree, readers in jobs:
        drops: Counter = Counter()
        docs = (d for reader, args in readers for d in reader(tree, *args, drops))
        rows = convert_documents(docs, drops)
        write_jsonl(out / f"{file_name}.jsonl", rows)
        stats["files"][f"{file_name}.jsonl"] = file_stats(rows, drops)
        stats["sources"][label] = {"commit": tree.commit()}
        logger.info("%s.jsonl: %d sentences, %d spans", file_name, len(rows), sum(len(r["spans"]) for r in rows))
    tmp = out / "stats.json.tmp"
    tmp.write_text(json.dumps(stats, indent=1, ensure_ascii=False) + "\n", "utf-8")
    tmp.replace(out / "stats.json")
    return stats


def read_nerel_all(tree: Tree, anns: list[str], split: str, drops: Counter) -> Iterator[Document]:
    for ann in sorted(anns):
        yield read_nerel(tree, ann, split, drops)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    release = "a clone or work tree, or a bare git dir (DIR@COMMIT; HEAD if no commit)"
    parser.add_argument("--elevant", help=f"ad-freiburg/elevant: {release}")
    parser.add_argument("--elevant-sets", default="wiki-fair-v2",
                        help=f"comma-separated, of {', '.join(ELEVANT_SETS)} (default wiki-fair-v2)")
    parser.add_argument("--hipe", help=f"hipe-eval/HIPE-2022-data: {release}")
    parser.add_argument("--hipe-langs", default="de,fr,en", help="comma-separated (default de,fr,en)")
    parser.add_argument("--hipe-splits", default="dev", help="comma-separated, of train,dev,test (default dev)")
    parser.add_argument("--nerel", help=f"nerel-ds/NEREL: {release}")
    parser.add_argument("--nerel-splits", default="dev,test",
                        help="comma-separated, of train,dev,test (default dev,test)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (JSONL files and stats.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        convert(args.out, elevant=args.elevant, elevant_sets=args.elevant_sets.split(","), hipe=args.hipe,
                hipe_langs=args.hipe_langs.split(","), hipe_splits=args.hipe_splits.split(","), nerel=args.nerel,
                nerel_splits=args.nerel_splits.split(","))
    except (ConvertError, OSError) as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
