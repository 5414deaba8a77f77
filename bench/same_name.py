"""Candidates of a mention whose name 50,000 KB entries share, against a unique name: ``python bench/same_name.py``.

Builds a :class:`retrieval.kb_table.KBTable` of ``--same`` entries named ``Berlin`` (Zipf-like ``links``, some
null) plus ``--others`` entries with unique names, and times, per mention, what the linker asks of the candidate
generator for a batch (:meth:`retrieval.candidates.CandidateGenerator.link_candidates`: the alias prior, the exact
and normalised name matches, the character n-grams, merged). The dense search is FAISS over vectors, which the
names do not change: a stub returns the same hits for every mention, so the figures are the names' work alone.
Batches of ``--mentions`` mentions ``Berlin`` and of a unique name are timed alternately, ``--rounds`` times, on
one table and generator (each scope's name matcher and n-gram index built before timing); the ratio is of the
median seconds per mention. Writes ``bench/results/same-name.json`` and prints it. ``same-name-before.json`` is this
script run, right before, on the code before names were ranked at build and n-gram forms scored once (commit
2d50bae, with ``sources`` + ``merged`` in place of ``link_candidates``, which it lacked).
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xel.precompute.store import atomic_write_json  # noqa: E402
from xel.retrieval.candidates import AliasPrior, CandidateGenerator, MentionRef  # noqa: E402
from xel.retrieval.kb_table import KBTable  # noqa: E402

SAME_NAME = "Berlin"
UNIQUE_NAME = "Quirinal Tower 17"


class FixedHitsIndex:
    """The part of :class:`retrieval.index.EntityIndex` the generator asks for: one English KB scope, and the same
    ``hits`` as every mention's dense top-k."""

    def __init__(self, hits: list[tuple[str, float]]):
        self.hits = hits

    def scope_langs(self, scope: str) -> list[str]:
        return ["en"]

    def search_kbs(self, vectors: np.ndarray, langs: list[str], k: int,
                   kb_lang: str | None = None) -> tuple[list[str], list[list[tuple[str, float]]]]:
        return ["all"] * len(langs), [self.hits[:k] for _ in langs]


def kb_records(same: int, others: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    links = rng.zipf(1.5, size=same + others).clip(max=10**6)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "ba"]
    records = []
    for i in range(same + others):
        if i < same:
            name = SAME_NAME
        elif i == same:
            name = UNIQUE_NAME
        else:
            name = "".join(syllables[int(d)] for d in f"{i:06d}").capitalize() + f" {i}"
        records.append({"id": f"Q{i}", "name": name, "lang": "en", "links": None if i % 7 == 0 else int(links[i])})
    return records


def time_batch(generator: CandidateGenerator, surface: str, mentions: int) -> float:
    refs = [MentionRef(id=f"m{i}", lang="en", surface=surface, gold=None, given=None) for i in range(mentions)]
    vectors = np.zeros((mentions, 8), np.float32)
    start = time.perf_counter()
    generator.link_candidates(refs, vectors, 50)
    return (time.perf_counter() - start) / mentions


@click.command()
@click.option("--same", default=50_000, help="KB entries named Berlin")
@click.option("--others", default=1_000, help="KB entries with unique names")
@click.option("--mentions", default=20, help="mentions per timed batch")
@click.option("--rounds", default=5)
@click.option("--seed", default=0)
@click.option("--out", type=click.Path(dir_okay=False), default=str(ROOT / "bench/results/same-name.json"))
def main(same: int, others: int, mentions: int, rounds: int, seed: int, out: str) -> None:
    start = time.perf_counter()
    table = KBTable(kb_records(same, others, seed))
    table_s = time.perf_counter() - start
    prior = AliasPrior([MentionRef("t0", "en", SAME_NAME, "Q3", None)], "en")
    generator = CandidateGenerator(FixedHitsIndex([(f"Q{same + 1 + i}", 0.9 - i / 100) for i in range(30)]),
                                   table, prior)
    start = time.perf_counter()
    generator.scope("all")
    scope_s = time.perf_counter() - start
    time_batch(generator, SAME_NAME, 1)
    per_mention: dict[str, list[float]] = {SAME_NAME: [], UNIQUE_NAME: []}
    for _ in range(rounds):
        for surface in per_mention:
            per_mention[surface].append(time_batch(generator, surface, mentions))
    median = {name: statistics.median(times) for name, times in per_mention.items()}
    result = {
        "machine": {"cpus": len(__import__("os").sched_getaffinity(0)), "platform": platform.platform()},
        "kb": {"same_name": same, "others": others}, "mentions_per_batch": mentions, "rounds": rounds,
        "kb_table_s": round(table_s, 3), "scope_build_s": round(scope_s, 3),
        "s_per_mention": {"same_name": round(median[SAME_NAME], 6), "unique_name": round(median[UNIQUE_NAME], 6)},
        "ratio_same_over_unique": round(median[SAME_NAME] / median[UNIQUE_NAME], 2),
    }
    atomic_write_json(out, result)
    click.echo(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
