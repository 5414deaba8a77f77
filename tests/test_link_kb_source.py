"""What of a run's training KB carries over to another KB (:func:`link.linker.kb_source`): each case by hand,
without a model or a store.

    pytest tests/test_link_kb_source.py
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from xel.link.linker import KBSource, kb_source
from xel.retrieval.candidates import AliasPrior, MentionRef
from xel.train.config import TrainConfig


class Table:
    def __init__(self, ids: list[str]):
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, kb_id: str) -> int | None:
        return self.ids.index(kb_id) if kb_id in self.ids else None


def prior(*pairs: tuple[str, str]) -> AliasPrior:
    return AliasPrior([MentionRef(id=f"m{i}", lang="en", surface=s, gold=g, given=None)
                       for i, (s, g) in enumerate(pairs)], "en")


RUN_PRIOR = prior(("Paris", "Q0"), ("Moscow", "Q2"))
LOADED = SimpleNamespace(splits=SimpleNamespace(train=SimpleNamespace(golds=["Q0", "Q2", None])))


@pytest.mark.parametrize("kb_ids, store_prior, pair_prior, cfg, want", [
    (["Q0", "X1"], prior(("Paris", "Q0")), RUN_PRIOR, {}, ("recomputed", "kept", "none")),
    (["X0", "X1"], prior(), RUN_PRIOR, {"popularity": True},
     ("off", "off", "recomputed")),
    (["Q2"], prior(), None, {"scorer": "paper", "popularity": True, "popularity_source": "mentions"},
     ("off", "none", "kept")),
    (["X0"], prior(), RUN_PRIOR, {"popularity": True, "popularity_source": "mentions"}, ("off", "off", "off")),
])
def test_kb_source_says_what_is_recomputed_kept_or_off(kb_ids, store_prior, pair_prior, cfg, want, caplog):
    caplog.set_level("INFO")
    got = kb_source("other/h5", SimpleNamespace(prior=store_prior), Table(kb_ids), pair_prior,
                    TrainConfig(features="a/h5", **cfg), LOADED)
    assert got == KBSource("other/h5", *want)
    assert "linking against the KB of other/h5" in caplog.text and "not the run's training KB a/h5" in caplog.text
