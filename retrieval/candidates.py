"""Candidate generation (alias prior + name match + dense retrieval) and recall@k: ``xel-nn candidates``.

Per mention, in the spirit of the paper's triage (§5, Appendix A):

* ``prior``: an alias prior ``P(e | normalised mention string)`` counted from the training mentions (those with
  a gold whose language is the train language), leave-one-out for a training mention itself so its own gold
  never earns it a candidate, plus exact and normalised name matches against the mention's KB;
* ``dense``: the top-k of the mention's ``ms`` against the ``es`` index of its KB (cosine);
* ``ngram``: the top ``max_ngram`` of the transliterated mention string against the KB names by character
  n-gram TF-IDF (:mod:`retrieval.ngram`), which finds names in another script or spelling;
* ``given``: the mention's own ``candidates`` list when the data has one (then it is the whole list).

``merge`` lists up to ``max_prior`` prior candidates first, then **every** one of the dense top-``k`` not yet
listed, then up to ``max_ngram`` n-gram candidates not yet listed: a merged list never loses a hit that dense
retrieval alone has at ``k`` (it is up to ``k + max_prior + max_ngram`` long). The gold is never injected.
Recall@k is reported per language and per source (prior, dense, ngram, merged).

The alias prior counts only mentions of ``train`` documents (:mod:`retrieval.splits`, with ``--dev-fraction`` and
``--test-fraction``, recorded in the run's ``config.json``; the trainer refuses to split with other fractions), so a
dev or test mention never sees its own document's gold links.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from xel.precompute.store import ENTITY_KINDS, StoreError
from xel.retrieval.files import Candidate
from xel.retrieval.kb_table import KBTable, Subset
from xel.retrieval.metrics import RECALL_KS, recall_table
from xel.retrieval.names import normalise_mention
from xel.retrieval.ngram import NgramIndex
from xel.retrieval.splits import DEV_FRACTION, TEST_FRACTION, document_of, split_of
from xel.retrieval.vectors import store_row_digests, unit_rows

log = logging.getLogger(__name__)

NAME_EXACT_SCORE = 1.0
NAME_NORMALISED_SCORE = 0.5


@dataclass(frozen=True)
class MentionRef:
    """What candidate generation needs of a mention record."""

    id: str
    lang: str
    surface: str
    gold: str | None
    given: tuple[str, ...] | None
    type: str | None = None
    split: str = "train"  # retrieval.splits bucket of the mention's document

    @classmethod
    def from_record(cls, record: dict, *, dev_fraction: float = DEV_FRACTION,
                    test_fraction: float = TEST_FRACTION) -> MentionRef:
        given = record.get("candidates")
        return cls(
            id=record["id"], lang=record["lang"], surface=record["sentence"][record["start"]:record["end"]],
            gold=record.get("gold"), given=tuple(given) if given is not None else None, type=record.get("type"),
            split=split_of(document_of(record), dev_fraction=dev_fraction, test_fraction=test_fraction),
        )


class AliasPrior:
    """Normalised mention string -> KB id counts from training mentions (language ``train_lang``, split
    ``train``), with leave-one-out lookups."""

    def __init__(self, mentions: Iterable[MentionRef], train_lang: str):
        self.train_lang = train_lang
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)
        self.training_ids: set[str] = set()
        for m in mentions:
            if m.lang == train_lang and m.gold is not None and m.split == "train":
                self.counts[normalise_mention(m.surface)][m.gold] += 1
                self.training_ids.add(m.id)
        log.info("alias prior: %d aliases from %d %r training mentions", len(self.counts), len(self.training_ids),
                 train_lang)

    def lookup(self, mention: MentionRef) -> list[tuple[str, float]]:
        """``[(kb id, P(e | alias))]`` best first; a training mention's own count is left out."""
        counts = Counter(self.counts.get(normalise_mention(mention.surface), {}))
        if mention.id in self.training_ids and mention.gold is not None:
            counts[mention.gold] -= 1
        counts = Counter({k: c for k, c in counts.items() if c > 0})
        total = sum(counts.values())
        return [(k, c / total) for k, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


class NameMatcher:
    """Exact and normalised name matches among the entries of a :class:`~retrieval.kb_table.KBTable` that
    ``in_scope`` marks (every entry when None); ties broken by ``links`` (popularity, null as 0), then id."""

    def __init__(self, table: KBTable, in_scope: np.ndarray | None = None):
        self.table = table
        self.in_scope = np.ones(len(table), dtype=bool) if in_scope is None else in_scope

    def __contains__(self, kb_id: object) -> bool:
        """Whether ``kb_id`` is an entry in scope."""
        p = self.table.position(kb_id) if isinstance(kb_id, str) else None
        return p is not None and bool(self.in_scope[p])

    def matches(self, surface: str) -> tuple[np.ndarray, np.ndarray]:
        """The KB positions in scope of the exact matches of ``surface``, and of its normalised matches that are
        not exact, each ranked (:meth:`retrieval.kb_table.KBTable.named`): array work, however many match."""
        exact = self.table.named(surface)
        exact = exact[self.in_scope[exact]]
        normalised = self.table.normalised_named(normalise_mention(surface))
        normalised = normalised[self.in_scope[normalised]]
        return exact, normalised[~np.isin(normalised, exact)]

    def lookup(self, surface: str, limit: int | None = None, keep: Iterable[str] = ()) -> list[tuple[str, float]]:
        """``[(kb id, score)]``: the exact matches, then the normalised ones; with ``limit``, the first ``limit``
        of them and any further one whose id is in ``keep``."""
        exact, normalised = self.matches(surface)
        positions = np.concatenate([exact, normalised])
        scores = np.repeat([NAME_EXACT_SCORE, NAME_NORMALISED_SCORE], [len(exact), len(normalised)])
        if limit is not None:
            kept = [p for p in map(self.table.position, keep) if p is not None]
            picked = (np.arange(len(positions)) < limit) | np.isin(positions, kept)
            positions, scores = positions[picked], scores[picked]
        ids = self.table.ids
        return [(ids[p], s) for p, s in zip(positions.tolist(), scores.tolist())]


def prior_candidates(mention: MentionRef, prior: AliasPrior, names: NameMatcher,
                     limit: int | None = None) -> list[tuple[str, float]]:
    """Alias-prior candidates among the entries ``names`` covers (the mention's KB), then name matches not
    already listed; score = prior + match. With ``limit``, the first ``limit`` of that list, read from the first
    ``limit`` name matches not among the prior's (and the prior's own matches), not from all of them."""
    scores: dict[str, float] = {}
    for k, p in prior.lookup(mention):
        if k in names:
            scores[k] = p
    for k, s in names.lookup(mention.surface, None if limit is None else limit + len(scores), keep=list(scores)):
        scores[k] = scores.get(k, 0.0) + s
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    return ranked if limit is None else ranked[:limit]


def merge(
    prior: Sequence[tuple[str, float]], dense: Sequence[tuple[str, float]], k: int, max_prior: int,
    ngram: Sequence[tuple[str, float]] = (), max_ngram: int = 0,
) -> list[Candidate]:
    """Up to ``max_prior`` prior candidates, every dense one of the top ``k`` not yet listed, then up to
    ``max_ngram`` n-gram ones not yet listed (see the module docstring)."""
    out: list[Candidate] = [(kb, s, "prior") for kb, s in prior[:max_prior]]
    seen = {kb for kb, _, _ in out}
    for source, items in (("dense", dense[:k]), ("ngram", ngram[:max_ngram])):
        for kb, s in items:
            if kb not in seen:
                out.append((kb, s, source))
                seen.add(kb)
    return out


def given_candidates(given: Sequence[str], mention_vec: np.ndarray, entity_vecs: dict[str, np.ndarray]
                     ) -> list[Candidate]:
    """The mention's own list, ordered by cosine (stable for ties); all of it is kept."""
    scored = [(kb, float(mention_vec @ entity_vecs[kb])) for kb in given]
    return [(kb, s, "given") for kb, s in sorted(scored, key=lambda kv: -kv[1])]


# ----------------------------------------------------------------------------------------------- pipeline


@dataclass
class MentionVectors:
    """Mention records joined to their unit query vectors, and the entity vectors of the index's kind (the store's
    entity rows are in KB order: row ``i`` is entry ``i`` of ``kb``)."""

    mentions: list[MentionRef]
    vectors: np.ndarray
    kb: KBTable
    store: Any
    kind: str
    cache: dict[str, np.ndarray] = field(default_factory=dict)

    def prefetch(self, kb_ids: Iterable[str]) -> None:
        """Read the unit vectors of ``kb_ids`` from the store in one batch of row reads: only the entities that
        are candidates of some mention enter memory, never the whole KB table."""
        wanted = sorted({kb for kb in kb_ids if kb not in self.cache})
        if not wanted:
            return
        rows = [self.kb.position(kb) for kb in wanted]
        unknown = [kb for kb, row in zip(wanted, rows) if row is None]
        if unknown:
            raise StoreError(f"{self.store.root}: KB id {unknown[0]!r} is not in inputs/kb.jsonl")
        vectors = unit_rows(self.store, self.kind, np.asarray(rows, dtype=np.int64))
        self.cache.update(zip(wanted, vectors))

    def entity(self, kb_id: str) -> np.ndarray:
        if kb_id not in self.cache:
            self.prefetch([kb_id])
        return self.cache[kb_id]


def check_entity_rows(store, index, kb: KBTable) -> None:
    """Refuse a store whose entity rows (``es`` and ``ec``) are not the KB's entries in ``kb.jsonl`` order, or an
    index whose entities are not the KB's (per label language, as a set), or (an index with row digests) whose row
    of an entity does not hold that entity's ``index.kind`` features: each index row's digest must be the store's
    row hash of its id in that kind, so swapped ids or an edited kind are refused. The ids are read a shard at a
    time, and the index's ids are looked up in ``kb``: the row digests are held as 8 bytes a row."""
    where = f"{store.root}/inputs/kb.jsonl"
    if not len(kb):
        raise StoreError(f"{where}: missing or empty; the store has no KB to link to")
    for kind in [k for k in ENTITY_KINDS if k in store.kinds]:
        row = 0
        for ids, _ in store.iter_ids(kind):
            for kb_id in ids:
                if row >= len(kb):
                    raise StoreError(f"{store.root}: {kind} has more rows than the {len(kb)} entries of {where}; "
                                     "rerun xel-precompute")
                if kb.ids[row] != kb_id:
                    raise StoreError(f"{store.root}: {kind} row {row} is {kb_id!r}, but entry {row} of {where} is "
                                     f"{kb.ids[row]!r}; rerun xel-precompute")
                row += 1
        if row != len(kb):
            raise StoreError(f"{store.root}: {row} {kind} rows for the {len(kb)} entries of {where}; "
                             "rerun xel-precompute")
    for lang, lang_index in index.langs.items():
        positions = np.fromiter((-1 if p is None else p for p in map(kb.position, lang_index.ids)), dtype=np.int64,
                                count=len(lang_index.ids))
        inside, in_lang = positions[positions >= 0], kb.lang_mask([lang])
        if (len(inside) != len(positions) or not in_lang[inside].all() or int(in_lang.sum()) != len(positions)
                or len(np.unique(inside)) != len(inside)):
            raise StoreError(f"index {index.root}: the store's KB {lang!r} entities differ from those indexed; "
                             "rebuild the index")
    check_row_digests(store, index, kb)


def _digest_array(digests: Iterable[str], count: int) -> np.ndarray:
    return np.fromiter((int(d[:16], 16) for d in digests), dtype=np.uint64, count=count)


def check_row_digests(store, index, kb: KBTable) -> None:
    """Refuse an index row whose recorded digest is not the store's digest of the same entity's ``index.kind`` row
    (see :func:`check_entity_rows`); a no-op for an index or a store without row digests."""
    missing = [k for k in index.kind.split("+") if k not in store.kinds]
    if missing:
        raise StoreError(f"index {index.root}: indexes feature kind {index.kind!r}, but store {store.root} has no "
                         f"{missing[0]!r} rows (it holds {store.kinds}); rebuild the index")
    langs = [lang for lang, lang_index in sorted(index.langs.items()) if lang_index.ids and lang_index.digests]
    if not langs:
        return
    digests = store_row_digests(store, index.kind)
    if digests is None:
        return
    theirs = _digest_array(digests, len(digests))
    del digests
    for lang in langs:
        lang_index = index.langs[lang]
        positions = np.fromiter(map(kb.position, lang_index.ids), dtype=np.int64, count=len(lang_index.ids))
        wrong = np.flatnonzero(theirs[positions] != _digest_array(lang_index.digests, len(lang_index.ids)))
        if len(wrong):
            row = int(wrong[0])
            raise StoreError(
                f"index {index.root}: KB {lang!r} row {row} is {lang_index.ids[row]!r}, but its row digest is not "
                f"that of the store's {index.kind!r} row of {lang_index.ids[row]!r} ({len(wrong)} such rows): the "
                f"index's ids or kind were changed after the build, or store {store.root} encodes these entities "
                "otherwise; rebuild the index"
            )


def kb_table(store, index) -> KBTable:
    """The :class:`KBTable` of ``store``'s KB, checked against its entity rows and ``index``
    (:func:`check_entity_rows`): what candidate generation, the nn baseline and the linker read the KB from."""
    kb = KBTable.of_store(store)
    check_entity_rows(store, index, kb)
    return kb


def load_mention_vectors(store, index, kb: KBTable, langs: Sequence[str] | None = None) -> MentionVectors:
    """The store's mentions (optionally only ``langs``) with query vectors; ``kb`` is the store's checked KB table
    (:func:`kb_table`)."""
    records = store.records("mentions")
    if not records:
        raise StoreError(f"{store.root}: no inputs/mentions.jsonl; the store holds no mention records")
    if langs:
        records = [r for r in records if r["lang"] in set(langs)]
    mids, _ = store.load_ids(index.query_kind.split("+")[0])
    row = {m: i for i, m in enumerate(mids)}
    missing = [r["id"] for r in records if r["id"] not in row]
    if missing:
        raise StoreError(f"{store.root}: mention {missing[0]!r} has no {index.query_kind!r} features")
    mvecs = unit_rows(store, index.query_kind, np.asarray([row[r["id"]] for r in records], dtype=np.int64))
    return MentionVectors([MentionRef.from_record(r) for r in records], mvecs, kb, store, index.kind)


@dataclass
class CandidateSet:
    data: MentionVectors
    prior: list[list[tuple[str, float]]]
    dense: list[list[tuple[str, float]]]
    ngram: list[list[tuple[str, float]]]
    merged: list[list[Candidate]]

    @property
    def mentions(self) -> list[MentionRef]:
        return self.data.mentions

    def recall(self, ks: Sequence[int] = RECALL_KS) -> dict[str, dict[str, dict[str, float]]]:
        per_source = {
            "prior": [[kb for kb, _ in c] for c in self.prior],
            "dense": [[kb for kb, _ in c] for c in self.dense],
            "ngram": [[kb for kb, _ in c] for c in self.ngram],
            "merged": [[kb for kb, _, _ in c] for c in self.merged],
        }
        return recall_table(per_source, [m.gold for m in self.mentions], [m.lang for m in self.mentions], ks)


class CandidateGenerator:
    """The prior, name-match, dense and n-gram sources over one index's KB, built once and asked for any mentions:
    ``xel-nn candidates`` asks it for a store's mentions, :class:`link.linker.Linker` for new ones. The KB is a
    :class:`~retrieval.kb_table.KBTable` (packed arrays, not a dict per entry); each KB scope's name matcher and
    n-gram index is built on first use and kept."""

    def __init__(
        self, index, kb: KBTable, prior: AliasPrior, *, k: int = 30, max_prior: int = 10,
        kb_lang: str | None = None, dense_k: int = max(RECALL_KS), max_ngram: int = 10,
    ):
        self.index, self.kb, self.prior = index, kb, prior
        self.k, self.max_prior, self.kb_lang, self.dense_k, self.max_ngram = k, max_prior, kb_lang, dense_k, max_ngram
        self._scopes: dict[str, tuple[NameMatcher, NgramIndex]] = {}

    def scope(self, scope: str) -> tuple[NameMatcher, NgramIndex]:
        """Name matcher and n-gram index of the KB entries a scope of ``index.kb_lang_for`` covers."""
        if scope not in self._scopes:
            in_scope = self.kb.lang_mask(self.index.scope_langs(scope))
            positions = np.flatnonzero(in_scope)
            log.info("KB scope %r: indexing the character n-grams of %s names", scope, f"{len(positions):,}")
            langs = [self.kb.lang_names[c] for c in self.kb.lang_codes[positions].tolist()]
            self._scopes[scope] = (NameMatcher(self.kb, in_scope),
                                   NgramIndex(Subset(self.kb.ids, positions), Subset(self.kb.names, positions), langs))
        return self._scopes[scope]

    def sources(
        self, mentions: Sequence[MentionRef], vectors: np.ndarray, prior_limit: int | None = None,
    ) -> tuple[list[list[tuple[str, float]]], list[list[tuple[str, float]]], list[list[tuple[str, float]]]]:
        """Per mention (with its unit query vector): its prior (the first ``prior_limit``; all when None), dense
        and n-gram candidates, each best first."""
        depth = max(self.k, self.dense_k)
        kb_langs, dense = self.index.search_kbs(vectors, [m.lang for m in mentions], depth, self.kb_lang)
        ngram: list[list[tuple[str, float]]] = [[] for _ in mentions]
        for scope in sorted(set(kb_langs)):
            rows = [i for i, kl in enumerate(kb_langs) if kl == scope]
            found = self.scope(scope)[1].search([mentions[i].surface for i in rows], depth,
                                                [mentions[i].lang for i in rows])
            for i, hits in zip(rows, found):
                ngram[i] = hits
        priors = []
        for m, scope in zip(mentions, kb_langs):
            priors.append(prior_candidates(m, self.prior, self.scope(scope)[0], prior_limit))
        return priors, dense, ngram

    def link_candidates(self, mentions: Sequence[MentionRef], vectors: np.ndarray, limit: int) -> list[list[Candidate]]:
        """Per mention, the first ``limit`` of its merged candidates (what :class:`link.linker.Linker` scores): of
        its prior candidates only the ``max_prior`` that merging keeps are listed, however many entries share its
        name."""
        priors, dense, ngram = self.sources(mentions, vectors, prior_limit=self.max_prior)
        return [self.merged(p, d, g)[:limit] for p, d, g in zip(priors, dense, ngram)]

    def merged(self, prior: Sequence[tuple[str, float]], dense: Sequence[tuple[str, float]],
               ngram: Sequence[tuple[str, float]]) -> list[Candidate]:
        return merge(prior, dense, self.k, self.max_prior, ngram, self.max_ngram)


def generate_candidates(
    store, index, *, k: int = 30, max_prior: int = 10, train_lang: str = "en", kb_lang: str | None = None,
    langs: Sequence[str] | None = None, dense_k: int = max(RECALL_KS), max_ngram: int = 10,
    kb: KBTable | None = None, dev_fraction: float = DEV_FRACTION, test_fraction: float = TEST_FRACTION,
) -> CandidateSet:
    """Prior, dense and merged candidates for every mention of ``store`` (see the module docstring); ``kb`` is
    the store's :func:`kb_table` when the caller has read it."""
    kb = kb if kb is not None else kb_table(store, index)
    data = load_mention_vectors(store, index, kb, langs)
    generator = candidate_generator(store, index, kb=kb, k=k, max_prior=max_prior, train_lang=train_lang,
                                    kb_lang=kb_lang, dense_k=dense_k, max_ngram=max_ngram,
                                    dev_fraction=dev_fraction, test_fraction=test_fraction)
    data.prefetch(kb for m in data.mentions if m.given is not None for kb in m.given)
    priors, dense, ngram = generator.sources(data.mentions, data.vectors)
    merged = []
    for i, m in enumerate(data.mentions):
        if m.given is not None:
            merged.append(given_candidates(m.given, data.vectors[i], {kb: data.entity(kb) for kb in m.given}))
        else:
            merged.append(generator.merged(priors[i], dense[i], ngram[i]))
    return CandidateSet(data, priors, dense, ngram, merged)


def candidate_generator(store, index, *, train_lang: str = "en", kb: KBTable | None = None,
                        dev_fraction: float = DEV_FRACTION, test_fraction: float = TEST_FRACTION,
                        **settings: Any) -> CandidateGenerator:
    """A :class:`CandidateGenerator` over ``store``'s KB (``kb``, or its :func:`kb_table` read here) whose alias
    prior counts the store's ``train_lang`` mentions of the training split (:func:`retrieval.splits.split_of` with
    ``dev_fraction`` and ``test_fraction``); ``settings`` are its keyword arguments (``k``, ``max_prior``, ...)."""
    refs = [MentionRef.from_record(r, dev_fraction=dev_fraction, test_fraction=test_fraction)
            for r in store.records("mentions")]
    prior = AliasPrior(refs, train_lang)
    return CandidateGenerator(index, kb if kb is not None else kb_table(store, index), prior, **settings)
