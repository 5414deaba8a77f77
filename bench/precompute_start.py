"""The fixed cost of a small ``xel-precompute`` run: what its driver loads before Ray starts, and what each actor
loads before it encodes.

    python bench/precompute_start.py [--model models/multilingual-e5-small] [--texts 32] [--repeats 3]

Three measurements, each in fresh processes, the variants alternating ``--repeats`` times (the machine is shared
and noisy; medians are reported, with the load average at each run):

* ``driver imports``: CPU seconds of ``import xel.precompute.cli`` as shipped (torch and transformers load only in
  the actors) against the same with ``import torch`` first, which is what the driver loaded before.
* ``end to end``: wall seconds of ``xel-precompute`` on ``--texts`` mention sentences of data/sample (``--kinds
  ms``, ``--dtype fp32``, its own local Ray, one actor) as shipped against the same command with torch imported
  in the driver first.
* ``actor start``: inside a Ray worker started as xel-precompute starts its actors (same runtime environment), the
  CPU seconds from the process's start to a loaded encoder, split into the worker's boot (Python and Ray), ``import
  torch``, and the encoder's load (transformers, tokenizer, model); and whether the load pulled in torch._dynamo,
  sympy and scipy.optimize (transformers' model code does, through ``modeling_utils``).

Writes ``bench/results/precompute_start.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.precompute import sample_items, sample_rows, write_data  # noqa: E402

VARIANTS = {"shipped": "", "torch in the driver": "import torch\n"}
CLI = "import sys\nfrom xel.precompute.cli import main\nmain(sys.argv[1:])\n"
IMPORTS = "import time\nimport xel.precompute.cli\nprint(time.process_time())\n"
HEAVY = ("torch._dynamo", "sympy", "scipy.optimize")


def load_average() -> float:
    return os.getloadavg()[0]


def driver_import_cpu(prelude: str) -> float:
    """CPU seconds of a fresh interpreter that runs ``prelude`` and imports the xel-precompute command."""
    out = subprocess.run([sys.executable, "-c", prelude + IMPORTS], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def end_to_end(prelude: str, data: Path, model: Path, out: Path) -> float:
    """Wall seconds of one ``xel-precompute`` run with its own local Ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    cmd = [sys.executable, "-c", prelude + CLI, "--data", str(data), "--model", str(model), "--out", str(out),
           "--kinds", "ms", "--dtype", "fp32"]
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return time.perf_counter() - t0


def actor_start(settings, threads: int) -> dict:
    """Run in a fresh Ray worker: CPU from the process's start to a loaded encoder, by phase."""
    import sys
    import time

    boot = time.process_time()
    had = {m: m in sys.modules for m in ("torch", "transformers")}
    import torch  # noqa: F401

    after_torch = time.process_time()
    from xel.precompute.worker import ShardWorker

    ShardWorker(settings, threads)
    loaded = time.process_time()
    return {"boot_cpu_s": boot, "torch_cpu_s": after_torch - boot, "encoder_cpu_s": loaded - after_torch,
            "total_cpu_s": loaded, "loaded_before_entry": had, "loaded_by_the_encoder": {m: m in sys.modules
                                                                                       for m in HEAVY}}


def actor_starts(model: Path, repeats: int) -> list[dict]:
    import ray
    from xel.precompute.config import PrecomputeConfig
    from xel.precompute.ray_session import ray_session
    from xel.precompute.schedule import actor_options
    from xel.precompute.settings import resolve_encoder

    settings = resolve_encoder(model, prefix="", dtype="fp32", device="cpu")
    rows = []
    with ray_session():
        cpus = max(1, int(ray.available_resources().get("CPU", 1)))
        opts = actor_options(PrecomputeConfig(data=model, model=model, out=model), cpus)
        probe = ray.remote(max_calls=1)(actor_start).options(num_cpus=opts["num_cpus"],
                                                             runtime_env=opts["runtime_env"])
        for _ in range(repeats):
            load = load_average()
            rows.append({**ray.get(probe.remote(settings, cpus)), "load_average": load})
    return rows


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


@click.command()
@click.option("--model", type=click.Path(path_type=Path), default=ROOT / "models/multilingual-e5-small",
              show_default=True)
@click.option("--texts", default=32, show_default=True, help="Mention sentences from data/sample to encode.")
@click.option("--repeats", default=3, show_default=True, help="Alternating runs of each variant.")
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "bench/results/precompute_start.json")
def main(model: Path, texts: int, repeats: int, out: Path) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    start_load = list(os.getloadavg())
    imports: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(sample_items(sample_rows(texts)), Path(tmp) / "data")
        for i in range(repeats):
            order = list(VARIANTS) if i % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                load = load_average()
                imports[name].append({"cpu_s": driver_import_cpu(VARIANTS[name]), "load_average": load})
            for name in order:
                load = load_average()
                wall = end_to_end(VARIANTS[name], data, model, Path(tmp) / f"h5-{name.replace(' ', '-')}-{i}")
                runs[name].append({"wall_s": wall, "load_average": load})
                click.echo(f"repeat {i + 1}: {name}: {wall:.1f}s end to end (load {load:.2f})")
    actors = actor_starts(model, repeats)
    shipped, before = "shipped", "torch in the driver"
    result = {
        "model": model.name, "texts": texts, "repeats": repeats, "cpus": os.cpu_count(),
        "load_average": start_load,  # 1, 5 and 15 minutes, when the benchmark started; each run records its own
        "driver_imports": imports, "end_to_end": runs, "actor_starts": actors,
        "driver_import_cpu_s": {v: median(imports[v], "cpu_s") for v in VARIANTS},
        "end_to_end_wall_s": {v: median(runs[v], "wall_s") for v in VARIANTS},
        "end_to_end_ratio": median(runs[shipped], "wall_s") / median(runs[before], "wall_s"),
        "actor_start_cpu_s": {k: median(actors, k) for k in ("boot_cpu_s", "torch_cpu_s", "encoder_cpu_s",
                                                              "total_cpu_s")},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(f"{model.name}, {texts} texts, {repeats} alternating repeats, {os.cpu_count()} CPUs; medians")
    click.echo(f"{'':<22}| {'driver import CPU s':>19} | {'end to end s':>12}")
    for v in VARIANTS:
        click.echo(f"{v:<22}| {result['driver_import_cpu_s'][v]:>19.2f} | {result['end_to_end_wall_s'][v]:>12.1f}")
    click.echo(f"end to end, shipped / torch in the driver: {result['end_to_end_ratio']:.2f}x")
    a = result["actor_start_cpu_s"]
    click.echo(f"actor start, CPU s inside the actor: boot {a['boot_cpu_s']:.2f} + torch {a['torch_cpu_s']:.2f} + "
               f"encoder {a['encoder_cpu_s']:.2f} = {a['total_cpu_s']:.2f}; the encoder's load pulled in "
               + ", ".join(m for m in HEAVY if all(r["loaded_by_the_encoder"][m] for r in actors)))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
