"""Span-complete sentence data (data/spans/convert.py) on tiny hand-made releases, and the shipped files."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from xel.retrieval.splits import split_of

ROOT = Path(__file__).resolve().parents[1]
SPANS = ROOT / "data" / "spans"


def load_convert():
    spec = importlib.util.spec_from_file_location("spans_convert", SPANS / "convert.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


convert = load_convert()


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def surfaces(row: dict) -> list[tuple[str, str, str | None]]:
    return [(row["text"][s["start"] : s["end"]], s["type"], s["gold"]) for s in row["spans"]]


def check_invariants(rows: list[dict]) -> None:
    for row in rows:
        assert row["id"].startswith(row["doc"] + ":")
        previous_end = 0
        for span in row["spans"]:
            assert previous_end <= span["start"] < span["end"] <= len(row["text"]), row
            surface = row["text"][span["start"] : span["end"]]
            assert surface == surface.strip() and surface
            assert span["type"] in ("PER", "ORG", "LOC")
            previous_end = span["end"]


# ---------------------------------------------------------------------------------------------------------- ELEVANT

ELEVANT_TEXT = (
    "Title line\n\n"
    "John Smith studied at the University of Paris. He met the landgrave. "
    "It rained on 5 May 1900.\n"
    "Dr. Jane Doe joined Kill. Bill in 1999. Walt Beery was there. Then the king left."
)


def label(text: str, surface: str, entity: str, types: str, nth: int = 0, **extra) -> dict:
    start = -1
    for _ in range(nth + 1):
        start = text.index(surface, start + 1)
    return {"span": [start, start + len(surface)], "entity_id": entity, "name": surface, "type": types,
            "coref": False, **extra}


def write_elevant(root: Path) -> None:
    t = ELEVANT_TEXT
    labels = [
        label(t, "John Smith", "Q1", "Q215627"),
        label(t, "John Smith", "Q9", "Q215627"),  # a second entity for the same span: the first label wins
        label(t, "University of Paris", "Q2", "Q43229"),
        label(t, "Paris", "Q3", "Q27096213|Q43229"),  # nested in the ORG: the outermost kept span wins
        label(t, "He", "Q1", "Q215627", coref=True),
        label(t, "landgrave", "Q4", "Q4164871"),
        label(t, "5 May 1900", "DATETIME", "DATETIME"),
        label(t, "Jane Doe", "Q5", "Q17537576|Q215627"),
        label(t, "Kill. Bill", "Q6", "Q215627|Q43229"),  # a band: ORG; its full stop must not end a sentence
        label(t, "1999", "DATETIME", "DATETIME"),
        label(t, "Walt Beery", "<NIL>", "OTHER"),  # a name of no given type: its sentence goes
        label(t, "the king", "Q7", "Q215627"),  # lower case: not a name
        label(t, "Title line", "Q8", "Q215627"),  # outside the evaluation span
    ]
    article = {"id": 77, "title": "Title line", "text": t, "evaluation_span": [12, len(t)], "labels": labels}
    (root / "benchmarks").mkdir(parents=True)
    (root / "benchmarks" / "wiki-fair-v2.benchmark.jsonl").write_text(json.dumps(article) + "\n", "utf-8")


def test_elevant_sentences_spans_and_drops(tmp_path: Path) -> None:
    write_elevant(tmp_path / "elevant")
    stats = convert.convert(tmp_path / "out", elevant=str(tmp_path / "elevant"))
    rows = read_rows(tmp_path / "out" / "elevant-wiki-fair-v2.en.jsonl")
    check_invariants(rows)
    doc = "elevant/wiki-fair-v2:77"
    assert {r["doc"] for r in rows} == {doc} and {r["split"] for r in rows} == {split_of(doc)}
    assert [r["text"] for r in rows] == [
        "John Smith studied at the University of Paris.",
        "He met the landgrave.",
        "It rained on 5 May 1900.",
        "Dr. Jane Doe joined Kill. Bill in 1999.",
        "Then the king left.",
    ]
    assert surfaces(rows[0]) == [("John Smith", "PER", "Q1"), ("University of Paris", "ORG", "Q2")]
    assert rows[1]["spans"] == [] and rows[2]["spans"] == [] and rows[4]["spans"] == []
    assert surfaces(rows[3]) == [("Jane Doe", "PER", "Q5"), ("Kill. Bill", "ORG", "Q6")]
    for row in rows:  # the id carries the sentence's offsets in the document
        start, end = map(int, row["id"].rsplit(":", 1)[1].split("-"))
        assert ELEVANT_TEXT[start:end] == row["text"]
    file_stats = stats["files"]["elevant-wiki-fair-v2.en.jsonl"]
    assert file_stats["dropped"]["sentences with an untyped name (sentence dropped)"] == 1
    assert file_stats["dropped"]["nested inside a kept span"] == 1
    assert file_stats["dropped"]["lower-case (a concept, not a name)"] == 1
    assert file_stats["dropped"]["coreference"] == 1
    assert file_stats["dropped"]["same span as a kept one (first label kept)"] == 1
    assert file_stats["sentences_without_spans"] == 3 and file_stats["types"] == {"ORG": 2, "PER": 2}


def test_elevant_from_bare_git_at_a_commit(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    work = tmp_path / "work"
    write_elevant(work)
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(tmp_path / "bare")], check=True)
    stats = convert.convert(tmp_path / "out", elevant=f"{tmp_path / 'bare'}@{commit}")
    assert stats["sources"]["elevant"]["commit"] == commit
    direct = convert.convert(tmp_path / "out2", elevant=str(work))
    assert read_rows(tmp_path / "out" / "elevant-wiki-fair-v2.en.jsonl") == read_rows(
        tmp_path / "out2" / "elevant-wiki-fair-v2.en.jsonl")
    assert direct["files"] == stats["files"]


# ------------------------------------------------------------------------------------------------------------- HIPE

HIPE_HEADER = "\t".join(["TOKEN", "NE-COARSE-LIT", "NE-COARSE-METO", "NE-FINE-LIT", "NE-FINE-METO", "NE-FINE-COMP",
                         "NE-NESTED", "NEL-LIT", "NEL-METO", "MISC"])


def hipe_row(token: str, tag: str = "O", comp: str = "O", link: str = "_", misc: str = "_") -> str:
    return "\t".join([token, tag, "O", "O", "O", comp, "O", link, "_", misc])


def write_hipe(root: Path) -> None:
    lines = [
        HIPE_HEADER,
        "# hipe2022:document_id = NZZ-1",
        "# hipe2022:language = de",
        hipe_row("Herr", "B-pers", "B-comp.title", "Q10"),
        hipe_row("Müller", "I-pers", "B-comp.name", "Q10"),
        hipe_row("wohnt"),
        hipe_row("in"),
        hipe_row("Zü", "B-loc", link="Q72", misc="NoSpaceAfter"),
        hipe_row("¬", "I-loc", link="Q72", misc="EndOfLine"),
        hipe_row("rich", "I-loc", link="Q72", misc="NoSpaceAfter"),
        hipe_row(".", misc="EndOfSentence"),
        hipe_row("Nichts"),
        hipe_row("geschah", misc="NoSpaceAfter"),
        hipe_row(".", misc="EndOfLine|EndOfSentence"),
        hipe_row("1848", "B-time"),
        hipe_row("kam"),
        hipe_row("die"),
        hipe_row("Neue", "B-org", link="NIL"),
        hipe_row("Bank", "I-org", link="NIL", misc="EndOfSentence"),  # no split inside an entity
        hipe_row("AG", "I-org", link="NIL"),
        hipe_row("der", "B-pers", "B-comp.title"),  # a title alone: no name, no span
        hipe_row("König", "I-pers", "B-comp.function", misc="EndOfSentence"),
        "# hipe2022:document_id = NZZ-2",
        hipe_row("Bern", "B-loc", link="Q70", misc="EndOfSentence"),
    ]
    folder = root / "data" / "v2.1" / "hipe2020" / "de"
    folder.mkdir(parents=True)
    (folder / "HIPE-2022-v2.1-hipe2020-dev-de.tsv").write_text("\n".join(lines) + "\n", "utf-8")


def test_hipe_text_from_tokens_and_spans(tmp_path: Path) -> None:
    write_hipe(tmp_path / "hipe")
    stats = convert.convert(tmp_path / "out", hipe=str(tmp_path / "hipe"), hipe_langs=["de"])
    rows = read_rows(tmp_path / "out" / "hipe2020-dev.de.jsonl")
    check_invariants(rows)
    assert [r["text"] for r in rows] == [
        "Herr Müller wohnt in Zü¬ rich.", "Nichts geschah.", "1848 kam die Neue Bank AG der König", "Bern"]
    assert [r["doc"] for r in rows] == ["hipe/hipe2020/dev:NZZ-1"] * 3 + ["hipe/hipe2020/dev:NZZ-2"]
    assert {r["split"] for r in rows} == {"dev"} and {r["lang"] for r in rows} == {"de"}
    assert surfaces(rows[0]) == [("Müller", "PER", "Q10"), ("Zü¬ rich", "LOC", "Q72")]
    assert rows[1]["spans"] == []
    assert surfaces(rows[2]) == [("Neue Bank AG", "ORG", None)]
    assert surfaces(rows[3]) == [("Bern", "LOC", "Q70")]
    dropped = stats["files"]["hipe2020-dev.de.jsonl"]["dropped"]
    assert dropped["type time"] == 1 and dropped["PER span without a name (title or function only)"] == 1
    assert dropped["sentence boundary inside an annotation (not split)"] == 1


def test_hipe_rejects_a_bad_tag(tmp_path: Path) -> None:
    folder = tmp_path / "hipe" / "hipe2020" / "de"
    folder.mkdir(parents=True)
    lines = [HIPE_HEADER, "# hipe2022:document_id = d", hipe_row("x", "X-pers")]
    (folder / "HIPE-2022-v2.1-hipe2020-dev-de.tsv").write_text("\n".join(lines) + "\n", "utf-8")
    with pytest.raises(convert.ConvertError, match=r"dev-de\.tsv:3: NE-COARSE-LIT 'X-pers'"):
        convert.convert(tmp_path / "out", hipe=str(tmp_path / "hipe"), hipe_langs=["de"])


# ------------------------------------------------------------------------------------------------------------ NEREL

NEREL_TEXT = "Барак Обама посетил Москву.\r\nПрезидент США Джо Байден молчал. Т. е. ничего. Мэрия Москвы закрыта."


def write_nerel(root: Path) -> None:
    t = NEREL_TEXT

    def ent(tid: str, kind: str, surface: str, nth: int = 0) -> str:
        start = -1
        for _ in range(nth + 1):
            start = t.index(surface, start + 1)
        return f"{tid}\t{kind} {start} {start + len(surface)}\t{surface}"

    ann = [
        ent("T1", "PERSON", "Барак Обама"),
        ent("T2", "CITY", "Москву"),
        ent("T3", "PROFESSION", "Президент США"),  # not kept: the COUNTRY inside it stays
        ent("T4", "COUNTRY", "США"),
        ent("T5", "PERSON", "Джо Байден"),
        ent("T6", "ORGANIZATION", "Мэрия Москвы"),
        ent("T7", "CITY", "Москвы"),  # nested in the ORG
        f"T8\tPERSON {t.index('Т. е.')} {t.index('Т. е.') + 2};{t.index('е.')} {t.index('е.') + 2}\tТ. е.",
        "N1\tReference T1 Wikidata:Q76\tБарак Обама",
        "N2\tReference T5 Wikidata:NULL\tДжо Байден",
        "R1\tWORKPLACE Arg1:T5 Arg2:T4",
    ]
    folder = root / "NEREL-v1.1" / "dev"
    folder.mkdir(parents=True)
    (folder / "1_text.txt").write_bytes(t.encode("utf-8"))
    (folder / "1_text.ann").write_text("\n".join(ann) + "\n", "utf-8")


def test_nerel_outermost_kept_type_links_and_crlf_offsets(tmp_path: Path) -> None:
    write_nerel(tmp_path / "nerel")
    stats = convert.convert(tmp_path / "out", nerel=str(tmp_path / "nerel"), nerel_splits=["dev"])
    rows = read_rows(tmp_path / "out" / "nerel-dev.ru.jsonl")
    check_invariants(rows)
    assert [r["text"] for r in rows] == [
        "Барак Обама посетил Москву.", "Президент США Джо Байден молчал.", "Т. е. ничего.", "Мэрия Москвы закрыта."]
    assert {r["doc"] for r in rows} == {"nerel/dev:1_text"} and {r["split"] for r in rows} == {"dev"}
    assert surfaces(rows[0]) == [("Барак Обама", "PER", "Q76"), ("Москву", "LOC", None)]
    assert surfaces(rows[1]) == [("США", "LOC", None), ("Джо Байден", "PER", None)]
    assert rows[2]["spans"] == []
    assert surfaces(rows[3]) == [("Мэрия Москвы", "ORG", None)]
    dropped = stats["files"]["nerel-dev.ru.jsonl"]["dropped"]
    assert dropped["type PROFESSION"] == 1 and dropped["discontinuous span"] == 1
    assert dropped["nested inside a kept span"] == 1


def test_no_release_given_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(convert.ConvertError, match="nothing to convert"):
        convert.convert(tmp_path / "out")
    assert convert.main(["--out", str(tmp_path / "out"), "--nerel", str(tmp_path / "missing")]) == 1


# ---------------------------------------------------------------------------------------------------- shipped files

def test_shipped_files_parse_and_match_stats() -> None:
    stats = json.loads((SPANS / "stats.json").read_text("utf-8"))
    shipped = sorted(p.name for p in SPANS.glob("*.jsonl"))
    assert shipped == sorted(stats["files"])
    assert not any(name.startswith(("nerel", "elevant-news")) for name in shipped)  # not redistributable
    for name in shipped:
        rows = read_rows(SPANS / name)
        check_invariants(rows)
        assert len({r["id"] for r in rows}) == len(rows)
        spans = [s for r in rows for s in r["spans"]]
        expected = stats["files"][name]
        assert expected["sentences"] == len(rows) and expected["spans"] == len(spans)
        assert expected["types"] == dict(Counter(s["type"] for s in spans))
        assert expected["linked"] == sum(s["gold"] is not None for s in spans)
        assert expected["sentences_without_spans"] == sum(not r["spans"] for r in rows)
        for split, counts in expected["per_split"].items():
            assert counts["sentences"] == sum(r["split"] == split for r in rows)
        if name.startswith("elevant"):
            assert all(r["split"] == split_of(r["doc"]) for r in rows)
