"""Link a JSONL file of mentions with a trained run: ``xel-link --model RUN_DIR --in mentions.jsonl --out links.jsonl``.

Every line is checked before the model is loaded (errors name the file, line and field), by the rules precompute
applies to its mentions. ``--out`` may not be a file xel-link reads: ``--in``, or anything inside the run
directory, its feature store or its index. Mentions are linked in batches of ``--batch-size`` with a progress bar
(mentions/s) and written, one line per input mention in input order, as the Links file
(:meth:`link.linker.Link.to_json`) into a temporary directory beside ``--out`` (``.{name}.{pid}.XXXXXXXX.tmp``)
and moved into place; a rerun removes what a killed run left there. When the input carries ``gold`` fields, the
shared metrics (:mod:`retrieval.metrics`) of those mentions are returned.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from xel.link.items import Item, LinkError, check_item, read_checked
from xel.link.linker import Linker
from xel.link.run_files import kb_candidates_configs, resolve_run_config, same_path
from xel.precompute.config import PrecomputeConfig
from xel.precompute.files import atomic_path, make_temp_dir, remove_stale_temp_dirs
from xel.precompute.run import run as precompute
from xel.precompute.store import Store, StoreError, json_line, open_store, refuse_store_out
from xel.retrieval.metrics import Scores, score_groups

log = logging.getLogger(__name__)

# a Ray cluster: host:port (the GCS, 6379) or ray://host:port (the Ray client server, 10001); IPv6 in brackets
RAY_ADDRESS = re.compile(r"(?:ray://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(?P<port>[0-9]{1,5})")
ADDRESS_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LinkConfig:
    model: str
    input: str
    output: str
    k: int = 10
    threshold: float | None = None  # None: the run's tuned NIL threshold
    index: str | None = None  # None: the index beside the KB's store, <store>/../index (<run root>/index)
    batch_size: int = 256
    progress: bool = True
    actors: int = 0  # 0: encode in this process; N >= 1: precompute's Ray actors into a temporary store
    address: str | None = None  # the Ray cluster (None: a local Ray, or the job's own inside ray job submit)
    features: str | None = None  # the store whose KB to link against (None: the run's training store)
    detect: bool = False  # --in holds raw documents {id, text, lang}: find their mentions, then link them
    spotter: str = "tagger"  # with detect: the run's trained detector, or the gazetteer of the KB's names


def read_items(path: Path) -> tuple[list[Item], list[int]]:
    """The checked items of a JSONL file, and the positions of those with a ``gold`` field (null: NIL)."""
    lines = read_checked(path, check_item, "no mentions; at least one line {text, start, end, lang?} is required")
    return [item for _, item in lines], [i for i, (record, _) in enumerate(lines) if "gold" in record]


def run(cfg: LinkConfig) -> dict[str, Any]:
    """Link ``cfg.input`` into ``cfg.output``; returns ``{"mentions", "linked", "seconds", "metrics", "kb"}``
    (metrics per group, over the lines with a ``gold`` field, or None; ``kb`` the :class:`link.linker.KBSource`
    as JSON when ``cfg.features`` is another KB than the run's, else None)."""
    if cfg.k < 1 or cfg.batch_size < 1 or cfg.actors < 0:
        raise LinkError(f"--k {cfg.k}, --batch-size {cfg.batch_size}, --actors {cfg.actors}: --k and --batch-size "
                        "must be >= 1, --actors >= 0")
    if cfg.threshold is not None and not math.isfinite(cfg.threshold):
        raise LinkError(f"--threshold {cfg.threshold}: a finite number is required")
    if cfg.detect:
        if cfg.actors:
            raise LinkError(f"--actors {cfg.actors}: --detect encodes in this process; leave --actors out")
        from xel.detect.batch import run_documents

        return run_documents(cfg)
    ray_at = check_address(cfg.address, cfg.actors)
    refuse_out_over_inputs(cfg)
    for path in remove_stale_temp_files(cfg.output):
        log.info("removed %s, left by an xel-link that was killed", path)
    items, rows = read_items(Path(cfg.input))
    if ray_at is not None:
        probe_address(cfg.address, *ray_at)
    linker = Linker.load(cfg.model, index_dir=cfg.index, threshold=cfg.threshold, features=cfg.features)
    t0 = time.perf_counter()
    preds: list[str | None] = []
    work = work_dir(cfg.output)
    encoded = encode_with_actors(cfg, linker, items, work) if cfg.actors else None
    with links_file(cfg.output) as tmp, open(tmp, "w", encoding="utf-8") as out, \
            tqdm(total=len(items), unit="mention", desc="linking", disable=not cfg.progress) as bar:
        for start in range(0, len(items), cfg.batch_size):
            batch = items[start : start + cfg.batch_size]
            vectors = None
            if encoded is not None:
                positions = np.arange(start, start + len(batch))
                vectors = (encoded.read_rows("ms", positions), encoded.read_rows("mc", positions),
                           encoded.read_rows("mn", positions) if "mn" in encoded.kinds else None)
            for link in linker.link(batch, k=cfg.k, encoded=vectors):
                out.write(json_line(link.to_json(), cfg.output))
                preds.append(link.pred)
            bar.update(len(batch))
    if encoded is not None:
        shutil.rmtree(work)
    seconds = time.perf_counter() - t0
    metrics: dict[str, Scores] | None = None
    if rows:
        metrics = score_groups([items[i].gold for i in rows], [preds[i] for i in rows],
                               [items[i].lang for i in rows], [items[i].type for i in rows])
    log.info("linked %d mentions in %.1f s", len(items), seconds)
    return {"mentions": len(items), "linked": sum(p is not None for p in preds), "seconds": seconds,
            "metrics": metrics, "kb": None if linker.kb_source is None else linker.kb_source.to_json()}


def files_read(cfg: LinkConfig) -> list[tuple[str, Path]]:
    """What xel-link reads, as ``(what, path)``: ``--in``, the run directory, its config's stores and candidates
    file (the paths :meth:`Linker.load` resolves), the KB's store (``--features``), its candidates run's config
    and the index."""
    run = Path(cfg.model)
    read = [("--in", Path(cfg.input)), ("the run directory --model", run)]
    index = Path(cfg.index) if cfg.index is not None else None
    if cfg.features is not None:
        read.append(("the KB's feature store --features", Path(cfg.features)))
    if (run / "config.json").is_file():  # without one, Linker.load refuses the run
        train = resolve_run_config(run)
        for name, what in (("features", "the run's feature store"), ("eval_features", "the run's eval store"),
                           ("candidates", "the run's candidates file")):
            if getattr(train, name):
                read.append((what, Path(getattr(train, name))))
        kb_store = cfg.features if cfg.features is not None else train.features
        if train.candidates and kb_store:
            *others, own_config = kb_candidates_configs(train, kb_store, same_path(kb_store, train.features))
            read.append(("the candidates run's config", own_config))
            read.extend(("the candidates run's config of --features", path) for path in others)
        if index is None and kb_store:
            index = Path(kb_store).parent / "index"
    if index is not None:
        read.append(("the index", index))
    return read


def refuse_out_over_inputs(cfg: LinkConfig) -> None:
    """Refuse an ``--out`` that is, or (through a symbolic link or a hard link) would overwrite, a file xel-link
    reads: ``--in``, or any file inside the run directory, its stores or its index."""
    out = Path(cfg.output)
    refuse_store_out(out, LinkError)
    real = Path(os.path.realpath(out))
    for what, path in files_read(cfg):
        target = Path(os.path.realpath(path))
        same_file = out.exists() and path.is_file() and os.path.samefile(out, path)
        if real == target or same_file or target in real.parents:
            where = "is" if real == target or same_file else "lies inside"
            raise LinkError(f"--out {out}: {where} {what} ({path}), which xel-link reads; write the Links file "
                            "somewhere else, e.g. --out links.jsonl")


@contextmanager
def links_file(output: str) -> Iterator[Path]:
    """A temporary file for the Links file, in a directory beside ``output`` named with this process's id
    (:func:`precompute.store.make_temp_dir`), fsynced and moved onto ``output`` when the block ends; removed if
    it raises (SIGTERM included, see :func:`precompute.store.exit_on_sigterm`). What a SIGKILL leaves is removed
    by the next run (:func:`remove_stale_temp_files`)."""
    out = Path(output)
    folder = make_temp_dir(out)
    try:
        tmp = folder / out.name
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_temp_files(output: str) -> list[Path]:
    """Delete what killed runs left beside ``output``: :func:`links_file`'s directories whose process is gone, and
    the ``.{name}.XXXXXXXX.tmp`` files that xel-link wrote through :func:`precompute.store.atomic_path` before."""
    out = Path(output)
    removed = remove_stale_temp_dirs(out)
    if out.parent.is_dir():
        legacy = re.compile(rf"\.{re.escape(out.name)}\.[A-Za-z0-9_]{{8}}\.tmp")
        for path in out.parent.iterdir():
            if legacy.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def check_address(address: str | None, actors: int) -> tuple[str, int] | None:
    """The host and port of ``--address`` to probe (None for none, ``auto`` or ``local``); a malformed one, or
    one without ``--actors``, raises :class:`LinkError`."""
    if address is None:
        return None
    if not actors:
        raise LinkError(f"--address {address}: used only with --actors N (N >= 1), which encodes on that cluster")
    if address in ("auto", "local"):
        return None
    match = RAY_ADDRESS.fullmatch(address)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise LinkError(f"--address {address!r}: not a Ray address; host:port (10.0.0.5:6379), ray://host:port "
                        "(ray://10.0.0.5:10001) or auto is required")
    return match["host"].strip("[]"), int(match["port"])


def probe_address(address: str, host: str, port: int, timeout_s: float = ADDRESS_TIMEOUT_S) -> None:
    """Connect to ``host:port`` once, within ``timeout_s`` (name lookup included), before Ray tries it: Ray retries
    an address where nothing answers for minutes."""
    problem: list[str] = ["no answer"]

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            problem.clear()
        except OSError as e:
            problem[0] = str(e) or type(e).__name__

    thread = threading.Thread(target=connect, name="xel-link-address-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if problem:
        raise LinkError(f"--address {address}: nothing answers at {host}:{port} ({problem[0]}, waited at most "
                        f"{timeout_s:g} s); start the cluster (ray start --head) or pass the address it printed")


def work_dir(output: str) -> Path:
    """Where ``--actors`` keeps its inputs and store while linking into ``output``: beside it, so that it is on the
    same disk, visible to a cluster's workers when ``--out`` is on shared storage, and found again by a rerun."""
    out = Path(output)
    return out.with_name(f".{out.name}.xel-link")


def encode_with_actors(cfg: LinkConfig, linker: Linker, items: list[Item], work: Path) -> Store:
    """The items' rows of :attr:`Linker.mention_kinds` (``ms``, ``mc``, and ``mn`` when the run reads it), in
    item order, encoded by precompute's Ray actors into ``work/store`` with the settings of the store the run was
    trained on (checked after)."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    # precompute needs a KB file; the store keeps only mention kinds, so one entity of the run's KB stands for it
    first = linker.kb.table.record(0)
    write_jsonl(data / "kb.jsonl", [{"id": first["id"], "name": first["name"], "lang": first["lang"]}])
    write_jsonl(data / "mentions.jsonl", ({"id": it.id, "lang": it.lang, "sentence": it.sentence, "start": it.start,
                                           "end": it.end, "context": it.context} for it in items))
    settings = linker.encoder_settings  # EncoderSettings.from_manifest of the run's store
    pcfg = PrecomputeConfig(
        data=data, model=Path(settings.model), out=work / "store", kinds=linker.mention_kinds, layer=settings.layer,
        max_length=settings.max_length, prefix=settings.prefix, dtype=settings.dtype, backend=settings.backend,
        actors=cfg.actors, address=cfg.address,
    )
    log.info("encoding %d mentions with %d precompute actor(s) into %s", len(items), cfg.actors, pcfg.out)
    precompute(pcfg)
    store = open_store(pcfg.out)
    store.check_same_encoder(linker.store)
    ids, _ = store.load_ids("ms")
    if ids != [it.id for it in items]:
        raise StoreError(f"{pcfg.out}: its mention rows are not the items of {cfg.input} in order; delete {work} "
                         "and rerun")
    return store


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json_line(record, path))
