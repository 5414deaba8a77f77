"""``xel-link`` at growing input sizes: in-process encoding against precompute's Ray actors (``--actors 1``).

    python bench/link_scale.py [--sizes 20000,100000] [--work /tmp/xel-link-scale]

Builds, once, a run as ``xel-experiment`` lays it out with the tiny random test model (2 layers, hidden 32; the
figures are about the pipeline, not the encoder) on the ten-capitals data of the tests: store, index,
candidates, a residual run of one epoch. Then, for each size, writes that many mentions (the capitals in
English and German sentences, unique ids) and runs ``xel-link`` as its own process twice, in-process and with
``--actors 1``; the wall time (process start, model load and Ray start included) and the process's peak RSS
(``wait4``'s ``ru_maxrss``: the xel-link process; Ray's actor processes are not its children and are not counted)
are measured per run. The two paths must write the same Links file. Writes ``bench/results/link-scale.json``
and prints a table.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEMPLATES = {"en": ["Last year we visited {} with friends.", "The museum in {} was closed.", "{} is far away."],
             "de": ["Wir waren in {} im Urlaub.", "Das Museum in {} war zu.", "{} ist weit weg."]}


def build_run(work: Path) -> Path:
    """The tiny model, its store, index, candidates and a one-epoch residual run under ``work``."""
    from xel.precompute.config import PrecomputeConfig
    from xel.precompute.run import run as precompute
    from xel.retrieval.build import BuildConfig, run_build
    from xel.retrieval.candidate_lists import CandidatesConfig, run_candidates
    from xel.retrieval.search import SearchOptions
    from xel.train.config import TrainConfig
    from xel.train.run import run as train
    from xel.train.run import set_threads

    from tests.tiny import build_tiny_model
    from tests.train_fixtures import capital_cities

    run = work / "train" / "en"
    if (run / "model.safetensors").is_file():
        return run
    model = build_tiny_model(work / "model")
    data = capital_cities(work / "data")
    precompute(PrecomputeConfig(data=data, model=model, out=work / "h5", dtype="fp32"))
    run_build(BuildConfig(features=str(work / "h5"), out=str(work / "index")))
    run_candidates(CandidatesConfig(search=SearchOptions(index=str(work / "index"), features=str(work / "h5")),
                                    out=str(work / "candidates"), k=5))
    set_threads(0)
    train(TrainConfig(features=str(work / "h5"), candidates=str(work / "candidates" / "candidates.jsonl"),
                      out=str(run), train_lang=("en",), epochs=1, tune_nil=True, plots=False, progress=False))
    return run


def write_mentions(path: Path, n: int, seed: int = 0) -> Path:
    from tests.train_fixtures import CAPITALS, GERMAN_CAPITALS

    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            lang = "de" if i % 2 else "en"
            city = rng.choice(GERMAN_CAPITALS if lang == "de" else CAPITALS)
            template = rng.choice(TEMPLATES[lang])
            sentence = template.format(city)
            start = template.index("{}")
            f.write(json.dumps({"id": f"m{i}", "text": sentence, "start": start, "end": start + len(city),
                                "lang": lang}, ensure_ascii=False) + "\n")
    return path


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise click.ClickException(f"{' '.join(cmd)} failed: {proc.stderr.read()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--sizes", default="20000,100000", help="mention counts, comma-separated")
@click.option("--work", type=click.Path(file_okay=False), default="/tmp/xel-link-scale")
@click.option("--out", type=click.Path(dir_okay=False), default=str(ROOT / "bench/results/link-scale.json"))
def main(sizes: str, work: str, out: str) -> None:
    """xel-link in-process vs --actors 1 at growing sizes; see the module docstring."""
    root = Path(work)
    root.mkdir(parents=True, exist_ok=True)
    run = build_run(root)
    link = str(Path(sys.executable).parent / "xel-link")
    rows = []
    for n in (int(x) for x in sizes.split(",")):
        src = write_mentions(root / f"m{n}.jsonl", n)
        outs = {}
        for mode, extra in (("in-process", []), ("--actors 1", ["--actors", "1"])):
            outs[mode] = root / f"links-{n}-{len(extra)}.jsonl"
            seconds, rss = timed([link, "--model", str(run), "--in", str(src), "--out", str(outs[mode]),
                                  "--no-progress", *extra])
            rows.append({"mentions": n, "mode": mode, "seconds": seconds, "mentions_per_s": n / seconds,
                         "peak_rss_mb": rss})
            click.echo(f"{n} mentions, {mode}: {seconds:.1f} s, {n / seconds:.0f} mentions/s, peak RSS {rss:.0f} MB")
        same = outs["in-process"].read_text() == outs["--actors 1"].read_text()
        rows[-1]["same_links_as_in_process"] = rows[-2]["same_links_as_in_process"] = same
        for p in outs.values():
            p.unlink()
        if not same:
            raise click.ClickException(f"{n} mentions: --actors 1 wrote other links than the in-process path")
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
              "rows": rows}
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    click.echo(f"xel-link scale, tiny model, load avg {report['machine']['load_avg'][0]:.1f} on {os.cpu_count()} CPUs")
    click.echo("| mentions | path | wall s | mentions/s | xel-link peak RSS MB | same links |")
    click.echo("|---:|---|---:|---:|---:|---|")
    for r in rows:
        click.echo(f"| {r['mentions']:,} | {r['mode']} | {r['seconds']:.1f} | {r['mentions_per_s']:.0f} | "
                   f"{r['peak_rss_mb']:.0f} | {r['same_links_as_in_process']} |")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
