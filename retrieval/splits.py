"""Document-level train / dev / test assignment shared by candidate generation and the trainer.

A mention's document is its ``doc`` field, or its id up to the last ``:`` (``elevant/wiki-fair-v2:2779825:40-67``
-> ``elevant/wiki-fair-v2:2779825``). A document's bucket comes from a hash of its id alone, so mentions of one
document never straddle splits, and adding or removing other documents or languages never moves a mention to
another split. The alias prior (:mod:`retrieval.candidates`) counts only ``train`` documents, so dev and test
mentions never see their own document's gold links.
"""

from __future__ import annotations

import hashlib

TEST_FRACTION = 0.2
DEV_FRACTION = 0.1
SPLITS = ("train", "dev", "test")


def document_of(record: dict) -> str:
    """The document id of a mention record (see the module docstring)."""
    doc = record.get("doc")
    if doc is not None:
        return str(doc)
    mid = str(record["id"])
    return mid.rsplit(":", 1)[0] if ":" in mid else mid


def document_unit(doc: str) -> float:
    """A stable pseudo-random number in [0, 1) for a document id."""
    digest = hashlib.sha256(doc.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(doc: str, *, test_fraction: float = TEST_FRACTION, dev_fraction: float = DEV_FRACTION,
             has_test: bool = True) -> str:
    """``test`` for the first ``test_fraction`` of the unit interval (when the language is evaluated in-language,
    ``has_test``), ``dev`` for the next ``dev_fraction`` of what remains, ``train`` for the rest."""
    u = document_unit(doc)
    if has_test:
        if u < test_fraction:
            return "test"
        u = (u - test_fraction) / (1.0 - test_fraction)
    return "dev" if u < dev_fraction else "train"
