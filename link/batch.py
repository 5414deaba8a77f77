"""Link a JSONL file of mentions with a trained run: ``xel-link --model RUN_DIR --in mentions.jsonl --out links.jsonl``.

Every line is checked before the model is loaded (errors name the file, line and field). Mentions are linked in
batches of ``--batch-size`` with a progress bar (mentions/s) and written, one line per input mention in input
order, as the Links file (:meth:`link.linker.Link.to_json`) through a temporary file moved into place. When the
input carries ``gold`` fields, the shared metrics (:mod:`retrieval.metrics`) of those mentions are returned.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from link.linker import Item, Linker, LinkError, check_item
from precompute.run import PrecomputeConfig
from precompute.run import run as precompute
from precompute.schema import iter_records
from precompute.store import Store, StoreError, atomic_path, open_store
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
    actors: int = 0  # 0: encode in this process; N >= 1: precompute's Ray actors into a temporary store
    address: str | None = None  # the Ray cluster (None: a local Ray, or the job's own inside ray job submit)


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
    if cfg.k < 1 or cfg.batch_size < 1 or cfg.actors < 0:
        raise LinkError(f"--k {cfg.k}, --batch-size {cfg.batch_size}, --actors {cfg.actors}: --k and --batch-size "
                        "must be >= 1, --actors >= 0")
    items, rows = read_items(Path(cfg.input))
    linker = Linker.load(cfg.model, index_dir=cfg.index, threshold=cfg.threshold)
    t0 = time.perf_counter()
    preds: list[str | None] = []
    work = work_dir(cfg.output)
    encoded = encode_with_actors(cfg, linker, items, work) if cfg.actors else None
    with atomic_path(cfg.output) as tmp, open(tmp, "w", encoding="utf-8") as out, \
            tqdm(total=len(items), unit="mention", desc="linking", disable=not cfg.progress) as bar:
        for start in range(0, len(items), cfg.batch_size):
            batch = items[start : start + cfg.batch_size]
            vectors = None
            if encoded is not None:
                positions = np.arange(start, start + len(batch))
                vectors = (encoded.read_rows("ms", positions), encoded.read_rows("mc", positions))
            for link in linker.link(batch, k=cfg.k, encoded=vectors):
                out.write(json.dumps(link.to_json(), ensure_ascii=False) + "\n")
                preds.append(link.pred)
            bar.update(len(batch))
    if encoded is not None:
        shutil.rmtree(work)
    seconds = time.perf_counter() - t0
    metrics: dict[str, Scores] | None = None
    if rows:
        metrics = score_groups([items[i].gold for i in rows], [preds[i] for i in rows],
                               [items[i].lang for i in rows], [items[i].type for i in rows])
    log.info("linked %d mentions in %.1f s", len(items), seconds)
    return {"mentions": len(items), "linked": sum(p is not None for p in preds), "seconds": seconds,
            "metrics": metrics}


def work_dir(output: str) -> Path:
    """Where ``--actors`` keeps its inputs and store while linking into ``output``: beside it, so that it is on the
    same disk, visible to a cluster's workers when ``--out`` is on shared storage, and found again by a rerun."""
    out = Path(output)
    return out.with_name(f".{out.name}.xel-link")


def encode_with_actors(cfg: LinkConfig, linker: Linker, items: list[Item], work: Path) -> Store:
    """The items' ``ms`` and ``mc`` rows, in item order, encoded by precompute's Ray actors into ``work/store``
    with the settings of the store the run was trained on (checked after)."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    # precompute needs a KB file; the store keeps only ms and mc, so one entity of the run's KB stands for it
    first = linker.kb.table.record(0)
    write_jsonl(data / "kb.jsonl", [{"id": first["id"], "name": first["name"], "lang": first["lang"]}])
    write_jsonl(data / "mentions.jsonl", ({"id": it.id, "lang": it.lang, "sentence": it.sentence, "start": it.start,
                                           "end": it.end, "context": it.context} for it in items))
    manifest = linker.store.manifest
    pcfg = PrecomputeConfig(
        data=data, model=Path(manifest["model"]), out=work / "store", kinds=("ms", "mc"), layer=manifest["layer"],
        max_length=manifest["max_length"], prefix=manifest["prefix"], dtype=manifest["dtype"],
        backend=manifest.get("backend", "torch"), actors=cfg.actors, address=cfg.address,
    )
    log.info("encoding %d mentions with %d precompute actor(s) into %s", len(items), cfg.actors, pcfg.out)
    precompute(pcfg)
    store = open_store(pcfg.out)
    store.check_same_encoder(linker.store)
    ids, _ = store.load_ids("ms")
    if ids != [it.id for it in items]:
        raise StoreError(f"{pcfg.out}: its mention rows are not the items of {cfg.input} in order; delete {work} "
                         "and rerun")
    return store


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
