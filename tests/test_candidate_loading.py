"""The trainer and the linker read only what they score: the mentions' rows and the KB rows of their candidates
and golds, never a whole table (``Store.load`` refused), and training on those rows gives the same model and
predictions as training with every KB row in memory.

    pytest tests/test_candidate_loading.py
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import xel.train.fit
from xel.precompute.store import Store, open_store
from xel.retrieval.files import read_candidates
from xel.train.config import TrainConfig
from xel.train.data import KB, Mentions, load_kb
from xel.train.evaluate import predict
from xel.train.fit import fit
from xel.train.prepare import Prepared, prepare
from xel.train.splits import Splits

from tests.train_fixtures import synthetic_store

FAST = dict(hs_sizes=(32,), hc_sizes=(32,), final_sizes=(16,), batch_size=16, plots=False, threads=1, epochs=3)
N_ENTITIES = 400


@pytest.fixture
def rows_read(monkeypatch):
    """Refuse Store.load; record every (kind, row) that Store.read_rows reads."""
    seen: dict[str, set[int]] = {}
    read_rows = Store.read_rows

    def refuse(self, kind):
        raise AssertionError(f"Store.load({kind!r}) read a whole [N, D] table")

    def record(self, kind, rows):
        seen.setdefault(kind, set()).update(int(r) for r in np.asarray(rows).ravel())
        return read_rows(self, kind, rows)

    monkeypatch.setattr(Store, "load", refuse)
    monkeypatch.setattr(Store, "read_rows", record)
    return seen


def test_training_reads_only_the_kb_rows_of_candidates_and_golds(tmp_path, rows_read):
    path = synthetic_store(tmp_path / "s", langs={"en": 30, "de": 10}, n_entities=N_ENTITIES)
    cfg = TrainConfig(features=str(path), popularity=True, **FAST)
    data = prepare(cfg)
    fit(cfg, data, 0, progress=False)
    store = open_store(path)
    kb_ids, _ = store.load_ids("es")
    scored = {kb for cands in read_candidates(path / "candidates.jsonl").values() for kb, _, _ in cands}
    scored |= {r["gold"] for r in store.records("mentions") if r["gold"] is not None}
    wanted = {i for i, k in enumerate(kb_ids) if k in scored}
    assert rows_read["es"] == rows_read["ec"] == wanted
    assert len(wanted) < N_ENTITIES * 0.75  # the KB is larger than what is scored
    assert data.splits.train.kb.ids == [k for k in kb_ids if k in scored]
    assert rows_read["ms"] == rows_read["mc"] == set(range(40))


def on_whole_kb(m: Mentions | None, whole: KB) -> Mentions | None:
    """The same mentions over every KB row, as the trainer loaded them before (the oracle)."""
    if m is None:
        return None
    remap = torch.tensor([whole.index[k] for k in m.kb.ids])
    counts = None if m.kb.link_counts is None else tuple(
        dict(zip(m.kb.ids, m.kb.link_counts)).get(k) for k in whole.ids)
    popularity = whole.popularity
    if m.kb.popularity.shape[1] and counts is not None:  # +P counted from training mentions
        popularity = torch.zeros((len(whole.ids), m.kb.popularity.shape[1]))
        popularity[remap] = m.kb.popularity
    return replace(m, kb=replace(whole, popularity=popularity, link_counts=counts, moments=None, centre=m.kb.centre),
                   cand=remap[m.cand], gold_kb=torch.where(m.gold_kb >= 0, remap[m.gold_kb.clamp_min(0)], -1))


def whole_kb_standardization(train_mentions: Mentions):
    """What fit did before: mean and std over the training mentions and every KB row, by torch (each centred by
    its language's or the KB's mean when the run centres, train.centre)."""
    kb, m = train_mentions.kb, train_mentions
    ms, mc, es, ec = m.ms, m.mc, kb.es, kb.ec
    if m.centre is not None:
        ms, mc, es, ec = ms - m.centre[:, 0], mc - m.centre[:, 1], es - kb.centre[0], ec - kb.centre[1]
    names, contexts = torch.cat([ms, es]), torch.cat([mc, ec])
    return (names.mean(dim=0), names.std(dim=0)), (contexts.mean(dim=0), contexts.std(dim=0))


@pytest.mark.parametrize("settings", [
    dict(),  # the residual scorer (default)
    dict(scorer="paper", negatives=4, popularity=True),  # the paper's ranker, +P from KB links
    dict(popularity=True, popularity_source="mentions", popularity_missing="median"),
])
def test_candidate_rows_train_the_same_model_as_the_whole_kb(tmp_path, monkeypatch, settings):
    path = synthetic_store(tmp_path / "s", langs={"en": 60, "de": 20}, n_entities=N_ENTITIES)
    cfg = TrainConfig(features=str(path), **FAST, **settings)
    data = prepare(cfg)
    got = fit(cfg, data, 0, progress=False)
    whole = load_kb(open_store(path), popularity=cfg.popularity and cfg.popularity_source == "links",
                    popularity_missing=cfg.popularity_missing)
    assert len(whole.ids) == N_ENTITIES > len(data.splits.train.kb.ids)
    s = data.splits
    before = Prepared(Splits(*(on_whole_kb(m, whole) for m in (s.train, s.dev, s.test))), data.train_langs,
                      data.eval_langs, data.l2_langs, data.text, data.dim, data.centres)
    monkeypatch.setattr(xel.train.fit, "standardization", whole_kb_standardization)
    want = fit(cfg, before, 0, progress=False)
    torch.testing.assert_close(got.model.name_mean, want.model.name_mean)
    torch.testing.assert_close(got.model.context_std, want.model.context_std)
    assert [h["loss"] for h in got.history] == pytest.approx([h["loss"] for h in want.history], abs=1e-5)
    assert predict(got.test_ranked, s.test, -1.0) == predict(want.test_ranked, before.splits.test, -1.0)
    torch.testing.assert_close(got.test_ranked.best, want.test_ranked.best, rtol=1e-4, atol=1e-5)
