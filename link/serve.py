"""A local linking service over a trained run: ``xel-serve --model RUN_DIR [--host 127.0.0.1 --port 8000]``
(``--features STORE``: link against the KB of another store, see :mod:`link.linker`).

FastAPI + uvicorn (one process; the linker holds the KB, index and encoder in memory once, and a single model on
a CPU or GPU gains nothing from replicas on one machine). Routes:

* ``POST /link``: ``{"items": [{id?, text or sentence, start, end, lang?, context?}, ...], "k"?: 10,
  "threshold"?: float}`` -> ``{"links": [Links file lines]}``; a bad body or item is answered 4xx with a message
  naming the item and field (400: not JSON, or nested too deep; 408: the body came too slowly; 413: a body over
  ``--max-body-bytes`` (refused by its Content-Length before it is read, or while it streams in), more than
  ``--max-items`` items or a text over 20,000 characters; 422: a bad field, items checked by the rules
  precompute applies). A batch that fails inside the linker answers its requests 500 with a one-line message
  (the traceback goes to the log); the worker goes on with the next batch. When the run's store or index was
  rewritten on disk since the linker loaded it (:mod:`link.watch`), every batch is answered 503 with the
  message that names the file and says to restart ``xel-serve``;
* ``POST /link`` with raw text: ``{"documents": [{id?, text, lang?}, ...], "k"?, "threshold"?, "spotter"?:
  "tagger" | "gazetteer"}`` -> ``{"documents": [documents-file lines]}``: every mention found (the run's
  detector, ``xel-detect``; 422 when the run has none) and linked (:mod:`detect.documents`);
* ``GET /health``: ``{"status": "ok", ...}`` while the linking worker runs, else 503 ``"stopped"``, or 503
  ``"stale"`` with ``stale``: what changed on disk since the linker loaded (restart the service); with the
  failed batches so far, the last failure, the queue length and how long the current batch has run, and
  ``kb``: null for the run's own KB, else the KB linked against and what carried over to it (the ``kb`` field
  of each link, :class:`link.linker.KBSource`);
* ``GET /``: a page to paste a sentence, select the mention with the mouse (or type it), pick its language and
  see the ranked entities, their scores and the NIL decision; or paste a paragraph and see every detected
  mention highlighted with its entity, score and NIL decision;
* ``GET /openapi.json``: the schema. There is no ``/docs`` or ``/redoc``: FastAPI's pages load their scripts from
  a CDN, which an offline machine cannot reach.

Concurrent requests are batched: a worker thread takes the queued requests (up to ``--max-items`` items, waiting
at most ``--batch-wait-ms`` for more) and links them in one call, so encoding and scoring run batched and one at
a time. Predictions are the linker's for the same items (batch composition moves scores only by float rounding).

Slow or hostile clients: a request's line and headers must arrive within ``--request-timeout-s`` of the
connection (or of the previous response on a kept-alive one) and its body within ``--request-timeout-s`` of its
headers; headers over 16 KiB are refused (h11); idle kept-alive connections close after 5 s; past
``--max-connections`` open connections a request is answered 503 at once. SIGTERM (or Ctrl-C)
stops taking connections, lets the requests in flight finish for up to ``--shutdown-timeout-s``, then exits.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, InvalidStateError
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import click
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol
from xel.detect.detector import DetectorError
from xel.detect.documents import Document, link_documents
from xel.link.linker import Item, Link, Linker
from xel.link.options import FiniteFloat
from xel.link.page import PAGE
from xel.link.requests import BadRequest, LinkRequest, parse_body, parse_json, read_body
from xel.link.watch import StoreChanged
from xel.precompute.identity import EncodeError
from xel.precompute.schema import ISO_639_1

log = logging.getLogger(__name__)

MAX_ITEMS = 256
MAX_BODY_BYTES = 8 << 20  # 256 items of 20,000 characters fit, escaped ASCII or UTF-8
REQUEST_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 1000  # below the usual 1024 open files, so that a flood of connections gets 503, not EMFILE
KEEP_ALIVE_S = 5
MAX_HEAD_BYTES = 16 << 10


@dataclass
class Job:
    items: list[Item]
    k: int
    threshold: float | None
    future: Future = field(default_factory=Future)
    documents: list[Document] = field(default_factory=list)  # raw text: detect with ``spotter``, then link
    spotter: str = "tagger"


class ServiceStopped(Exception):
    """The linking worker is not running (the service is shutting down): answered 503."""


class LinkingFailed(Exception):
    """A batch failed inside the linker: answered 500 with this one-line message; the traceback is in the log."""


class LinkerStale(LinkingFailed):
    """The linker's store or index changed on disk since it loaded (:class:`link.watch.StoreChanged`): answered
    503 with the whole message, which says to restart the service."""


class Batcher:
    """One worker thread that links queued jobs together (see the module docstring). Whatever one batch raises
    fails that batch's requests only; the worker goes on."""

    def __init__(self, linker: Linker, max_items: int = MAX_ITEMS, wait_s: float = 0.005):
        self.linker, self.max_items, self.wait_s = linker, max_items, wait_s
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="xel-link-batcher", daemon=True)
        self.lock = threading.Lock()  # submit against stop: no job is queued after stop drains the queue
        self.stopping = False
        self.failed_batches = 0
        self.last_failure: str | None = None
        self.busy_since: float | None = None

    def start(self) -> None:
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread.is_alive() and not self.stopping

    def stop(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Link what is queued, for up to ``timeout_s``; fail what is left (503) and return. A batch still in the
        linker after that is abandoned with its thread (a daemon), so that the process can exit."""
        with self.lock:
            self.stopping = True
            self.queue.put(None)
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            log.warning("the linking worker is still in a batch after %.0f s; exiting without it", timeout_s)
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                settle(job.future, error=ServiceStopped("the service stopped before linking this request; retry"))

    def submit(self, items: list[Item], k: int, threshold: float | None, documents: list[Document] | None = None,
               spotter: str = "tagger") -> Future:
        with self.lock:
            if not self.running:
                raise ServiceStopped("the linking worker is not running (the service is shutting down); retry on "
                                     "another instance")
            job = Job(items, k, threshold, documents=documents or [], spotter=spotter)
            self.queue.put(job)
        return job.future

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        jobs, n = [first], len(first.items) + len(first.documents)
        deadline = time.monotonic() + self.wait_s
        while n < self.max_items:
            try:
                job = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            n += len(job.items) + len(job.documents)
        return jobs, False

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            jobs, stop = self._collect(first)
            self.busy_since = time.monotonic()
            try:
                for job in (j for j in jobs if j.documents):
                    self._run_documents(job)
                jobs = [j for j in jobs if not j.documents]
                for threshold in dict.fromkeys(j.threshold for j in jobs):
                    self._run([j for j in jobs if j.threshold == threshold], threshold)
            except BaseException as e:  # the worker outlives any batch: a bug here fails these requests only
                self._failed([j for j in jobs if not j.future.done()], e)
            finally:
                self.busy_since = None
            if stop:
                return

    def _run(self, jobs: list[Job], threshold: float | None) -> None:
        jobs = [j for j in jobs if not j.future.cancelled()]  # a request cancelled while queued (its client left)
        if not jobs:
            return
        n = sum(len(j.items) for j in jobs)
        try:
            links = self.linker.link([it for j in jobs for it in j.items], k=max(j.k for j in jobs),
                                     threshold=threshold)
            if len(links) != n:
                raise RuntimeError(f"the linker returned {len(links)} links for {n} items")
        except BaseException as e:  # 422 for an item the encoder refuses, else 500; never the worker's end
            if len(jobs) > 1:  # one request's bad item must not fail the others batched with it
                for j in jobs:
                    self._run([j], threshold)
            elif isinstance(e, EncodeError):
                settle(jobs[0].future, error=e)
            else:
                self._failed(jobs, e)
            return
        start = 0
        for j in jobs:
            mine: list[Link] = links[start : start + len(j.items)]
            start += len(j.items)
            settle(j.future, [replace(x, candidates=x.candidates[: j.k]) for x in mine])

    def _run_documents(self, job: Job) -> None:
        """One request of raw documents: detected and linked (:func:`detect.documents.link_documents`)."""
        if job.future.cancelled():
            return
        try:
            lines = link_documents(self.linker, self.linker.spotter(job.spotter), job.documents, job.k,
                                   job.threshold)
        except (EncodeError, DetectorError) as e:
            settle(job.future, error=e)
        except BaseException as e:
            self._failed([job], e)
        else:
            settle(job.future, lines)

    def _failed(self, jobs: list[Job], error: BaseException) -> None:
        lines = str(error).strip().splitlines()
        message = f"linking failed: {type(error).__name__}" + (f": {lines[0][:300]}" if lines else "")
        failure = LinkingFailed
        if isinstance(error, StoreChanged):
            message, failure = f"linking failed: {type(error).__name__}: {error}", LinkerStale
            log.error("a batch of %d request(s) failed: %s", len(jobs), error)
        else:
            log.error("a batch of %d request(s) failed; the service goes on", len(jobs),
                      exc_info=(type(error), error, error.__traceback__))
        self.failed_batches += 1
        self.last_failure = message
        for j in jobs:
            settle(j.future, error=failure(message))


def settle(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Give ``future`` its result or error, unless it is done already: a request cancelled while its batch ran
    (its client left, or the shutdown timed out) must not fail the others batched with it."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def create_app(linker: Linker, *, max_items: int = MAX_ITEMS, batch_wait_ms: float = 5.0, name: str = "",
               max_body_bytes: int = MAX_BODY_BYTES, request_timeout_s: float = REQUEST_TIMEOUT_S,
               shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S) -> FastAPI:
    """The service over a loaded ``linker`` (see the module docstring)."""
    batcher = Batcher(linker, max_items, batch_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await asyncio.to_thread(batcher.stop, shutdown_timeout_s)

    # no /docs, /redoc: their pages load Swagger UI and ReDoc from a CDN (blank offline); /openapi.json stays
    app = FastAPI(title="xel linking service", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return JSONResponse({"detail": f"internal error: {type(error).__name__}"}, status_code=500)

    @app.get("/health")
    def health() -> JSONResponse:
        busy = batcher.busy_since
        stale = linker.files_changed()
        status = "stopped" if not batcher.running else "stale" if stale is not None else "ok"
        return JSONResponse(
            {"status": status, "stale": stale, "model": name,
             "scorer": "nn" if linker.model is None else linker.model.spec.scorer,
             "kb_entries": len(linker.kb), "kb": None if linker.kb_source is None else linker.kb_source.to_json(),
             "threshold": linker.threshold, "max_items": max_items,
             "max_body_bytes": max_body_bytes, "failed_batches": batcher.failed_batches,
             "last_failure": batcher.last_failure, "queued": batcher.queue.qsize(),
             "busy_s": None if busy is None else round(time.monotonic() - busy, 3)},
            status_code=200 if status == "ok" else 503)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.replace("{{LANGS}}", json.dumps(sorted(ISO_639_1))).replace("{{MODEL}}", html.escape(name))

    @app.post("/link")
    async def link(request: Request) -> JSONResponse:
        try:
            raw = await read_body(request, max_body_bytes, request_timeout_s)
            req: LinkRequest = parse_body(parse_json(raw, max_items), max_items)
        except BadRequest as e:
            return JSONResponse({"detail": e.message}, status_code=e.status,
                                headers={"Connection": "close"} if e.unread else None)
        except ClientDisconnect:
            return JSONResponse({"detail": "the client went away"}, status_code=400)
        try:
            links = await asyncio.wrap_future(batcher.submit(req.items, req.k, req.threshold, req.documents,
                                                             req.spotter))
        except ServiceStopped as e:
            return JSONResponse({"detail": str(e)}, status_code=503)
        except (EncodeError, DetectorError) as e:
            return JSONResponse({"detail": str(e)}, status_code=422)
        except LinkerStale as e:
            return JSONResponse({"detail": str(e)}, status_code=503)
        except LinkingFailed as e:
            return JSONResponse({"detail": str(e)}, status_code=500)
        if req.documents:
            return JSONResponse({"documents": links})
        return JSONResponse({"links": [x.to_json() for x in links]})

    return app


class HeadDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on a request's line and headers: a client that has not sent them
    whole within ``head_timeout_s`` of connecting (or of its previous response) is disconnected. uvicorn itself
    only closes idle kept-alive connections, so a client that trickles its headers would hold one forever."""

    head_timeout_s = REQUEST_TIMEOUT_S
    _head_timer: asyncio.TimerHandle | None = None

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._head_timer is None and self._waiting_for_head():
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_too_slow)
        elif self._head_timer is not None and not self._waiting_for_head():
            self._disarm()

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._waiting_for_head() and not self.transport.is_closing():
            log.info("closing a connection from %s: no request head within %g s", self.client, self.head_timeout_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # idle now: uvicorn's keep-alive timeout runs until the next request's first byte

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def serve(app: FastAPI, host: str, port: int, *, request_timeout_s: float = REQUEST_TIMEOUT_S,
          shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
          log_level: str = "info") -> None:
    """Run ``app`` with uvicorn until SIGTERM or Ctrl-C, with the limits of the module docstring."""
    import uvicorn

    protocol = type("HeadDeadlineH11Protocol", (HeadDeadlineH11Protocol,), {"head_timeout_s": request_timeout_s})
    config = uvicorn.Config(app, host=host, port=port, http=protocol, ws="none", log_level=log_level,
                            timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=math.ceil(shutdown_timeout_s),
                            h11_max_incomplete_event_size=MAX_HEAD_BYTES, limit_concurrency=max_connections)
    uvicorn.Server(config).run()


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, type=click.Path(file_okay=False, exists=True),
              help="a trained run directory (config.json, model.safetensors, metrics.json)")
@click.option("--features", type=click.Path(file_okay=False), default=None,
              help="the feature store whose KB (es/ec rows) to link against, encoded with the run's encoder  "
                   "[default: the run's training store]")
@click.option("--index", type=click.Path(file_okay=False), default=None,
              help="FAISS index of that store  [default: <store>/../index]")
@click.option("--threshold", type=FiniteFloat(), default=None, help="NIL threshold  [default: the run's tuned one]")
@click.option("--host", default="127.0.0.1")
@click.option("--port", type=click.IntRange(1, 65535), default=8000)
@click.option("--max-items", type=click.IntRange(min=1), default=MAX_ITEMS, help="items per request")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=MAX_BODY_BYTES,
              help="largest request body; a larger one is refused (413) by its Content-Length, before it is read")
@click.option("--request-timeout-s", type=click.FloatRange(min=0.1), default=REQUEST_TIMEOUT_S,
              help="a request's headers, then its body, must each arrive within this (else 408 or disconnect)")
@click.option("--shutdown-timeout-s", type=click.FloatRange(min=0), default=SHUTDOWN_TIMEOUT_S,
              help="on SIGTERM, how long the requests in flight may take before the process exits anyway")
@click.option("--max-connections", type=click.IntRange(min=1), default=MAX_CONNECTIONS,
              help="open connections (or requests in flight) beyond which a request is answered 503 at once")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=5.0,
              help="how long the batcher waits for more requests to link together")
def main(model: str, features: str | None, index: str | None, threshold: float | None, host: str, port: int,
         max_items: int, max_body_bytes: int, request_timeout_s: float, shutdown_timeout_s: float,
         max_connections: int, batch_wait_ms: float) -> None:
    """Serve the trained run --model: POST /link, GET /health, a page at GET /, the schema at GET /openapi.json.
    There is no /docs or /redoc (FastAPI's pages load their scripts from a CDN: blank offline)."""
    from xel.link.cli import ERRORS

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        linker = Linker.load(model, index_dir=index, threshold=threshold, features=features)
    except ERRORS as e:
        raise click.ClickException(str(e)) from None
    serve(create_app(linker, max_items=max_items, batch_wait_ms=batch_wait_ms, name=model,
                     max_body_bytes=max_body_bytes, request_timeout_s=request_timeout_s,
                     shutdown_timeout_s=shutdown_timeout_s),
          host, port, request_timeout_s=request_timeout_s, shutdown_timeout_s=shutdown_timeout_s,
          max_connections=max_connections)


if __name__ == "__main__":
    main()
