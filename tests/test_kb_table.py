"""The packed KB table (retrieval/kb_table.py) against dicts of the records, with colliding digests; the name
matcher on it against a dict-of-lists reference; a store whose entity rows are not in kb.jsonl order refused;
``xel-nn eval --candidates`` reads the file and generates nothing.

    pytest tests/test_kb_table.py
"""

from __future__ import annotations

import json
import random
from collections import defaultdict

import numpy as np
import pytest
import xel.precompute.schema as schema
import xel.retrieval.ngram as ngram
import xel.retrieval.nn as nn
from click.testing import CliRunner
from sklearn.feature_extraction.text import TfidfVectorizer
from xel.precompute.schema import StringColumn
from xel.precompute.store import StoreError, open_store
from xel.retrieval.candidates import (
    NAME_EXACT_SCORE,
    NAME_NORMALISED_SCORE,
    AliasPrior,
    MentionRef,
    NameMatcher,
    check_entity_rows,
    prior_candidates,
)
from xel.retrieval.cli import main
from xel.retrieval.files import read_candidates, read_predictions
from xel.retrieval.index import RetrievalError
from xel.retrieval.index_files import load_index
from xel.retrieval.kb_table import KBTable
from xel.retrieval.names import normalise_mention

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
        monkeypatch.setattr(schema, "id_digest", lambda text: len(text) % 4)
    return request.param


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
    text = path.read_text()
    lines = text.splitlines()
    swapped = lines[:3] + [lines[4], lines[3]] + lines[5:]
    for kb_lines, error in (
        (swapped, "es row 3 is 'Q3', but entry 3 of .*inputs/kb.jsonl is 'Q4'"),
        (lines[:-1], "es has more rows than the 99 entries of"),
        (lines + [json.dumps({**json.loads(lines[0]), "id": "Q100"})], "100 es rows for the 101 entries"),
        ([], "inputs/kb.jsonl: missing or empty"),
    ):
        path.write_text("".join(line + "\n" for line in kb_lines))
        with pytest.raises(StoreError, match=error):
            check_entity_rows(store, index, KBTable.of_store(store))
    path.write_text(text)
    # the index's entities must be the KB's, per label language
    index.langs["en"].ids[0], index.langs["es"].ids[0] = index.langs["es"].ids[0], index.langs["en"].ids[0]
    with pytest.raises(StoreError, match="KB 'en' entities differ from those indexed"):
        check_entity_rows(store, index, KBTable.of_store(store))
    index.langs["en"].ids[0] = index.langs["en"].ids[1]
    with pytest.raises(StoreError, match="KB 'en' entities differ from those indexed"):
        check_entity_rows(store, index, KBTable.of_store(store))


def test_an_ec_kind_out_of_kb_order_is_refused(kb_store, tmp_path):  # noqa: F811
    from xel.precompute.shards import read_shard, write_shard
    from xel.precompute.store import write_manifest

    index_dir = tmp_path / "index"
    assert CliRunner().invoke(main, ["build", "--features", str(kb_store.root), "--out", str(index_dir)]).exit_code == 0
    store = open_store(kb_store.root)
    entry = store.manifest["kinds"]["ec"]["shards"][0]
    shard = read_shard(kb_store.root / entry["path"])
    ids = list(shard.ids)
    ids[0], ids[1] = ids[1], ids[0]
    entry["checksum"] = write_shard(kb_store.root / entry["path"], kind="ec", start=0, ids=ids, langs=shard.langs,
                                    features=shard.features, input_hash=shard.input_hash)
    m = store.manifest
    write_manifest(kb_store.root, encoder=m["encoder"], model=m["model"], layer=m["layer"],
                   max_length=m["max_length"], prefix=m["prefix"], dtype=m["dtype"], dim=m["dim"],
                   shards={k: v["shards"] for k, v in m["kinds"].items()})
    store = open_store(kb_store.root)
    with pytest.raises(StoreError, match="ec row 0 is 'Q1', but entry 0"):
        check_entity_rows(store, load_index(index_dir), KBTable.of_store(store))


def test_string_columns_refuse_positions_out_of_range():
    column = StringColumn()
    for text in ("a", "bb", "ccc"):
        column.append(text)
    assert [column[i] for i in (0, 1, 2, -1, -3)] == ["a", "bb", "ccc", "ccc", "a"]
    for i in (3, -4):
        with pytest.raises(IndexError):
            column[i]
    table = KBTable(records(5))
    assert table.lang_mask(iter(["en", "de", "ru"])).all()  # any iterable, read once


def test_ngram_chunks_of_empty_names_and_a_kb_without_ngrams():
    vectorizer, matrix = ngram.fit_chunked(["", "!!", "Ab", "", "Karo"], chunk=2)  # the first chunk has no n-gram
    want = TfidfVectorizer(analyzer="char_wb", ngram_range=ngram.NGRAM_RANGE, sublinear_tf=True,
                           dtype=np.float32).fit(["", "", "ab", "", "karo"])
    assert vectorizer.vocabulary_ == want.vocabulary_ and matrix.shape == (5, len(want.vocabulary_))
    for names in ([], ["", "?!"]):
        with pytest.raises(RetrievalError, match="hold no character n-grams"):
            ngram.fit_chunked(names)


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
    from xel.precompute.store import Store

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


def same_name_records(n: int, seed: int = 0) -> list[dict]:
    """``n`` entries most of which share a name (and a normalised name), with tied and null ``links``."""
    rng = random.Random(seed)
    names = ["Berlin"] * 8 + ["berlin", "BERLIN!", "Berlin 2", "Bonn"]
    return [{"id": f"Q{rng.randrange(10**6)}-{i}", "name": rng.choice(names), "lang": rng.choice(["en", "de"]),
             "links": None if i % 5 == 0 else rng.choice([0, 1, 1, 2, 30])} for i in range(n)]


def test_many_entries_of_one_name_match_as_the_dict_reference_without_normalising_them(digests, monkeypatch):
    recs = same_name_records(3000)
    calls = []
    for module in ("xel.retrieval.kb_table", "xel.retrieval.candidates"):
        monkeypatch.setattr(f"{module}.normalise_mention", lambda s: calls.append(s) or normalise_mention(s))
    table = KBTable(recs)
    for langs in ({"en", "de"}, {"de"}):
        matcher = NameMatcher(table, table.lang_mask(langs))
        for surface in ["Berlin", "berlin", "BERLIN!", "Bonn", "Berlin 2", "Paris"]:
            calls.clear()
            expected = reference_lookup(recs, langs, surface)
            assert matcher.lookup(surface) == expected, surface
            if digests == "blake2b":  # the mention normalised, and one of the entries: not all of them
                assert len(calls) <= 2, (surface, len(calls))
            for limit in (0, 1, 7, 100):
                assert matcher.lookup(surface, limit) == expected[:limit]
            keep = [k for k, _ in expected[-3:]]
            assert matcher.lookup(surface, 2, keep) == expected[:2] + [e for e in expected[2:] if e[0] in keep]


def test_prior_candidates_with_a_limit_are_the_first_of_all_of_them(digests):
    recs = same_name_records(2000, seed=3)
    table = KBTable(recs)
    names = NameMatcher(table, table.lang_mask({"en"}))
    berlins = [r["id"] for r in recs if r["name"] == "Berlin" and r["lang"] == "en"]
    others = [r["id"] for r in recs if r["name"] == "Bonn"]
    training = [MentionRef(f"t{i}", "en", "Berlin", gold, None) for i, gold in
                enumerate([berlins[-1]] * 3 + [berlins[-5], others[0], berlins[0]])]
    prior = AliasPrior(training, "en")
    for surface in ("Berlin", "berlin", "Bonn", "Paris"):
        mention = MentionRef("m", "en", surface, None, None)
        full = prior_candidates(mention, prior, names)
        for limit in (1, 3, 10, 50):
            assert prior_candidates(mention, prior, names, limit) == full[:limit], (surface, limit)
