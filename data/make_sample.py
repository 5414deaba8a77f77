"""Build the redistributable real-data sample in data/sample/: ``python data/make_sample.py --src ../shared/data``.

Developer tool.  Reads the converted ``wikidata-el`` set (JSONL schema of xel) and writes, deterministically:

* ``mentions.jsonl``: the English ``elevant/wiki-fair-v2`` mentions (Wikipedia text, CC BY-SA) and the
  German ``hipe/hipe2020/dev`` mentions (CC BY-NC-SA 4.0), all linked against one English KB;
* ``kb.jsonl``: every gold entity of those mentions plus seeded random distractors from the same KB
  (Wikidata labels/descriptions, CC0), ``popularity`` dropped and ``links`` kept null;
* ``stats.json``: counts per language and KB provenance counts.

Subsets that may not be redistributed (NEREL: no licence; news, RSS, tweets, MSNBC, Reuters corpora)
are never read into the output.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

logger = logging.getLogger("make_sample")

SOURCE_SET = "wikidata-el"
# (source subset in mentions_provenance.jsonl, language of its mentions) -> shipped
SHIPPED_SUBSETS = {
    ("elevant/wiki-fair-v2", "en"): "CC BY-SA (Wikipedia text; ELEVANT annotations, Apache-2.0 repository)",
    ("hipe/hipe2020/dev", "de"): "CC BY-NC-SA 4.0 (HIPE-2022 v2.1, hipe2020)",
}
MENTION_KEYS = ("id", "lang", "sentence", "start", "end", "context", "gold", "type")
KB_KEYS = ("id", "name", "description", "lang", "links")
KB_LANG = "en"
DEFAULT_KB_SIZE = 3000


class SampleError(ValueError):
    """The source data or the built sample breaks the JSONL schema or the sample's invariants."""


def read_jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise SampleError(f"{path}:{line_no}: not JSON ({exc})") from exc


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Write ``rows`` to ``path`` through a temporary file; return the row count."""
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def select_mentions(mentions: list[dict], provenance: dict[str, dict]) -> list[dict]:
    """The mentions of the shipped subsets, in source order, with exactly ``MENTION_KEYS`` (type may be null)."""
    selected = []
    for m in mentions:
        source = provenance[m["id"]]["source"]
        if (source, m["lang"]) in SHIPPED_SUBSETS:
            selected.append({key: m.get(key) for key in MENTION_KEYS})
    return selected


def select_kb(kb: list[dict], golds: set[str], size: int, seed: int) -> list[dict]:
    """Every gold entity plus a seeded random set of distractors, ``size`` entries in all, in source order."""
    by_id = {e["id"]: e for e in kb}
    missing = sorted(golds - by_id.keys())
    if missing:
        raise SampleError(f"{len(missing)} gold ids are not in the source KB, e.g. {missing[:5]}")
    wrong_lang = sorted(q for q in golds if by_id[q]["lang"] != KB_LANG)
    if wrong_lang:
        raise SampleError(f"gold entities {wrong_lang[:5]} have a KB lang other than {KB_LANG!r}")
    pool = sorted(e["id"] for e in kb if e["id"] not in golds and e["lang"] == KB_LANG)
    n_distractors = max(0, min(size - len(golds), len(pool)))
    chosen = golds | set(random.Random(seed).sample(pool, n_distractors))
    return [{key: e.get(key) for key in KB_KEYS} | {"links": None} for e in kb if e["id"] in chosen]


def check_sample(mentions: list[dict], kb: list[dict]) -> None:
    """Raise ``SampleError`` unless every span is non-empty and every non-null gold is in the KB."""
    kb_ids = {e["id"] for e in kb}
    if len(kb_ids) != len(kb):
        raise SampleError("duplicate ids in the sample KB")
    if len({m["id"] for m in mentions}) != len(mentions):
        raise SampleError("duplicate mention ids in the sample")
    for m in mentions:
        if not (0 <= m["start"] < m["end"] <= len(m["sentence"])) or not m["sentence"][m["start"] : m["end"]].strip():
            raise SampleError(f"mention {m['id']}: empty or out-of-range span {m['start']}:{m['end']}")
        if m["gold"] is not None and m["gold"] not in kb_ids:
            raise SampleError(f"mention {m['id']}: gold {m['gold']} is not in the sample KB")


def language_stats(mentions: list[dict], provenance: dict[str, dict]) -> dict[str, dict]:
    per_lang: dict[str, dict] = {}
    for lang in sorted({m["lang"] for m in mentions}):
        rows = [m for m in mentions if m["lang"] == lang]
        nil = sum(m["gold"] is None for m in rows)
        per_lang[lang] = {
            "mentions": len(rows),
            "nil": nil,
            "nil_rate": round(nil / len(rows), 3),
            "docs": len({(provenance[m["id"]]["source"], provenance[m["id"]]["doc"]) for m in rows}),
            "gold_entities": len({m["gold"] for m in rows if m["gold"] is not None}),
            "types": dict(sorted(Counter(m["type"] or "none" for m in rows).items())),
            "sources": dict(sorted(Counter(provenance[m["id"]]["source"] for m in rows).items())),
        }
    return per_lang


def make_sample(src: Path, out: Path, seed: int, kb_size: int) -> dict:
    """Build the sample from ``src/wikidata-el`` into ``out``; return the statistics written to stats.json."""
    root = src / SOURCE_SET
    mentions = list(read_jsonl(root / "mentions.jsonl"))
    provenance = {p["id"]: p for p in read_jsonl(root / "mentions_provenance.jsonl")}
    unknown = [m["id"] for m in mentions if m["id"] not in provenance]
    if unknown:
        raise SampleError(
            f"{root}/mentions_provenance.jsonl has no row for {len(unknown)} mentions, e.g. {unknown[:3]}"
        )
    kb = list(read_jsonl(root / "kb.jsonl"))
    kb_provenance = {p["id"]: p for p in read_jsonl(root / "kb_provenance.jsonl")}

    sample_mentions = select_mentions(mentions, provenance)
    golds = {m["gold"] for m in sample_mentions if m["gold"] is not None}
    sample_kb = select_kb(kb, golds, kb_size, seed)
    check_sample(sample_mentions, sample_kb)

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "kb.jsonl", sample_kb)
    write_jsonl(out / "mentions.jsonl", sample_mentions)
    stats = {
        "source": f"{SOURCE_SET} (see README.md for pinned upstream commits)",
        "seed": seed,
        "kb_size": len(sample_kb),
        "kb_gold_entities": len(golds),
        "kb_distractors": len(sample_kb) - len(golds),
        "kb_name_sources": dict(sorted(Counter(kb_provenance[e["id"]]["name_source"] for e in sample_kb).items())),
        "kb_description_sources": dict(
            sorted(Counter(kb_provenance[e["id"]]["description_source"] for e in sample_kb).items())
        ),
        "kb_description_is_copy_of_name": sum(e["description"] == e["name"] for e in sample_kb),
        "kb_links_null": sum(e["links"] is None for e in sample_kb),
        "per_lang": language_stats(sample_mentions, provenance),
        "subsets": {f"{source} ({lang})": terms for (source, lang), terms in SHIPPED_SUBSETS.items()},
    }
    tmp = out / "stats.json.tmp"
    tmp.write_text(json.dumps(stats, indent=1, ensure_ascii=False) + "\n", "utf-8")
    tmp.replace(out / "stats.json")
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True, help="folder holding wikidata-el/ (the shared data)")
    parser.add_argument("--out", type=Path, default=Path("data/sample"), help="output folder (default data/sample)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the distractor draw (default 0)")
    parser.add_argument("--kb-size", type=int, default=DEFAULT_KB_SIZE, help="KB entries in all (default 3000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        stats = make_sample(args.src, args.out, args.seed, args.kb_size)
    except (SampleError, OSError) as exc:
        logger.error("%s", exc)
        return 1
    for lang, s in stats["per_lang"].items():
        logger.info("%s: %d mentions (%d NIL), %d docs", lang, s["mentions"], s["nil"], s["docs"])
    logger.info("KB: %d entries (%d gold)", stats["kb_size"], stats["kb_gold_entities"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
