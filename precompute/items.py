"""What one text to encode is (:class:`EncodeItem`), how each feature kind builds one, and what encoding counts
(:class:`EncodeStats`). Plain data, without torch: the ``xel-precompute`` driver plans and hashes shards with it and
never loads torch or transformers, which only the actors need (:mod:`precompute.encoding`, whose docstring says
what ``pool`` and ``anchor`` mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EncodeItem:
    id: str
    lang: str
    text: str
    pool: tuple[int, int]
    anchor: tuple[int, int] = (0, 0)


def mention_item(ident: str, lang: str, sentence: str, start: int, end: int) -> EncodeItem:
    """``ms``: the whole sentence is encoded, the mention's subwords are pooled."""
    return EncodeItem(ident, lang, sentence, (start, end), (start, end))


def context_item(ident: str, lang: str, context: str, sentence: str, start: int, end: int) -> EncodeItem:
    """``mc``: the context is pooled whole; a window over a long context is centred on the mention."""
    at = context.find(sentence)
    anchor = (at + start, at + end) if at >= 0 else (0, 0)
    return EncodeItem(ident, lang, context, (0, len(context)), anchor)


def entity_item(ident: str, lang: str, text: str) -> EncodeItem:
    """``es``, ``ec``, ``text``: pooled whole; a text over the limit keeps its first subwords."""
    return EncodeItem(ident, lang, text, (0, len(text)))


@dataclass
class EncodeStats:
    texts: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    windowed: int = 0
    shared: int = 0  # texts whose encoder input was another text's: pooled from its forward pass
    forward_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, other: EncodeStats) -> None:
        self.texts += other.texts
        self.tokens += other.tokens
        self.padded_tokens += other.padded_tokens
        self.windowed += other.windowed
        self.shared += other.shared
        self.forward_seconds += other.forward_seconds

    @property
    def padding_fraction(self) -> float:
        return 1 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0
