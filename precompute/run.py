"""Precompute the feature store: encode mentions, names, contexts, descriptions and text with Ray actors.

Run locally (a local Ray is started for you)::

    xel-precompute --data data/sample --model models/multilingual-e5-small --out h5/

or on a cluster, joining it from inside a Ray job::

    RAY_AUTH_MODE=disabled ray start --head --dashboard-host 127.0.0.1
    ray job submit --working-dir . -- python precompute/run.py --data data/sample \
        --model "$PWD/models/multilingual-e5-small" --out "$PWD/h5/"

Rerunning the same command resumes: complete, valid shards are kept, the rest redone; ``manifest.json`` is
written last. A different encoder or config into the same ``--out`` is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from xel.precompute.config import (
    PrecomputeConfig,
    PrecomputeError,
    adopt_store_identity,
    check_job_paths,
    encoder_settings,
    prepare_out_dir,
    run_settings,
)
from xel.precompute.files import file_sha256
from xel.precompute.plan import drop_set_aside, plan_reuse, plan_tasks, remove_stale_temp_files
from xel.precompute.ray_session import ray_session
from xel.precompute.schedule import execute
from xel.precompute.schema import ScannedInputs, scan_inputs
from xel.precompute.settings import DEFAULT_BACKEND, EncoderSettings
from xel.precompute.shards import ENCODED_WITH, read_shard, shard_is_complete
from xel.precompute.store import KINDS, open_store, write_manifest
from xel.precompute.worker import (
    ShardTask,
)

log = logging.getLogger("xel.precompute.run")


def run(cfg: PrecomputeConfig) -> dict[str, Any]:
    """Validate inputs, encode what is missing, write the manifest; return a summary."""
    for kind in cfg.kinds:
        if kind not in KINDS:
            raise PrecomputeError(f"--kinds: {kind!r} is not a feature kind; allowed: {','.join(KINDS)}")
    check_job_paths(cfg)
    scanned = scan_inputs(cfg.data, cfg.shard_size)
    kinds = tuple(k for k in cfg.kinds if k != "text" or ("text" in scanned.files and scanned.files["text"].rows))
    encoder = encoder_settings(cfg)
    encoder = dataclasses.replace(encoder, identity=adopt_store_identity(cfg.out, encoder.identity))
    cfg = dataclasses.replace(cfg, kinds=kinds, dtype=encoder.dtype, backend=encoder.backend)
    settings = run_settings(cfg, encoder)
    input_hashes = {name: file_sha256(path) for name, path in scanned.paths.items()}
    prepare_out_dir(cfg.out, {"settings": settings, "encoder": encoder.identity, "config": cfg.to_json()})

    plan = plan_tasks(cfg, scanned, settings)
    todo = [t for tasks in plan.tasks.values() for t in tasks if not shard_is_complete(t.path, t.input_hash)]
    skipped = sum(len(tasks) for tasks in plan.tasks.values()) - len(todo)
    log.info("%d shards to encode, %d complete shards kept", len(todo), skipped)
    reuse = plan_reuse(cfg.out, plan, todo)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    if todo:
        with ray_session(cfg.address):
            results = execute(cfg, encoder, todo, reuse)
    seconds = time.perf_counter() - t0
    remove_stale_temp_files(cfg.out, cfg.kinds)
    rows = {kind: {"encoded": sum(r["encoded_rows"] for r in results if r["kind"] == kind),
                   "reused": sum(r["reused_rows"] for r in results if r["kind"] == kind),
                   "kept": sum(t.rows for t in plan.tasks[kind]) - sum(r["rows"] for r in results if r["kind"] == kind)}
            for kind in plan.tasks}
    manifest = finish_store(cfg, scanned, plan.tasks, encoder, settings, input_hashes, rows)
    drop_set_aside(cfg.out, cfg.kinds)
    tokens = sum(r["tokens"] for r in results)
    padded = sum(r["padded_tokens"] for r in results)
    return {
        "out": str(cfg.out), "manifest": manifest, "encoded_shards": len(todo), "kept_shards": skipped,
        "encoded_rows": sum(r["encoded"] for r in rows.values()),
        "reused_rows": sum(r["reused"] for r in rows.values()), "rows": rows,
        "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds if results else 0.0,
        "padding_fraction": 1 - tokens / padded if padded else 0.0,
        "windowed": sum(r["windowed"] for r in results),
        "shared": sum(r["shared"] for r in results),
    }


def finish_store(
    cfg: PrecomputeConfig, scanned: ScannedInputs, plan: dict[str, list[ShardTask]], encoder: EncoderSettings,
    settings: dict[str, Any], input_hashes: dict[str, str], rows: dict[str, dict[str, int]],
) -> dict[str, Any]:
    """Check every planned shard, drop stale ones, and write ``manifest.json`` last."""
    shards: dict[str, list[dict[str, Any]]] = {}
    dim = None
    for kind, tasks in plan.items():
        shards[kind] = []
        for task in tasks:
            shard = read_shard(task.path, verify=True)
            if shard.input_hash != task.input_hash:
                raise PrecomputeError(f"{task.path}: does not match its inputs after the run; rerun")
            dim = shard.features.shape[1]
            rel = f"{kind}/{Path(task.path).name}"
            ran = shard.encoded_with or (encoder.encoded_with() if encoder.is_resolved else None)
            if ran is None:
                raise PrecomputeError(f"{task.path}: records no dtype, backend or device of its encoder (written by an "
                                      "older xel); delete it and rerun the same command to encode it again")
            shards[kind].append({"path": rel, "rows": len(shard.ids), "checksum": shard.checksum, **ran})
        stale = sorted((cfg.out / kind).glob("shard-*.h5")) if (cfg.out / kind).is_dir() else []
        for path in stale[len(tasks):]:
            path.unlink()
    return write_manifest(
        cfg.out, **encoder.manifest_fields(), **encoders_of(shards, encoder), dim=dim, shards=shards,
        inputs=input_hashes, config=cfg.to_json(), ec_from_name=scanned.files["kb"].no_description, settings=settings,
        last_run_rows=rows,
    )


def encoders_of(shards: dict[str, list[dict[str, Any]]], encoder: EncoderSettings) -> dict[str, Any]:
    """What the manifest says ran the encoder. Each shard entry carries its own ``dtype``, ``backend``, ``device``
    (decided by the actor that wrote it, on its machine); the store's are those of the most rows (what a query
    encodes with), and ``encoded_with`` lists each combination with its rows when the actors differed."""
    rows: Counter[tuple[str, ...]] = Counter()
    for entries in shards.values():
        for entry in entries:
            rows[tuple(entry.get(key, "") for key in ENCODED_WITH)] += entry["rows"]
    if not rows:  # nothing encoded: what this machine would have run
        rows[tuple(encoder.resolved().encoded_with().get(key, "") for key in ENCODED_WITH)] = 0
    top = rows.most_common(1)[0][0]
    fields: dict[str, Any] = {key: value for key, value in zip(ENCODED_WITH, top) if value}
    if len(rows) > 1:
        fields["encoded_with"] = [{**{k: v for k, v in zip(ENCODED_WITH, combo) if v}, "rows": n}
                                  for combo, n in rows.most_common()]
    return fields


def summary_table(summary: dict[str, Any]) -> str:
    """What was written: rows and shards per kind, mentions per language with NIL rate, speed."""
    store = open_store(summary["out"])
    m = store.manifest
    lines = [
        f"store {summary['out']}: encoder {m['encoder']['name']} ({m['encoder']['fingerprint'][:12]}), dim {m['dim']}, "
        f"layer {m['layer']}, max length {m['max_length']}, prefix {m['prefix']!r}, {m['dtype']} on "
        f"{m.get('backend', DEFAULT_BACKEND)}"
        + (f" (--dtype auto: {m['dtype_reason']})" if m.get("dtype_reason") else "")
        + ("; the actors differed: " + ", ".join(f"{e['dtype']} on {e['backend']} ({e['rows']:,} rows)"
                                                 for e in m["encoded_with"]) if m.get("encoded_with") else ""),
        f"{'kind':<6}{'rows':>9}{'shards':>8}",
    ]
    for kind, info in m["kinds"].items():
        lines.append(f"{kind:<6}{info['rows']:>9}{len(info['shards']):>8}")
    by_lang: Counter[str] = Counter()
    nil: Counter[str] = Counter()
    for r in store.iter_records("mentions"):
        by_lang[r["lang"]] += 1
        nil[r["lang"]] += r["gold"] is None
    kb_langs = Counter(r["lang"] for r in store.iter_records("kb"))
    lines.append(f"{'lang':<6}{'mentions':>9}{'NIL rate':>10}  KB")
    only_kb = f"links to the {next(iter(kb_langs))} KB" if len(kb_langs) == 1 else \
        f"has no KB of its own (KBs: {', '.join(sorted(kb_langs))}; xel-nn --kb-lang picks one)"
    for lang in sorted(set(by_lang) | set(kb_langs)):
        rate = f"{nil[lang] / by_lang[lang]:>10.3f}" if by_lang[lang] else f"{'-':>10}"
        kb = f"{kb_langs[lang]:,} entities" if kb_langs[lang] else only_kb
        lines.append(f"{lang:<6}{by_lang[lang]:>9}{rate}  {kb}")
    lines.append(
        f"wrote {summary['encoded_shards']} shards ({summary['encoded_rows']:,} rows encoded, "
        f"{summary['reused_rows']:,} reused from the store), kept {summary['kept_shards']}; "
        f"{summary['tokens']:,} tokens in "
        f"{summary['seconds']:.1f}s ({summary['tokens_per_s']:,.0f} tokens/s), padding "
        f"{summary['padding_fraction']:.1%}, {summary['windowed']} texts windowed to the length limit, "
        f"{summary['shared']:,} pooled from another text's identical encoder input"
    )
    return "\n".join(lines)


if __name__ == "__main__":  # the command of ray job submit; the flags are xel-precompute's
    from xel.precompute.cli import main

    main()
