"""Raw text to entities, end to end, per language: the run's tagger and the gazetteer baseline against gold spans,
all linked by the same linker with the same NIL rule, in one run.

    python bench/detect_e2e.py --run RUN_DIR [--data MENTIONS] [--split test] [--lang en --lang de] \\
        --out bench/results/detect-e2e.json

``RUN_DIR`` is a trained run (``xel-train``) with a detector (``xel-detect --model RUN_DIR``). ``--data``: span
sentences (:mod:`detect.spans`; a file, or a folder of them such as ``data/spans``), whose sentences outside
their train documents are scored (``--split held-out``, the default for them), a gold id that is not in the run's
KB counting as NIL; or a mentions file (the default: the mentions the run's store was computed from,
``<store>/inputs/mentions.jsonl``, as ``xel-detect``), grouped by sentence and split by document, whose
``--split`` (default ``test``) documents are scored, with the ``gold_records`` row below. One sentence is one
document.

Rows, each linked by :func:`detect.documents.link_documents` (the path of ``xel-link --detect`` and
``Linker.link_text``: each span with its sentence as context):

* ``tagger``: the run's detector (``RUN/detector/``) finds the spans;
* ``gazetteer``: the KB's names and the training alias table find them (``--spotter gazetteer``);
* ``gold``: the gold spans, the reference ceiling (the same path, so only the spans differ);
* ``gold_records`` (a mentions file only): the gold spans as the mentions file gives them, linked by
  ``Linker.link`` (the normal path, each mention with its own ``context``), for the cost of linking a span with
  only its sentence around it.

Scores (:func:`detect.metrics.end_to_end`, exact span match and the same KB id): ``e2e`` follows
``docs/metrics.md`` (a NIL prediction is no link; gold NIL spans are outside the recall), so ``gold`` scores as
the linker's P/R/F1 on these mentions; ``e2e_with_nil`` counts NIL as a label (a gold NIL span predicted NIL is
right; a spurious span linked to NIL is wrong). ``span`` is the span-only P/R/F1 (as ``bench/detect.py``).
Speed: documents/s of each row's whole path (spotting and linking), measured after one warm-up pass, on this
machine as loaded at the time (the JSON records the load), and each row's time over the ``gold`` row's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ROWS = ("tagger", "gazetteer", "gold")


def machine() -> dict[str, Any]:
    return {"cores": len(os.sched_getaffinity(0)), "load_1min": round(os.getloadavg()[0], 2)}


class GoldSpotter:
    """The gold spans of the texts it was given, in their order, as a :class:`detect.documents.Spotter`."""

    def __init__(self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]):
        from xel.detect.tagger import Span

        self.texts, self.found = list(texts), [[Span(a, b, 1.0) for a, b in s] for s in spans]

    def spans(self, texts: Sequence[str]) -> list[list[Any]]:
        if list(texts) != self.texts:
            raise ValueError("GoldSpotter holds the spans of other texts")
        return self.found


def main() -> None:
    from xel.detect.documents import Document, link_documents
    from xel.detect.metrics import end_to_end, prf
    from xel.detect.spans import is_span_sentence, read_span_sentences, sentence_key, span_files, span_sentences
    from xel.link.items import ITEM_FIELDS
    from xel.link.linker import Linker
    from xel.link.run_files import resolve_run_config
    from xel.precompute.schema import iter_records

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--split", default=None, choices=("train", "dev", "test", "held-out"),
                    help="the sentences scored: a split, or held-out (dev and test); default test for a mentions "
                         "file, held-out for span sentences")
    ap.add_argument("--lang", action="append", default=None, help="repeatable; default: every language of --data")
    ap.add_argument("--max-sentences", type=int, default=None, help="a seeded sample of at most this many per language")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/detect-e2e.json")
    args = ap.parse_args()

    data = args.data or Path(resolve_run_config(args.run).features) / "inputs" / "mentions.jsonl"
    files = span_files(data)
    first = next((r for _, r in iter_records(files[0])), {})
    if len(files) == 1 and not is_span_sentence(first):  # a mentions file: its records give the gold_records row
        records: list[dict[str, Any]] | None = [r for _, r in iter_records(files[0])]
        sentences = span_sentences(records)
        keys = list(dict.fromkeys(sentence_key(r) for r in records))  # span_sentences' order
        by_key = {k: s for k, s in zip(keys, sentences)}
    else:  # span sentences: every mention marked; ids outside the run's KB are NIL for this KB
        records = None
        sentences = read_span_sentences(data)
    linker = Linker.load(args.run)
    if records is None:
        in_kb = set(linker.store.load_ids("es")[0])
        sentences = [dataclasses.replace(s, golds=tuple(g if g in in_kb else None for g in s.golds))
                     for s in sentences]
    langs = args.lang or sorted({s.lang for s in sentences})
    split = args.split or ("test" if records is not None else "held-out")
    held = {lang: [s for s in sentences if s.lang == lang and (s.split == split or split == "held-out" and
                                                               s.split != "train")] for lang in langs}
    if args.max_sentences is not None:
        held = {lang: rows if len(rows) <= args.max_sentences else
                [rows[i] for i in sorted(random.Random(0).sample(range(len(rows)), args.max_sentences))]
                for lang, rows in held.items()}
    for lang, rows in held.items():
        if not rows:
            raise SystemExit(f"{data}: no {lang!r} sentences in its {split} documents")

    load_before = machine()
    results: dict[str, Any] = {}
    for lang, rows in held.items():
        docs = [Document(f"{lang}-{i}", s.text, lang) for i, s in enumerate(rows)]
        gold_spans = [s.spans for s in rows]
        gold_links = [[(a, b, g) for (a, b), g in zip(s.spans, s.golds)] for s in rows]
        spotters = {"tagger": linker.spotter("tagger"), "gazetteer": linker.spotter("gazetteer"),
                    "gold": GoldSpotter([s.text for s in rows], gold_spans)}
        out: dict[str, Any] = {"sentences": len(rows), "gold_spans": sum(map(len, gold_spans)),
                               "gold_nil_spans": sum(g is None for s in rows for g in s.golds)}
        link_documents(linker, spotters["tagger"], docs[:8])  # warm-up: encoder, detector, candidate caches
        for name, spotter in spotters.items():
            t0 = time.perf_counter()
            lines = link_documents(linker, spotter, docs)
            seconds = time.perf_counter() - t0
            found = [[(m["start"], m["end"], m["pred"]) for m in line["mentions"]] for line in lines]
            out[name] = {"span": prf(gold_spans, [[(a, b) for a, b, _ in f] for f in found]),
                         "e2e": end_to_end(gold_links, found),
                         "e2e_with_nil": end_to_end(gold_links, found, with_nil=True),
                         "linked": sum(e is not None for f in found for _, _, e in f),
                         "seconds": seconds, "docs_per_s": len(docs) / seconds}
            print(f"{lang} {name}: {seconds:.1f} s, e2e {out[name]['e2e']}", file=sys.stderr, flush=True)
        if records is None:
            for name in ROWS:
                out[name]["seconds_over_gold"] = out[name]["seconds"] / out["gold"]["seconds"]
            out["tagger_minus_gazetteer_e2e_f1"] = out["tagger"]["e2e"]["f1"] - out["gazetteer"]["e2e"]["f1"]
            results[lang] = out
            continue
        # the normal path: the mention records of the kept gold spans, each with its own context
        index = {id(s): i for i, s in enumerate(rows)}
        kept = [(r, s) for r in records
                if id(s := by_key[sentence_key(r)]) in index and (r["start"], r["end"]) in s.spans]
        t0 = time.perf_counter()
        links = linker.link([{k: v for k, v in r.items() if k in ITEM_FIELDS and k != "gold"} for r, _ in kept])
        seconds = time.perf_counter() - t0
        found_records: list[list[tuple[int, int, str | None]]] = [[] for _ in rows]
        for (r, s), link in zip(kept, links):
            found_records[index[id(s)]].append((r["start"], r["end"], link.pred))
        out["gold_records"] = {"e2e": end_to_end(gold_links, found_records),
                               "e2e_with_nil": end_to_end(gold_links, found_records, with_nil=True),
                               "linked": sum(x.pred is not None for x in links), "mentions": len(kept),
                               "seconds": seconds, "docs_per_s": len(docs) / seconds}
        for name in ROWS:
            out[name]["seconds_over_gold"] = out[name]["seconds"] / out["gold"]["seconds"]
        out["tagger_minus_gazetteer_e2e_f1"] = out["tagger"]["e2e"]["f1"] - out["gazetteer"]["e2e"]["f1"]
        results[lang] = out

    report = {"bench": "detect-e2e", "run": str(args.run), "data": str(data), "split": split,
              "max_sentences": args.max_sentences,
              "machine_before": load_before, "machine_after": machine(), "nil_threshold": linker.threshold,
              "nil_calibrated_langs": sorted(linker.nil_rule.shifts), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")

    print("| lang | row | sentences | span F1 | e2e P | e2e R | e2e F1 | e2e F1 with NIL | docs/s | time / gold |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for lang, r in results.items():
        for name in [x for x in (*ROWS, "gold_records") if x in r]:
            row = r[name]
            span = f"{row['span']['f1']:.3f}" if "span" in row else "–"
            ratio = f"{row['seconds'] / r['gold']['seconds']:.2f}x"
            e = row["e2e"]
            print(f"| {lang} | {name} | {r['sentences']} | {span} | {e['p']:.3f} | {e['r']:.3f} | {e['f1']:.3f} | "
                  f"{row['e2e_with_nil']['f1']:.3f} | {row['docs_per_s']:.1f} | {ratio} |")
    for lang, r in results.items():
        print(f"{lang}: e2e F1 tagger − gazetteer = {r['tagger_minus_gazetteer_e2e_f1']:+.3f}; "
              f"tagger / gold ceiling = {r['tagger']['e2e']['f1'] / max(r['gold']['e2e']['f1'], 1e-9):.2f}")
    print(f"load {report['machine_before']['load_1min']} → {report['machine_after']['load_1min']} on "
          f"{report['machine_after']['cores']} cores; NIL threshold {linker.threshold:g}, calibrated languages "
          f"{report['nil_calibrated_langs'] or 'none'}")


if __name__ == "__main__":
    main()
