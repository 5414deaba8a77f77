"""Which index and store a search uses, and how: :class:`SearchOptions` (the ``--index``, ``--features``,
``--kb-lang``, ``--search-params`` and ``--device`` flags shared by ``xel-nn candidates``, ``eval``, ``query`` and
``batch``)."""

from __future__ import annotations

from dataclasses import dataclass

from xel.precompute.store import Store
from xel.retrieval.index import EntityIndex
from xel.retrieval.index_files import open_index_and_store


@dataclass(frozen=True)
class SearchOptions:
    index: str
    features: str | None = None  # None: the store named in the index manifest
    kb_lang: str | None = None  # None: each mention's own language's KB
    search_params: str | None = None
    device: str = "auto"

    def open(self) -> tuple[EntityIndex, Store]:
        """The index and its store, checked against each other, with the search parameters and device applied."""
        index, store = open_index_and_store(self.index, self.features)
        index.set_search_params(self.search_params)
        index.to_device(self.device)
        return index, store
