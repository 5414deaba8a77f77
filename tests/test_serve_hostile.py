"""``xel-serve`` against hostile or broken clients, and a linker that fails: the service answers each with a JSON
error and goes on serving the others.

    pytest tests/test_serve_hostile.py

A fake linker (no model, no Ray) stands behind the real app: its ``link`` fails in the way an item's text asks
(``boom`` raises, ``short`` returns too few links, ``slow`` sleeps). The in-process cases use FastAPI's
TestClient; the slow-client and SIGTERM cases run ``xel-serve``'s own ``main`` in a subprocess on a loopback port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from xel.link.linker import Candidate, Link, check_item
from xel.link.serve import create_app
from xel.link.watch import FileWatch
from xel.precompute.files import file_sha256

ROOT = Path(__file__).resolve().parent.parent
GOOD = {"text": "We were in Rome last year.", "start": 11, "end": 15, "lang": "en"}


def item(word: str) -> dict:
    return {"text": f"It said {word} twice.", "start": 8, "end": 8 + len(word)}


class FakeLinker:
    """Links every item to Q1, except those whose mention asks for a failure."""

    model = None
    kb = range(3)
    threshold = 0.0
    kb_source = None

    def files_changed(self) -> str | None:
        return None

    def link(self, records, k: int = 10, threshold: float | None = None, encoded=None) -> list[Link]:
        items = [r if not isinstance(r, dict) else check_item(r, "x", "x") for r in records]
        words = {it.surface for it in items}
        failures = {"boom": RuntimeError("boom\nsecond line of the message"), "oom": MemoryError("no memory"),
                    "exit": SystemExit(3), "interrupt": KeyboardInterrupt(), "key": KeyError("Q9")}
        for word, error in failures.items():
            if word in words:
                raise error
        if "slow" in words:
            time.sleep(60)
        if "short" in words:
            return []
        score = float("nan") if "nanscore" in words else 0.5
        return [Link(it.id, "Q1", "One", score, [Candidate("Q1", "One", score, "dense")]) for it in items]


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(FakeLinker(), max_items=4, max_body_bytes=4096, batch_wait_ms=20)) as c:
        yield c


def post_raw(client: TestClient, body: bytes | str, **headers):
    return client.post("/link", content=body, headers={"Content-Type": "application/json", **headers})


def within(seconds: float, call, *args, **kwargs):
    """``call(*args, **kwargs)``, failing the test if it has not returned in ``seconds`` (a request that hangs)."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(call(*args, **kwargs)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"no answer within {seconds} s"
    return result[0]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_threshold_that_is_not_a_finite_number_is_refused(client, literal):
    # before: a NaN request waited forever (NaN != NaN in the batcher)
    resp = within(30, post_raw, client, f'{{"items": [{json.dumps(GOOD)}], "threshold": {literal}}}')
    assert resp.status_code == 422, resp.text
    assert "'threshold' is" in resp.json()["detail"] and "a finite number" in resp.json()["detail"]


@pytest.mark.parametrize("word, message", [
    ("boom", "linking failed: RuntimeError: boom"),
    ("oom", "linking failed: MemoryError: no memory"),
    ("exit", "linking failed: SystemExit: 3"),
    ("interrupt", "linking failed: KeyboardInterrupt"),
    ("key", "linking failed: KeyError: 'Q9'"),
    ("short", "linking failed: RuntimeError: the linker returned 0 links for 1 items"),
])
def test_a_batch_that_fails_answers_500_and_the_worker_serves_the_next(client, word, message):
    resp = within(30, client.post, "/link", json={"items": [item(word)]})
    assert resp.status_code == 500 and resp.json()["detail"] == message, resp.text
    assert "\n" not in resp.json()["detail"]
    assert client.post("/link", json={"items": [GOOD]}).status_code == 200
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["failed_batches"] == 1 and health.json()["last_failure"] == message


def test_a_failing_request_does_not_fail_the_requests_batched_with_it(client):
    bodies = [{"items": [item("boom")]}] + [{"items": [GOOD]}] * 7
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: client.post("/link", json=b), bodies))
    assert [a.status_code for a in answers] == [500] + [200] * 7


def test_a_request_cancelled_while_batched_does_not_fail_the_others():
    """A request whose client left (its future cancelled) while its batch was collected or linked."""
    from xel.link.serve import Batcher

    batcher = Batcher(FakeLinker(), wait_s=0.3)
    batcher.start()
    try:
        items = [check_item(GOOD, "x", "x")]
        gone, stays = batcher.submit(items, 10, None), batcher.submit(items, 10, None)
        assert gone.cancel()
        assert [x.pred for x in stays.result(10)] == ["Q1"]
        assert batcher.failed_batches == 0
    finally:
        batcher.stop(5)


def test_a_response_that_cannot_be_written_is_a_json_500():
    with TestClient(create_app(FakeLinker()), raise_server_exceptions=False) as client:
        resp = client.post("/link", json={"items": [item("nanscore")]})
        assert resp.status_code == 500 and resp.json()["detail"] == "internal error: ValueError"
        assert client.post("/link", json={"items": [GOOD]}).status_code == 200


def test_health_says_stopped_and_link_answers_503_once_the_worker_is_gone(client):
    client.app.state.batcher.stop(5)
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "stopped"
    # before: the job was queued for a worker that never took it
    resp = within(30, client.post, "/link", json={"items": [GOOD]})
    assert resp.status_code == 503 and "not running" in resp.json()["detail"]


def test_a_body_over_the_byte_cap_is_refused_by_its_content_length_or_as_it_streams(client):
    big = json.dumps({"items": [{**GOOD, "context": "x" * 5000}]})
    resp = post_raw(client, big)
    assert resp.status_code == 413 and "at most 4,096" in resp.json()["detail"] and "Content-Length" in resp.text
    assert resp.headers["connection"] == "close"
    chunked = client.post("/link", content=iter([big[:3000].encode(), big[3000:].encode()]),
                          headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413 and "over 4,096 bytes" in chunked.json()["detail"]


def test_too_many_items_are_refused_while_parsing():
    """Parsing stops at the cap: the objects after it (here: no JSON at all) are never read."""
    with TestClient(create_app(FakeLinker(), max_items=4)) as client:
        resp = post_raw(client, '{"items": [' + "{}, " * 6 + "this is not JSON")
    assert resp.status_code == 413 and "more than 4 items" in resp.json()["detail"]


@pytest.mark.parametrize("body, status, problem", [
    ("[" * 50_000 + "]" * 50_000, 400, "nested deeper than the parser allows"),
    ('{"items": [{"a": ' * 2000 + "1" + "}]" * 2000 + "}", 400, "nested deeper"),
    ('{"items": [], "k": ' + "9" * 5000 + "}", 400, "not JSON (Exceeds the limit"),
    (b'{"items": ["\xff"]}', 400, "not UTF-8"),
    ('{"items": [{"text": "\\ud800 Rome", "start": 7, "end": 11}]}', 422,
     "items[0]: field 'text' holds a lone surrogate '\\ud800' at character 0"),
    ('{"items": [{"id": "a\\u0000b", "text": "Rome", "start": 0, "end": 4}]}', 422,
     "items[0]: field 'id' holds a NUL character at character 1"),
    ('{"items": [{"text": "Rome", "start": 0, "end": 4, "context": "\\udfff"}]}', 422,
     "items[0]: field 'context' holds a lone surrogate"),
])
def test_hostile_bodies_get_a_json_4xx(body, status, problem):
    with TestClient(create_app(FakeLinker(), max_body_bytes=1 << 20)) as client:
        resp = post_raw(client, body)
    assert resp.status_code == status, resp.text
    assert problem in resp.json()["detail"]


def test_there_is_no_docs_page_that_needs_a_cdn(client):
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/link", "/health"}


# --- a real xel-serve process on loopback ---------------------------------------------------------------------

SERVER = """
import sys
import xel.link.serve
from tests.test_serve_hostile import FakeLinker
xel.link.serve.Linker.load = lambda *args, **kwargs: FakeLinker()
xel.link.serve.main(sys.argv[1:])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = open(tmp_path / f"server-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", SERVER, "--model", str(tmp_path), "--port", str(port), *flags],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, (tmp_path / f"server-{port}.log").read_text()
        assert time.monotonic() < deadline, "xel-serve did not start"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b"200 OK" in s.recv(1000):
                    return proc, port
        except OSError:
            time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[int]:
    proc, port = start_server(tmp_path_factory.mktemp("serve"), "--request-timeout-s", "2")
    yield port
    stop_server(proc)


def test_a_huge_content_length_is_refused_before_the_body_is_read(server):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as s:
        s.sendall(b"POST /link HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000000000\r\n\r\n{")
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 413") and b"1,000,000,000 bytes (Content-Length)" in answer


def test_a_body_that_trickles_in_gets_408(server):
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server), timeout=20) as s:
        s.sendall(b"POST /link HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 2 s" in answer
    assert time.monotonic() - t0 < 15


def test_a_client_that_trickles_its_headers_is_disconnected(server):
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server), timeout=20) as s:
        s.sendall(b"POST /link HTTP/1.1\r\nHost: x\r\n")
        for _ in range(10):  # a header line now and then, never the blank line that ends the head
            time.sleep(0.5)
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    assert time.monotonic() - t0 < 15


def test_headers_over_16_kib_are_refused(server):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
        time.sleep(0.5)  # the head is still incomplete when the server has 20 kB of it
        try:
            s.sendall(b"\r\n\r\n")
        except OSError:
            pass
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 400")


def test_past_max_connections_a_request_gets_503_at_once(tmp_path):
    proc, port = start_server(tmp_path, "--max-connections", "2")
    try:
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_all(s).startswith(b"HTTP/1.1 503")
        for s in held:
            s.close()
    finally:
        stop_server(proc)


def test_sigterm_stops_the_service_with_requests_in_flight_and_a_slow_client(tmp_path):
    proc, port = start_server(tmp_path, "--shutdown-timeout-s", "2")
    try:
        slow_body = socket.create_connection(("127.0.0.1", port), timeout=30)
        slow_body.sendall(b"POST /link HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        stuck = socket.create_connection(("127.0.0.1", port), timeout=30)  # a batch the linker never finishes
        body = json.dumps({"items": [item("slow")]}).encode()
        stuck.sendall(b"POST /link HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                      + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then re-raises the signal: the exit status says SIGTERM ended it
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert time.monotonic() - t0 < 20
        slow_body.close()
        stuck.close()
    finally:
        stop_server(proc)
    log = next(tmp_path.glob("server-*.log")).read_text()
    assert "Application shutdown complete" in log and "still in a batch after 2 s; exiting without it" in log


class WatchingLinker(FakeLinker):
    """Checks a file as the real linker checks its store's files (link.watch) before each batch."""

    def __init__(self, path: Path):
        self.watch = FileWatch([(path, file_sha256(path), file_sha256)])

    def files_changed(self) -> str | None:
        return self.watch.changed()

    def link(self, records, k: int = 10, threshold: float | None = None, encoded=None) -> list[Link]:
        self.watch.check()
        return super().link(records, k, threshold, encoded)


def test_a_store_rewritten_under_the_service_is_answered_503_with_the_restart_message(tmp_path):
    manifest = tmp_path / "h5" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text('{"dim": 32}')
    with TestClient(create_app(WatchingLinker(manifest), max_items=4, batch_wait_ms=1)) as client:
        assert client.post("/link", json={"items": [GOOD]}).status_code == 200
        manifest.write_text('{"dim": 32}')  # the same content written again: accepted
        assert client.post("/link", json={"items": [GOOD]}).status_code == 200
        assert client.get("/health").json()["status"] == "ok"
        manifest.write_text('{"dim": 64}')
        response = client.post("/link", json={"items": [GOOD, GOOD]})
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert str(manifest) in detail and "restart xel-serve" in detail and "StoreChanged" in detail
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "stale"
        assert str(manifest) in health.json()["stale"] and health.json()["last_failure"] == detail


def test_a_stale_file_watch_reads_the_changed_file_once_and_stays_stale(tmp_path) -> None:
    path = tmp_path / "index-en.faiss"
    path.write_bytes(b"old")
    reads = []

    def read(p):
        reads.append(p)
        return file_sha256(p)

    watch = FileWatch([(path, file_sha256(path), read)])
    assert watch.changed() is None and reads == []  # an unchanged stat reads nothing
    path.write_bytes(b"new content")
    message = watch.changed()
    assert message is not None and str(path) in message and "restart xel-serve" in message
    for _ in range(5):  # every later batch and /health call: the same answer, no new hash
        assert watch.changed() == message
    assert len(reads) == 1
    path.write_bytes(b"old")  # back to what was loaded: the linker has still served stale answers; reload
    assert watch.changed() == message
