"""Load a feature store into memory for ``xel-train``: KB and mention features as tensors, candidates as [M, K].

Features are read once through :mod:`precompute.store` (float16 on disk, float32 tensors here), by row: the
mentions' rows and the KB rows of their candidates and golds (:func:`load_kb`), never a whole table, so training
against a 6M-entity KB holds what it scores, not the KB. Two things still cover every KB row without holding
it: +P's median (kb.jsonl is streamed) and the standardization statistics (:class:`Moments`, one shard at a
time), so the model is the one that every row in memory gave.

Candidate lists become a padded index tensor ``cand`` [M, K] into the KB rows plus a boolean ``cand_mask``; the
gold's position among them is ``gold_pos`` (-1 when the gold is NIL or not among the candidates: such mentions are
evaluated but do not enter the loss). The gold is never added to the candidates.

Candidates come from, in order: ``--candidates FILE``; ``<features>/candidates.jsonl`` if present; the
mentions' own ``candidates`` field when every mention has one. Otherwise loading fails and says to run
``xel-nn candidates``.

Popularity (+P, paper §4.1): ``links / median(links)`` over the KB entries whose ``links`` is not null (a median
of 0 is taken as 1). Entries with ``links: null`` are refused (``--popularity-missing error``, the default)
or, with ``--popularity-missing median``, given the median (value 1.0) plus a second feature, 1.0 where the
count was missing and 0.0 otherwise, so the model can tell an imputed count from a real one.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from xel.precompute.store import ENTITY_KINDS, RECORD_FILES, Store, StoreError
from xel.retrieval.files import CANDIDATE_SOURCES, read_candidates
from xel.retrieval.splits import document_of

if TYPE_CHECKING:
    from xel.retrieval.kb_table import KBTable

log = logging.getLogger(__name__)


class DataError(ValueError):
    """The store, candidates or records cannot be used for training; the message says why and what to do."""


@dataclass(frozen=True)
class KB:
    ids: list[str]
    index: dict[str, int]
    langs: list[str]
    es: torch.Tensor  # [E, D] float32
    ec: torch.Tensor  # [E, D] float32
    popularity: torch.Tensor  # [E, P], P in {0, 1, 2}
    names: tuple[str, ...] = ()
    links: tuple[int | None, ...] = ()
    link_counts: tuple[int | None, ...] | None = None  # +P counted from training mentions (train.prepare)
    moments: tuple[Moments, Moments] | None = None  # (es, ec) over every KB row, not only these (load_kb)
    centre: torch.Tensor | None = None  # [2, D] mean es and ec over every KB row (train.centre)


@dataclass(frozen=True)
class Mentions:
    """A set of mentions over one KB; every tensor has M rows in the order of ``ids``."""

    kb: KB
    ids: list[str]
    langs: list[str]
    types: list[str | None]
    golds: list[str | None]
    ms: torch.Tensor  # [M, D]
    mc: torch.Tensor  # [M, D]
    cand: torch.Tensor  # [M, K] long, KB row indices (0 where padded)
    cand_mask: torch.Tensor  # [M, K] bool
    gold_pos: torch.Tensor  # [M] long, position of the gold among the candidates or -1
    gold_kb: torch.Tensor  # [M] long, KB row of the gold or -1 (NIL or not in the KB)
    docs: list[str] = field(default_factory=list)  # document ids (retrieval.splits.document_of)
    surfaces: list[str] = field(default_factory=list)  # the mention strings
    cand_source: torch.Tensor | None = None  # [M, K] int8, index into CANDIDATE_SOURCES
    pair: torch.Tensor | None = None  # [M, K, F] pair features of the residual scorer (train.pairs)
    centre: torch.Tensor | None = None  # [M, 2, D] mean ms and mc of each row's language (train.centre)
    mn: torch.Tensor | None = None  # [M, D] the mention strings encoded alone (store kind mn), for the names group

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: torch.Tensor | list[int]) -> Mentions:
        idx = torch.as_tensor(rows, dtype=torch.long)
        pick = idx.tolist()
        return Mentions(
            kb=self.kb, ids=[self.ids[i] for i in pick], langs=[self.langs[i] for i in pick],
            types=[self.types[i] for i in pick], golds=[self.golds[i] for i in pick],
            ms=self.ms[idx], mc=self.mc[idx], cand=self.cand[idx], cand_mask=self.cand_mask[idx],
            gold_pos=self.gold_pos[idx], gold_kb=self.gold_kb[idx],
            docs=[self.docs[i] for i in pick] if self.docs else [],
            surfaces=[self.surfaces[i] for i in pick] if self.surfaces else [],
            cand_source=None if self.cand_source is None else self.cand_source[idx],
            pair=None if self.pair is None else self.pair[idx],
            centre=None if self.centre is None else self.centre[idx],
            mn=None if self.mn is None else self.mn[idx],
        )

    def trainable(self) -> torch.Tensor:
        """Rows whose gold is among their candidates: only these enter the loss."""
        return torch.nonzero(self.gold_pos >= 0).flatten()


def popularity_features(links: list[int | None], missing: str, where: str) -> np.ndarray:
    """``[E, P]`` popularity features from the KB's ``links`` counts (see the module docstring)."""
    known = np.array([x for x in links if x is not None], dtype=np.float64)
    n_missing = len(links) - len(known)
    if n_missing and missing == "error":
        raise DataError(
            f"{where}: --popularity needs kb.jsonl 'links' counts but {n_missing} of {len(links)} entries have "
            "links: null; fill them in, or pass --popularity-missing median to impute the median with a "
            "missing-indicator feature"
        )
    median = float(np.median(known)) if len(known) else 1.0
    median = median if median > 0 else 1.0
    value = np.array([(x / median) if x is not None else 1.0 for x in links], dtype=np.float32)
    if missing == "error":
        return value[:, None]
    indicator = np.array([1.0 if x is None else 0.0 for x in links], dtype=np.float32)
    return np.stack([value, indicator], axis=1)


def kind_rows(store: Store, kind: str, want: Sequence[str], where: str) -> np.ndarray:
    """The global rows of ``kind`` holding the ids ``want`` (in that order), from the store's ids alone."""
    ids, _ = store.load_ids(kind)
    wanted = set(want)
    row = {k: i for i, k in enumerate(ids) if k in wanted}
    missing = [k for k in want if k not in row]
    if missing:
        raise DataError(f"{store.root}/{kind}: no features for {len(missing)} {where} ids, e.g. {missing[:3]}; "
                        "rerun xel-precompute on these inputs")
    return np.asarray([row[k] for k in want], dtype=np.int64)


def read_kind(store: Store, kind: str, want: Sequence[str], where: str) -> torch.Tensor:
    """float32 ``[len(want), D]``: the features of the ids ``want`` of ``kind``, read row by row (HDF5 partial
    reads, :meth:`precompute.store.Store.read_rows`, as ``xel-nn`` reads candidates): only these rows enter
    memory, never the whole table."""
    return torch.from_numpy(store.read_rows(kind, kind_rows(store, kind, want, where)).astype(np.float32))


@dataclass(frozen=True)
class Moments:
    """Per-dimension count, sum and sum of squares (float64) of a set of feature rows: the standardization
    statistics of rows that are not all in memory (every KB row, read shard by shard)."""

    count: int
    total: np.ndarray
    squares: np.ndarray

    @classmethod
    def of(cls, x: torch.Tensor | np.ndarray) -> Moments:
        x = np.asarray(x, dtype=np.float64)
        return cls(len(x), x.sum(axis=0), np.square(x).sum(axis=0))

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.count + other.count, self.total + other.total, self.squares + other.squares)

    def centred(self) -> Moments:
        """The moments of the same rows minus their mean."""
        mean = self.total / max(self.count, 1)
        return Moments(self.count, np.zeros_like(mean), self.squares - self.count * np.square(mean))

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 mean and unbiased standard deviation, as ``torch.mean`` and ``torch.std`` of the rows."""
        mean = self.total / self.count
        var = (self.squares - self.count * np.square(mean)) / max(self.count - 1, 1)
        return (torch.from_numpy(mean.astype(np.float32)),
                torch.from_numpy(np.sqrt(np.maximum(var, 0.0)).astype(np.float32)))


def standardization(train: Mentions) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``(mean, std)`` of the name rows (the training mentions' ``ms`` and every KB row's ``es``) and of the
    context rows (``mc``, ``ec``), for :meth:`train.model.Ranker.set_statistics`; the KB's from its
    :class:`Moments`, so the KB rows need not be in memory."""
    kb = train.kb
    es, ec = kb.moments if kb.moments is not None else (Moments.of(kb.es), Moments.of(kb.ec))
    ms, mc = train.ms, train.mc
    if train.centre is not None:  # train.centre: every row minus its language's (its KB's) mean
        ms, mc = ms - train.centre[:, 0], mc - train.centre[:, 1]
        es, ec = es.centred(), ec.centred()
    return (Moments.of(ms) + es).mean_std(), (Moments.of(mc) + ec).mean_std()


def kind_moments(store: Store, kind: str) -> Moments:
    """:class:`Moments` of every row of ``kind``, one shard in memory at a time."""
    dim = store.dim
    out = Moments(0, np.zeros(dim), np.zeros(dim))
    for shard in store.iter_shards(kind):
        out = out + Moments.of(shard.features)
    return out


def load_kb(store: Store, ids: Collection[str] | None = None, *, popularity: bool,
            popularity_missing: str) -> KB:
    """The KB entries among ``ids`` (every entry when None; ids not in the KB are left out, for the caller to
    refuse), in KB order, with their ``es`` and ``ec`` features read by row: a training run asks for its
    mentions' candidates and golds, so memory holds those rows, not the KB. kb.jsonl is streamed: +P's median
    counts every entry, and the standardization :class:`Moments` cover every KB row (read a shard at a time)."""
    path = store.root / "inputs" / RECORD_FILES["kb"]
    if not path.is_file():
        raise DataError(f"{path}: missing or empty; the store has no KB to link to")
    wanted = None if ids is None else set(ids)
    records, links, positions = [], [], []
    for i, r in enumerate(store.iter_records("kb")):
        links.append(r.get("links"))
        if wanted is None or r["id"] in wanted:
            records.append(r)
            positions.append(i)
    if not links:
        raise DataError(f"{path}: missing or empty; the store has no KB to link to")
    kb_ids = [str(r["id"]) for r in records]
    if popularity:
        pop = popularity_features(links, popularity_missing, str(path))[np.asarray(positions, dtype=np.int64)]
    else:
        pop = np.zeros((len(records), 0), dtype=np.float32)
    rows = {kind: kind_rows(store, kind, kb_ids, "KB") for kind in ENTITY_KINDS}
    return kb_of_rows(store, records, rows, pop, moments=(kind_moments(store, "es"), kind_moments(store, "ec")))


def kb_of_rows(store: Store, records: Sequence[dict], rows: dict[str, np.ndarray], popularity: np.ndarray,
               moments: tuple[Moments, Moments] | None = None) -> KB:
    """A :class:`KB` of ``records`` whose ``es``/``ec`` features are the store rows ``rows[kind]`` (read here,
    nothing else), with ``popularity`` [len(records), P]."""
    ids = [str(r["id"]) for r in records]
    es, ec = (torch.from_numpy(store.read_rows(kind, rows[kind]).astype(np.float32)) for kind in ENTITY_KINDS)
    return KB(ids=ids, index={k: i for i, k in enumerate(ids)}, langs=[str(r["lang"]) for r in records],
              es=es, ec=ec, popularity=torch.from_numpy(np.asarray(popularity, dtype=np.float32)),
              names=tuple(str(r["name"]) for r in records), links=tuple(r.get("links") for r in records),
              moments=moments)


class KBRows:
    """Any entries of a KB, by id, for mentions whose candidates are not known in advance
    (:class:`link.linker.Linker`): ``table`` is the KB's :class:`~retrieval.kb_table.KBTable` (entry ``i`` is row
    ``i`` of the store's ``es``/``ec``, which ``retrieval.candidates.kb_table`` verified), and :meth:`kb` reads the
    ``es``/``ec`` rows of the entries asked for, nothing else."""

    def __init__(self, store: Store, table: KBTable, popularity: np.ndarray):
        self.store, self.table, self.popularity = store, table, popularity
        for kind in ENTITY_KINDS:
            if store.count(kind) != len(table):
                raise DataError(f"{store.root}/{kind}: {store.count(kind)} rows for {len(table)} KB entries; "
                                "rerun xel-precompute on these inputs")

    def __len__(self) -> int:
        return len(self.table)

    def kb(self, ids: Iterable[str]) -> KB:
        """The :class:`KB` of ``ids`` (each must be in the KB), in KB order."""
        wanted = set(ids)
        positions = [self.table.position(k) for k in wanted]
        missing = sorted(k for k, p in zip(wanted, positions) if p is None)
        if missing:
            raise DataError(f"{self.store.root}: KB ids {missing[:3]} are not in inputs/kb.jsonl")
        pos = np.asarray(sorted(positions), dtype=np.int64)
        return kb_of_rows(self.store, [self.table.record(int(i)) for i in pos], {kind: pos for kind in ENTITY_KINDS},
                          self.popularity[pos])


def resolve_candidates(
    store: Store, records: list[dict], candidates: str | None
) -> tuple[dict[str, list[tuple[str, str]]], str]:
    """``(kb id, source)`` candidates per mention id, best first, and where they came from (see the module
    docstring)."""
    path = Path(candidates) if candidates else store.root / "candidates.jsonl"
    if candidates and not path.is_file():
        raise DataError(f"--candidates {candidates}: no such file")
    if path.is_file():
        return {mid: [(k, src) for k, _, src in c] for mid, c in read_candidates(path).items()}, str(path)
    if records and all(r.get("candidates") is not None for r in records):
        return ({str(r["id"]): [(str(k), "given") for k in r["candidates"]] for r in records},
                "mentions.jsonl 'candidates'")
    raise DataError(
        f"{path}: no candidates file, and the mentions in {store.root}/inputs/mentions.jsonl have no "
        "'candidates' field; run `xel-nn candidates` to write it, or pass --candidates FILE"
    )


def load_mentions(
    store: Store, *, langs: tuple[str, ...], candidates: str | None, max_candidates: int,
    popularity: bool = False, popularity_missing: str = "error", names: bool = False,
) -> Mentions:
    """The store's mentions in ``langs`` (all when empty) with their candidates, in input order, over the KB of
    their first ``max_candidates`` candidates and golds (:func:`load_kb`: those rows only, not the whole KB);
    with ``names``, their ``mn`` rows too (the ``names`` pair features)."""
    records = store.records("mentions")
    if not records:
        raise DataError(f"{store.root}/inputs/mentions.jsonl: missing or empty; the store has no mentions")
    present = sorted({str(r["lang"]) for r in records})
    unknown = [x for x in langs if x not in present]
    if unknown:
        raise DataError(f"language(s) {unknown} have no mentions in {store.root}; it holds {present}")
    records = [r for r in records if not langs or r["lang"] in langs]
    cand_map, where = resolve_candidates(store, records, candidates)
    ids = [str(r["id"]) for r in records]
    without = sum(1 for m in ids if m not in cand_map)
    if without:
        log.warning("%d of %d mentions have no entry in %s: they get no candidates and are predicted NIL",
                    without, len(ids), where)
    m, k = len(ids), max(1, min(max_candidates, max((len(cand_map.get(i, [])) for i in ids), default=1)))
    wanted = {c for i in ids for c, _ in cand_map.get(i, [])[:k]}
    wanted.update(str(r["gold"]) for r in records if r.get("gold") is not None)
    kb = load_kb(store, wanted, popularity=popularity, popularity_missing=popularity_missing)
    cand = np.zeros((m, k), dtype=np.int64)
    mask = np.zeros((m, k), dtype=bool)
    gold_pos = np.full(m, -1, dtype=np.int64)
    gold_kb = np.full(m, -1, dtype=np.int64)
    source = np.zeros((m, k), dtype=np.int8)
    for row, (mid, rec) in enumerate(zip(ids, records)):
        pairs = cand_map.get(mid, [])[:k]
        cands = [c for c, _ in pairs]
        source[row, : len(pairs)] = [CANDIDATE_SOURCES.index(src) for _, src in pairs]
        bad = [c for c in cands if c not in kb.index]
        if bad:
            raise DataError(f"{where}: mention {mid!r} has candidate {bad[0]!r}, which is not in "
                            f"{store.root}/inputs/kb.jsonl; regenerate the candidates against this KB")
        cand[row, : len(cands)] = [kb.index[c] for c in cands]
        mask[row, : len(cands)] = True
        gold = rec.get("gold")
        if gold is not None and gold in kb.index:
            gold_kb[row] = kb.index[gold]
            if gold in cands:
                gold_pos[row] = cands.index(gold)
    log.info("%s: %d mentions, candidates from %s (K=%d), gold among candidates for %d",
             store.root, m, where, k, int((gold_pos >= 0).sum()))
    return Mentions(
        kb=kb, ids=ids, langs=[str(r["lang"]) for r in records], types=[r.get("type") for r in records],
        golds=[r.get("gold") for r in records],
        ms=read_kind(store, "ms", ids, "mention"), mc=read_kind(store, "mc", ids, "mention"),
        cand=torch.from_numpy(cand), cand_mask=torch.from_numpy(mask),
        gold_pos=torch.from_numpy(gold_pos), gold_kb=torch.from_numpy(gold_kb),
        docs=[document_of(r) for r in records],
        surfaces=[str(r["sentence"])[int(r["start"]):int(r["end"])] for r in records],
        cand_source=torch.from_numpy(source),
        mn=read_kind(store, "mn", ids, "mention") if names else None,
    )


def check_stores(train: Store, other: Store, flag: str = "--eval-features") -> None:
    """Refuse a store (``flag``: the trainer's evaluation store, or the KB a linker links against) built with
    another encoder than the training store."""
    try:
        train.check_same_encoder(other)
    except StoreError as e:
        raise DataError(f"{flag}: {e}; re-encode it with the training store's encoder") from e
    if train.dim != other.dim:
        raise DataError(f"{flag} {other.root}: dim {other.dim}, the training store has {train.dim}")
