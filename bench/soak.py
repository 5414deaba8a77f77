"""Soak: the precompute job over 50k, 100k and 200k short texts; peak resident memory per process as input grows.

    python bench/soak.py [--sizes 50000,100000,200000] [--model DIR] [--shard-size 4096]

Each size is one fresh ``python precompute/run.py`` (its own local Ray, its own temp dir) over a KB of that many
short entity names (``--kinds es``: every row is one short text). A sampler thread reads the RSS of every
process in the run's session from ``/proc`` every 0.1 s and keeps each process's peak, grouped as

* ``driver``: the ``precompute/run.py`` process (inputs, plan, tqdm, manifest; it never holds features);
* ``actor``: the encoder actor (``ray::ShardWorker``): model, tokenizer, one shard of features at a time;
* ``ray``: Ray's own processes (GCS, raylet, log monitor, idle workers).

The figure per process is its private resident memory (``RssAnon``): its RSS also counts the pages of Ray's
shared-memory object store it has touched (task arguments), which grow with the number of shards it read
while belonging to the object store; both are written to the JSON (``<group>_rss`` for RSS).

The model defaults to a tiny random XLM-R (2 layers, hidden 32; the driver's memory does not depend on the
model, and the actor's is the model plus one shard); ``--model`` takes any model directory. Writes
``bench/results/soak.json`` and prints a table; the figure to read is how the driver's and the actor's peaks
change from the smallest size to the largest.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ("north south river lake saint mount new old upper lower port royal city county island bay "
         "central national united royal grand little great west east").split()


def write_data(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` KB entries with 1-3 word names (plus a few mentions, which the schema requires)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "kb.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            name = " ".join(rng.choices(WORDS, k=rng.randint(1, 3))).title() + f" {i}"
            f.write(json.dumps({"id": f"Q{i}", "name": name, "description": None, "lang": "en", "links": None}) + "\n")
    with open(root / "mentions.jsonl", "w", encoding="utf-8") as f:
        for i in range(4):
            f.write(json.dumps({"id": f"m{i}", "lang": "en", "sentence": "Saint Paul is a city.", "start": 0,
                                "end": 10, "context": None, "gold": None}) + "\n")
    return root


def rss_kb(pid: int) -> tuple[int, int]:
    """(RSS, RssAnon) in kB. RSS also counts the pages of Ray's shared-memory object store that a process has
    touched (the task arguments it read), which belong to the store, not to the process; RssAnon is the memory
    the process itself holds."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["RssAnon"].split()[0])
    except (OSError, ValueError, KeyError):
        return 0, 0


def session_processes(sid: int) -> dict[int, str]:
    """pid -> cmdline of the live processes in session ``sid``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[3]) != sid or stat[0] == "Z":
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
    return found


def group_of(pid: int, cmdline: str, driver: int) -> str:
    if pid == driver:
        return "driver"
    if "ShardWorker" in cmdline:
        return "actor"
    return "ray"


class Sampler(threading.Thread):
    """Peak RSS per process of a session, summed per group at each tick and kept as the peak of the sums too."""

    def __init__(self, sid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.sid, self.interval = sid, interval
        self.peak_by_pid: dict[int, tuple[str, int, int]] = {}  # pid -> (group, peak RSS, peak RssAnon)
        self.peak_total_kb = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0
            for pid, cmd in session_processes(self.sid).items():
                rss, anon = rss_kb(pid)
                total += anon
                group = group_of(pid, cmd, self.sid)
                _, peak_rss, peak_anon = self.peak_by_pid.get(pid, (group, 0, 0))
                self.peak_by_pid[pid] = (group, max(rss, peak_rss), max(anon, peak_anon))
            self.peak_total_kb = max(self.peak_total_kb, total)
            self.stop.wait(self.interval)

    def peaks_mb(self) -> dict[str, float]:
        """Per group, the peak private memory (RssAnon) and, as ``<group>_rss``, the peak RSS; ``ray`` sums its
        processes' peaks; ``total`` is the peak of the summed private memory of every process."""
        out: dict[str, float] = {}
        for group, rss, anon in self.peak_by_pid.values():
            for key, value in ((group, anon / 1024), (f"{group}_rss", rss / 1024)):
                out[key] = out.get(key, 0.0) + value if group == "ray" else max(out.get(key, 0.0), value)
        out["total"] = self.peak_total_kb / 1024
        return out


def soak(n: int, model: Path, shard_size: int, work: Path) -> dict:
    data = write_data(work / f"data-{n}", n)
    out = work / f"h5-{n}"
    ray_tmp = tempfile.mkdtemp(prefix="xel-soak-ray-")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, TQDM_DISABLE="1")
    cmd = [sys.executable, "precompute/run.py", "--data", str(data), "--model", str(model), "--out", str(out),
           "--kinds", "es", "--shard-size", str(shard_size)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    output = proc.communicate()[0].decode(errors="replace")
    sampler.stop.set()
    sampler.join()
    seconds = time.perf_counter() - t0
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"precompute of {n} texts failed ({proc.returncode}):\n{output[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    store_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    return {"texts": n, "rows": manifest["kinds"]["es"]["rows"], "shards": len(manifest["kinds"]["es"]["shards"]),
            "seconds": round(seconds, 1), "store_mb": round(store_mb, 1),
            "input_mb": round((data / "kb.jsonl").stat().st_size / 2**20, 1),
            "peak_rss_mb": {k: round(v, 1) for k, v in sampler.peaks_mb().items()}}


@click.command()
@click.option("--sizes", default="50000,100000,200000", show_default=True, help="comma-separated text counts")
@click.option("--model", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="model directory (default: a tiny random XLM-R built here)")
@click.option("--shard-size", default=4096, show_default=True)
@click.option("--out", "out_json", type=click.Path(path_type=Path, dir_okay=False),
              default=ROOT / "bench" / "results" / "soak.json", show_default=True)
def main(sizes: str, model: Path | None, shard_size: int, out_json: Path) -> None:
    counts = [int(x) for x in sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="xel-soak-") as tmp:
        work = Path(tmp)
        model_name = str(model) if model else "tiny random XLM-R (2 layers, hidden 32)"
        if model is None:
            from tests.tiny import build_tiny_model

            model = build_tiny_model(work / "model")
        rows = []
        for n in counts:
            row = soak(n, model, shard_size, work)
            rows.append(row)
            print(f"{n:,} texts: {row}", flush=True)
            shutil.rmtree(work / f"h5-{n}")
            shutil.rmtree(work / f"data-{n}")
    result = {"model": model_name, "shard_size": shard_size, "machine": platform.node(), "cpus": os.cpu_count(),
              "runs": rows}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nprecompute soak, {model_name}, shard size {shard_size}; peak private memory (RssAnon) in MB, "
          "RSS in brackets")
    print(f"{'texts':>9} {'input MB':>9} {'store MB':>9} {'seconds':>8} {'driver':>11} {'actor':>11} {'ray':>8} "
          f"{'total':>8}")
    for r in rows:
        p = r["peak_rss_mb"]
        print(f"{r['texts']:>9,} {r['input_mb']:>9.1f} {r['store_mb']:>9.1f} {r['seconds']:>8.1f} "
              f"{p['driver']:>4.0f} ({p['driver_rss']:>4.0f}) {p['actor']:>4.0f} ({p['actor_rss']:>4.0f}) "
              f"{p['ray']:>8.0f} {p['total']:>8.0f}")
    first, last = rows[0]["peak_rss_mb"], rows[-1]["peak_rss_mb"]
    for group in ("driver", "actor"):
        print(f"{group}: {first[group]:.0f} MB at {rows[0]['texts']:,} -> {last[group]:.0f} MB at "
              f"{rows[-1]['texts']:,} texts ({last[group] / max(first[group], 1e-9):.2f}x for "
              f"{rows[-1]['texts'] / rows[0]['texts']:.0f}x the input)")
    print(f"wrote {out_json}")


if __name__ == "__main__":
    main()
