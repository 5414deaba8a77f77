"""Raw text in, entities out, on a run trained end to end with the tiny model: ``xel-detect`` trains the run's
detector (token features cached, not recomputed by a rerun), ``xel-link --detect`` writes the documents contract
(sorted, non-overlapping spans, ``"mentions": []`` for a document without any), ``Linker.link_text`` and
``POST /link`` with documents give the same, and a bad documents file is refused line by line.

    HF_HUB_OFFLINE=1 pytest tests/test_detect_link.py
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from xel.detect import train as detect_train
from xel.detect.cli import main as detect_main
from xel.detect.tagger import tag
from xel.detect.tokens import token_features
from xel.link.cli import main as link_main
from xel.link.linker import Linker
from xel.precompute.encoding import TextEncoder

from tests.conftest import write_jsonl
from tests.train_fixtures import CAPITALS

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DOCS = [
    {"id": "two", "text": f"Last year we visited {CAPITALS[0]} with friends. Then we visited {CAPITALS[1]} alone.",
     "lang": "en"},
    {"id": "none", "text": "", "lang": "en"},
    {"id": "plain", "text": "nothing here is named at all.", "lang": "de"},
]


@pytest.fixture(scope="module")
def run_dir(capital_run, tmp_path_factory) -> Path:
    """A copy of the session's trained run (``tests/conftest.py``): xel-detect writes its detector into it."""
    out = tmp_path_factory.mktemp("detect") / "en"
    shutil.copytree(capital_run, out)
    return out


def check_contract(lines: list[dict], docs: list[dict], kb_ids: set[str]) -> None:
    assert [line["id"] for line in lines] == [d["id"] for d in docs]
    for line, doc in zip(lines, docs):
        spans = line["mentions"]
        assert all(a["end"] <= b["start"] for a, b in zip(spans, spans[1:]))
        for m in spans:
            assert set(m) == {"start", "end", "text", "pred", "name", "score", "detect_score", "candidates"}
            assert doc["text"][m["start"] : m["end"]] == m["text"] and m["text"].strip() == m["text"]
            assert m["pred"] is None or (m["pred"] in kb_ids and m["name"] in CAPITALS)
            assert all(c[0] in kb_ids and len(c) == 3 for c in m["candidates"])


def test_detect_then_link_documents(run_dir, tmp_path, monkeypatch):
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    kb_ids = {f"Q{i}" for i in range(len(CAPITALS))}
    runner = CliRunner()

    out = tmp_path / "gaz.jsonl"  # the gazetteer baseline needs no training
    result = runner.invoke(link_main, ["--model", str(run_dir), "--detect", "--spotter", "gazetteer", "--in",
                                       str(docs), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    check_contract(lines, DOCS, kb_ids)
    assert [m["text"] for m in lines[0]["mentions"]] == CAPITALS[:2]
    assert lines[1]["mentions"] == [] and lines[2]["mentions"] == []

    out = tmp_path / "tagged.jsonl"  # no detector yet: the message says how to train one
    result = runner.invoke(link_main, ["--model", str(run_dir), "--detect", "--in", str(docs), "--out", str(out)])
    assert result.exit_code != 0 and "xel-detect --model" in result.output and not out.exists()

    result = runner.invoke(detect_main, ["--model", str(run_dir), "--epochs", "40"])
    assert result.exit_code == 0, result.output
    info = json.loads((run_dir / "detector" / "detector.json").read_text())
    assert info["held_out"]["f1"] >= 0.8 and len(list((run_dir / "detector").glob("tokens-*.npz"))) == 1
    encoded = []  # a rerun reads the cached token features back: nothing is encoded
    monkeypatch.setattr(detect_train, "token_features", lambda *a: encoded.append(a) or [])
    result = runner.invoke(detect_main, ["--model", str(run_dir), "--epochs", "2"])
    assert result.exit_code == 0 and encoded == [], result.output
    monkeypatch.undo()

    result = runner.invoke(link_main, ["--model", str(run_dir), "--detect", "--in", str(docs), "--out", str(out),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    check_contract(lines, DOCS, kb_ids)
    assert lines[1]["mentions"] == []

    linker = Linker.load(run_dir)
    assert [linker.link_text(d["text"], d["lang"]) for d in DOCS] == [line["mentions"] for line in lines]

    # the detector reads the middle and the last hidden states of the linker's own encoder, concatenated
    detector = linker.spotter("tagger")
    assert info["encoder"]["layer"] == [1, -1] and detector.layers == (1, -1) and detector.encoder is linker.encoder
    texts = [d["text"] for d in DOCS]
    got = tag(detector.tagger, [f.features for f in token_features(detector.encoder, texts, detector.layers)])
    one_by_one = [token_features(TextEncoder.load(dataclasses.replace(linker.encoder_settings, layer=x)), texts)
                  for x in (1, -1)]
    want = tag(detector.tagger, [np.concatenate([a.features, b.features], axis=1) for a, b in zip(*one_by_one)])
    assert all(np.allclose(g, w, atol=1e-4) for g, w in zip(got, want))
    swapped = tag(detector.tagger, [np.concatenate([b.features, a.features], axis=1) for a, b in zip(*one_by_one)])
    assert not all(np.allclose(g, w, atol=1e-4) for g, w in zip(got, swapped))
    result = runner.invoke(detect_main, ["--model", str(run_dir), "--epochs", "1", "--layer", "3"])
    assert result.exit_code != 0 and "layer 3 is out of range for a 2-layer encoder; allowed -3..2" in result.output

    from fastapi.testclient import TestClient
    from xel.link.serve import create_app

    with TestClient(create_app(linker, max_items=4)) as client:
        resp = client.post("/link", json={"documents": DOCS})
        assert resp.status_code == 200 and resp.json() == {"documents": lines}
        resp = client.post("/link", json={"documents": DOCS[:1], "spotter": "gazetteer", "k": 1})
        assert [m["text"] for m in resp.json()["documents"][0]["mentions"]] == CAPITALS[:2]
        resp = client.post("/link", json={"documents": [{"text": "x", "start": 0}]})
        assert resp.status_code == 422 and "documents[0]: field 'start' is unknown" in resp.json()["detail"]
        resp = client.post("/link", json={"documents": DOCS, "items": []})
        assert resp.status_code == 422
        assert "Find and link all mentions" in client.get("/").text


def test_a_bad_documents_file_is_refused_before_the_model_loads(run_dir, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps(DOCS[0]) + "\n" + json.dumps({"id": "b", "text": 3}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(link_main, ["--model", str(run_dir), "--detect", "--in", str(docs), "--out",
                                            str(out)])
    assert result.exit_code != 0 and f"{docs}:2: field 'text' is 3" in result.output and not out.exists()


def test_a_detector_is_written_with_the_umasks_mode_and_refused_once_changed_on_disk(run_dir, tmp_path):
    """Runs after ``test_detect_then_link_documents`` trained ``run_dir``'s detector."""
    import os
    import stat

    folder = tmp_path / "en"
    shutil.copytree(run_dir, folder)
    weights = folder / "detector" / "tagger.safetensors"
    assert weights.is_file(), "test_detect_then_link_documents trains the detector first"
    old = os.umask(0o022)
    os.umask(old)
    assert stat.S_IMODE(weights.stat().st_mode) == 0o666 & ~old
    Linker.load(folder).link_text(DOCS[0]["text"], "en")  # loads as written
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(data))
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps(DOCS[0]) + "\n", encoding="utf-8")
    result = CliRunner().invoke(link_main, ["--model", str(folder), "--detect", "--in", str(docs), "--out",
                                            str(tmp_path / "out.jsonl")])
    assert result.exit_code != 0 and "tagger.safetensors: sha256" in result.output, result.output
    assert "changed or damaged on disk" in result.output and "xel-detect --model" in result.output
    info_file = folder / "detector" / "detector.json"
    info = json.loads(info_file.read_text(encoding="utf-8"))
    del info["weights_sha256"]
    info_file.write_text(json.dumps(info), encoding="utf-8")
    result = CliRunner().invoke(link_main, ["--model", str(folder), "--detect", "--in", str(docs), "--out",
                                            str(tmp_path / "out.jsonl")])
    assert result.exit_code != 0 and "records no sha256 of tagger.safetensors" in result.output, result.output


def test_the_detector_learns_from_span_sentences_with_and_without_mentions(run_dir, tmp_path):
    """``--data`` with span-sentence files: train sentences without a mention are trained on (they teach O), and
    the held-out sentences are scored per corpus."""
    folder = tmp_path / "en"
    shutil.copytree(run_dir, folder)
    rows = []
    for i, city in enumerate(CAPITALS * 2):
        text = f"Last year we visited {city} with friends."
        corpus, split = ("wiki", "train") if i < len(CAPITALS) else ("news", "dev")
        rows.append({"id": f"{corpus}:{i}:0-{len(text)}", "doc": f"{corpus}:{i}", "lang": "en", "split": split,
                     "text": text, "spans": [{"start": 21, "end": 21 + len(city), "type": "LOC", "gold": None}]})
        rows.append({"id": f"{corpus}:{i}:99-120", "doc": f"{corpus}:{i}", "lang": "en", "split": split,
                     "text": "nothing here is named at all.", "spans": []})
    data = write_jsonl(tmp_path / "spans.jsonl", rows)
    result = CliRunner().invoke(detect_main, ["--model", str(folder), "--data", str(data), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    info = json.loads((folder / "detector" / "detector.json").read_text())
    assert info["train_sentences"] == 2 * len(CAPITALS)  # half of them without a mention
    assert set(info["held_out_by_corpus"]) == {"news"} and info["held_out_by_corpus"]["news"]["gold"] == len(CAPITALS)
    assert "held-out en documents of news: span P" in result.output
