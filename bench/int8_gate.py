"""The int8 quality gate: the bundled sample encoded in fp32 (torch) and in int8 (ONNX Runtime), compared.

    python bench/int8_gate.py [--data data/sample] [--model models/multilingual-e5-small] [--out runs/int8-gate]
                              [--ranker/--no-ranker]

Precomputes the sample twice with local Ray (``--dtype fp32`` and ``--dtype int8``; resumable: a rerun reuses both
stores), then for each store builds the FAISS index and the candidate lists and scores the nn baseline (and, with
``--ranker``, one seed of the default ranker, ``en``) exactly as ``xel-experiment`` does. Reports, int8 against fp32:

The gate is one-sided, on what int8 can break (a higher int8 score is no failure: the NIL threshold alone moves F1
by a few hundredths either way):

* the cosine of every ``ms`` and ``es`` row to fp32 (mean and minimum; gate: both >= 0.99);
* dense recall@10 of the candidate lists, all mentions and per language (gate: int8 >= fp32 - 0.01);
* nn top-1 with NIL off (each non-NIL mention's nearest KB name by cosine, brute force), all and per language
  (gate: int8 >= fp32 - 0.01);
* the default linker's F1 (one seed of the ranker, ``--ranker``), all and per language (gate: int8 >= fp32 - 0.01);
* the nn baseline's F1 (its NIL threshold tuned) is shown, not gated.

Writes ``bench/results/int8_gate.json``, prints the table, and records the verdict for this encoder and quantisation
recipe in ``precompute/int8_gate.json`` (shipped with xel), which ``--dtype auto`` reads where the encoder runs: int8
on a CPU with VNNI when it passed. Without ``--ranker`` the verdict is not recorded (the linker is part of the gate),
nor on a CPU without VNNI (ONNX Runtime's int8 products differ there; the results go to ``int8_gate_no_vnni.json``).
To gate another recipe, change ``QUANTIZE`` in ``precompute/onnx_backend.py`` (the actors quantise with the module's
own value, so a recipe set only in this process would not reach them) and point ``$XEL_ONNX_CACHE`` elsewhere; the
verdict is recorded under that recipe. 7-bit weights (``reduce_range``) were measured that way on a CPU without VNNI
(``bench/results/int8_gate_no_vnni_7bit.json``): they failed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xel.precompute import onnx_backend  # noqa: E402
from xel.precompute.config import PrecomputeConfig  # noqa: E402
from xel.precompute.hardware import cpu_has_vnni  # noqa: E402
from xel.precompute.identity import encoder_identity  # noqa: E402
from xel.precompute.ray_session import ray_session  # noqa: E402
from xel.precompute.run import run as run_precompute  # noqa: E402
from xel.precompute.store import open_store  # noqa: E402
from xel.train.experiment import ExperimentConfig, base_config, retrieve  # noqa: E402
from xel.train.run import run as run_train  # noqa: E402
from xel.train.run import set_threads  # noqa: E402

GATE = {"cosine": 0.99, "drop": 0.01}  # cosine: at least; drop: int8 at most this much below fp32


def gate_failures(cos: dict[str, np.ndarray], pairs: dict[str, dict[str, tuple[float, float]]],
                  gated: tuple[str, ...]) -> list[str]:
    """What fails the one-sided gate: a row cosine (mean or min) below :data:`GATE` ``cosine``, or a gated measure
    (``pairs[measure][group] = (fp32, int8)``) where int8 is more than ``drop`` below fp32. int8 above fp32 passes."""
    failed = [f"cos {kind} {stat}" for kind, c in cos.items() for stat, v in (("mean", c.mean()), ("min", c.min()))
              if v < GATE["cosine"]]
    return failed + [f"{measure} {g}" for measure in gated if measure in pairs
                     for g, (a, b) in pairs[measure].items() if b < a - GATE["drop"] - 1e-12]


def nn_top1(store: Path) -> dict[str, float]:
    """Accuracy of the nearest KB name by cosine (NIL off: every non-NIL mention gets its top-1), all and per
    language, brute force over every ``es`` row."""
    s = open_store(store)
    ms_ids, ms, _ = s.load("ms")
    es_ids, es, _ = s.load("es")
    ms = ms.astype(np.float32) / np.linalg.norm(ms.astype(np.float32), axis=1, keepdims=True)
    es = es.astype(np.float32) / np.linalg.norm(es.astype(np.float32), axis=1, keepdims=True)
    top = np.asarray(es_ids)[(ms @ es.T).argmax(1)]
    mentions = {m["id"]: m for m in s.records("mentions")}
    hits: dict[str, list[bool]] = {}
    for ident, pred in zip(ms_ids, top):
        gold = mentions[ident]["gold"]
        if gold is None:
            continue
        for group in ("all", f"lang:{mentions[ident]['lang']}"):
            hits.setdefault(group, []).append(pred == gold)
    return {g: float(np.mean(h)) for g, h in sorted(hits.items())}


def row_cosines(a: Path, b: Path, kind: str) -> np.ndarray:
    ids_a, fa, _ = open_store(a).load(kind)
    ids_b, fb, _ = open_store(b).load(kind)
    assert ids_a == ids_b, f"{kind}: the two stores hold different rows"
    fa, fb = fa.astype(np.float64), fb.astype(np.float64)
    return (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)


def evaluate(cfg: ExperimentConfig, store: Path, out: Path, ranker: bool) -> dict[str, Any]:
    """Index, candidates, nn and (optionally) one ranker seed on one store, as xel-experiment runs them."""
    candidates, _ = retrieve(cfg, store, out)
    recall = json.loads((candidates.parent / "recall.json").read_text())
    langs = sorted({m["lang"] for m in open_store(store).records("mentions")})
    targets = [x for x in langs if x != cfg.train_lang]
    base = dataclasses.replace(base_config(cfg, {"features": store, "candidates": candidates}, targets), threads=2)
    result: dict[str, Any] = {"recall": recall, "langs": langs, "nn_top1": nn_top1(store)}
    runs = {"nn": dataclasses.replace(base, epochs=0, out=str(out / "train" / "nn"))}
    if ranker:
        runs["ranker"] = dataclasses.replace(base, seed=0, out=str(out / "train" / "en-seed-0"))
    set_threads(base.threads)
    for name, train_cfg in runs.items():
        t0 = time.perf_counter()
        summary = run_train(train_cfg, overwrite=True)
        result[name] = {g: summary["test"][g]["f1"] for g in summary["test"]}
        result[f"{name}_seconds"] = time.perf_counter() - t0
    return result


@click.command()
@click.option("--data", type=click.Path(path_type=Path), default=ROOT / "data/sample", show_default=True)
@click.option("--model", type=click.Path(path_type=Path), default=ROOT / "models/multilingual-e5-small",
              show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "runs/int8-gate", show_default=True)
@click.option("--ranker/--no-ranker", default=True, show_default=True, help="Also train one ranker seed per store.")
@click.option("--json-out", type=click.Path(path_type=Path), default=ROOT / "bench/results/int8_gate.json",
              show_default=True)
def main(data: Path, model: Path, out: Path, ranker: bool, json_out: Path) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not cpu_has_vnni() and json_out.name == "int8_gate.json":
        json_out = json_out.with_name("int8_gate_no_vnni.json")
    cfg = ExperimentConfig(data=data, out=out, model=model)
    stores, seconds, results = {}, {}, {}
    with ray_session():
        for dtype in ("fp32", "int8"):
            store = out / dtype / "h5"
            t0 = time.perf_counter()
            summary = run_precompute(PrecomputeConfig(data=data, model=model, out=store, dtype=dtype))
            seconds[dtype] = {"precompute_s": time.perf_counter() - t0, "tokens": summary["tokens"]}
            stores[dtype] = store
        for dtype, store in stores.items():
            results[dtype] = evaluate(cfg, store, out / dtype, ranker)
    cos = {kind: row_cosines(stores["fp32"], stores["int8"], kind) for kind in ("ms", "es")}
    fp32, int8 = results["fp32"], results["int8"]
    groups = ["all", *(f"lang:{x}" for x in fp32["langs"])]
    pairs = {"dense R@10": {g: (fp32["recall"][g]["dense"]["R@10"], int8["recall"][g]["dense"]["R@10"])
                            for g in groups if g in fp32["recall"]},
             "nn top-1, NIL off": {g: (fp32["nn_top1"][g], int8["nn_top1"][g]) for g in groups if g in fp32["nn_top1"]}}
    pairs.update({f"{name} F1": {g: (fp32[name][g], int8[name][g]) for g in groups if g in fp32[name]}
                  for name in ("ranker", "nn") if name in fp32})
    gated = ("dense R@10", "nn top-1, NIL off", "ranker F1")
    failed = gate_failures(cos, pairs, gated)
    passed = not failed and ranker
    fingerprint = encoder_identity(model)["fingerprint"]
    result = {
        "machine": {"node": platform.node(), "cpus": os.cpu_count(), "vnni": cpu_has_vnni(), "load": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "encoder": fingerprint, "quantize": dict(onnx_backend.QUANTIZE), "gate": GATE, "gated": list(gated),
        "passed": passed, "failed": failed,
        "cosine": {k: {"mean": float(c.mean()), "min": float(c.min()), "rows": len(c)} for k, c in cos.items()},
        "measures": {m: {g: {"fp32": a, "int8": b} for g, (a, b) in rows.items()} for m, rows in pairs.items()},
        "precompute": seconds,
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2) + "\n")
    # ONNX Runtime multiplies u8 x s8 differently without VNNI (pairs summed into int16, which can saturate): a
    # verdict measured there says nothing of the VNNI CPUs where --dtype auto runs int8, so none is recorded
    recorded = ranker and cpu_has_vnni()
    if recorded:
        onnx_backend.record_gate(fingerprint, {"passed": passed, "failed": failed, "gate": GATE,
                                               "measured": str(json_out.relative_to(ROOT)) if json_out.is_relative_to(
                                                   ROOT) else str(json_out), "date": result["date"]})
    click.echo(f"int8 quality gate, {data} ({'7' if onnx_backend.QUANTIZE['reduce_range'] else '8'}-bit weights, "
               f"per channel); CPU VNNI: {cpu_has_vnni()}; load average {os.getloadavg()[0]:.1f}")
    click.echo(f"{'measure':<34}{'fp32':>9}{'int8':>9}{'diff':>9}  gate")
    for kind, c in cos.items():
        click.echo(f"{'cos(fp32, int8) ' + kind + ' mean':<34}{'':>9}{c.mean():>9.4f}{'':>9}  >= {GATE['cosine']}")
        click.echo(f"{'cos(fp32, int8) ' + kind + ' min':<34}{'':>9}{c.min():>9.4f}{'':>9}  >= {GATE['cosine']}")
    for measure, rows in pairs.items():
        rule = f"int8 >= fp32 - {GATE['drop']}" if measure in gated else "shown, not gated"
        for g, (a, b) in rows.items():
            click.echo(f"{measure + ' ' + g:<34}{a:>9.3f}{b:>9.3f}{b - a:>+9.3f}  {rule}")
    click.echo(f"precompute: fp32 {seconds['fp32']['precompute_s']:.1f}s, int8 {seconds['int8']['precompute_s']:.1f}s "
               f"(a rerun reuses the stores)")
    verdict = "PASSED" if passed else ("FAILED: " + ", ".join(failed) if failed else "not decided (--no-ranker)")
    why_not = "" if recorded else " (not recorded for --dtype auto: " + (
        "no --ranker" if not ranker else "this CPU has no VNNI") + ")"
    click.echo(f"gate {verdict}; wrote {json_out}{why_not}")


if __name__ == "__main__":
    main()
