"""Normalised and transliterated forms of names and mention strings, for matching them as strings."""

from __future__ import annotations

import unicodedata

from anyascii import anyascii


def normalise_mention(text: str) -> str:
    """NFKC, casefold, punctuation removed, whitespace collapsed: ``" U.S.A. "`` -> ``"usa"``."""
    text = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(" " if ch.isspace() else ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return " ".join(kept.split())


def latin(text: str) -> str:
    """Transliterated to Latin script (``anyascii``), then :func:`normalise_mention`: ``"Москва"`` -> ``"moskva"``."""
    return normalise_mention(anyascii(text))
