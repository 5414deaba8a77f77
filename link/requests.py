"""The body of a ``xel-serve`` request, read and checked: its size and arrival time (:func:`read_body`), its JSON
(:func:`parse_json`) and its fields (:func:`parse_body`); :class:`BadRequest` carries the HTTP status and message.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from xel.detect.documents import SPOTTERS, Document, check_document
from xel.link.items import Item, LinkError, check_item

MAX_TEXT_CHARS = 20_000  # per request; precompute's own limit (precompute.schema.MAX_TEXT_CHARS) is checked too
MAX_K = 100


class BadRequest(Exception):
    def __init__(self, status: int, message: str, unread: bool = False):
        super().__init__(message)
        self.status, self.message, self.unread = status, message, unread  # unread: the body was not read whole


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request's body: refused (413) by its Content-Length before a byte is read, or as soon as more than
    ``max_bytes`` have streamed in (chunked, no Content-Length); 408 when it has not all arrived in ``timeout_s``."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadRequest(400, f"Content-Length is {length[:40]!r}; a byte count is required", unread=True)
        if int(length) > max_bytes:
            raise BadRequest(413, f"the body is {int(length):,} bytes (Content-Length); at most {max_bytes:,} per "
                                  "request", unread=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - loop.time()))
        except StopAsyncIteration:
            return b"".join(chunks)
        except TimeoutError:
            raise BadRequest(408, f"the body did not arrive within {timeout_s:g} s ({size:,} bytes came); send "
                                  "it at once", unread=True) from None
        size += len(chunk)
        if size > max_bytes:
            raise BadRequest(413, f"the body is over {max_bytes:,} bytes; at most {max_bytes:,} per request",
                             unread=True)
        chunks.append(chunk)


class _TooManyObjects(Exception):
    pass


def parse_json(raw: bytes, max_items: int) -> Any:
    """The JSON of a body; parsing stops (413) at the ``max_items + 2``-th object, so that a body of a million
    items is refused before a million dicts are built. NaN and Infinity parse (the fields that get them say no)."""
    objects = 0

    def count(obj: dict[str, Any]) -> dict[str, Any]:
        nonlocal objects
        objects += 1
        if objects > max_items + 1:  # the items and the body
            raise _TooManyObjects
        return obj

    try:
        return json.loads(raw, object_hook=count)
    except _TooManyObjects:
        raise BadRequest(413, f"the body holds more than {max_items} items (JSON objects); at most {max_items} per "
                              "request") from None
    except RecursionError:
        raise BadRequest(400, "the body is not JSON we read: it is nested deeper than the parser allows; a body is "
                              '{"items": [flat objects]}') from None
    except UnicodeDecodeError as e:
        raise BadRequest(400, f"the body is not JSON (not UTF-8: {e.reason} at byte {e.start})") from None
    except ValueError as e:  # JSONDecodeError, or an integer of more than 4,300 digits
        raise BadRequest(400, f"the body is not JSON ({str(e)[:200]})") from None


@dataclass(frozen=True)
class LinkRequest:
    """A parsed ``POST /link`` body: mentions (``items``) or raw documents (``documents``: detect, then link)."""

    items: list[Item]
    documents: list[Document]
    k: int
    threshold: float | None
    spotter: str = "tagger"


def parse_body(body: Any, max_items: int) -> LinkRequest:
    """The :class:`LinkRequest` of a ``POST /link`` body; :class:`BadRequest` says what is wrong."""
    if not isinstance(body, dict) or ("items" in body) == ("documents" in body):
        raise BadRequest(422, 'the body must be a JSON object {"items": [{"text", "start", "end", "lang"?}, ...], '
                              '"k"?, "threshold"?} or {"documents": [{"id"?, "text", "lang"?}, ...], "k"?, '
                              '"threshold"?, "spotter"?}')
    key = "items" if "items" in body else "documents"
    allowed = {key, "k", "threshold"} | ({"spotter"} if key == "documents" else set())
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(422, f"body field {unknown[0][:100]!r} is unknown; allowed: {', '.join(sorted(allowed))}")
    records = body[key]
    if not isinstance(records, list) or not records:
        raise BadRequest(422, f"{key!r} is {str(records)[:100]!r}; a non-empty list of {key} is required")
    if len(records) > max_items:
        raise BadRequest(413, f"{key!r} holds {len(records)} {key}; at most {max_items} per request")
    k = body.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise BadRequest(422, f"'k' is {str(k)[:100]}; an integer 1 <= k <= {MAX_K} is required")
    threshold = body.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)
                                  or not math.isfinite(threshold)):
        raise BadRequest(422, f"'threshold' is {str(threshold)[:100]}; a finite number or null (the run's tuned "
                              "one) is required")
    spotter = body.get("spotter", "tagger")
    if spotter not in SPOTTERS:
        raise BadRequest(422, f"'spotter' is {str(spotter)[:100]!r}; one of {', '.join(SPOTTERS)} is required")
    items, documents = [], []
    for i, record in enumerate(records):
        for name in ("text", "sentence", "context"):
            value = record.get(name) if isinstance(record, dict) else None
            if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
                raise BadRequest(413, f"{key}[{i}]: field {name!r} is {len(value):,} characters; at most "
                                      f"{MAX_TEXT_CHARS:,} per text (xel-link takes longer ones)")
        try:
            if key == "items":
                items.append(check_item(record, f"items[{i}]", f"item-{i}"))
            else:
                documents.append(check_document(record, f"documents[{i}]", f"doc-{i}"))
        except LinkError as e:
            raise BadRequest(422, str(e)) from None
    return LinkRequest(items, documents, k, None if threshold is None else float(threshold), spotter)
