"""Every KB entry's id, name, label language and ``links`` in a few packed arrays, streamed from a store's
``inputs/kb.jsonl``: what candidate generation and the linker need of the whole KB.

A Python dict per record costs ~600 bytes (a 6M-entity KB: ~4 GB before any matcher is built); a
:class:`KBTable` holds ~100 bytes an entry plus its id's and name's UTF-8 bytes: the ids and names in one buffer
each with their end offsets, a language code and the ``links`` count per entry, and three sorted 8-byte digest
columns (of the id, the name and the normalised name) that find an entry by id or by name with a binary search.
Digests that collide are told apart by comparing the strings themselves, so every lookup is exact.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from xel.precompute import schema
from xel.precompute.schema import DigestLookup, StringColumn
from xel.retrieval.names import normalise_mention

NO_LINKS = -1  # ``links`` null (the count is not known)


class Subset(Sequence[str]):
    """The strings of a column at some positions, in that order (a view, nothing copied)."""

    def __init__(self, column: Sequence[str], positions: np.ndarray):
        self.column, self.positions = column, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        return self.column[int(self.positions[i])]

    def __iter__(self) -> Iterator[str]:
        return (self.column[p] for p in self.positions.tolist())


class NameGroups:
    """KB positions by the 8-byte digest of a string of each entry (``key_of(name)``: its name, or its normalised
    name), the positions of each digest ranked once, as :class:`retrieval.candidates.NameMatcher` lists name
    matches: ``links`` descending (null as 0), then id. A digest whose entries hold more than one distinct string
    (digests that collide) is kept in ``collided``; only a lookup of such a digest compares every entry's string,
    any other compares one: all of its entries hold the same string."""

    def __init__(self, digests: array, names: Sequence[str], key_of: Callable[[str], str], links: np.ndarray,
                 ids: Sequence[str]):
        lookup = DigestLookup(digests)
        self.sorted, self.order, self.names, self.key_of = lookup.sorted, lookup.order, names, key_of
        self.collided: set[int] = set()
        popularity = np.maximum(links, 0)  # null (NO_LINKS) and negative counts rank as 0
        cuts = np.flatnonzero(self.sorted[1:] != self.sorted[:-1]) + 1
        starts, ends = np.r_[0, cuts], np.r_[cuts, len(self.sorted)]
        shared = ends - starts > 1
        for lo, hi in zip(starts[shared].tolist(), ends[shared].tolist()):
            members = self.order[lo:hi].tolist()
            keys: dict[str, str] = {}
            for p in members:
                name = names[p]
                if name not in keys:
                    keys[name] = key_of(name)
            if len(set(keys.values())) > 1:
                self.collided.add(int(self.sorted[lo]))
            ranked = sorted(zip((-popularity[members]).tolist(), [ids[p] for p in members], members))
            self.order[lo:hi] = [p for _, _, p in ranked]

    def matches(self, key: str) -> np.ndarray:
        """The ranked positions of the entries whose string is ``key``."""
        digest = np.uint64(schema.id_digest(key))
        lo, hi = np.searchsorted(self.sorted, digest, "left"), np.searchsorted(self.sorted, digest, "right")
        group = self.order[lo:hi].astype(np.int64)
        if int(digest) in self.collided:
            return group[np.asarray([self.key_of(self.names[p]) == key for p in group.tolist()], dtype=bool)]
        return group if len(group) and self.key_of(self.names[int(group[0])]) == key else group[:0]


def _same(name: str) -> str:
    return name


class KBTable:
    """The KB's entries in file order (position ``i`` is line ``i`` of ``kb.jsonl``); see the module docstring."""

    def __init__(self, records: Iterable[dict[str, Any]]):
        self.ids, self.names = StringColumn(), StringColumn()
        self.lang_names: list[str] = []
        codes: dict[str, int] = {}
        lang_codes, links = array("H"), array("q")
        id_digests, name_digests, normalised_digests = array("Q"), array("Q"), array("Q")
        for r in records:
            kb_id, name, lang = str(r["id"]), str(r["name"]), str(r["lang"])
            self.ids.append(kb_id)
            self.names.append(name)
            if lang not in codes:
                codes[lang] = len(self.lang_names)
                self.lang_names.append(lang)
            lang_codes.append(codes[lang])
            links.append(NO_LINKS if r.get("links") is None else int(r["links"]))
            id_digests.append(schema.id_digest(kb_id))
            name_digests.append(schema.id_digest(name))
            normalised_digests.append(schema.id_digest(normalise_mention(name)))
        self.lang_codes = np.frombuffer(lang_codes, dtype=np.uint16).copy()
        self.links = np.frombuffer(links, dtype=np.int64).copy() if len(links) else np.zeros(0, np.int64)
        self.by_id = DigestLookup(id_digests)
        self.by_name = NameGroups(name_digests, self.names, _same, self.links, self.ids)
        self.by_normalised = NameGroups(normalised_digests, self.names, normalise_mention, self.links, self.ids)

    @classmethod
    def of_store(cls, store: Any) -> KBTable:
        """The table of a store's ``inputs/kb.jsonl``, read one record at a time."""
        return cls(store.iter_records("kb"))

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, kb_id: str) -> int | None:
        """The position of the entry with id ``kb_id``, or None when the KB has none."""
        for p in self.by_id.positions(kb_id):
            if self.ids[p] == kb_id:
                return p
        return None

    def __contains__(self, kb_id: object) -> bool:
        return isinstance(kb_id, str) and self.position(kb_id) is not None

    def lang(self, i: int) -> str:
        return self.lang_names[int(self.lang_codes[i])]

    def link_count(self, i: int) -> int | None:
        value = int(self.links[i])
        return None if value == NO_LINKS else value

    def link_counts(self) -> list[int | None]:
        """Every entry's ``links`` (None where null), in KB order."""
        return [None if v == NO_LINKS else v for v in self.links.tolist()]

    def record(self, i: int) -> dict[str, Any]:
        """The entry's ``id``, ``name``, ``lang`` and ``links`` (the fields the linker reads; no description)."""
        return {"id": self.ids[i], "name": self.names[i], "lang": self.lang(i), "links": self.link_count(i)}

    def named(self, name: str) -> np.ndarray:
        """The positions of the entries named ``name``, ranked by ``links`` (null as 0) descending, then id."""
        return self.by_name.matches(name)

    def normalised_named(self, key: str) -> np.ndarray:
        """The positions of the entries whose :func:`~retrieval.names.normalise_mention` of the name is ``key``,
        ranked as :meth:`named` ranks them."""
        return self.by_normalised.matches(key)

    def name_of(self, kb_id: str) -> str | None:
        p = self.position(kb_id)
        return None if p is None else self.names[p]

    def lang_mask(self, langs: Iterable[str]) -> np.ndarray:
        """Boolean per entry: its label language is one of ``langs``."""
        langs = set(langs)
        wanted = [i for i, lang in enumerate(self.lang_names) if lang in langs]
        return np.isin(self.lang_codes, np.asarray(wanted, dtype=np.uint16))
