"""Mention detection per language: the tagger (trained on English only) against the gazetteer baseline, span
precision, recall and F1 (exact match), and the cost of detection against encoding the gold spans.

    python bench/detect.py [--data data/spans] [--data runs/spans-nerel] \\
        [--kb ../shared/data/wikidata-el/kb.jsonl] [--kb ru=../shared/data/nerel-rukb/kb.jsonl] \\
        [--layers 6,-1 --layers -1] --out bench/results/detect.json [--seeds 3] [--max-eval 1500]

Data: span-complete sentences (:mod:`detect.spans`; every mention marked, sentences without mentions included),
by default the shipped ``data/spans/`` (English Wikipedia from ELEVANT and HIPE-2022 English, German and French
newspapers); NEREL's Russian is converted on the user's machine (``data/spans/convert.py nerel``) and added with
another ``--data``. The tagger trains on the ``train`` sentences of ``en``, as ``xel-detect --data`` does; each
language is scored on its sentences outside ``train`` (for ``en``: held-out documents; the others are zero-shot),
a seeded sample of at most ``--max-eval`` per language.

The encoder is the default store's (``models/multilingual-e5-small`` with the settings ``xel-precompute`` resolves
by default); token features are computed once into ``--cache`` and reused by every seed and rerun. The gazetteer
holds the names of a KB (``--kb [LANG=]PATH``: a bare path serves every language without its own) and the alias
table of the English training spans that have a gold id. Tagger rows are mean ± std over ``--seeds``.

Speed: documents/s and tokens/s of detection (token features and tagging; one sentence = one document) and of the
gazetteer, against encoding the gold mentions as the linker does (``ms`` and ``mc``, :meth:`Linker.encode`): the
detector's extra cost over gold-span linking. Measured on this machine as loaded at the time (the JSON records the
load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "load_1min": round(os.getloadavg()[0], 2)}


def sample(items: list, n: int, seed: int) -> list:
    return items if len(items) <= n else random.Random(seed).sample(items, n)


def main() -> None:
    from xel.detect.detector import check_layers, default_layers
    from xel.detect.gazetteer import Gazetteer
    from xel.detect.metrics import prf
    from xel.detect.spans import read_span_sentences, span_stats
    from xel.detect.tagger import decode, fit, tag, token_labels
    from xel.detect.train import cached_features
    from xel.precompute.encoding import TextEncoder
    from xel.precompute.items import context_item, mention_item
    from xel.precompute.schema import iter_records
    from xel.precompute.settings import resolve_encoder
    from xel.retrieval.names import normalise_mention

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, action="append", help="span-sentence files or folders (default data/spans)")
    ap.add_argument("--kb", action="append", help="[LANG=]kb.jsonl whose names the gazetteer spots (default: the "
                    "bundled sample's data/sample/kb.jsonl for every language; bench/results/detect.json was "
                    "measured with wikidata-el's KB for all and nerel-rukb's for ru, as the usage line shows)")
    ap.add_argument("--model", type=Path, default=ROOT / "models/multilingual-e5-small")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/detect.json")
    ap.add_argument("--cache", type=Path, default=ROOT / "runs/bench-detect")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--layers", action="append", help="comma-separated hidden-state indices the tagger reads, "
                    "concatenated (as xel-detect --layer); repeat to compare (rows per set; the first gives the "
                    "headline and speed rows) [default: the middle and the last]")
    ap.add_argument("--max-train", type=int, default=100_000)
    ap.add_argument("--max-eval", type=int, default=1500)
    args = ap.parse_args()
    kb_args = args.kb or [str(ROOT / "data/sample/kb.jsonl")]
    kb_paths = dict(kb.split("=", 1) if "=" in kb else ("*", kb) for kb in kb_args)
    for lang, path in kb_paths.items():
        if not Path(path).is_file():
            ap.error(f"--kb {'' if lang == '*' else lang + '='}{path}: no such file (a kb.jsonl in the input schema)")

    sentences = [s for path in args.data or [ROOT / "data/spans"] for s in read_span_sentences(path)]
    train = sample([s for s in sentences if s.lang == "en" and s.split == "train"], args.max_train, 0)
    sets = sorted({(s.lang, s.corpus) for s in sentences}, key=lambda x: (x[0] != "en", x))
    evals = {f"{lang} {source}": sample([s for s in sentences if s.lang == lang and s.corpus == source
                                         and s.split != "train"], args.max_eval, 0) for lang, source in sets}
    evals = {name: rows for name, rows in evals.items() if rows}
    base = resolve_encoder(args.model, device="cpu")
    encoder = TextEncoder.load(base)  # the linker's: its store's layer, and the detector's layers from one forward
    layer_sets = [check_layers(encoder, [int(x) for x in arg.split(",")]) for arg in args.layers or []] or \
        [default_layers(encoder)]
    texts = [s.text for s in train] + [s.text for rows in evals.values() for s in rows]
    load_before = machine()
    per_set: dict[str, dict[str, list[dict[str, Any]]]] = {}
    taggers = []
    for layers in layer_sets:
        key = ",".join(map(str, layers))
        t0 = time.perf_counter()
        feats = cached_features(args.cache / f"layers{key}", encoder, base, texts, layers)
        print(f"layers {key}: token features of {len(texts)} sentences: {time.perf_counter() - t0:.0f} s "
              f"(cached in {args.cache})", file=sys.stderr)
        train_feats, at = feats[: len(train)], len(train)
        eval_feats = {}
        for name, rows in evals.items():
            eval_feats[name], at = feats[at : at + len(rows)], at + len(rows)
        if layers == layer_sets[0]:
            train_tokens = int(sum(len(f) for f in train_feats))
        labels = [token_labels(f.offsets, s.spans) for f, s in zip(train_feats, train)]
        found: dict[str, list[dict[str, Any]]] = {name: [] for name in evals}
        for seed in range(args.seeds):
            model, losses = fit([f.features for f in train_feats], labels, epochs=args.epochs, seed=seed)
            if layers == layer_sets[0]:
                taggers.append(model)
            for name, rows in evals.items():
                probs = tag(model, [f.features for f in eval_feats[name]])
                spans = [[(x.start, x.end) for x in decode(s.text, f.offsets, p)]
                         for s, f, p in zip(rows, eval_feats[name], probs)]
                found[name].append(prf([s.spans for s in rows], spans))
            print(f"layers {key} seed {seed}: final loss {losses[-1]:.4f}", file=sys.stderr)
        per_set[key] = found
    keys = list(per_set)

    def mean_std(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
        return {k: {"mean": statistics.mean(r[k] for r in rows),
                    "std": statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0} for k in ("p", "r", "f1")}

    aliases = Counter(normalise_mention(s.text[a:b]) for s in train for (a, b), g in zip(s.spans, s.golds) if g)
    kb_names = {lang: [r["name"] for _, r in iter_records(Path(path))] for lang, path in kb_paths.items()}
    gazetteers = {lang: Gazetteer(names, aliases) for lang, names in kb_names.items()}

    results: dict[str, Any] = {}
    for lang, rows in evals.items():
        gazetteer = gazetteers.get(lang.split()[0], gazetteers["*"])
        gaz_spans = [[(x.start, x.end) for x in gazetteer.spot(s.text)] for s in rows]
        results[lang] = {
            "sentences": len(rows), "gold_spans": sum(len(s.spans) for s in rows),
            "tagger": mean_std(per_set[keys[0]][lang]),
            "gazetteer": prf([s.spans for s in rows], gaz_spans),
            "tagger_by_layers": {key: mean_std(found[lang]) for key, found in per_set.items()},
        }

    # speed, on the en dev sentences: detection against encoding their gold mentions as the linker does
    rows = [s for name, rows in evals.items() if name.startswith("en ") for s in rows]
    docs = [s.text for s in rows]
    from xel.detect.tokens import token_features

    t0 = time.perf_counter()
    detected_feats = token_features(encoder, docs, layer_sets[0])
    probs = tag(taggers[0], [f.features for f in detected_feats])
    for text, f, p in zip(docs, detected_feats, probs):
        decode(text, f.offsets, p)
    detect_s = time.perf_counter() - t0
    tokens = sum(len(f) for f in detected_feats)
    t0 = time.perf_counter()
    for s in rows:
        gazetteers.get("en", gazetteers["*"]).spot(s.text)
    gazetteer_s = time.perf_counter() - t0
    items = [(f"{i}:{a}", s.text, a, b) for i, s in enumerate(rows) for a, b in s.spans]
    t0 = time.perf_counter()
    encoder.encode([mention_item(i, "en", t, a, b) for i, t, a, b in items])
    encoder.encode([context_item(i, "en", t, t, a, b) for i, t, a, b in items])
    gold_s = time.perf_counter() - t0
    speed = {"documents": len(docs), "tokens": tokens, "gold_mentions": len(items),
             "detector_s": detect_s, "detector_docs_per_s": len(docs) / detect_s, "detector_tokens_per_s":
             tokens / detect_s, "gazetteer_s": gazetteer_s, "gazetteer_docs_per_s": len(docs) / gazetteer_s,
             "gold_span_encoding_s": gold_s, "detector_over_gold_span_encoding": detect_s / gold_s}

    out = {"bench": "detect", "machine_before": load_before, "machine_after": machine(),
           "encoder": {"model": str(args.model), "dtype": base.dtype, "max_length": base.max_length,
                       "layers": list(layer_sets[0]), "layer_sets_compared": keys},
           "train_sentences": len(train), "train_tokens": train_tokens,
           "seeds": args.seeds, "epochs": args.epochs, "results": results, "speed": speed,
           "data": [str(p) for p in args.data or [ROOT / "data/spans"]], "kb": kb_paths,
           "span_data": span_stats(sentences)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")

    print("| lang, corpus | sentences | gold spans | tagger P | tagger R | tagger F1 | gazetteer P | gazetteer R | "
          "gazetteer F1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for lang, r in results.items():
        t, g = r["tagger"], r["gazetteer"]
        print(f"| {lang} | {r['sentences']} | {r['gold_spans']} | " + " | ".join(
            f"{t[k]['mean']:.3f} ± {t[k]['std']:.3f}" for k in ("p", "r", "f1")) + " | " +
            " | ".join(f"{g[k]:.3f}" for k in ("p", "r", "f1")) + " |")
    if len(keys) > 1:
        print("\ntagger span F1 by the encoder layers it reads (hidden-state indices):\n")
        print("| lang, corpus | " + " | ".join(f"layers {x}" for x in keys) + " |")
        print("|---|" + "---|" * len(keys))
        for lang, r in results.items():
            cells = [r["tagger_by_layers"][x]["f1"] for x in keys]
            print(f"| {lang} | " + " | ".join(f"{c['mean']:.3f} ± {c['std']:.3f}" for c in cells) + " |")
    print(f"\nspeed (en dev, {len(docs)} sentences, load {out['machine_after']['load_1min']} on "
          f"{out['machine_after']['cores']} cores): detector {speed['detector_docs_per_s']:.1f} docs/s, "
          f"{speed['detector_tokens_per_s']:.0f} tokens/s; gazetteer {speed['gazetteer_docs_per_s']:.0f} docs/s; "
          f"detection costs {speed['detector_over_gold_span_encoding']:.2f}x the encoding of the gold mentions")


if __name__ == "__main__":
    main()
