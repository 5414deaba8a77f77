"""``xel-link --detect``: link every mention of raw documents, ``xel-link --detect --model RUN --in docs.jsonl
--out doclinks.jsonl [--spotter tagger|gazetteer]``.

Every line of ``--in`` is checked before the model is loaded (:func:`detect.documents.read_documents`); documents
are detected and linked ``--batch-size`` at a time and written, one line per document in input order, through the
same temporary file and guards as the Links file (:mod:`link.batch`: ``--out`` may not be a file xel-link reads).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm
from xel.detect.documents import link_documents, read_documents
from xel.link.batch import LinkConfig, links_file, refuse_out_over_inputs, remove_stale_temp_files
from xel.link.linker import Linker
from xel.precompute.store import json_line

log = logging.getLogger(__name__)


def run_documents(cfg: LinkConfig) -> dict[str, Any]:
    """Detect and link the documents of ``cfg.input`` into ``cfg.output``; returns ``{"documents", "mentions",
    "linked", "seconds", "tokens", "metrics": None, "kb"}`` (``tokens``: subwords tagged, 0 for the gazetteer)."""
    refuse_out_over_inputs(cfg)
    for path in remove_stale_temp_files(cfg.output):
        log.info("removed %s, left by an xel-link that was killed", path)
    docs = read_documents(Path(cfg.input))
    linker = Linker.load(cfg.model, index_dir=cfg.index, threshold=cfg.threshold, features=cfg.features)
    spotter = linker.spotter(cfg.spotter)
    t0 = time.perf_counter()
    mentions = linked = 0
    with links_file(cfg.output) as tmp, open(tmp, "w", encoding="utf-8") as out, \
            tqdm(total=len(docs), unit="doc", desc="detecting and linking", disable=not cfg.progress) as bar:
        for start in range(0, len(docs), cfg.batch_size):
            for line in link_documents(linker, spotter, docs[start : start + cfg.batch_size], k=cfg.k):
                out.write(json_line(line, cfg.output))
                mentions += len(line["mentions"])
                linked += sum(m["pred"] is not None for m in line["mentions"])
            bar.update(min(cfg.batch_size, len(docs) - start))
    seconds = time.perf_counter() - t0
    return {"documents": len(docs), "mentions": mentions, "linked": linked, "seconds": seconds,
            "tokens": getattr(spotter, "tokens", 0), "metrics": None,
            "kb": None if linker.kb_source is None else linker.kb_source.to_json()}
