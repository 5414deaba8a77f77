"""The nearest-neighbour baseline (paper §6, "nn"): ``xel-nn eval --features h5/ --index index/ --out DIR``.

For each mention, the candidate entity with the highest cosine between its ``ms`` and the entity's ``es``;
NIL when that best cosine is below ``threshold`` (default -1.0: never NIL). A mention's candidates are its own
list when the data gives one, else the top-k of its KB from the index, or the lists of a candidates file
(``--candidates``: then no candidate is generated, and the recall table is that file's).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from xel.precompute.files import atomic_write_bytes
from xel.precompute.store import atomic_write_json, refuse_store_out
from xel.retrieval.candidate_lists import write_recall
from xel.retrieval.candidates import MentionVectors, generate_candidates, kb_table, load_mention_vectors
from xel.retrieval.files import CandidatesError, read_candidates, write_predictions
from xel.retrieval.index import RetrievalError
from xel.retrieval.kb_table import KBTable
from xel.retrieval.metrics import RECALL_KS, Scores, format_table, recall_table, score_groups
from xel.retrieval.search import SearchOptions

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = -1.0


@dataclass(frozen=True)
class Prediction:
    pred: str | None
    score: float
    candidates: list[tuple[str, float]]


def nn_link(
    mention_vector: np.ndarray, candidates: Sequence[str], entity: Callable[[str], np.ndarray],
    threshold: float = DEFAULT_THRESHOLD,
) -> Prediction:
    """Score ``candidates`` by cosine (unit vectors: inner product) and pick the best; NIL below ``threshold``.

    Ties keep the earlier candidate. With no candidates the prediction is NIL with score ``-inf``.
    """
    if not candidates:
        return Prediction(None, float("-inf"), [])
    matrix = np.stack([entity(kb) for kb in candidates])
    scores = matrix @ np.asarray(mention_vector, dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    ranked = [(candidates[i], float(scores[i])) for i in order]
    best_id, best = ranked[0]
    return Prediction(best_id if best >= threshold else None, best, ranked)


def nn_scores(
    golds: Sequence[str | None], predictions: Sequence[Prediction], langs: Sequence[str],
    types: Sequence[str | None] | None = None,
) -> dict[str, Scores]:
    """The trainer's metrics (``retrieval.metrics.score_groups``) for nn predictions, overall, per lang and type."""
    return score_groups(golds, [p.pred for p in predictions], langs, types)


@dataclass(frozen=True)
class EvalConfig:
    search: SearchOptions
    out: str
    k: int = 30
    threshold: float = DEFAULT_THRESHOLD
    candidates: str | None = None
    max_prior: int = 10
    train_lang: str = "en"
    langs: tuple[str, ...] = ()


def candidate_lists(cfg: EvalConfig, store, index, kb: KBTable) -> tuple[MentionVectors, list[list[str]], dict]:
    """The mentions with their query vectors, each one's candidate ids and the recall@k table of those lists: from
    ``cfg.candidates`` when given (only the mentions and that file are read; its lists are the ``file`` source),
    else generated (:func:`~retrieval.candidates.generate_candidates`: a mention's own list when the data has one,
    else the dense top-k)."""
    if cfg.candidates:
        data = load_mention_vectors(store, index, kb, cfg.langs or None)
        from_file = read_candidates(cfg.candidates)
        lists = []
        for m in data.mentions:
            if m.id not in from_file:
                raise CandidatesError(f"{cfg.candidates}: no line for mention {m.id!r}; regenerate the file")
            lists.append([kb_id for kb_id, _, _ in from_file[m.id]])
        table = recall_table({"file": lists}, [m.gold for m in data.mentions], [m.lang for m in data.mentions],
                             RECALL_KS)
        return data, lists, table
    cands = generate_candidates(
        store, index, k=cfg.k, max_prior=cfg.max_prior, train_lang=cfg.train_lang, kb_lang=cfg.search.kb_lang,
        langs=cfg.langs or None, kb=kb,
    )
    lists = [list(m.given) if m.given is not None else [kb_id for kb_id, _ in cands.dense[i][: cfg.k]]
             for i, m in enumerate(cands.mentions)]
    return cands.data, lists, cands.recall(RECALL_KS)


def run_eval(cfg: EvalConfig) -> str:
    """Score the nn baseline: ``metrics.txt``/``.json``, ``predictions.jsonl``, the recall@k table and ``config.json``
    in ``cfg.out``; returns the metrics and recall tables as text."""
    out = Path(cfg.out)
    refuse_store_out(out, RetrievalError)
    index, store = cfg.search.open()
    log.info("evaluating the nn baseline (k=%d) for %s mentions of %s into %s", cfg.k,
             f"{store.count('ms'):,}", store.root, out)
    kb = kb_table(store, index)
    data, lists, recall = candidate_lists(cfg, store, index, kb)
    data.prefetch(kb_id for ids in lists for kb_id in ids)  # one batch of row reads for every candidate
    preds = [nn_link(data.vectors[i], ids, data.entity, cfg.threshold) for i, ids in enumerate(lists)]
    out.mkdir(parents=True, exist_ok=True)  # only once every input has been read and checked
    names = {p.pred: kb.name_of(p.pred) for p in preds if p.pred is not None}
    write_predictions(out / "predictions.jsonl", ((m.id, p.pred, p.score, p.candidates)
                                                  for m, p in zip(data.mentions, preds)), names=names)
    scores = nn_scores([m.gold for m in data.mentions], preds, [m.lang for m in data.mentions],
                       [m.type for m in data.mentions])
    metrics = format_table(scores, f"nn baseline (threshold {cfg.threshold})")
    atomic_write_json(out / "metrics.json", {name: s.as_dict() for name, s in scores.items()})
    atomic_write_bytes(out / "metrics.txt", (metrics + "\n").encode())
    atomic_write_json(out / "config.json", asdict(cfg))
    return metrics + "\n\ncandidate recall@k\n" + write_recall(out, recall)
