"""Load a feature store into memory for ``xel-train``: KB and mention features as tensors, candidates as [M, K].

Features are read once through :mod:`precompute.store` (float16 on disk, float32 tensors here). Candidate
lists become a padded index tensor ``cand`` [M, K] into the KB rows plus a boolean ``cand_mask``; the gold's
position among them is ``gold_pos`` (-1 when the gold is NIL or not among the candidates: such mentions are
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from precompute.store import Store, StoreError
from retrieval.files import CANDIDATE_SOURCES, read_candidates
from retrieval.splits import document_of

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


def _load_kind(store: Store, kind: str, want: list[str], where: str) -> torch.Tensor:
    ids, feats, _ = store.load(kind)
    if ids == want:
        return torch.from_numpy(feats.astype(np.float32))
    row = {k: i for i, k in enumerate(ids)}
    missing = [k for k in want if k not in row]
    if missing:
        raise DataError(f"{store.root}/{kind}: no features for {len(missing)} {where} ids, e.g. {missing[:3]}; "
                        "rerun xel-precompute on these inputs")
    return torch.from_numpy(feats[[row[k] for k in want]].astype(np.float32))


def load_kb(store: Store, *, popularity: bool, popularity_missing: str) -> KB:
    records = store.records("kb")
    if not records:
        raise DataError(f"{store.root}/inputs/kb.jsonl: missing or empty; the store has no KB to link to")
    ids = [str(r["id"]) for r in records]
    es = _load_kind(store, "es", ids, "KB")
    ec = _load_kind(store, "ec", ids, "KB")
    if popularity:
        pop = torch.from_numpy(popularity_features(
            [r.get("links") for r in records], popularity_missing, f"{store.root}/inputs/kb.jsonl"))
    else:
        pop = torch.zeros((len(ids), 0))
    return KB(ids=ids, index={k: i for i, k in enumerate(ids)}, langs=[str(r["lang"]) for r in records],
              es=es, ec=ec, popularity=pop, names=tuple(str(r["name"]) for r in records),
              links=tuple(r.get("links") for r in records))


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
    store: Store, kb: KB, *, langs: tuple[str, ...], candidates: str | None, max_candidates: int
) -> Mentions:
    """The store's mentions in ``langs`` (all when empty) with their candidates, in input order."""
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
        ms=_load_kind(store, "ms", ids, "mention"), mc=_load_kind(store, "mc", ids, "mention"),
        cand=torch.from_numpy(cand), cand_mask=torch.from_numpy(mask),
        gold_pos=torch.from_numpy(gold_pos), gold_kb=torch.from_numpy(gold_kb),
        docs=[document_of(r) for r in records],
        surfaces=[str(r["sentence"])[int(r["start"]):int(r["end"])] for r in records],
        cand_source=torch.from_numpy(source),
    )


def check_stores(train: Store, other: Store) -> None:
    """Refuse an evaluation store built with another encoder than the training store."""
    try:
        train.check_same_encoder(other)
    except StoreError as e:
        raise DataError(f"--eval-features: {e}; re-encode it with the training store's encoder") from e
    if train.dim != other.dim:
        raise DataError(f"--eval-features {other.root}: dim {other.dim}, the training store has {train.dim}")
