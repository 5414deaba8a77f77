"""``xel-nn candidates``: every mention's candidate list written as ``candidates.jsonl``, with its recall@k table
(``recall.txt``/``.json``/``.png``): :func:`run_candidates`."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from xel.precompute.files import atomic_write_bytes
from xel.precompute.store import atomic_write_json, refuse_store_out
from xel.retrieval.candidates import generate_candidates
from xel.retrieval.files import write_candidates
from xel.retrieval.index import RetrievalError
from xel.retrieval.metrics import RECALL_KS, format_recall_table, plot_recall
from xel.retrieval.search import SearchOptions
from xel.retrieval.splits import DEV_FRACTION, TEST_FRACTION

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidatesConfig:
    search: SearchOptions
    out: str
    k: int = 30
    max_prior: int = 10
    train_lang: str = "en"
    langs: tuple[str, ...] = ()
    # the split the alias prior counts training documents of (retrieval.splits); recorded in config.json, where
    # xel-train checks that it splits with the same fractions (train.prepare.check_candidates_split)
    dev_fraction: float = DEV_FRACTION
    test_fraction: float = TEST_FRACTION


def write_recall(out: Path, table: dict[str, dict[str, dict[str, float]]]) -> str:
    """``recall.json``, ``recall.txt`` and ``recall.png`` of a recall table (:meth:`CandidateSet.recall`) in
    ``out``; returns the text table."""
    text = format_recall_table(table, RECALL_KS)
    atomic_write_json(out / "recall.json", table)
    atomic_write_bytes(out / "recall.txt", (text + "\n").encode())
    plot_recall(table, str(out / "recall.png"), RECALL_KS)
    return text


def run_candidates(cfg: CandidatesConfig) -> str:
    """Write ``candidates.jsonl``, the recall@k table and ``config.json`` to ``cfg.out``; returns the table."""
    out = Path(cfg.out)
    refuse_store_out(out, RetrievalError)
    index, store = cfg.search.open()
    log.info("writing candidates (k=%d) for %s mentions of %s into %s", cfg.k,
             f"{store.count('ms'):,}", store.root, out)
    cands = generate_candidates(
        store, index, k=cfg.k, max_prior=cfg.max_prior, train_lang=cfg.train_lang, kb_lang=cfg.search.kb_lang,
        langs=cfg.langs or None, dev_fraction=cfg.dev_fraction, test_fraction=cfg.test_fraction,
    )
    out.mkdir(parents=True, exist_ok=True)  # only once every input has been read and checked
    write_candidates(out / "candidates.jsonl", ((m.id, c) for m, c in zip(cands.mentions, cands.merged)))
    atomic_write_json(out / "config.json", asdict(cfg))
    return "candidate recall@k\n" + write_recall(out, cands.recall(RECALL_KS))
