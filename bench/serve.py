"""Loopback load test of ``xel-serve``: N requests from C concurrent clients, against linking the same mentions
one at a time in-process (the baseline, measured in the same run).

    python bench/serve.py --model runs/sample/train/en/seed-0 [--requests 2000] [--clients 8] [--lang de]

Starts ``xel-serve`` as its own process on a free loopback port, waits for ``GET /health``, warms it up, then
``--clients`` threads (each its own ``httpx.Client``) send ``--requests`` ``POST /link`` requests of one mention
each, taken in turn from ``--mentions`` (default: the sample's ``--lang`` mentions). Reported: requests/s, latency
p50/p90/p99/max, errors (any status but 200, or an exception), the server's resident memory (VmRSS, from /proc)
after start-up and after the load, and the baseline: the same run's ``Linker.link`` of one mention per call in
this process over ``--baseline`` mentions, in mentions/s, with the ratio service/baseline. The load and the
baseline alternate in ``--rounds`` rounds (never at once), so that a change in the machine's load reaches both. Writes
``bench/results/serve.json`` and prints a table.

``--hostile 0.01`` adds, to each round, a pass of the same good requests with 1% hostile ones mixed in (a NaN
threshold, a body one byte over the server's ``max_body_bytes``, malformed JSON, in turn): every hostile request
must be refused with its 4xx (or, for the oversized body, the connection closed after the 413), every good one
must get the same answer (prediction and candidate ids) as in the clean pass, and the good requests' latency and
throughput are reported as ratios to the clean pass. The same client threads send the hostile requests, so the
throughput ratio includes the time they spend on them (an 8 MB oversized body is most of it).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import click
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xel.link.linker import Linker  # noqa: E402

ITEM_KEYS = ("id", "sentence", "start", "end", "lang", "context")
HOSTILE = ("nan_threshold", "oversized", "malformed")
REFUSED = {"nan_threshold": {"422"}, "oversized": {"413", "closed"}, "malformed": {"400"}}
JSON = {"Content-Type": "application/json"}


def load_items(path: Path, lang: str | None) -> list[dict]:
    items = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if lang is None or r.get("lang") == lang:
                    items.append({k: r[k] for k in ITEM_KEYS if r.get(k) is not None})
    if not items:
        raise click.ClickException(f"{path}: no mentions in language {lang!r}")
    return items


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 600.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"xel-serve exited with {proc.returncode} before answering /health; see "
                                       "bench/results/serve.server.log")
        try:
            r = httpx.get(f"{url}/health", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise click.ClickException(f"xel-serve did not answer {url}/health within {timeout:.0f} s")


def hostile_request(http: httpx.Client, kind: str, item: dict, max_body_bytes: int) -> str:
    """Send one hostile request of ``kind``; its outcome: the status, or ``closed`` when the server closed the
    connection while the client was still sending an oversized body (after its 413)."""
    if kind == "nan_threshold":
        body = f'{{"items": [{json.dumps(item)}], "threshold": NaN}}'.encode()
    elif kind == "oversized":
        body = b'{"items": [' + b" " * max_body_bytes + b"]}"
    else:
        body = b'{"items": [{"text": "Rom'
    try:
        return str(http.post("/link", content=body, headers=JSON).status_code)
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        return "closed"


def load(url: str, items: list[dict], requests: int, clients: int, k: int, offset: int = 0, hostile: float = 0.0,
         max_body_bytes: int = 0) -> dict:
    """``requests`` POSTs of one item each (items ``offset``, ``offset + 1``, ...) from ``clients`` threads, with a
    ``hostile`` fraction of hostile requests mixed in: the good ones' latencies in ms, errors and answers (by
    request number), the hostile ones' outcomes and the unexpected ones, wall seconds."""
    n_hostile = max(1, round(requests * hostile)) if hostile > 0 else 0  # evenly spaced among the good ones
    schedule: list[tuple[str, int]] = []
    for i in range(requests):
        schedule.append(("good", i))
        if (i * n_hostile) // requests != ((i + 1) * n_hostile) // requests:
            schedule.append((HOSTILE[(offset + len(schedule)) % len(HOSTILE)], i))
    latencies = np.zeros(requests)
    errors: list[str] = []
    answers: dict[int, tuple] = {}
    outcomes: Counter[str] = Counter()
    unexpected: list[str] = []
    counter = iter(schedule)
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while True:
                with lock:
                    kind, i = next(counter, (None, 0))
                if kind is None:
                    return
                item = items[(offset + i) % len(items)]
                if kind != "good":
                    outcome = hostile_request(http, kind, item, max_body_bytes)
                    with lock:
                        outcomes[f"{kind}: {outcome}"] += 1
                        if outcome not in REFUSED[kind]:
                            unexpected.append(f"{kind} answered {outcome}")
                    continue
                t0 = time.perf_counter()
                answer = None
                try:
                    r = http.post("/link", json={"items": [item], "k": k})
                    ok = r.status_code == 200 and len(r.json()["links"]) == 1
                    problem = None if ok else f"{r.status_code}: {r.text[:200]}"
                    if ok:
                        link = r.json()["links"][0]
                        answer = (link["pred"], tuple(c[0] for c in link["candidates"]))
                except httpx.HTTPError as e:
                    problem = repr(e)
                latencies[i] = (time.perf_counter() - t0) * 1000
                with lock:
                    if problem:
                        errors.append(problem)
                    else:
                        answers[offset + i] = answer

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": latencies, "errors": errors, "seconds": time.perf_counter() - t0, "answers": answers,
            "outcomes": outcomes, "unexpected": unexpected}


def summary(latencies: np.ndarray, errors: list[str], seconds: float, clients: int) -> dict:
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    return {"requests": len(latencies), "clients": clients, "seconds": seconds,
            "requests_per_s": len(latencies) / seconds, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
            "max_ms": float(latencies.max()), "errors": len(errors), "first_errors": errors[:5]}


def merged(passes: list[dict], clients: int) -> dict:
    """:func:`summary` over the good requests of several :func:`load` passes."""
    return summary(np.concatenate([p["latencies"] for p in passes]), [e for p in passes for e in p["errors"]],
                   sum(p["seconds"] for p in passes), clients)


def hostile_report(clean: list[dict], mixed: list[dict], clean_result: dict, clients: int, fraction: float) -> dict:
    """The hostile passes against the clean ones: outcomes, answers compared request by request, ratios."""
    good = merged(mixed, clients)
    before = {i: a for p in clean for i, a in p["answers"].items()}
    after = {i: a for p in mixed for i, a in p["answers"].items()}
    changed = sorted(i for i in after if i in before and after[i] != before[i])
    outcomes: Counter[str] = sum((p["outcomes"] for p in mixed), Counter())
    return {"fraction": fraction, "hostile_requests": sum(outcomes.values()), "outcomes": dict(outcomes),
            "unexpected": [u for p in mixed for u in p["unexpected"]], "good": good,
            "compared": len(set(after) & set(before)), "changed": len(changed), "answers_unchanged": not changed,
            "p50_ratio": good["p50_ms"] / clean_result["p50_ms"], "p99_ratio": good["p99_ms"] / clean_result["p99_ms"],
            "throughput_ratio": good["requests_per_s"] / clean_result["requests_per_s"]}


def split(n: int, rounds: int) -> list[int]:
    return [n // rounds + (r < n % rounds) for r in range(rounds)]


def baseline(linker, items: list[dict], start: int, n: int, k: int) -> float:
    """Seconds for ``Linker.link`` of one mention per call, in this process, over items ``start`` .. ``start + n``."""
    t0 = time.perf_counter()
    for i in range(start, start + n):
        linker.link([items[i % len(items)]], k=k)
    return time.perf_counter() - t0


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, type=click.Path(file_okay=False, exists=True), help="a trained run directory")
@click.option("--mentions", type=click.Path(dir_okay=False, exists=True),
              default=str(ROOT / "data/sample/mentions.jsonl"))
@click.option("--lang", default="de", help="link the mentions of this language (empty: all)")
@click.option("--requests", type=click.IntRange(min=1), default=2000)
@click.option("--clients", type=click.IntRange(min=1), default=8)
@click.option("--baseline", "baseline_n", type=click.IntRange(min=1), default=200,
              help="mentions linked one per call in-process for the baseline")
@click.option("--rounds", type=click.IntRange(min=1), default=4,
              help="the load and the baseline alternate in this many rounds, so both see the same machine")
@click.option("--k", type=click.IntRange(min=1), default=10)
@click.option("--hostile", type=click.FloatRange(0, 0.5), default=0.0,
              help="also run each round's load with this fraction of hostile requests mixed in (0.01: 1%%) and "
                   "compare the good requests' answers and latency with the clean load")
@click.option("--out", type=click.Path(dir_okay=False), default=str(ROOT / "bench/results/serve.json"))
def main(model: str, mentions: str, lang: str, requests: int, clients: int, baseline_n: int, rounds: int, k: int,
         hostile: float, out: str) -> None:
    """Load-test xel-serve on loopback and compare with in-process linking; see the module docstring."""
    items = load_items(Path(mentions), lang or None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_cmd = [sys.executable, "-m", "link.serve", "--model", model, "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    log_path = Path(out).with_suffix(".server.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "w")  # the server's log (one access line per request) goes to a file, never a pipe
    proc = subprocess.Popen(server_cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    clean: list[dict] = []
    mixed: list[dict] = []
    try:
        t0 = time.perf_counter()
        health = wait_healthy(url, proc)
        start_s = time.perf_counter() - t0
        load(url, items, min(50, requests), clients, k)  # warm-up
        linker = Linker.load(model)  # the baseline's, in this process
        linker.link(items[:1], k=k)
        rss_before = rss_mb(proc.pid)
        base_s = 0.0
        done = done_base = 0
        for n_load, n_base in zip(split(requests, rounds), split(baseline_n, rounds)):
            clean.append(load(url, items, n_load, clients, k, offset=done))
            if hostile:
                mixed.append(load(url, items, n_load, clients, k, offset=done, hostile=hostile,
                                  max_body_bytes=health["max_body_bytes"]))
            base_s += baseline(linker, items, done_base, n_base, k)
            done, done_base = done + n_load, done_base + n_base
        result = merged(clean, clients)
        rss_after = rss_mb(proc.pid)
        health_after = httpx.get(f"{url}/health", timeout=10)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()
    base = {"mentions": baseline_n, "seconds": base_s, "mentions_per_s": baseline_n / base_s}
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "model": model, "scorer": health.get("scorer"), "kb_entries": health.get("kb_entries"), "lang": lang,
        "server_start_s": start_s, "server_rss_mb_before": rss_before, "server_rss_mb_after": rss_after,
        "rounds": rounds, "load": result, "baseline": base, "ratio": result["requests_per_s"] / base["mentions_per_s"],
        "health_after": {"status_code": health_after.status_code, **health_after.json()},
    }
    if hostile:
        report["hostile"] = hostile_report(clean, mixed, result, clients, hostile)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    r = result
    click.echo(f"xel-serve load test: {r['requests']} requests of 1 {lang or 'any'} mention, {r['clients']} clients, "
               f"loopback; {report['scorer']} run, {report['kb_entries']} KB entries; load avg "
               f"{report['machine']['load_avg'][0]:.1f} on {os.cpu_count()} CPUs")
    click.echo("| what | mentions/s | p50 ms | p90 ms | p99 ms | max ms | errors | server RSS MB before → after |")
    click.echo("|---|---:|---:|---:|---:|---:|---:|---|")
    click.echo(f"| xel-serve, {r['clients']} clients | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | "
               f"{r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['errors']} | "
               f"{rss_before:.0f} → {rss_after:.0f} |")
    click.echo(f"| Linker.link, 1 per call, in-process (baseline) | {base['mentions_per_s']:.1f} | | | | | | |")
    h = report.get("hostile")
    if h:
        g = h["good"]
        click.echo(f"| xel-serve, {g['clients']} clients, {hostile:.0%} hostile mixed in (good requests) | "
                   f"{g['requests_per_s']:.1f} | {g['p50_ms']:.1f} | {g['p90_ms']:.1f} | {g['p99_ms']:.1f} | "
                   f"{g['max_ms']:.1f} | {g['errors']} | |")
    click.echo(f"service / baseline: {report['ratio']:.2f}x; wrote {out}")
    if h:
        seen = ", ".join(f"{what} x{n}" for what, n in sorted(h["outcomes"].items()))
        click.echo(f"hostile mix: {h['hostile_requests']} hostile requests ({seen}); "
                   f"good answers unchanged: {'yes' if h['answers_unchanged'] else 'NO'} ({h['compared']} compared, "
                   f"{h['changed']} changed); with / without hostile: p50 {h['p50_ratio']:.2f}x, p99 "
                   f"{h['p99_ratio']:.2f}x, mentions/s {h['throughput_ratio']:.2f}x")
    if r["errors"]:
        raise click.ClickException(f"{r['errors']} requests failed, e.g. {r['first_errors'][0]}")
    if h and (h["unexpected"] or h["good"]["errors"] or not h["answers_unchanged"]
              or report["health_after"]["status_code"] != 200):
        raise click.ClickException(f"the hostile mix hurt the service: unexpected answers {h['unexpected'][:3]}, "
                                   f"{h['good']['errors']} good requests failed, {h['changed']} answers changed, "
                                   f"/health after: {report['health_after']['status_code']}")


if __name__ == "__main__":
    main()
