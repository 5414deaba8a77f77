"""Ray overhead of xel-precompute: the same shard worker on the same texts in this process and as a Ray actor.

    python bench/ray_overhead.py [--model models/multilingual-e5-small] [--texts 1024] [--shard-sizes 64,256,1024]

For each shard size the texts (mention contexts from data/sample, written as a mentions file and planned as
xel-precompute plans them: byte-range tasks) are encoded

* ``in-process``: by :class:`precompute.worker.ShardWorker` in this process, shard after shard;
* ``ray``: by the same worker as a warm Ray actor with xel-precompute's options and progress queue, two shards in
  flight (as the driver's pool keeps them), the actor reading its records from the file;

alternately ``--repeats`` times (the best of each is kept: the machine is shared and noisy). Then, once,
``in-process`` again at niceness 15, where Ray's default puts its workers (xel's local Ray now starts them at 0,
``precompute.ray_session``): on a loaded machine that is what an actor got before; and the cost of starting an
actor (process, model load, first task) against loading the model in-process. Reports the overhead
``ray / in-process - 1`` per shard size, the per-task cost ``(ray - in-process) / tasks``, and writes
``bench/results/ray_overhead.json``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import click
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xel.precompute.config import PrecomputeConfig  # noqa: E402
from xel.precompute.ray_session import ray_session  # noqa: E402
from xel.precompute.schedule import actor_options  # noqa: E402
from xel.precompute.settings import resolve_encoder  # noqa: E402
from xel.precompute.worker import ShardTask, ShardWorker  # noqa: E402

from bench.precompute import plan_shards, sample_items, sample_rows, write_data  # noqa: E402

RAY_DEFAULT_NICENESS = 15  # Ray's worker_niceness, which xel's local Ray sets to 0 (precompute.ray_session)


def worker_niceness() -> int:
    return os.nice(0)


def in_process(worker: ShardWorker, tasks: list[ShardTask]) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    checksums = [worker.run(t)["checksum"] for t in tasks]
    return time.perf_counter() - t0, checksums


def on_ray(actor, tasks: list[ShardTask]) -> tuple[float, list[str]]:
    """Two tasks in flight at the actor, as xel-precompute's pool keeps them."""
    import ray

    t0 = time.perf_counter()
    pending = [actor.run.remote(t) for t in tasks[:2]]
    results = []
    for task in tasks[2:]:
        results.append(ray.get(pending.pop(0)))
        pending.append(actor.run.remote(task))
    results.extend(ray.get(pending))
    return time.perf_counter() - t0, [r["checksum"] for r in results]


@click.command()
@click.option("--model", type=click.Path(path_type=Path), default=ROOT / "models/multilingual-e5-small",
              show_default=True)
@click.option("--texts", default=1024, show_default=True, help="Mention contexts from data/sample to encode.")
@click.option("--shard-sizes", default="64,256,1024", show_default=True, help="Rows per shard, comma-separated.")
@click.option("--repeats", default=2, show_default=True, help="Alternating in-process / Ray runs per shard size.")
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "bench/results/ray_overhead.json")
def main(model: Path, texts: int, shard_sizes: str, repeats: int, out: Path) -> None:
    import ray
    from ray.util.queue import Queue

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    items = sample_items(sample_rows(texts))
    threads = torch.get_num_threads()
    settings = resolve_encoder(model, prefix="", dtype="auto", device="cpu")  # what xel-precompute runs here
    dtype = settings.dtype
    sizes = [int(s) for s in shard_sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, ray_session():
        tmp_path = Path(tmp)
        data = write_data(items, tmp_path / "data")
        t0 = time.perf_counter()
        worker = ShardWorker(settings, threads)
        load_s = time.perf_counter() - t0
        warm = plan_shards(data, model, tmp_path / "warm", settings, 16)[:1]
        in_process(worker, warm)
        cfg = PrecomputeConfig(data=data, model=model, out=tmp_path, actors=1, cpus_per_actor=threads)
        queue = Queue(actor_options={"num_cpus": 0})
        t0 = time.perf_counter()
        actor = ray.remote(ShardWorker).options(**actor_options(cfg, threads)).remote(settings, threads, queue)
        ray.get(actor.run.remote(warm[0]))
        actor_start_s = time.perf_counter() - t0
        niceness = ray.get(ray.remote(num_cpus=0)(worker_niceness).remote())
        plans = {s: (plan_shards(data, model, tmp_path / f"local-{s}", settings, s),
                     plan_shards(data, model, tmp_path / f"ray-{s}", settings, s)) for s in sizes}
        best: dict[int, dict[str, float]] = {s: {"local": float("inf"), "ray": float("inf")} for s in sizes}
        for _ in range(repeats):
            for s in sizes:
                local_tasks, ray_tasks = plans[s]
                local_s, local_sums = in_process(worker, local_tasks)
                ray_s, ray_sums = on_ray(actor, ray_tasks)
                assert local_sums == ray_sums, "Ray and in-process wrote different shards"
                best[s] = {"local": min(best[s]["local"], local_s), "ray": min(best[s]["ray"], ray_s)}
                click.echo(f"shard size {s}: in-process {local_s:.2f}s, ray {ray_s:.2f}s")
                while queue.size():  # the actor's progress reports, drained as the driver does
                    queue.get_nowait_batch(queue.size())
        os.nice(RAY_DEFAULT_NICENESS - os.nice(0))  # this process where Ray's default puts its workers
        niced = {s: in_process(worker, plans[s][0])[0] for s in sizes}
        click.echo(f"in-process at niceness {RAY_DEFAULT_NICENESS}: {niced}")
        ray.kill(actor)
        queue.shutdown(force=True)
        for s in sizes:
            n = len(plans[s][0])
            local_s, ray_s = best[s]["local"], best[s]["ray"]
            rows.append({
                "shard_size": s, "tasks": n, "texts": len(items), "in_process_s": local_s, "ray_s": ray_s,
                "in_process_niced15_s": niced[s], "ray_overhead": ray_s / local_s - 1,
                "niced15_over_in_process": niced[s] / local_s - 1, "per_task_cost_s": (ray_s - local_s) / n,
            })
    result = {"threads": threads, "dtype": dtype, "repeats": repeats, "ray_worker_niceness": niceness,
              "model_load_s": load_s, "actor_start_s": actor_start_s, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(f"{len(items)} texts, {threads} threads, {dtype}; model load in-process {load_s:.1f}s, actor start "
               f"(process + model + first task) {actor_start_s:.1f}s; Ray workers run at niceness {niceness}")
    click.echo("shard size | tasks | in-process s | ray s | ray overhead | per-task cost | in-process at "
               f"niceness {RAY_DEFAULT_NICENESS} s | slower by")
    for r in rows:
        click.echo(f"{r['shard_size']:>10} | {r['tasks']:>5} | {r['in_process_s']:>12.2f} | {r['ray_s']:>5.2f} | "
                   f"{r['ray_overhead']:>12.1%} | {r['per_task_cost_s'] * 1e3:>10.0f} ms | "
                   f"{r['in_process_niced15_s']:>12.2f} | {r['niced15_over_in_process']:>8.1%}")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
