"""Normalised and transliterated forms of names and mention strings, for matching them as strings."""

from __future__ import annotations

import functools
import re
import unicodedata

import snowballstemmer
from anyascii import anyascii

# ISO 639-1 code -> Snowball algorithm (snowballstemmer.algorithms()); a language not listed is not stemmed
SNOWBALL = {
    "ar": "arabic", "hy": "armenian", "eu": "basque", "ca": "catalan", "cs": "czech", "da": "danish", "nl": "dutch",
    "en": "english", "eo": "esperanto", "et": "estonian", "fi": "finnish", "fr": "french", "de": "german",
    "el": "greek", "hi": "hindi", "hu": "hungarian", "id": "indonesian", "ga": "irish", "it": "italian",
    "lt": "lithuanian", "ne": "nepali", "no": "norwegian", "nb": "norwegian", "fa": "persian", "pl": "polish",
    "pt": "portuguese", "ro": "romanian", "ru": "russian", "sr": "serbian", "es": "spanish", "sv": "swedish",
    "ta": "tamil", "tr": "turkish", "yi": "yiddish",
}
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters: a number or a code has no stem


def normalise_mention(text: str) -> str:
    """NFKC, casefold, punctuation removed, whitespace collapsed: ``" U.S.A. "`` -> ``"usa"``."""
    text = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(" " if ch.isspace() else ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return " ".join(kept.split())


def latin(text: str) -> str:
    """Transliterated to Latin script (``anyascii``), then :func:`normalise_mention`: ``"Москва"`` -> ``"moskva"``."""
    return normalise_mention(anyascii(text))


@functools.cache
def _stemmer(lang: str) -> snowballstemmer.stemmer | None:
    algorithm = SNOWBALL.get(lang.split("-")[0].lower())
    return snowballstemmer.stemmer(algorithm) if algorithm else None


@functools.lru_cache(maxsize=1 << 20)
def _stem_word(lang: str, word: str) -> str:
    return _stemmer(lang).stemWord(word)


def stem(text: str, lang: str | None) -> str:
    """Every word of ``text`` casefolded and reduced to its Snowball stem for ``lang`` (an ISO 639-1 code, with or
    without a region: ``"pt-BR"``); ``text`` casefolded where the language has no stemmer:
    ``stem("Helsingissä", "fi")`` -> ``"helsing"``, as ``stem("Helsingin", "fi")``."""
    text = text.casefold()
    if lang is None or _stemmer(lang) is None:
        return text
    return _WORD.sub(lambda m: _stem_word(lang, m.group(0)), text)


def ngram_form(text: str, lang: str | None) -> str:
    """What the character n-gram source (:mod:`retrieval.ngram`) compares: :func:`latin` of ``text``, followed by
    :func:`latin` of its :func:`stem` where that differs, so that an inflected form and its base form share the
    stem's n-grams (``"Москвы"`` -> ``"moskvy moskv"``, ``"Москва"`` -> ``"moskva moskv"``) and an unstemmed
    match keeps its own."""
    plain = latin(text)
    stemmed = stem(text, lang)
    if stemmed == text.casefold():
        return plain
    stemmed = latin(stemmed)
    return plain if stemmed == plain else f"{plain} {stemmed}"
