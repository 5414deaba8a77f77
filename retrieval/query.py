"""Query-time encoding and search: ``xel-nn query --index index/ "Senado"`` and ``xel-nn batch``.

A query is encoded with the store's own encoder (model, layer, pooling, max length, prefix, dtype, all read
from the store manifest by ``precompute.encoding.TextEncoder.from_manifest``) as an ``ms`` mention span: the
query string alone, or its first occurrence inside ``context`` when one is given. So a query gives the same
vector as the store holds for the same sentence and span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from xel.precompute.encoding import TextEncoder
from xel.precompute.files import atomic_write_bytes
from xel.precompute.items import mention_item
from xel.precompute.schema import iter_records
from xel.precompute.store import Store, refuse_store_out, to_json
from xel.retrieval.index import EntityIndex, RetrievalError
from xel.retrieval.search import SearchOptions
from xel.retrieval.vectors import l2_normalise


@dataclass(frozen=True)
class Query:
    text: str
    lang: str
    context: str | None = None
    id: str | None = None


def query_span(query: Query) -> tuple[str, int, int]:
    """``(sentence, start, end)``: the query's first occurrence in its context, or the query alone."""
    if not query.text.strip():
        raise RetrievalError(f"query {query.text!r} is empty; a query must hold a word")
    if query.context is None:
        return query.text, 0, len(query.text)
    start = query.context.find(query.text)
    if start < 0:
        raise RetrievalError(
            f"query {query.text!r} does not occur in its context {query.context!r}; the context must contain it"
        )
    return query.context, start, start + len(query.text)


def encode_queries(store: Store, queries: Sequence[Query], model_dir: str | None = None) -> np.ndarray:
    """Unit float32 ``ms`` vectors of ``queries``, encoded exactly as precompute encoded the store's mentions (with
    the model the store names, or ``model_dir``: the same files in another place)."""
    encoder = TextEncoder.from_manifest(store.manifest, model_dir)
    items = [mention_item(q.id or f"query-{i}", q.lang, *query_span(q)) for i, q in enumerate(queries)]
    return l2_normalise(np.asarray(encoder.encode(items), dtype=np.float32))


def search_queries(
    index: EntityIndex, store: Store, queries: Sequence[Query], k: int, kb_lang: str | None = None,
    vectors: np.ndarray | None = None, model_dir: str | None = None,
) -> list[list[dict]]:
    """Per query, the top-``k`` entities as ``{"id", "name", "score"}``, best first."""
    if index.kind != "es":
        raise RetrievalError(
            f"index {index.root} holds {index.kind!r} features; queries are ms spans, searchable in an 'es' index "
            "(build one with xel-nn build --kind es)"
        )
    if vectors is None:
        vectors = encode_queries(store, queries, model_dir)
    _, hits = index.search_kbs(vectors, [q.lang for q in queries], k, kb_lang)
    found = {kb for row in hits for kb, _ in row}
    names = {r["id"]: r["name"] for r in store.iter_records("kb") if r["id"] in found}  # streamed: the hits' only
    return [[{"id": kb, "name": names.get(kb), "score": round(s, 6)} for kb, s in row] for row in hits]


@dataclass(frozen=True)
class QueryConfig:
    search: SearchOptions
    query: str
    lang: str = "en"
    context: str | None = None
    k: int = 10
    model: str | None = None  # the store's encoder in another place (same files)


@dataclass(frozen=True)
class BatchConfig:
    search: SearchOptions
    input: str
    output: str
    lang: str = "en"
    k: int = 10
    model: str | None = None


def run_query(cfg: QueryConfig) -> list[dict[str, Any]]:
    """The top-``k`` entities of one query, best first."""
    index, store = cfg.search.open()
    return search_queries(index, store, [Query(cfg.query, cfg.lang, cfg.context)], cfg.k, cfg.search.kb_lang,
                          model_dir=cfg.model)[0]


def run_batch(cfg: BatchConfig) -> int:
    """Search every query of ``cfg.input``; write one JSONL line of results per query; returns the count."""
    refuse_store_out(cfg.output, RetrievalError)
    queries = []
    for lineno, row in iter_records(Path(cfg.input)):
        if not isinstance(row.get("query"), str):
            raise RetrievalError(f"{cfg.input}: record {lineno}: expected {{\"query\": str, \"lang\"?, \"context\"?, "
                                 f"\"id\"?}}, got {row!r}")
        queries.append(Query(row["query"], row.get("lang") or cfg.lang, row.get("context"),
                             str(row["id"]) if row.get("id") is not None else None))
    index, store = cfg.search.open()
    results = search_queries(index, store, queries, cfg.k, cfg.search.kb_lang, model_dir=cfg.model) if queries else []
    lines = [to_json({"id": q.id, "query": q.text, "lang": q.lang, "results": r}, cfg.output, ensure_ascii=False)
             for q, r in zip(queries, results)]
    atomic_write_bytes(cfg.output, ("\n".join(lines) + "\n").encode() if lines else b"")
    return len(lines)
