"""``xel-nn``: build FAISS indexes, query them, generate candidates, and evaluate the nearest-neighbour baseline.

    xel-nn build --features h5/ --out index/ [--index HNSW32] [--kind es] [--update]
    xel-nn bench --features h5/ [--index "IVF1024,PQ48|nprobe=64"] [--queries 1000]
    xel-nn query --index index/ [--lang es] [--context "..."] [--k 10] "Senado"
    xel-nn batch --index index/ --in queries.jsonl --out results.jsonl
    xel-nn candidates --features h5/ --index index/ --out DIR [--k 30]
    xel-nn eval --features h5/ --index index/ --out DIR [--threshold -1.0]

Each command parses its flags into one frozen config and calls ``run_<command>(cfg)``; the resolved config is
saved next to the outputs.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from precompute.schema import InputError, iter_records
from precompute.store import (
    StoreError,
    atomic_write_bytes,
    atomic_write_json,
    check_out_dir,
    open_store,
    replace_dir,
)
from retrieval.build import build_index
from retrieval.candidates import generate_candidates
from retrieval.devices import SEARCH_DEVICES
from retrieval.files import CandidatesError, read_candidates, write_candidates, write_predictions
from retrieval.index import FEATURE_KINDS, EntityIndex, RetrievalError
from retrieval.index_files import INDEX_MANIFEST, load_index, open_index_and_store
from retrieval.metrics import RECALL_KS, format_recall_table, format_table, plot_recall
from retrieval.nn import DEFAULT_THRESHOLD, nn_link, nn_scores
from retrieval.query import Query, search_queries
from retrieval.update import update_index

log = logging.getLogger(__name__)

USER_ERRORS = (StoreError, RetrievalError, CandidatesError, InputError)


@dataclass(frozen=True)
class SearchOptions:
    index: str
    features: str | None = None
    kb_lang: str | None = None
    search_params: str | None = None
    device: str = "auto"

    def open(self) -> tuple[EntityIndex, object]:
        index, store = open_index_and_store(self.index, self.features)
        index.set_search_params(self.search_params)
        index.to_device(self.device)
        return index, store


@dataclass(frozen=True)
class BuildConfig:
    features: str
    out: str
    index: str = "Flat"
    kind: str = "es"
    seed: int = 0
    train_rows: int | None = None
    overwrite: bool = False
    update: bool = False


@dataclass(frozen=True)
class CandidatesConfig:
    search: SearchOptions
    out: str
    k: int = 30
    max_prior: int = 10
    train_lang: str = "en"
    langs: tuple[str, ...] = ()


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


@dataclass(frozen=True)
class QueryConfig:
    search: SearchOptions
    query: str
    lang: str = "en"
    context: str | None = None
    k: int = 10


@dataclass(frozen=True)
class BatchConfig:
    search: SearchOptions
    input: str
    output: str
    lang: str = "en"
    k: int = 10


# ----------------------------------------------------------------------------------------------- runs




def run_build(cfg: BuildConfig) -> tuple[EntityIndex, dict[str, dict] | None]:
    """Build (or with ``update``, update) into a temp directory beside ``--out`` and move it into place: a failed
    build leaves nothing. Returns the index and, for an update, what was done per KB language."""
    out = Path(cfg.out)
    if cfg.update and cfg.overwrite:
        raise RetrievalError("--update and --overwrite: pick one (--update edits the index in --out, "
                             "--overwrite builds a new one)")
    old = None
    if cfg.update:
        old = load_index(out, mmap=False)  # edited in memory, written anew
        if (cfg.index, cfg.kind) != (old.manifest["factory"], old.manifest["kind"]):
            raise RetrievalError(
                f"--update: the index in {out} is {old.manifest['factory']!r} over {old.manifest['kind']!r}, this "
                f"command asks {cfg.index!r} over {cfg.kind!r}; drop --index/--kind, or rebuild with --overwrite")
    elif check_out_dir(out, INDEX_MANIFEST, "an xel index", RetrievalError) and not cfg.overwrite:
        raise RetrievalError(f"--out {out}: already holds an index; pass --overwrite to replace it")
    store = open_store(cfg.features)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    report = None
    try:
        if old is not None:
            report = update_index(old, store, tmp)
            index = old
        else:
            index = build_index(store, tmp, factory=cfg.index, kind=cfg.kind, seed=cfg.seed,
                                train_rows=cfg.train_rows)
        atomic_write_json(tmp / "config.json", asdict(cfg))
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    index.root = out
    return index, report


def _write_recall(out: Path, candidate_set) -> str:
    table = candidate_set.recall(RECALL_KS)
    text = format_recall_table(table, RECALL_KS)
    atomic_write_json(out / "recall.json", table)
    atomic_write_bytes(out / "recall.txt", (text + "\n").encode())
    plot_recall(table, str(out / "recall.png"), RECALL_KS)
    return text


def run_candidates(cfg: CandidatesConfig) -> str:
    out = Path(cfg.out)
    index, store = cfg.search.open()
    cands = generate_candidates(
        store, index, k=cfg.k, max_prior=cfg.max_prior, train_lang=cfg.train_lang, kb_lang=cfg.search.kb_lang,
        langs=cfg.langs or None,
    )
    out.mkdir(parents=True, exist_ok=True)  # only once every input has been read and checked
    write_candidates(out / "candidates.jsonl", ((m.id, c) for m, c in zip(cands.mentions, cands.merged)))
    atomic_write_json(out / "config.json", asdict(cfg))
    return "candidate recall@k\n" + _write_recall(out, cands)


def run_eval(cfg: EvalConfig) -> str:
    out = Path(cfg.out)
    index, store = cfg.search.open()
    cands = generate_candidates(
        store, index, k=cfg.k, max_prior=cfg.max_prior, train_lang=cfg.train_lang, kb_lang=cfg.search.kb_lang,
        langs=cfg.langs or None,
    )
    from_file = read_candidates(cfg.candidates) if cfg.candidates else None
    lists = []
    for i, m in enumerate(cands.mentions):
        if from_file is not None:
            if m.id not in from_file:
                raise CandidatesError(f"{cfg.candidates}: no line for mention {m.id!r}; regenerate the file")
            lists.append([kb for kb, _, _ in from_file[m.id]])
        elif m.given is not None:
            lists.append(list(m.given))
        else:
            lists.append([kb for kb, _ in cands.dense[i][: cfg.k]])
    cands.data.prefetch(kb for ids in lists for kb in ids)  # one batch of row reads for every candidate
    preds = [nn_link(cands.data.vectors[i], ids, cands.data.entity, cfg.threshold) for i, ids in enumerate(lists)]
    out.mkdir(parents=True, exist_ok=True)  # only once every input has been read and checked
    write_predictions(out / "predictions.jsonl", ((m.id, p.pred, p.score, p.candidates)
                                                  for m, p in zip(cands.mentions, preds)))
    scores = nn_scores([m.gold for m in cands.mentions], preds, [m.lang for m in cands.mentions],
                       [m.type for m in cands.mentions])
    metrics = format_table(scores, f"nn baseline (threshold {cfg.threshold})")
    atomic_write_json(out / "metrics.json", {name: s.as_dict() for name, s in scores.items()})
    atomic_write_bytes(out / "metrics.txt", (metrics + "\n").encode())
    atomic_write_json(out / "config.json", asdict(cfg))
    return metrics + "\n\ncandidate recall@k\n" + _write_recall(out, cands)


def run_query(cfg: QueryConfig) -> list[dict]:
    index, store = cfg.search.open()
    return search_queries(index, store, [Query(cfg.query, cfg.lang, cfg.context)], cfg.k, cfg.search.kb_lang)[0]


def run_batch(cfg: BatchConfig) -> int:
    queries = []
    for lineno, row in iter_records(Path(cfg.input)):
        if not isinstance(row.get("query"), str):
            raise RetrievalError(f"{cfg.input}: record {lineno}: expected {{\"query\": str, \"lang\"?, \"context\"?, "
                                 f"\"id\"?}}, got {row!r}")
        queries.append(Query(row["query"], row.get("lang") or cfg.lang, row.get("context"),
                             str(row["id"]) if row.get("id") is not None else None))
    index, store = cfg.search.open()
    results = search_queries(index, store, queries, cfg.k, cfg.search.kb_lang) if queries else []
    lines = [json.dumps({"id": q.id, "query": q.text, "lang": q.lang, "results": r}, ensure_ascii=False)
             for q, r in zip(queries, results)]
    atomic_write_bytes(cfg.output, ("\n".join(lines) + "\n").encode() if lines else b"")
    return len(lines)


# ----------------------------------------------------------------------------------------------- click


def _search_options(f):
    f = click.option("--device", type=click.Choice(SEARCH_DEVICES), default="auto", show_default=True,
                     help="auto: GPU FAISS, else torch on CUDA, else CPU FAISS")(f)
    f = click.option("--search-params", default=None,
                     help="FAISS search parameters, e.g. efSearch=128 or nprobe=32,k_factor_rf=4")(f)
    f = click.option("--kb-lang", default=None, help="link every mention to this KB (default: its own language's)")(f)
    f = click.option("--features", type=click.Path(file_okay=False), default=None,
                     help="the store (default: the one named in the index manifest)")(f)
    f = click.option("--index", "index_dir", required=True, type=click.Path(file_okay=False),
                     help="index directory from xel-nn build")(f)
    return f


def _positive(ctx, param, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"{value}; must be >= 1")
    return value


def _run(fn, cfg):
    try:
        return fn(cfg)
    except USER_ERRORS as e:
        raise click.ClickException(str(e)) from None


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def main(verbose: bool) -> None:
    """Indexes, candidates and the nearest-neighbour baseline over a feature store."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--features", required=True, type=click.Path(file_okay=False), help="store from xel-precompute")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="index directory to write")
@click.option("--index", "factory", default="Flat", show_default=True, help="FAISS factory string (Flat, HNSW32, ...)")
@click.option("--kind", type=click.Choice(list(FEATURE_KINDS)), default="es", show_default=True,
              help="entity features to index")
@click.option("--seed", default=0, show_default=True, help="seed of the IVF/PQ training sample and k-means")
@click.option("--train-rows", type=int, default=None, callback=_positive,
              help="IVF/PQ training sample size (default: 50 per centroid of the largest codebook)")
@click.option("--overwrite", is_flag=True, help="replace an existing index in --out")
@click.option("--update", is_flag=True,
              help="bring the index in --out up to date with an updated store: Flat deletes and appends the "
              "changed rows, IVF re-adds all rows to its trained lists, other types are rebuilt (said per KB)")
def build(features, out, factory, kind, seed, train_rows, overwrite, update) -> None:
    """Build one index per KB language over the store's entity features (or update one with --update)."""
    cfg = BuildConfig(features, out, factory, kind, seed, train_rows, overwrite, update)
    index, report = _run(run_build, cfg)
    for lang, info in index.manifest["langs"].items():
        how = ""
        if report is not None:
            r = report[lang]
            how = f"; {r['how']}: +{r['added']} -{r['removed']} rows"
        click.echo(f"{lang}: {info['rows']} entities, {info['bytes']} bytes ({index.manifest['factory']}){how}")
    for lang in sorted(set(report or {}) - set(index.manifest["langs"])):
        click.echo(f"{lang}: {report[lang]['how']}")


@main.command()
@_search_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="directory for the outputs")
@click.option("--k", default=30, show_default=True, callback=_positive, help="candidates per mention")
@click.option("--max-prior", default=10, show_default=True, help="at most this many prior candidates first")
@click.option("--train-lang", default="en", show_default=True, help="language of the alias-prior training mentions")
@click.option("--lang", "langs", multiple=True, help="only mentions of this language (repeatable)")
def candidates(index_dir, features, kb_lang, search_params, device, out, k, max_prior, train_lang, langs) -> None:
    """Write candidates.jsonl and the recall@k table (recall.txt/.json/.png)."""
    search = SearchOptions(index_dir, features, kb_lang, search_params, device)
    click.echo(_run(run_candidates, CandidatesConfig(search, out, k, max_prior, train_lang, tuple(langs))))


@main.command(name="eval")
@_search_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="directory for the outputs")
@click.option("--k", default=30, show_default=True, callback=_positive,
              help="dense candidates per mention (mentions with their own list use it)")
@click.option("--threshold", default=DEFAULT_THRESHOLD, show_default=True, help="NIL below this cosine")
@click.option("--candidates", "candidates_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="score these candidate lists (xel-nn candidates output) instead")
@click.option("--max-prior", default=10, show_default=True, help="for the recall table's merged lists")
@click.option("--train-lang", default="en", show_default=True, help="language of the alias-prior training mentions")
@click.option("--lang", "langs", multiple=True, help="only mentions of this language (repeatable)")
def eval_(index_dir, features, kb_lang, search_params, device, out, k, threshold, candidates_file, max_prior,
          train_lang, langs) -> None:
    """The nn baseline: metrics.txt/.json, predictions.jsonl and the recall@k table."""
    if not -1.0 <= threshold <= 1.0:
        raise click.BadParameter(f"{threshold}; a cosine threshold in [-1, 1] is required", param_hint="--threshold")
    search = SearchOptions(index_dir, features, kb_lang, search_params, device)
    cfg = EvalConfig(search, out, k, threshold, candidates_file, max_prior, train_lang, tuple(langs))
    click.echo(_run(run_eval, cfg))


@main.command()
@_search_options
@click.option("--lang", default="en", show_default=True, help="language of the query")
@click.option("--context", default=None, help="a sentence containing the query; it is encoded as a span in it")
@click.option("--k", default=10, show_default=True, callback=_positive, help="entities to print")
@click.argument("text")
def query(index_dir, features, kb_lang, search_params, device, lang, context, k, text) -> None:
    """Encode TEXT with the store's encoder and print the top-k entities."""
    search = SearchOptions(index_dir, features, kb_lang, search_params, device)
    for rank, hit in enumerate(_run(run_query, QueryConfig(search, text, lang, context, k)), start=1):
        click.echo(f"{rank:>3}  {hit['score']:.4f}  {hit['id']}  {hit['name']}")


@main.command()
@_search_options
@click.option("--in", "input_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help='JSONL, one {"query": str, "lang"?: str, "context"?: str, "id"?: str} a line')
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL results")
@click.option("--lang", default="en", show_default=True, help="language of queries that name none")
@click.option("--k", default=10, show_default=True, callback=_positive, help="entities per query")
def batch(index_dir, features, kb_lang, search_params, device, input_path, out, lang, k) -> None:
    """Search many queries from a JSONL file; write one JSONL line of results per query."""
    search = SearchOptions(index_dir, features, kb_lang, search_params, device)
    n = _run(run_batch, BatchConfig(search, input_path, out, lang, k))
    click.echo(f"{n} queries -> {out}")


@main.command(name="bench")
@click.option("--features", required=True, type=click.Path(file_okay=False), help="store from xel-precompute")
@click.option("--index", "factories", multiple=True,
              default=("Flat", "HNSW32|efSearch=128", "IVF1024,PQ48|nprobe=64"), show_default=True,
              help='factory string, optionally with search parameters: "IVF1024,PQ48|nprobe=64,rerank=4" (repeatable)')
@click.option("--kind", type=click.Choice(list(FEATURE_KINDS)), default="es", show_default=True)
@click.option("--queries", default=1000, show_default=True, callback=_positive, help="queries to search")
@click.option("--k", default=10, show_default=True, callback=_positive)
@click.option("--train-rows", type=int, default=None, callback=_positive, help="IVF/PQ training sample size")
@click.option("--out", "out_json", type=click.Path(dir_okay=False), default=None, help="also write the rows as JSON")
def bench(features, factories, kind, queries, k, train_rows, out_json) -> None:
    """Recall@k against exact search, size, build time and latency of each index type on this store's KB."""
    from retrieval.bench import format_bench, run_bench

    def go(_):
        return run_bench(open_store(features), list(factories), kind=kind, queries=queries, k=k,
                         train_rows=train_rows)

    rows, lang = _run(go, None)
    click.echo(f"KB {lang!r} of {features}, {queries} queries, k={k}")
    click.echo(format_bench(rows, k))
    if out_json:
        atomic_write_json(out_json, {"features": features, "lang": lang, "k": k, "rows": [r.as_dict() for r in rows]})
