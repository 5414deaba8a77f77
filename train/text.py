"""Unannotated English (A) and L2 (B) text features for the adversarial step of ``xel-train --adversarial``.

The source languages are the training languages (English in the paper); the L2 languages are the evaluated
languages that are not trained on. One kind of text is used for every language, the first that has rows in
all of them, so the language classifier cannot tell the sides apart by the kind of text instead of language:

1. ``text``: the stores' unannotated ``text`` kind (training store for the source, evaluation store for L2);
2. ``names``: KB entity names (``es`` rows of KB entries in that language), as in the paper;
3. ``mentions``: mention strings (``ms`` rows): the training split's mentions for the source languages and the
   evaluated mentions for L2. Only their text features are used, never their gold links, so this is
   unannotated use of the evaluation text (transductive, as the paper's L2 text is in-domain). This is the
   case for an English-only KB (``wikidata-el``) evaluated on German or Russian mentions.

A seeded 20% of each language's rows is held out from the adversarial steps for the language probe
(:mod:`train.probe`), which measures how well the languages can still be told apart after training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from xel.precompute.store import Store
from xel.train.data import DataError, Mentions

log = logging.getLogger(__name__)
TEXT_KINDS = ("text", "names", "mentions")


PROBE_FRACTION = 0.2


@dataclass(frozen=True)
class LanguageText:
    kind: str  # one of TEXT_KINDS
    features: dict[str, torch.Tensor]  # language -> [n, D] float32, for the adversarial steps
    held_out: dict[str, torch.Tensor] = field(default_factory=dict)  # language -> rows the probe is fit on


def hold_out(
    feats: dict[str, torch.Tensor], fraction: float = PROBE_FRACTION
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split each language's rows (seeded, fixed): ``fraction`` for the language probe, never trained on."""
    train, held = {}, {}
    for lang, x in sorted(feats.items()):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        n = int(round(fraction * len(x))) if len(x) >= 4 else 0
        held[lang], train[lang] = x[order[:n]], x[order[n:]]
    return train, held


def _by_lang(feats: torch.Tensor, langs: list[str], want: set[str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for lang in want:
        rows = [i for i, x in enumerate(langs) if x == lang]
        if rows:
            out[lang] = feats[rows]
    return out


def _store_text(store: Store, want: set[str]) -> dict[str, torch.Tensor]:
    if "text" not in store.kinds:
        return {}
    _, feats, langs = store.load("text")
    return _by_lang(torch.from_numpy(feats).float(), langs, want)


def adversarial_text(
    train_store: Store, eval_store: Store, train: Mentions, test: Mentions,
    source_langs: tuple[str, ...], l2_langs: tuple[str, ...],
) -> LanguageText:
    if not l2_langs:
        raise DataError(f"--adversarial needs an evaluation language other than the training languages "
                        f"{list(source_langs)}; pass --eval-lang with one")
    src, l2 = set(source_langs), set(l2_langs)
    want = src | l2
    candidates: list[tuple[str, dict[str, torch.Tensor]]] = []
    text = _store_text(train_store, src)
    text.update(_store_text(eval_store, l2))
    candidates.append(("text", text))
    names = _by_lang(train.kb.es, train.kb.langs, src)
    for lang, feats in _by_lang(test.kb.es, test.kb.langs, l2).items():
        names.setdefault(lang, feats)
    candidates.append(("names", names))
    mentions = _by_lang(train.ms, train.langs, src)
    mentions.update(_by_lang(test.ms, test.langs, l2))
    candidates.append(("mentions", mentions))
    for kind, feats in candidates:
        if set(feats) == want:
            log.info("adversarial text: %s (%s)", kind, {k: len(v) for k, v in sorted(feats.items())})
            train, held = hold_out(feats)
            return LanguageText(kind, train, held)
    raise DataError(f"no unannotated text covers languages {sorted(want)}: tried {list(TEXT_KINDS)}")
