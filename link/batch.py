"""Link a JSONL file of mentions with a trained run: ``xel-link --model RUN_DIR --in mentions.jsonl --out links.jsonl``.

Every line is checked before the model is loaded (errors name the file, line and field). Mentions are linked in
batches of ``--batch-size`` with a progress bar (mentions/s) and written, one line per input mention in input
order, as the Links file (:meth:`link.linker.Link.to_json`) through a temporary file moved into place. When the
input carries ``gold`` fields, the shared metrics (:mod:`retrieval.metrics`) of those mentions are returned.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from link.linker import Item, Linker, LinkError, check_item
from precompute.schema import iter_records
from precompute.store import atomic_path
from retrieval.metrics import Scores, score_groups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkConfig:
    model: str
    input: str
    output: str
    k: int = 10
    threshold: float | None = None  # None: the run's tuned NIL threshold
    index: str | None = None  # None: <run root>/index
    batch_size: int = 256
    progress: bool = True


def read_items(path: Path) -> tuple[list[Item], list[int]]:
    """The checked items of a JSONL file, and the positions of those with a ``gold`` field (null: NIL)."""
    items: list[Item] = []
    seen: dict[str, int] = {}
    gold_rows: list[int] = []
    for lineno, record in iter_records(path):
        item = check_item(record, f"{path}:{lineno}", f"line-{lineno}")
        if item.id in seen:
            raise LinkError(f"{path}:{lineno}: field 'id' is {item.id!r}, a duplicate of line {seen[item.id]}; "
                            "ids must be unique")
        seen[item.id] = lineno
        if "gold" in record:
            gold_rows.append(len(items))
        items.append(item)
    if not items:
        raise LinkError(f"{path}: no mentions; at least one line {{text, start, end, lang?}} is required")
    return items, gold_rows


def run(cfg: LinkConfig) -> dict[str, Any]:
    """Link ``cfg.input`` into ``cfg.output``; returns ``{"mentions", "linked", "seconds", "metrics"}`` (metrics per
    group, over the lines with a ``gold`` field, or None)."""
    if cfg.k < 1 or cfg.batch_size < 1:
        raise LinkError(f"--k {cfg.k}, --batch-size {cfg.batch_size}: both must be >= 1")
    items, rows = read_items(Path(cfg.input))
    linker = Linker.load(cfg.model, index_dir=cfg.index, threshold=cfg.threshold)
    t0 = time.perf_counter()
    preds: list[str | None] = []
    with atomic_path(cfg.output) as tmp, open(tmp, "w", encoding="utf-8") as out, \
            tqdm(total=len(items), unit="mention", desc="linking", disable=not cfg.progress) as bar:
        for start in range(0, len(items), cfg.batch_size):
            batch = items[start : start + cfg.batch_size]
            for link in linker.link(batch, k=cfg.k):
                out.write(json.dumps(link.to_json(), ensure_ascii=False) + "\n")
                preds.append(link.pred)
            bar.update(len(batch))
    seconds = time.perf_counter() - t0
    metrics: dict[str, Scores] | None = None
    if rows:
        metrics = score_groups([items[i].gold for i in rows], [preds[i] for i in rows],
                               [items[i].lang for i in rows], [items[i].type for i in rows])
    log.info("linked %d mentions in %.1f s", len(items), seconds)
    return {"mentions": len(items), "linked": sum(p is not None for p in preds), "seconds": seconds,
            "metrics": metrics}
