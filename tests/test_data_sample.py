"""The bundled sample in data/sample/ keeps the JSONL schema and its own stats: ``pytest tests/test_data_sample.py``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
MENTION_KEYS = ["id", "lang", "sentence", "start", "end", "context", "gold", "type"]
KB_KEYS = ["id", "name", "description", "lang", "links"]
SHIPPED_SOURCES = {"elevant/wiki-fair-v2", "hipe/hipe2020/dev"}


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def sample() -> tuple[list[dict], list[dict], dict]:
    return (
        read_jsonl(SAMPLE / "kb.jsonl"),
        read_jsonl(SAMPLE / "mentions.jsonl"),
        json.loads((SAMPLE / "stats.json").read_text("utf-8")),
    )


def test_schema_and_spans(sample: tuple[list[dict], list[dict], dict]) -> None:
    kb, mentions, _ = sample
    assert all(list(e) == KB_KEYS and e["lang"] == "en" and e["links"] is None for e in kb)
    kb_ids = {e["id"] for e in kb}
    assert len(kb_ids) == len(kb)
    assert len({m["id"] for m in mentions}) == len(mentions)
    for m in mentions:
        assert list(m) == MENTION_KEYS, m["id"]
        assert m["sentence"][m["start"] : m["end"]].strip(), m["id"]
        assert m["sentence"] in m["context"], m["id"]
        assert m["gold"] is None or m["gold"] in kb_ids, m["id"]


def test_only_redistributable_sources(sample: tuple[list[dict], list[dict], dict]) -> None:
    _, mentions, _ = sample
    assert {m["id"].split(":", 1)[0] for m in mentions} == SHIPPED_SOURCES
    assert {m["lang"] for m in mentions} == {"en", "de"}
    assert not (SAMPLE / "text.jsonl").exists()


def test_stats_match_files(sample: tuple[list[dict], list[dict], dict]) -> None:
    kb, mentions, stats = sample
    assert stats["kb_size"] == len(kb)
    for lang, s in stats["per_lang"].items():
        rows = [m for m in mentions if m["lang"] == lang]
        assert s["mentions"] == len(rows)
        assert s["nil"] == sum(m["gold"] is None for m in rows)
        assert s["types"] == dict(Counter(m["type"] or "none" for m in rows))
