"""Synthetic, learnable feature stores for the trainer tests (built with tests.fakes.make_store)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from xel.retrieval.files import write_candidates

from tests.conftest import write_jsonl
from tests.fakes import make_store


def synthetic_store(
    root: Path, *, langs: dict[str, int], n_entities: int = 40, dim: int = 16, k: int = 6, nil_rate: float = 0.1,
    seed: int = 0, links: bool = True, text: bool = False, encoder: dict | None = None, kb_lang: str = "en",
    mn: bool = True,
) -> Path:
    """Mentions whose ``ms``/``mc`` (and ``mn``, unless ``mn`` is false: a store from before that kind) are noisy
    copies of their gold's ``es``/``ec``; candidates.jsonl holds the gold (for non-NIL mentions) among random other
    entities."""
    rng = np.random.default_rng(seed)
    kb_ids = [f"Q{i}" for i in range(n_entities)]
    es = rng.normal(size=(n_entities, dim))
    ec = rng.normal(size=(n_entities, dim))
    kb = [{"id": q, "name": q, "description": q, "lang": kb_lang, "links": int(rng.integers(0, 50)) if links else None}
          for q in kb_ids]
    mentions, ms, mc, names, cands = [], [], [], [], []
    for lang, n in langs.items():
        shift = rng.normal(scale=0.3, size=dim)
        for j in range(n):
            mid = f"{lang}-{j}"
            gold = int(rng.integers(n_entities))
            is_nil = rng.random() < nil_rate
            ms.append(es[gold] + shift + rng.normal(scale=0.3, size=dim))
            mc.append(ec[gold] + rng.normal(scale=0.3, size=dim))
            names.append(es[gold] + rng.normal(scale=0.3, size=dim))
            others = [int(x) for x in rng.permutation(n_entities) if x != gold][: k - 1]
            row = others if is_nil else sorted(others + [gold], key=lambda _: rng.random())
            mentions.append({"id": mid, "lang": lang, "sentence": "s", "start": 0, "end": 1, "context": "c",
                             "gold": None if is_nil else kb_ids[gold], "type": "PER" if j % 2 else "LOC"})
            cands.append((mid, [(kb_ids[c], 1.0 - 0.1 * i, "dense") for i, c in enumerate(row)]))
    mids = [m["id"] for m in mentions]
    mlangs = [m["lang"] for m in mentions]
    features = {
        "ms": (mids, np.array(ms), mlangs), "mc": (mids, np.array(mc), mlangs),
        "es": (kb_ids, es, [kb_lang] * n_entities), "ec": (kb_ids, ec, [kb_lang] * n_entities),
    }
    if mn:
        features["mn"] = (mids, np.array(names), mlangs)
    text_records = None
    if text:
        tids = [f"t-{lang}-{i}" for lang in langs for i in range(10)]
        tlangs = [t.split("-")[1] for t in tids]
        features["text"] = (tids, rng.normal(size=(len(tids), dim)), tlangs)
        text_records = [{"id": t, "lang": x, "text": "t"} for t, x in zip(tids, tlangs)]
    make_store(root, features, kb=kb, mentions=mentions, text=text_records, encoder=encoder)
    write_candidates(root / "candidates.jsonl", cands)
    return root


CAPITALS = ["Paris", "Berlin", "Moscow", "London", "Tokyo", "Madrid", "Rome", "Vienna", "Prague", "Oslo"]
GERMAN_CAPITALS = ["Paris", "Berlin", "Moskau", "London", "Tokio", "Madrid", "Rom", "Wien", "Prag", "Oslo"]


def capital_cities(root: Path) -> Path:
    """Ten capitals: 60 English mentions (two NIL cities) and 10 German ones, spelled the German way."""
    kb = [{"id": f"Q{i}", "name": c, "description": f"{c} is a capital city", "lang": "en", "links": None}
          for i, c in enumerate(CAPITALS)]
    mentions = []
    for rep in range(6):
        for i, c in enumerate(CAPITALS):
            s = f"Last year we visited {c} with friends."
            mentions.append({"id": f"en{rep}-{i}", "lang": "en", "sentence": s, "start": 21, "end": 21 + len(c),
                             "context": s, "gold": f"Q{i}" if i < 8 else None, "type": "GPE"})
    for i, g in enumerate(GERMAN_CAPITALS):
        s = f"Wir waren in {g} im Urlaub."
        mentions.append({"id": f"de-{i}", "lang": "de", "sentence": s, "start": 13, "end": 13 + len(g),
                         "context": s, "gold": f"Q{i}", "type": "GPE"})
    write_jsonl(root / "kb.jsonl", kb)
    write_jsonl(root / "mentions.jsonl", mentions)
    return root
