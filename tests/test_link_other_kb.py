"""``xel-link --features``, ``Linker.load(features=...)``: a run trained on one KB links against another (the paper's
zero-shot setting) exactly as the trainer's ``--eval-features`` evaluates it there, with the tiny model.

    pytest tests/test_link_other_kb.py

Store A is the English capitals of :func:`tests.train_fixtures.capital_cities` (no ``links`` counts). Store B is
another KB: the capitals under their German names in another order, two more cities under ids A does not have,
every entry with a ``links`` count; its English mentions feed B's own candidate alias prior, its German ones are
linked. B has its own index and candidates (``k=4``, not A's 5), laid out as ``xel-experiment --eval-data`` does.
The run is residual with +P (``--popularity-missing median``), so the alias prior of the pair features (A's, by
KB id), B's recomputed popularity and B's candidate settings all shape the scores compared.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from xel.link.cli import main as link_main
from xel.link.linker import KBSource, Linker, LinkError
from xel.precompute.config import PrecomputeConfig
from xel.precompute.run import run as run_precompute
from xel.precompute.store import open_store
from xel.retrieval.build import BuildConfig, run_build
from xel.retrieval.candidate_lists import CandidatesConfig, run_candidates
from xel.retrieval.files import read_candidates, read_predictions
from xel.retrieval.search import SearchOptions
from xel.train.config import TrainConfig
from xel.train.run import run as run_train

from tests.conftest import write_jsonl
from tests.train_fixtures import CAPITALS, GERMAN_CAPITALS

pytestmark = [pytest.mark.ray, pytest.mark.slow]

B_NAMES = {**{f"Q{i}": name for i, name in enumerate(GERMAN_CAPITALS)}, "B10": "Bern", "B11": "Warschau"}
B_ENGLISH = {**{f"Q{i}": name for i, name in enumerate(CAPITALS)}, "B10": "Bern", "B11": "Warsaw"}
B_ORDER = ["B11", "Q7", "Q3", "Q9", "Q0", "B10", "Q5", "Q1", "Q8", "Q2", "Q6", "Q4"]


def other_kb(root: Path) -> Path:
    """Store B's inputs (see the module docstring); one German mention is NIL (Lisbon is not in B's KB)."""
    kb = [{"id": k, "name": B_NAMES[k], "description": f"{B_NAMES[k]} ist eine Hauptstadt", "lang": "de",
           "links": 5 + 7 * i} for i, k in enumerate(B_ORDER)]
    mentions = []
    for rep in range(3):
        for k in B_ORDER:
            s = f"We flew to {B_ENGLISH[k]} last spring."
            mentions.append({"id": f"b-en{rep}-{k}", "lang": "en", "sentence": s, "start": 11,
                             "end": 11 + len(B_ENGLISH[k]), "context": s, "gold": k})
    for rep, template in enumerate(("Wir waren in {} im Urlaub.", "Die Reise nach {} war schön.")):
        for k, name in [*((k, B_NAMES[k]) for k in B_ORDER), (None, "Lissabon")]:
            mentions.append(german_mention(f"b-de{rep}-{k}", template.format(name), name, k))
    for k in ("Q2", "Q4", "Q7", "Q8", "B11"):  # English names in German text: only B's alias prior knows them
        mentions.append(german_mention(f"b-de-en-{k}", f"Die Zeitung schreibt über {B_ENGLISH[k]}.", B_ENGLISH[k], k))
    write_jsonl(root / "kb.jsonl", kb)
    write_jsonl(root / "mentions.jsonl", mentions)
    return root


def german_mention(mid: str, sentence: str, surface: str, gold: str | None) -> dict:
    start = sentence.index(surface)
    return {"id": mid, "lang": "de", "sentence": sentence, "start": start, "end": start + len(surface),
            "context": sentence, "gold": gold}


@pytest.fixture(scope="module")
def two_kbs(tmp_path_factory, tiny_model_dir, capital_stores) -> dict[str, Path]:
    """Store A (``h5``, ``index``, ``candidates``: a copy of the session's capital-cities store, which is built as
    store B is, with ``k=5``), store B (``b/h5``, ``b/index``, ``b/candidates``) and a run ``train/en`` trained on
    A and evaluated on B's German mentions (``--eval-features b/h5``)."""
    root = tmp_path_factory.mktemp("other-kb")
    for part in ("data", "h5", "index", "candidates"):
        shutil.copytree(capital_stores / part, root / part)
    base, data = root / "b", other_kb(root / "b" / "data")
    run_precompute(PrecomputeConfig(data=data, model=tiny_model_dir, out=base / "h5", dtype="fp32"))
    run_build(BuildConfig(features=str(base / "h5"), out=str(base / "index")))
    run_candidates(CandidatesConfig(search=SearchOptions(index=str(base / "index"), features=str(base / "h5")),
                                    out=str(base / "candidates"), k=4))
    out = root / "train" / "en"
    run_train(TrainConfig(features=str(root / "h5"), candidates=str(root / "candidates" / "candidates.jsonl"),
                          eval_features=str(root / "b" / "h5"),
                          eval_candidates=str(root / "b" / "candidates" / "candidates.jsonl"), eval_lang=("de",),
                          out=str(out), train_lang=("en",), epochs=3, tune_nil=True, popularity=True,
                          popularity_missing="median", plots=False, progress=False, threads=1))
    return {"run": out, "a": root / "h5", "b": root / "b" / "h5"}


def b_test_items(two_kbs: dict[str, Path]) -> tuple[list[dict], dict[str, dict]]:
    """B's German mentions as linker items, and the trainer's predictions for them (its test split)."""
    by_id = {r["id"]: r for r in open_store(two_kbs["b"]).records("mentions")}
    preds = {p["id"]: p for p in read_predictions(two_kbs["run"] / "predictions.jsonl")}
    assert set(preds) == {m for m, r in by_id.items() if r["lang"] == "de"}
    items = [{k: by_id[m][k] for k in ("id", "sentence", "start", "end", "lang", "context")} for m in preds]
    return items, preds


EXPECTED_SOURCE = {"candidate_prior": "recomputed", "pair_prior": "kept", "popularity": "recomputed"}


def test_linker_with_another_kb_reproduces_the_trainers_eval_features_predictions(two_kbs):
    items, preds = b_test_items(two_kbs)
    linker = Linker.load(two_kbs["run"], features=two_kbs["b"])
    assert linker.kb_source == KBSource(features=str(two_kbs["b"]), **EXPECTED_SOURCE)
    assert linker.generator.k == 4  # B's candidate settings, not the run's (k=5)
    links = linker.link(items, k=100)
    assert [x.id for x in links] == list(preds)
    for link in links:
        want = preds[link.id]
        assert link.pred == want["pred"], link.id
        assert link.score == pytest.approx(want["score"], abs=1e-5)
        assert [c.id for c in link.candidates] == [c[0] for c in want["candidates"]], link.id
        assert [c.score for c in link.candidates] == pytest.approx([c[1] for c in want["candidates"]], abs=1e-5)
        assert {c.name for c in link.candidates} <= set(B_NAMES.values())
    # the candidates and their sources are those xel-nn candidates wrote for B (B's alias prior, from B's own
    # English training mentions, proposed the English names in German text)
    written = read_candidates(two_kbs["b"].parent / "candidates" / "candidates.jsonl")
    for link in links:
        assert {(c.id, c.source) for c in link.candidates} == {(k, src) for k, _, src in written[link.id]}, link.id
    assert any(c.source == "prior" for x in links if x.id.startswith("b-de-en") for c in x.candidates)
    assert any(c.id.startswith("B") for x in links for c in x.candidates)  # entities only B has


def test_the_run_own_kb_is_still_the_default_and_says_nothing(two_kbs):
    linker = Linker.load(two_kbs["run"])
    assert linker.kb_source is None and len(linker.kb) == len(CAPITALS)
    [link] = linker.link([{"text": "Tokyo", "start": 0, "end": 5}])
    assert "kb" not in link.to_json()
    assert Linker.load(two_kbs["run"], features=two_kbs["a"]).kb_source is None


def test_xel_link_features_writes_the_trainers_predictions_and_says_which_kb(two_kbs, tmp_path):
    items, preds = b_test_items(two_kbs)
    src = write_jsonl(tmp_path / "in.jsonl", items)
    out = tmp_path / "links.jsonl"
    result = CliRunner().invoke(link_main, ["--model", str(two_kbs["run"]), "--features", str(two_kbs["b"]),
                                            "--in", str(src), "--out", str(out), "--no-progress",
                                            "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    assert f"linked against the KB of {two_kbs['b']}, not the run's" in result.output
    assert "pair alias prior kept" in result.output and "popularity recomputed" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(preds)
    for r in rows:
        assert r["pred"] == preds[r["id"]]["pred"] and r["score"] == pytest.approx(preds[r["id"]]["score"], abs=1e-5)
        assert r["kb"] == {"features": str(two_kbs["b"]), **EXPECTED_SOURCE}
        assert r["name"] == (None if r["pred"] is None else B_NAMES[r["pred"]])
        assert set(r) == {"id", "pred", "name", "score", "candidates", "sources", "kb"}


def test_serve_health_names_the_kb(two_kbs):
    from fastapi.testclient import TestClient
    from xel.link.serve import create_app

    linker = Linker.load(two_kbs["run"], features=two_kbs["b"])
    with TestClient(create_app(linker, name=str(two_kbs["run"]))) as client:
        health = client.get("/health").json()
        assert health["kb"] == {"features": str(two_kbs["b"]), **EXPECTED_SOURCE}
        assert health["kb_entries"] == len(B_NAMES)
        [line] = client.post("/link", json={"items": [{"text": "Wir waren in Wien.", "start": 13, "end": 17,
                                                       "lang": "de"}]}).json()["links"]
        assert line["kb"]["features"] == str(two_kbs["b"])


def test_another_kb_without_an_index_beside_it_needs_index(two_kbs, tmp_path):
    lone = tmp_path / "lone" / "h5"
    shutil.copytree(two_kbs["b"], lone)
    with pytest.raises(LinkError, match=r"--features .*lone/h5: no FAISS index at .*lone/index .*pass it as "
                                        r"--index DIR"):
        Linker.load(two_kbs["run"], features=lone)
    linker = Linker.load(two_kbs["run"], features=lone, index_dir=two_kbs["b"].parent / "index")
    assert linker.kb_source is not None and linker.kb_source.features == str(lone)


def test_another_kb_from_another_encoder_is_refused(two_kbs, tmp_path):
    other = tmp_path / "other" / "h5"
    shutil.copytree(two_kbs["b"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["prefix"] = {"query": "query: ", "passage": "passage: "}
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LinkError, match=r"--features .*other/h5: stores .* were built with different encoders.*"
                                        r"trained on"):
        Linker.load(two_kbs["run"], features=other)
