"""The gazetteer spotter, the detector's baseline: every stretch of text whose string, normalised as candidate
generation normalises mention strings, is a name of the KB or an alias of the run's training alias table.

Keys are :func:`retrieval.names.normalise_mention` (NFKC, casefold, punctuation dropped) and
:func:`retrieval.names.latin` (transliterated to Latin script first) of each KB name, and the alias table's own
keys (normalised mention strings). A candidate stretch runs from the start of one word to the end of a later one
(at most ``max_words`` words, as many as the longest name); it matches when either form of its text is a key. A
stretch must start with a character that is not lowercase (``the``, ``may`` and ``paris`` inside a word list are
not spotted; scripts without case are unaffected). Matches are taken longest first (then leftmost), and a match
that overlaps one already taken is dropped: the spans come out sorted and non-overlapping.
"""

from __future__ import annotations

from collections.abc import Iterable

from xel.detect.tagger import Span, is_word_char
from xel.retrieval.names import latin, normalise_mention

MAX_WORDS = 8


def words(text: str) -> list[tuple[int, int]]:
    """Character ranges of the words of ``text``: maximal runs of letters, digits and combining marks."""
    out: list[tuple[int, int]] = []
    start = None
    for i, ch in enumerate(text):
        if is_word_char(ch):
            if start is None:
                start = i
        elif start is not None:
            out.append((start, i))
            start = None
    if start is not None:
        out.append((start, len(text)))
    return out


class Gazetteer:
    def __init__(self, names: Iterable[str], aliases: Iterable[str] = (), max_words: int = MAX_WORDS):
        self.keys: set[str] = set()
        longest = 1
        for name in names:
            for key in (normalise_mention(name), latin(name)):
                if key:
                    self.keys.add(key)
                    longest = max(longest, len(words(name)))
        for alias in aliases:  # already normalised (retrieval.candidates.AliasPrior's keys)
            if alias:
                self.keys.add(alias)
                longest = max(longest, len(alias.split()))
        self.max_words = min(max_words, longest)

    def __len__(self) -> int:
        return len(self.keys)

    def spot(self, text: str) -> list[Span]:
        """The matches in ``text`` (see the module docstring), sorted by start; each with score 1."""
        found: list[tuple[int, int]] = []
        spans = words(text)
        for i, (start, _) in enumerate(spans):
            if text[start].islower():
                continue
            for j in range(i, min(len(spans), i + self.max_words)):
                stretch = text[start : spans[j][1]]
                if normalise_mention(stretch) in self.keys or latin(stretch) in self.keys:
                    found.append((start, spans[j][1]))
        taken: list[tuple[int, int]] = []
        for start, end in sorted(found, key=lambda s: (s[0] - s[1], s[0])):
            if all(end <= a or start >= b for a, b in taken):
                taken.append((start, end))
        return [Span(a, b, 1.0) for a, b in sorted(taken)]
