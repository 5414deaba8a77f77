"""Snowball stems in the character n-gram candidate source (:func:`retrieval.names.ngram_form`): an inflected
mention and the base form of a KB name share the stem's n-grams."""

from __future__ import annotations

import pytest
from xel.retrieval.names import latin, ngram_form, stem
from xel.retrieval.ngram import NgramIndex

PAIRS = [  # (language, inflected, base form, their common stem)
    ("fi", "Helsingissä", "Helsingin", "helsing"),  # in Helsinki / of Helsinki
    ("sv", "Stockholms", "Stockholm", "stockholm"),
    ("de", "Deutschlands", "Deutschland", "deutschland"),
    ("fr", "françaises", "Française", "franc"),
    ("ru", "Москвы", "Москва", "москв"),
]


@pytest.mark.parametrize("lang,inflected,base,common", PAIRS, ids=[p[0] for p in PAIRS])
def test_an_inflected_form_and_its_base_form_share_a_stem(lang, inflected, base, common) -> None:
    assert stem(inflected, lang) == stem(base, lang) == common
    assert ngram_form(inflected, lang) == f"{latin(inflected)} {latin(common)}"


def test_a_language_without_a_stemmer_and_no_language_keep_the_plain_form() -> None:
    for lang in ("ja", "xx", None):
        assert ngram_form("Tōkyō Tower", lang) == latin("Tōkyō Tower") == "tokyo tower"
    assert stem("Cidades", "pt-BR") == stem("cidade", "pt")  # a region code is the language's
    assert ngram_form("Berlin", "de") == "berlin"  # a word that is its own stem appears once


# (language, KB names, inflected query): the base form is names[0]
CASES = [
    ("fi", ["Helsinki", "Helsingør", "Hesperia"], "Helsingissä"),
    ("ru", ["Москва", "Московия", "Мосты"], "Москвы"),
    ("de", ["Deutschland", "Deutsche Bank", "Deutsch"], "Deutschlands"),
    ("sv", ["Sverige", "Sveriges Radio", "Svenska"], "Sveriges"),
    ("fr", ["Française", "France", "François"], "françaises"),
]


@pytest.mark.parametrize("lang,names,query", CASES, ids=[c[0] for c in CASES])
def test_the_stem_brings_the_base_form_closer_and_never_loses_it(lang, names, query) -> None:
    ids = [f"Q{i}" for i in range(len(names))]
    stemmed = dict(NgramIndex(ids, names, [lang] * len(names)).search([query], 3, [lang])[0])
    plain = dict(NgramIndex(ids, names).search([query], 3)[0])
    assert stemmed["Q0"] > plain["Q0"]
    if lang != "fi":  # Finnish consonant gradation: "helsing" vs "helsink"; Helsingør stays first
        assert max(stemmed, key=stemmed.get) == "Q0"
    if lang == "sv":  # the case the stem decides: "Sveriges Radio" shares the whole inflected word
        assert max(plain, key=plain.get) == "Q1"
