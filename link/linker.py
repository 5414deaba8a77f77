"""Link new mentions with a trained run: :class:`Linker` (``xel-link``, ``xel-serve`` and the Python API).

``Linker.load(run_dir)`` reads the run's ``config.json``, ``model.safetensors`` and tuned NIL threshold
(``metrics.json``); the config names the training store (``features``) and the candidates file, from which the
encoder (the store manifest), the KB, the FAISS index (``<run root>/index`` as ``xel-experiment`` lays it out, or
``index_dir=``) and the candidate settings (the ``config.json`` beside the candidates file) are found and checked.

``Linker.load(run_dir, features=STORE)`` links against the KB of another store (a trained run is KB-independent:
the paper's zero-shot setting, an English training KB and a Russian one at test), exactly as the trainer's
``--eval-features STORE`` evaluates the run on it: that store's encoder signature must be the run's; its index
is ``<store>/../index`` (or ``index_dir=``); its candidate settings those of the ``xel-nn candidates`` run that
wrote the trainer's candidates for it (:func:`kb_candidates_config`). What the run learned from its training KB
is recomputed for the new KB or carried over by KB id, as the trainer's evaluation does, and :class:`KBSource`
says which (a log line, and a ``kb`` field on every Links file line):

* the candidates' alias prior counts the new store's own ``train_lang`` training mentions (``xel-nn
  candidates`` on that store did the same): ``recomputed``, or ``off`` when it has none (name matches only);
* the pair features' alias prior (residual scorer) is the run's, counted over its training split and keyed by
  KB id: it carries over where the KBs share ids (Wikidata ids) and is 0 for every other candidate, as in the
  trainer's evaluation: ``kept`` (N of its entities in the new KB), ``off`` (none), ``none`` (not used);
* +P from the KB's ``links`` counts is computed over the new KB's ``kb.jsonl``: ``recomputed``; +P from the
  training mentions' gold links is the run's counts, by KB id: ``kept``, or ``off`` when no counted entity is
  in the new KB (every entry gets the missing flag); ``none`` for a run without +P. (``kept``: the median is over
  the new KB's counted entries; the trainer's evaluation takes it over those among its test candidates, the
  same where these hold every counted entity.)

Each item goes through the code paths of the rest of xel, none re-implemented here: the store's own encoder
(:class:`precompute.encoding.TextEncoder`, ``ms``, ``mc`` and, for a run that reads the ``names`` pair
features, ``mn`` items as precompute builds them), the candidate
sources of ``xel-nn candidates`` (:class:`retrieval.candidates.CandidateGenerator`), the trainer's splits and alias
prior for the pair features (:func:`train.splits.load_splits`, :func:`train.pairs.pair_features`), its scoring,
tie-breaking and NIL rule (:func:`train.evaluate.rank`, :func:`train.evaluate.predict`).
``Linker.nn(index_dir)`` is the same API with no model: cos(ms, es) over the same candidates (the nn baseline).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from xel.link.items import Item, LinkError, check_item
from xel.link.run_files import (
    candidate_settings,
    kb_candidates_config,
    kb_index_dir,
    resolve_run_config,
    run_nil_rule,
    run_popularity,
    same_path,
)
from xel.link.watch import FileWatch
from xel.precompute.encoding import TextEncoder
from xel.precompute.items import context_item, entity_item, mention_item
from xel.precompute.settings import EncoderSettings
from xel.precompute.store import Store, StoreError, open_store
from xel.retrieval.candidates import AliasPrior, CandidateGenerator, MentionRef, candidate_generator, kb_table
from xel.retrieval.files import CANDIDATE_SOURCES
from xel.retrieval.index import EntityIndex
from xel.retrieval.index_files import open_index_and_store
from xel.retrieval.kb_table import KBTable
from xel.retrieval.vectors import unit_concat
from xel.train import nil as train_nil
from xel.train.centre import language_means, store_kb_mean, with_centres
from xel.train.checkpoint import CHECKPOINT, load_checkpoint
from xel.train.config import TrainConfig
from xel.train.data import DataError, KBRows, Mentions, check_stores
from xel.train.evaluate import Ranked, nn_scores, pick_best, predict, rank, with_nil_score
from xel.train.model import Ranker
from xel.train.nil import NilRule
from xel.train.pairs import pair_features, pair_groups, training_prior
from xel.train.splits import Loaded, load_splits, training_link_counts

log = logging.getLogger(__name__)
# a batch's mention rows (Linker.encode): ms, mc, and mn (None unless the run reads the names pair features)
Encoded = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]

@dataclass(frozen=True)
class Candidate:
    id: str
    name: str
    score: float
    source: str  # retrieval.files.CANDIDATE_SOURCES: prior, dense, ngram


@dataclass(frozen=True)
class Link:
    """A linked item: the ``k`` best candidates by the linker's score, best first, and the prediction (a KB id,
    or None for NIL: no candidate, or the NIL score below the threshold)."""

    id: str
    pred: str | None
    name: str | None
    score: float
    candidates: list[Candidate]
    kb: KBSource | None = None  # the KB linked against, when it is not the run's training KB

    def to_json(self) -> dict[str, Any]:
        """A line of the Links file: the predictions contract with entity names, and each candidate's source;
        against another KB than the run's, ``kb`` says which and what of the run's training KB carried over."""
        line = {"id": self.id, "pred": self.pred, "name": self.name, "score": round(self.score, 6),
                "candidates": [[c.id, round(c.score, 6), c.name] for c in self.candidates],
                "sources": [c.source for c in self.candidates]}
        return line if self.kb is None else {**line, "kb": self.kb.to_json()}


@dataclass(frozen=True)
class KBSource:
    """The KB a linker links against when it is not the run's training KB, and how each thing the run learned
    from its training KB is had for it (see the module docstring): ``recomputed`` for this KB, ``kept`` (the
    run's, by KB id), ``off`` (nothing carries over) or ``none`` (the run does not use it)."""

    features: str  # the store whose es/ec rows are the KB
    candidate_prior: str
    pair_prior: str
    popularity: str

    def to_json(self) -> dict[str, str]:
        return {"features": self.features, "candidate_prior": self.candidate_prior, "pair_prior": self.pair_prior,
                "popularity": self.popularity}


def kb_source(store: str, generator: CandidateGenerator, table: KBTable, pair_prior: AliasPrior | None,
              cfg: TrainConfig, loaded: Loaded) -> KBSource:
    """What of the run's training KB carries over to the KB of ``store`` (see the module docstring), logged."""
    prior = generator.prior
    candidate_prior = "recomputed" if prior.training_ids else "off"
    shared_prior = 0
    if pair_prior is not None:
        shared_prior = sum(table.position(k) is not None for k in {k for c in pair_prior.counts.values() for k in c})
    pair = "none" if pair_prior is None else "kept" if shared_prior else "off"
    counts = training_link_counts(loaded.splits) if cfg.popularity_source == "mentions" else {}
    shared_counts = sum(table.position(k) is not None for k in counts)
    popularity = ("none" if not cfg.popularity else "recomputed" if cfg.popularity_source == "links"
                  else "kept" if shared_counts else "off")
    log.info(
        "linking against the KB of %s (%d entries), not the run's training KB %s: candidate alias prior %s (%d "
        "%r training mentions of this store); pair alias prior %s (the run's training prior, by KB id: %d of its "
        "entities are in this KB); +P %s (%s)", store, len(table), cfg.features, candidate_prior,
        len(prior.training_ids), prior.train_lang, pair, shared_prior, popularity,
        "not used" if not cfg.popularity else "this KB's kb.jsonl links" if cfg.popularity_source == "links"
        else f"the run's training-mention link counts, by KB id: {shared_counts} of its entities are in this KB")
    return KBSource(store, candidate_prior, pair, popularity)


class Linker:
    """See the module docstring. Not thread-safe: one :meth:`link` at a time (``xel-serve`` serialises them)."""

    def __init__(
        self, *, store: Store, index: EntityIndex, encoder_settings: EncoderSettings, kb: KBRows,
        generator: CandidateGenerator, model: Ranker | None, pair_prior: Any, groups: Sequence[str],
        max_candidates: int, nil_rule: NilRule, kb_source: KBSource | None = None, run_dir: Path | None = None,
    ):
        self.store, self.index, self.kb, self.generator = store, index, kb, generator
        # the store's encoder settings (EncoderSettings.from_manifest): the encoder here, and precompute's actors
        # when link.batch encodes with them
        self.encoder_settings = encoder_settings
        self.encoder = TextEncoder.load(encoder_settings)
        self.model, self.pair_prior, self.groups = model, pair_prior, list(groups)
        self.max_candidates, self.nil_rule = max_candidates, nil_rule
        self.kb_source = kb_source  # None: the run's training KB
        self.run_dir = run_dir  # None: Linker.nn, no run (and no mention detector)
        self._spotters: dict[str, Any] = {}
        self._uncalibrated_warned: set[str] = set()
        self._uncentred_warned: set[str] = set()
        # a centring model (train.centre): the run's language means (more are added from unlabelled mentions by
        # centre_languages) and the mean es/ec of the KB linked against
        centring = model is not None and model.spec.centre
        self.language_means: dict[str, torch.Tensor] | None = model.saved_language_means() if centring else None
        self.kb_centre = store_kb_mean(store) if centring else None
        # the store's and index's files as loaded, checked before each batch (link.watch)
        self.watch = FileWatch.of(store, index.root, index.manifest)

    @property
    def threshold(self) -> float:
        return self.nil_rule.threshold

    @property
    def nil_score(self) -> str:
        return self.nil_rule.score

    @classmethod
    def load(cls, run_dir: str | Path, index_dir: str | Path | None = None, threshold: float | None = None,
             device: str = "auto", features: str | Path | None = None) -> Linker:
        """The linker of a trained run directory (one seed's: ``config.json``, ``model.safetensors``), linking
        against the KB of the store ``features`` (default: the run's training store; see the module docstring)."""
        run = Path(run_dir)
        if not (run / CHECKPOINT).is_file():
            seeds = sorted(p.name for p in run.glob("seed-*") if (p / CHECKPOINT).is_file())
            hint = f"; pick one seed's directory: {', '.join(str(run / s) for s in seeds)}" if seeds else ""
            raise LinkError(f"{run}: no {CHECKPOINT}; --model is a run directory of xel-train{hint}")
        cfg = resolve_run_config(run)
        if not cfg.candidates:
            raise LinkError(f"{run}/config.json: no 'candidates' file; the linker needs the run's candidate settings")
        kb_store = cfg.features if features is None else str(features)
        own = same_path(kb_store, cfg.features)
        if not own:
            try:  # the run's encoder: its training store's signature
                check_stores(open_store(cfg.features), open_store(kb_store), f"--features {kb_store}")
            except DataError as e:
                raise LinkError(f"{e} (the run {run} was trained on {cfg.features})") from None
        index_dir = kb_index_dir(kb_store, own, index_dir)
        index, store = open_index_and_store(index_dir, kb_store)  # refuses another encoder signature
        rule = run_nil_rule(run, cfg)
        if threshold is not None:
            rule = replace(rule, threshold=threshold)
        loaded = load_splits(cfg)
        train = loaded.splits.train
        table = kb_table(store, index)
        settings, search = candidate_settings(kb_candidates_config(cfg, kb_store, own))
        if search.get("search_params") and Path(search["index"]).resolve() != index_dir.resolve():
            log.warning("%s: the candidates were searched in %s with %r; this index is searched with its defaults",
                        index_dir, search["index"], search["search_params"])
        else:
            index.set_search_params(search.get("search_params"))
        generator = candidate_generator(store, index, kb=table, **settings)
        model = load_checkpoint(run / CHECKPOINT)
        pairs = cfg.scorer_kind.pair_features
        kb = KBRows(store, table, run_popularity(cfg, loaded, table))
        pair_prior = training_prior(train) if pairs else None
        log.info("linker %s: %s scorer, %d KB entries, NIL %s >= %g, calibrated languages %s", run, cfg.scorer,
                 len(kb), rule.score, rule.threshold, sorted(rule.shifts) or "none")
        return cls(
            store=store, index=index, encoder_settings=EncoderSettings.from_manifest(store.manifest, device=device),
            kb=kb, generator=generator, model=model,
            pair_prior=pair_prior, groups=pair_groups(cfg) if pairs else [],
            max_candidates=cfg.max_candidates, nil_rule=rule,
            kb_source=None if own else kb_source(kb_store, generator, table, pair_prior, cfg, loaded), run_dir=run,
        )

    @classmethod
    def nn(cls, index_dir: str | Path, features: str | Path | None = None, threshold: float = -1.0,
           k: int = 30, max_prior: int = 10, train_lang: str = "en", max_candidates: int = 50,
           device: str = "auto", nil_score: str = "cosine") -> Linker:
        """The nn baseline with the same API: cos(ms, es) over ``xel-nn candidates``' candidates, NIL where the
        ``nil_score`` (:func:`train.evaluate.with_nil_score`) is below ``threshold``."""
        index, store = open_index_and_store(index_dir, features)
        table = kb_table(store, index)
        generator = candidate_generator(store, index, kb=table, k=k, max_prior=max_prior, train_lang=train_lang)
        return cls(store=store, index=index,
                   encoder_settings=EncoderSettings.from_manifest(store.manifest, device=device),
                   kb=KBRows(store, table, np.zeros((len(table), 0), np.float32)),
                   generator=generator,
                   model=None, pair_prior=None, groups=[], max_candidates=max_candidates,
                   nil_rule=NilRule(nil_score, threshold))

    def files_changed(self) -> str | None:
        """What changed on disk among the files this linker reads after loading (:mod:`link.watch`), or None."""
        return self.watch.changed()

    def items(self, records: Sequence[Any]) -> list[Item]:
        return [r if isinstance(r, Item) else check_item(r, f"items[{i}]", f"item-{i}")
                for i, r in enumerate(records)]

    @property
    def mention_kinds(self) -> tuple[str, ...]:
        """The store kinds :meth:`encode` computes for a mention: ``ms`` and ``mc``, and ``mn`` (the mention
        string alone) when the run reads the ``names`` pair features."""
        return ("ms", "mc", "mn") if "names" in self.groups else ("ms", "mc")

    def encode(self, items: Sequence[Item]) -> Encoded:
        """``(ms, mc, mn)`` float16 of the items, encoded in this process exactly as precompute encodes mentions;
        ``mn`` is None unless the run reads it (:attr:`mention_kinds`)."""
        ms = self.encoder.encode([mention_item(it.id, it.lang, it.sentence, it.start, it.end) for it in items])
        mc = self.encoder.encode([context_item(it.id, it.lang, it.context or it.sentence, it.sentence, it.start,
                                               it.end) for it in items])
        mn = None
        if "mn" in self.mention_kinds:
            mn = self.encoder.encode([entity_item(it.id, it.lang, it.surface) for it in items])
        return ms, mc, mn

    def mentions(self, items: Sequence[Item], encoded: Encoded | None = None) -> Mentions:
        """The items as the trainer's :class:`Mentions`: encoded (or their ``(ms, mc, mn)`` rows as given, e.g.
        read from a store precompute wrote), with their candidates and pair features. Raises
        :class:`link.watch.StoreChanged` when the store or index was rewritten since the linker loaded them."""
        self.watch.check()
        if encoded is None:
            encoded = self.encode(items)
        ms, mc, mn = encoded
        if len(ms) != len(items) or len(mc) != len(items):
            raise ValueError(f"{len(items)} items but {len(ms)} ms and {len(mc)} mc rows")
        if "mn" in self.mention_kinds and (mn is None or len(mn) != len(items)):
            raise ValueError(f"{len(items)} items but {'no' if mn is None else len(mn)} mn rows (the run reads "
                             "the names pair features)")
        vectors = unit_concat([{"ms": ms, "mc": mc}[part] for part in self.index.query_kind.split("+")])
        refs = [MentionRef(id=it.id, lang=it.lang, surface=it.surface, gold=None, given=None) for it in items]
        lists = self.generator.link_candidates(refs, vectors, self.max_candidates)
        unknown = [c for row in lists for c, _, _ in row if c not in self.kb.table]
        if unknown:
            raise StoreError(f"{self.index.root}: candidate {unknown[0]!r} is not in {self.store.root}'s KB; "
                             "rebuild the index from this store")
        kb = self.kb.kb(c for row in lists for c, _, _ in row)  # the rows this batch scores, read from the store
        m, k = len(items), max(1, max((len(row) for row in lists), default=1))
        cand = np.zeros((m, k), dtype=np.int64)
        mask = np.zeros((m, k), dtype=bool)
        source = np.zeros((m, k), dtype=np.int8)
        for i, row in enumerate(lists):
            cand[i, : len(row)] = [kb.index[c] for c, _, _ in row]
            mask[i, : len(row)] = True
            source[i, : len(row)] = [CANDIDATE_SOURCES.index(src) for _, _, src in row]
        none = torch.full((m,), -1, dtype=torch.long)
        mentions = Mentions(
            kb=kb, ids=[it.id for it in items], langs=[it.lang for it in items], types=[None] * m,
            golds=[None] * m, ms=torch.from_numpy(ms.astype(np.float32)), mc=torch.from_numpy(mc.astype(np.float32)),
            cand=torch.from_numpy(cand), cand_mask=torch.from_numpy(mask), gold_pos=none, gold_kb=none.clone(),
            surfaces=[it.surface for it in items], cand_source=torch.from_numpy(source),
            mn=None if mn is None else torch.from_numpy(mn.astype(np.float32)),
        )
        if self.pair_prior is not None:
            mentions = replace(mentions, pair=pair_features(mentions, self.pair_prior, self.groups))
        if self.language_means is not None:
            _, means = self.centre_languages(mentions)
            mentions = with_centres(mentions, means, self.kb_centre)
        return mentions

    def centre_languages(self, mentions: Mentions) -> tuple[list[str], dict[str, torch.Tensor]]:
        """Give every language of ``mentions`` that has no mean yet the mean ``ms``/``mc`` of its mentions here
        (unlabelled: a gold is never read), as the trainer centred each evaluated language by its mentions; kept
        for later calls. With fewer than ``train.nil.MIN_CALIBRATION_MENTIONS`` such mentions (a mean of a handful
        of mentions is mostly those mentions, and would centre them onto each other) the language is centred, for
        this call only, by the average of the run's language means, with a warning: :meth:`calibrate` with enough
        unlabelled mentions of it gives it its own. Returns the languages added and the means of this call."""
        assert self.language_means is not None
        added, means = [], dict(self.language_means)
        new = sorted(set(mentions.langs) - set(self.language_means))
        if not new:  # every call after the first: nothing to compute
            return added, means
        given = language_means([mentions])  # the trainer's computation, over the mentions given here
        for lang in new:
            count = mentions.langs.count(lang)
            need = train_nil.MIN_CALIBRATION_MENTIONS
            if count < need:
                means[lang] = torch.stack(list(self.language_means.values())).mean(dim=0)
                if lang not in self._uncentred_warned:
                    self._uncentred_warned.add(lang)
                    log.warning("language %r: the run has no mention mean for it (it centres each language; it has "
                                "%s) and a batch of %d %r mentions is too few to take one (%d needed): centred by "
                                "the average of the run's means until Linker.calibrate(records) is given %d or more",
                                lang, sorted(self.language_means), count, lang, need, need)
                continue
            self.language_means[lang] = means[lang] = given[lang]
            added.append(lang)
            log.info("language %r: centred by the mean of the %d mentions given (the run had none for it)", lang,
                     count)
        return added, means

    def ranked(self, mentions: Mentions) -> Ranked:
        """The candidates of ``mentions`` scored, the best picked, with the uncalibrated NIL score."""
        if self.model is None:
            return with_nil_score(pick_best(nn_scores(mentions), mentions), mentions, self.nil_score)
        return rank(self.model, mentions, nil_score=self.nil_score)

    def calibrate(self, records: Sequence[Any]) -> dict[str, float]:
        """Calibrate the NIL scores of the languages of ``records`` that the rule has no shift for, from these
        mentions (unlabelled: a ``gold`` is never read; :mod:`train.nil`), after centring the languages that have
        no mean on them (:meth:`centre_languages`); returns the rule's shifts."""
        items = self.items(records)
        if items:
            mentions = self.mentions(items)
            self.nil_rule = self.nil_rule.calibrated(self.ranked(mentions), mentions)
        return dict(self.nil_rule.shifts)

    def link(self, records: Sequence[Any], k: int = 10, threshold: float | None = None,
             encoded: Encoded | None = None) -> list[Link]:
        """Link ``records`` (dicts as in :func:`check_item`, or :class:`Item`); each :class:`Link` holds the top
        ``k`` candidates. ``encoded``: their ``(ms, mc, mn)`` rows when already encoded (``xel-link --actors``)."""
        items = self.items(records)
        if not items:
            return []
        mentions = self.mentions(items, encoded)
        ranked = self.nil_rule.apply(self.ranked(mentions), mentions)
        for lang in self.nil_rule.missing(mentions.langs):
            if lang not in self._uncalibrated_warned:
                self._uncalibrated_warned.add(lang)
                log.warning("NIL scores of language %r are not calibrated (the run saw no %r mentions); its NIL "
                            "decisions use the training language's threshold as is; Linker.calibrate(records) "
                            "calibrates it from unlabelled mentions", lang, lang)
        preds = predict(ranked, mentions, self.threshold if threshold is None else threshold)
        scores, cands, masks = ranked.scores.tolist(), mentions.cand.tolist(), mentions.cand_mask.tolist()
        sources = mentions.cand_source.tolist()
        links = []
        for i, it in enumerate(items):
            row = sorted(((s, c, src) for s, c, src, ok in zip(scores[i], cands[i], sources[i], masks[i]) if ok),
                         key=lambda x: -x[0])
            kb = mentions.kb
            top = [Candidate(kb.ids[c], kb.names[c], float(s), CANDIDATE_SOURCES[src]) for s, c, src in row[:k]]
            pred = preds[i]
            links.append(Link(it.id, pred, kb.names[kb.index[pred]] if pred is not None else None,
                              float(row[0][0]) if row else -1.0, top, self.kb_source))
        return links

    def spotter(self, kind: str = "tagger") -> Any:
        """What finds mentions in raw text for this linker (:func:`detect.documents.spotter_of`): ``tagger``, the
        run's trained detector (``RUN/detector/``, written by ``xel-detect``), or ``gazetteer``, the KB's names and
        the alias table; built once, on first use."""
        if kind not in self._spotters:
            from xel.detect.documents import spotter_of

            self._spotters[kind] = spotter_of(self, kind)
        return self._spotters[kind]

    def link_text(self, text: str, lang: str = "en", k: int = 10, threshold: float | None = None,
                  spotter: str = "tagger") -> list[dict[str, Any]]:
        """Every mention the ``spotter`` finds in ``text``, linked: the ``mentions`` of a documents-file output
        line (:mod:`detect.documents`), ``[]`` when there is none."""
        from xel.detect.documents import check_document, link_documents

        doc = check_document({"id": "text", "text": text, "lang": lang}, "link_text", "text")
        return link_documents(self, self.spotter(spotter), [doc], k=k, threshold=threshold)[0]["mentions"]
