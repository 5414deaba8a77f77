"""A local linking service over a trained run: ``xel-serve --model RUN_DIR [--host 127.0.0.1 --port 8000]``.

FastAPI + uvicorn (one process; the linker holds the KB, index and encoder in memory once, and a single model on
a CPU or GPU gains nothing from replicas on one machine). Routes:

* ``POST /link``: ``{"items": [{id?, text or sentence, start, end, lang?, context?}, ...], "k"?: 10,
  "threshold"?: float}`` -> ``{"links": [Links file lines]}``; a bad body or item is answered 4xx with a message
  naming the item and field (400: not JSON, 413: more than ``--max-items`` items, 422: a bad field);
* ``GET /health``: ``{"status": "ok", ...}`` once the model is loaded;
* ``GET /``: a page to paste a sentence, select the mention with the mouse (or type it), pick its language and
  see the ranked entities, their scores and the NIL decision.

Concurrent requests are batched: a worker thread takes the queued requests (up to ``--max-items`` items, waiting
at most ``--batch-wait-ms`` for more) and links them in one call, so encoding and scoring run batched and one at
a time. Predictions are the linker's for the same items (batch composition moves scores only by float rounding).
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import click
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from link.linker import Item, Link, Linker, LinkError, check_item
from link.page import PAGE
from precompute.encoding import EncodeError
from precompute.schema import ISO_639_1

log = logging.getLogger(__name__)

MAX_ITEMS = 256
MAX_TEXT_CHARS = 20_000
MAX_K = 100


@dataclass
class Job:
    items: list[Item]
    k: int
    threshold: float | None
    future: Future = field(default_factory=Future)


class Batcher:
    """One worker thread that links queued jobs together (see the module docstring)."""

    def __init__(self, linker: Linker, max_items: int = MAX_ITEMS, wait_s: float = 0.005):
        self.linker, self.max_items, self.wait_s = linker, max_items, wait_s
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="xel-link-batcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def submit(self, items: list[Item], k: int, threshold: float | None) -> Future:
        job = Job(items, k, threshold)
        self.queue.put(job)
        return job.future

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        jobs, n = [first], len(first.items)
        deadline = time.monotonic() + self.wait_s
        while n < self.max_items:
            try:
                job = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            n += len(job.items)
        return jobs, False

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            jobs, stop = self._collect(first)
            for threshold in {j.threshold for j in jobs}:
                self._run([j for j in jobs if j.threshold == threshold], threshold)
            if stop:
                return

    def _run(self, jobs: list[Job], threshold: float | None) -> None:
        try:
            links = self.linker.link([it for j in jobs for it in j.items], k=max(j.k for j in jobs),
                                     threshold=threshold)
        except Exception as e:  # handed to the requests: 422 for an item the encoder refuses, else 500
            if len(jobs) > 1:  # one request's bad item must not fail the others batched with it
                for j in jobs:
                    self._run([j], threshold)
                return
            if not isinstance(e, EncodeError):
                log.exception("linking a batch of %d items failed", len(jobs[0].items))
            jobs[0].future.set_exception(e)
            return
        start = 0
        for j in jobs:
            mine: list[Link] = links[start : start + len(j.items)]
            start += len(j.items)
            j.future.set_result([replace(x, candidates=x.candidates[: j.k]) for x in mine])


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def parse_body(body: Any, max_items: int) -> tuple[list[Item], int, float | None]:
    """Items, ``k`` and ``threshold`` of a ``POST /link`` body; :class:`BadRequest` says what is wrong."""
    if not isinstance(body, dict) or "items" not in body:
        raise BadRequest(422, 'the body must be a JSON object {"items": [{"text", "start", "end", "lang"?}, ...], '
                              '"k"?, "threshold"?}')
    unknown = sorted(set(body) - {"items", "k", "threshold"})
    if unknown:
        raise BadRequest(422, f"body field {unknown[0]!r} is unknown; allowed: items, k, threshold")
    records = body["items"]
    if not isinstance(records, list) or not records:
        raise BadRequest(422, f"'items' is {records!r}; a non-empty list of items is required")
    if len(records) > max_items:
        raise BadRequest(413, f"'items' holds {len(records)} items; at most {max_items} per request")
    k = body.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise BadRequest(422, f"'k' is {k!r}; an integer 1 <= k <= {MAX_K} is required")
    threshold = body.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
        raise BadRequest(422, f"'threshold' is {threshold!r}; a number or null (the run's tuned one) is required")
    items = []
    for i, record in enumerate(records):
        try:
            item = check_item(record, f"items[{i}]", f"item-{i}")
        except LinkError as e:
            raise BadRequest(422, str(e)) from None
        longest = max(len(item.sentence), len(item.context or ""))
        if longest > MAX_TEXT_CHARS:
            raise BadRequest(413, f"items[{i}]: its text is {longest} characters; at most {MAX_TEXT_CHARS}")
        items.append(item)
    return items, k, None if threshold is None else float(threshold)


def create_app(linker: Linker, *, max_items: int = MAX_ITEMS, batch_wait_ms: float = 5.0,
               name: str = "") -> FastAPI:
    """The service over a loaded ``linker`` (see the module docstring)."""
    batcher = Batcher(linker, max_items, batch_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="xel linking service", lifespan=lifespan)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok" if batcher.thread.is_alive() else "stopped", "model": name,
                "scorer": "nn" if linker.model is None else linker.model.spec.scorer,
                "kb_entries": len(linker.kb), "threshold": linker.threshold, "max_items": max_items}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.replace("{{LANGS}}", json.dumps(sorted(ISO_639_1))).replace("{{MODEL}}", html.escape(name))

    @app.post("/link")
    async def link(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return JSONResponse({"detail": f"the body is not JSON ({e})"}, status_code=400)
        try:
            items, k, threshold = parse_body(body, max_items)
        except BadRequest as e:
            return JSONResponse({"detail": e.message}, status_code=e.status)
        try:
            links = await asyncio.wrap_future(batcher.submit(items, k, threshold))
        except EncodeError as e:
            return JSONResponse({"detail": str(e)}, status_code=422)
        except Exception as e:
            return JSONResponse({"detail": f"linking failed: {e}"}, status_code=500)
        return JSONResponse({"links": [x.to_json() for x in links]})

    return app


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, type=click.Path(file_okay=False, exists=True),
              help="a trained run directory (config.json, model.safetensors, metrics.json)")
@click.option("--index", type=click.Path(file_okay=False), default=None,
              help="FAISS index of the run's store  [default: <run root>/index]")
@click.option("--threshold", type=float, default=None, help="NIL threshold  [default: the run's tuned one]")
@click.option("--host", default="127.0.0.1")
@click.option("--port", type=click.IntRange(1, 65535), default=8000)
@click.option("--max-items", type=click.IntRange(min=1), default=MAX_ITEMS, help="items per request")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=5.0,
              help="how long the batcher waits for more requests to link together")
def main(model: str, index: str | None, threshold: float | None, host: str, port: int, max_items: int,
         batch_wait_ms: float) -> None:
    """Serve the trained run --model: POST /link, GET /health, and a page at GET /."""
    import uvicorn

    from link.cli import ERRORS

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        linker = Linker.load(model, index_dir=index, threshold=threshold)
    except ERRORS as e:
        raise click.ClickException(str(e)) from None
    uvicorn.run(create_app(linker, max_items=max_items, batch_wait_ms=batch_wait_ms, name=model), host=host,
                port=port)


if __name__ == "__main__":
    main()
