"""The packed KB table (retrieval/kb_table.py) against dicts of the records, with colliding digests; the name
matcher on it against a dict-of-lists reference; a store whose entity rows are not in kb.jsonl order refused;
``xel-nn eval --candidates`` reads the file and generates nothing.

    pytest tests/test_kb_table.py
"""

from __future__ import annotations

import json
import random
from collections import defaultdict

import pytest
from click.testing import CliRunner

import retrieval.kb_table as kb_table
import retrieval.nn as nn
from precompute.store import StoreError, open_store
from retrieval.candidates import NAME_EXACT_SCORE, NAME_NORMALISED_SCORE, NameMatcher, check_entity_rows
from retrieval.cli import main
from retrieval.files import read_candidates, read_predictions
from retrieval.index import RetrievalError
from retrieval.index_files import load_index
from retrieval.kb_table import KBTable
from retrieval.names import normalise_mention
from tests.test_retrieval import kb_store  # noqa: F401

NAMES = ["Paris", "paris", "PARIS!", "Lyon", "Москва", "Köln", "köln", "Paris", "", "São Paulo", "sao paulo"]


def records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"Q{i}" if i % 7 else f"entity/{i}/ü", "name": rng.choice(NAMES) + ("" if i % 3 else f" {i % 5}"),
             "lang": rng.choice(["en", "de", "ru"]), "links": None if i % 11 == 0 else rng.randint(0, 50),
             "description": "not kept"} for i in range(n)]


@pytest.fixture(params=["blake2b", "colliding"])
def digests(request, monkeypatch):
    if request.param == "colliding":  # 4 buckets for every string: lookups must compare the strings themselves
        monkeypatch.setattr(kb_table, "id_digest", lambda text: len(text) % 4)


def test_table_answers_as_the_records_do(digests):
    recs = records(300)
    table = KBTable(recs)
    assert len(table) == 300 and list(table.ids) == [r["id"] for r in recs]
    for i, r in enumerate(recs):
        assert table.position(r["id"]) == i and r["id"] in table
        assert table.record(i) == {k: r[k] for k in ("id", "name", "lang", "links")}
        assert table.name_of(r["id"]) == r["name"]
    assert table.position("Q9999") is None and "Q9999" not in table and 5 not in table
    assert table.link_counts() == [r["links"] for r in recs]
    mask = table.lang_mask(["de", "ru"])
    assert mask.tolist() == [r["lang"] in ("de", "ru") for r in recs]


def reference_lookup(recs: list[dict], langs: set[str], surface: str) -> list[tuple[str, float]]:
    """The dict-of-lists matcher this table replaced."""
    exact, normalised = defaultdict(list), defaultdict(list)
    links = {}
    for r in recs:
        if r["lang"] in langs:
            exact[r["name"]].append(r["id"])
            normalised[normalise_mention(r["name"])].append(r["id"])
            links[r["id"]] = r.get("links") or 0
    for table in (exact, normalised):
        for key in table:
            table[key].sort(key=lambda i: (-links[i], i))
    out = [(k, NAME_EXACT_SCORE) for k in exact.get(surface, [])]
    seen = {k for k, _ in out}
    out += [(k, NAME_NORMALISED_SCORE) for k in normalised.get(normalise_mention(surface), []) if k not in seen]
    return out


def test_name_matcher_equals_the_dict_reference(digests):
    recs = records(400, seed=1)
    table = KBTable(recs)
    for langs in ({"en", "de", "ru"}, {"de"}):
        matcher = NameMatcher(table, table.lang_mask(langs))
        for surface in NAMES + ["Paris 1", "paris 2", "nowhere", "SAO PAULO 3"]:
            got = matcher.lookup(surface)
            assert got == reference_lookup(recs, langs, surface), surface
        inside = [r["id"] for r in recs if r["lang"] in langs]
        assert all(i in matcher for i in inside) and not any(r["id"] in matcher for r in recs if r["id"] not in inside)


def test_entity_rows_out_of_kb_order_are_refused(kb_store, tmp_path):  # noqa: F811
    index_dir = tmp_path / "index"
    assert CliRunner().invoke(main, ["build", "--features", str(kb_store.root), "--out", str(index_dir)]).exit_code == 0
    index, store = load_index(index_dir), open_store(kb_store.root)
    check_entity_rows(store, index, KBTable.of_store(store))  # in order: accepted
    path = kb_store.root / "inputs" / "kb.jsonl"
    lines = path.read_text().splitlines()
    lines[3], lines[4] = lines[4], lines[3]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(StoreError, match="es row 3 is 'Q3', but line 4 of inputs/kb.jsonl is another entry"):
        check_entity_rows(store, index, KBTable.of_store(store))
    lines[3], lines[4] = lines[4], lines[3]
    path.write_text("\n".join(lines[:-1]) + "\n")  # in order, but one entry short
    with pytest.raises(StoreError, match="es row 99 is 'Q99'"):
        check_entity_rows(store, index, KBTable.of_store(store))


def test_eval_with_a_candidates_file_generates_no_candidates(kb_store, tmp_path, monkeypatch):  # noqa: F811
    run = CliRunner()
    index, out = tmp_path / "index", tmp_path / "out"
    assert run.invoke(main, ["build", "--features", str(kb_store.root), "--out", str(index)]).exit_code == 0
    r = run.invoke(main, ["candidates", "--index", str(index), "--out", str(out / "cands"), "--k", "5"])
    assert r.exit_code == 0, r.output
    lists = read_candidates(out / "cands" / "candidates.jsonl")

    def refuse(*args, **kwargs):
        raise AssertionError("eval --candidates generated candidates")

    monkeypatch.setattr(nn, "generate_candidates", refuse)
    r = run.invoke(main, ["eval", "--index", str(index), "--out", str(out / "eval"),
                          "--candidates", str(out / "cands" / "candidates.jsonl")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    preds = read_predictions(out / "eval" / "predictions.jsonl")
    assert len(preds) == len(lists) == 70
    for p in preds:  # nn ranks exactly the file's list
        assert sorted(k for k, _ in p["candidates"]) == sorted(k for k, _, _ in lists[p["id"]])
        assert p["pred"] == p["candidates"][0][0]
    recall = json.loads((out / "eval" / "recall.json").read_text())
    assert set(recall["all"]) == {"file"} and "file" in r.output
    gold = {m["id"]: m.get("gold") for m in kb_store.records("mentions")}
    found = sum(gold[m] in {k for k, _, _ in c} for m, c in lists.items() if gold[m] is not None)
    assert recall["all"]["file"]["R@100"] == pytest.approx(found / sum(g is not None for g in gold.values()))


def test_a_loaded_index_reads_its_row_digests_only_when_asked(kb_store, tmp_path, monkeypatch):  # noqa: F811
    index_dir = tmp_path / "index"
    assert CliRunner().invoke(main, ["build", "--features", str(kb_store.root), "--out", str(index_dir)]).exit_code == 0
    want = json.loads((index_dir / "digests-en.json").read_text())
    parsed = []
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda text, *a, **k: parsed.append(len(text)) or real_loads(text, *a, **k))
    index = load_index(index_dir)
    n_loads = len(parsed)
    assert callable(index.langs["en"]._digests)  # not read by the load
    assert index.langs["en"].digests == want and len(parsed) == n_loads + 1
    assert index.langs["en"].digests == want and len(parsed) == n_loads + 1  # read once
    (index_dir / "digests-es.json").write_text("[]\n")  # changed after the load: refused when asked for
    with pytest.raises(RetrievalError, match="digests-es.json: sha256"):
        index.langs["es"].digests


def test_candidates_and_eval_never_hold_the_kb_records(kb_store, tmp_path, monkeypatch):  # noqa: F811
    from precompute.store import Store

    real_records = Store.records

    def records(self, name):
        if name == "kb":
            raise AssertionError("the whole KB was read into a list of records")
        return real_records(self, name)

    def load(self, kind):
        raise AssertionError(f"Store.load({kind!r}) read every row")

    run = CliRunner()
    index, out = tmp_path / "index", tmp_path / "out"
    assert run.invoke(main, ["build", "--features", str(kb_store.root), "--out", str(index)]).exit_code == 0
    monkeypatch.setattr(Store, "records", records)
    monkeypatch.setattr(Store, "load", load)
    for args in (["candidates", "--index", str(index), "--out", str(out / "cands")],
                 ["eval", "--index", str(index), "--out", str(out / "eval")]):
        r = run.invoke(main, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
    assert len(read_candidates(out / "cands" / "candidates.jsonl")) == 70
