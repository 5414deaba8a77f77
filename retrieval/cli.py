"""``xel-nn``: build FAISS indexes, query them, generate candidates, and evaluate the nearest-neighbour baseline.

    xel-nn build --features h5/ --out index/ [--index HNSW32] [--kind es] [--update]
    xel-nn bench --features h5/ [--index "IVF1024,PQ48|nprobe=64"] [--queries 1000]
    xel-nn query --index index/ [--lang es] [--context "..."] [--k 10] "Senado"
    xel-nn batch --index index/ --in queries.jsonl --out results.jsonl
    xel-nn candidates --features h5/ --index index/ --out DIR [--k 30]
    xel-nn eval --features h5/ --index index/ --out DIR [--threshold -1.0]

Each command parses its flags into one frozen config and calls the library function of its job, which saves the
resolved config next to the outputs: :func:`retrieval.build.run_build`,
:func:`retrieval.candidate_lists.run_candidates`, :func:`retrieval.nn.run_eval`, :func:`retrieval.query.run_query`,
:func:`retrieval.query.run_batch` and :func:`retrieval.bench.run_bench`. Flag defaults are the configs'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click
import faiss
from xel.precompute.files import exit_on_sigterm
from xel.precompute.identity import EncodeError
from xel.precompute.schema import InputError
from xel.precompute.store import StoreError, atomic_write_json, open_store
from xel.retrieval.bench import bench_frontier, format_bench, run_bench
from xel.retrieval.build import BuildConfig, run_build
from xel.retrieval.candidate_lists import CandidatesConfig, run_candidates
from xel.retrieval.devices import SEARCH_DEVICES
from xel.retrieval.factory import INDEX_PRESETS
from xel.retrieval.files import CandidatesError
from xel.retrieval.index import FEATURE_KINDS, RetrievalError
from xel.retrieval.nn import EvalConfig, run_eval
from xel.retrieval.query import BatchConfig, QueryConfig, run_batch, run_query
from xel.retrieval.search import SearchOptions

log = logging.getLogger(__name__)

USER_ERRORS = (StoreError, RetrievalError, CandidatesError, InputError, EncodeError)
T = TypeVar("T")
C = TypeVar("C")
F = TypeVar("F", bound=Callable[..., Any])


# ----------------------------------------------------------------------------------------------- click


def _search_options(f: F) -> F:
    f = click.option("--device", type=click.Choice(SEARCH_DEVICES), default=SearchOptions.device, show_default=True,
                     help="auto: GPU FAISS, else torch on CUDA, else CPU FAISS")(f)
    f = click.option("--search-params", default=None,
                     help="FAISS search parameters, e.g. efSearch=128 or nprobe=32,k_factor_rf=4")(f)
    f = click.option("--kb-lang", default=None, help="link every mention to this KB (default: its own language's)")(f)
    f = click.option("--features", type=click.Path(file_okay=False), default=None,
                     help="the store (default: the one named in the index manifest)")(f)
    f = click.option("--index", "index_dir", required=True, type=click.Path(file_okay=False),
                     help="index directory from xel-nn build")(f)
    return f


_model_option = click.option(
    "--model", type=click.Path(file_okay=False), default=None,
    help="the store's encoder in another place (a copied or moved model directory; its files must be the same) "
    "[default: the path in the store manifest]")


def _positive(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise click.BadParameter(f"{value}; must be >= 1")
    return value


def _run(fn: Callable[[C], T], cfg: C) -> T:
    try:
        return fn(cfg)
    except USER_ERRORS as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:  # a full disk, a read-only filesystem: outputs are written atomically, so none is half done
        raise click.ClickException(f"{e.filename or getattr(cfg, 'out', '')}: {e.strerror or e}; free space or pass "
                                   "an --out you can write to (nothing was changed there)") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def main(verbose: bool) -> None:
    """Indexes, candidates and the nearest-neighbour baseline over a feature store."""
    exit_on_sigterm()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--features", required=True, type=click.Path(file_okay=False), help="store from xel-precompute")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="index directory to write")
@click.option("--index", "factory", default=BuildConfig.index, show_default=True,
              help=f"FAISS factory string (Flat, HNSW32, ...) or a preset: {', '.join(INDEX_PRESETS)} "
              "(docs/commands.md: index types)")
@click.option("--kind", type=click.Choice(list(FEATURE_KINDS)), default=BuildConfig.kind, show_default=True,
              help="entity features to index")
@click.option("--seed", default=BuildConfig.seed, show_default=True,
              help="seed of the IVF/PQ training sample and k-means")
@click.option("--train-rows", type=int, default=None, callback=_positive,
              help="IVF/PQ training sample size (default: 50 per centroid of the largest codebook)")
@click.option("--overwrite", is_flag=True, help="replace an existing index in --out")
@click.option("--update", is_flag=True,
              help="bring the index in --out up to date with an updated store: Flat deletes and appends the "
              "changed rows, IVF re-adds all rows to its trained lists, other types are rebuilt (said per KB)")
def build(features: str, out: str, factory: str, kind: str, seed: int, train_rows: int | None, overwrite: bool,
          update: bool) -> None:
    """Build one index per KB language over the store's entity features (or update one with --update)."""
    cfg = BuildConfig(features=features, out=out, index=factory, kind=kind, seed=seed, train_rows=train_rows,
                      overwrite=overwrite, update=update)
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
@click.option("--k", default=CandidatesConfig.k, show_default=True, callback=_positive, help="candidates per mention")
@click.option("--max-prior", default=CandidatesConfig.max_prior, show_default=True,
              help="at most this many prior candidates first")
@click.option("--train-lang", default=CandidatesConfig.train_lang, show_default=True,
              help="language of the alias-prior training mentions")
@click.option("--lang", "langs", multiple=True, help="only mentions of this language (repeatable)")
@click.option("--dev-fraction", default=CandidatesConfig.dev_fraction, show_default=True,
              type=click.FloatRange(0, 1, max_open=True),
              help="the alias prior counts training documents only: pass xel-train's --dev-fraction")
@click.option("--test-fraction", default=CandidatesConfig.test_fraction, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="the alias prior counts training documents only: pass xel-train's --test-fraction")
def candidates(index_dir: str, features: str | None, kb_lang: str | None, search_params: str | None, device: str,
               out: str, k: int, max_prior: int, train_lang: str, langs: tuple[str, ...], dev_fraction: float,
               test_fraction: float) -> None:
    """Write candidates.jsonl and the recall@k table (recall.txt/.json/.png)."""
    search = SearchOptions(index=index_dir, features=features, kb_lang=kb_lang, search_params=search_params,
                           device=device)
    cfg = CandidatesConfig(search=search, out=out, k=k, max_prior=max_prior, train_lang=train_lang, langs=langs,
                           dev_fraction=dev_fraction, test_fraction=test_fraction)
    click.echo(_run(run_candidates, cfg))


@main.command(name="eval")
@_search_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="directory for the outputs")
@click.option("--k", default=EvalConfig.k, show_default=True, callback=_positive,
              help="dense candidates per mention (mentions with their own list use it)")
@click.option("--threshold", default=EvalConfig.threshold, show_default=True, help="NIL below this cosine")
@click.option("--candidates", "candidates_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="score these candidate lists (xel-nn candidates output) instead")
@click.option("--max-prior", default=EvalConfig.max_prior, show_default=True,
              help="for the recall table's merged lists")
@click.option("--train-lang", default=EvalConfig.train_lang, show_default=True,
              help="language of the alias-prior training mentions")
@click.option("--lang", "langs", multiple=True, help="only mentions of this language (repeatable)")
def eval_(index_dir: str, features: str | None, kb_lang: str | None, search_params: str | None, device: str,
          out: str, k: int, threshold: float, candidates_file: str | None, max_prior: int, train_lang: str,
          langs: tuple[str, ...]) -> None:
    """The nn baseline: metrics.txt/.json, predictions.jsonl and the recall@k table."""
    if not -1.0 <= threshold <= 1.0:
        raise click.BadParameter(f"{threshold}; a cosine threshold in [-1, 1] is required", param_hint="--threshold")
    search = SearchOptions(index=index_dir, features=features, kb_lang=kb_lang, search_params=search_params,
                           device=device)
    cfg = EvalConfig(search=search, out=out, k=k, threshold=threshold, candidates=candidates_file,
                     max_prior=max_prior, train_lang=train_lang, langs=langs)
    click.echo(_run(run_eval, cfg))


@main.command()
@_search_options
@click.option("--lang", default=QueryConfig.lang, show_default=True, help="language of the query")
@click.option("--context", default=QueryConfig.context,
              help="a sentence containing the query; it is encoded as a span in it")
@click.option("--k", default=QueryConfig.k, show_default=True, callback=_positive, help="entities to print")
@_model_option
@click.argument("text")
def query(index_dir: str, features: str | None, kb_lang: str | None, search_params: str | None, device: str,
          lang: str, context: str | None, k: int, model: str | None, text: str) -> None:
    """Encode TEXT with the store's encoder and print the top-k entities."""
    search = SearchOptions(index=index_dir, features=features, kb_lang=kb_lang, search_params=search_params,
                           device=device)
    cfg = QueryConfig(search=search, query=text, lang=lang, context=context, k=k, model=model)
    for rank, hit in enumerate(_run(run_query, cfg), start=1):
        click.echo(f"{rank:>3}  {hit['score']:.4f}  {hit['id']}  {hit['name']}")


@main.command()
@_search_options
@click.option("--in", "input_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help='JSONL, one {"query": str, "lang"?: str, "context"?: str, "id"?: str} a line')
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL results")
@click.option("--lang", default=BatchConfig.lang, show_default=True, help="language of queries that name none")
@click.option("--k", default=BatchConfig.k, show_default=True, callback=_positive, help="entities per query")
@_model_option
def batch(index_dir: str, features: str | None, kb_lang: str | None, search_params: str | None, device: str,
          input_path: str, out: str, lang: str, k: int, model: str | None) -> None:
    """Search many queries from a JSONL file; write one JSONL line of results per query."""
    search = SearchOptions(index=index_dir, features=features, kb_lang=kb_lang, search_params=search_params,
                           device=device)
    n = _run(run_batch, BatchConfig(search=search, input=input_path, output=out, lang=lang, k=k, model=model))
    click.echo(f"{n} queries -> {out}")


@main.command(name="bench")
@click.option("--features", required=True, type=click.Path(file_okay=False), help="store from xel-precompute")
@click.option("--index", "factories", multiple=True,
              default=("Flat", "HNSW32|efSearch=128", "IVF1024,PQ48|nprobe=64"), show_default=True,
              help="factory string or preset name, optionally with search parameters: "
              '"IVF1024,PQ48|nprobe=64,rerank=4" (repeatable; a factory named more than once is built once and '
              "searched with each parameter set)")
@click.option("--kind", type=click.Choice(list(FEATURE_KINDS)), default="es", show_default=True)
@click.option("--queries", default=1000, show_default=True, callback=_positive, help="queries to search")
@click.option("--k", default=10, show_default=True, callback=_positive)
@click.option("--train-rows", type=int, default=None, callback=_positive, help="IVF/PQ training sample size")
@click.option("--out", "out_json", type=click.Path(dir_okay=False), default=None,
              help="also write the rows and the frontier as JSON")
def bench(features: str, factories: tuple[str, ...], kind: str, queries: int, k: int, train_rows: int | None,
          out_json: str | None) -> None:
    """Recall@k against exact search, size, build time and latency of each index type on this store's KB, and the
    recall/latency frontier (the rows no other row beats on both)."""

    def go(_: None) -> tuple[list[Any], str]:
        return run_bench(open_store(features), list(factories), kind=kind, queries=queries, k=k,
                         train_rows=train_rows)

    rows, lang = _run(go, None)
    click.echo(f"KB {lang!r} of {features}, {queries} queries, k={k}, {faiss.omp_get_max_threads()} threads")
    click.echo(format_bench(rows, k))
    if out_json:
        atomic_write_json(out_json, {"features": features, "lang": lang, "k": k, "queries": queries,
                                     "threads": faiss.omp_get_max_threads(), "rows": [r.as_dict() for r in rows],
                                     "frontier": [r.as_dict() for r in bench_frontier(rows)]})
