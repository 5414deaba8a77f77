"""A light BIO tagger on frozen encoder token features, and the decoding of its labels into character spans.

:class:`SpanTagger`: layer norm, a linear layer down to ``hidden`` (64) dimensions, a width-5 convolution over
the token sequence (each token sees two neighbours each side: a bare word marker ``▁`` may stand between a word
and the token before it), GELU, a linear layer to the labels O, B, I. Texts are trained on as one sequence with
zero rows between texts (two: exactly the convolution's zero padding at a text's ends), cut at those rows into
chunks of about ``chunk_tokens`` tokens: the whole training set is one tensor held in memory and indexed, no
per-example loader.
:func:`decode` turns labels into spans: a span starts at a B, or at an I after an O, and runs over the I that
follow; its characters run from its first token's start to its last token's end, trimmed of spaces and widened to
whole words (a span never cuts a word: ``Moskau`` of ``Moskaus`` widens to ``Moskaus``). Spans come out sorted
and non-overlapping.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

LABELS = ("O", "B", "I")
OUT, BEGIN, INSIDE = range(3)
CONTEXT = 2  # tokens each side that the convolution sees; also the zero rows between packed texts


class SpanTagger(nn.Module):
    def __init__(self, dim: int, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.dim, self.hidden_size = dim, hidden
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, hidden)
        self.conv = nn.Conv1d(hidden, hidden, kernel_size=2 * CONTEXT + 1, padding=CONTEXT)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, len(LABELS))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Label logits ``[n, 3]`` of a token sequence ``[n, dim]`` (zero rows separate texts)."""
        x = self.down(self.norm(features)) * (features.abs().sum(-1, keepdim=True) > 0)  # separators stay zero
        x = self.conv(x.T[None])[0].T
        return self.out(self.drop(nn.functional.gelu(x)))


def token_labels(offsets: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """B for a span's first token, I for its others, O elsewhere; a token is in a span when its characters
    overlap the span's (tokens with no characters, such as a bare word marker, are O)."""
    labels = np.full(len(offsets), OUT, dtype=np.int64)
    starts, ends = offsets[:, 0], offsets[:, 1]
    for a, b in spans:
        inside = np.flatnonzero((starts < b) & (ends > a) & (ends > starts))
        if len(inside):
            labels[inside] = INSIDE
            labels[inside[0]] = BEGIN
    return labels


def is_word_char(ch: str) -> bool:
    """A letter, a digit or a combining mark: the characters a word is made of."""
    return unicodedata.category(ch)[0] in "LNM"


def widen_to_words(text: str, start: int, end: int) -> tuple[int, int]:
    """``[start, end)`` trimmed of spaces, then widened so that it neither starts nor ends inside a word."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start == end:
        return start, end
    while start > 0 and is_word_char(text[start - 1]) and is_word_char(text[start]):
        start -= 1
    while end < len(text) and is_word_char(text[end - 1]) and is_word_char(text[end]):
        end += 1
    return start, end


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    score: float  # the mean probability of the span's tokens' labels


def decode(text: str, offsets: np.ndarray, probs: np.ndarray) -> list[Span]:
    """Spans of ``text`` from its tokens' ``offsets`` and label probabilities ``[n, 3]`` (see the module
    docstring): sorted by start, non-overlapping (of two that overlap after widening, the first is kept), each
    holding at least one letter or digit."""
    labels = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    runs: list[list[int]] = []  # token ranges [lo, hi)
    open_run = False
    for t, label in enumerate(labels.tolist()):
        if offsets[t, 1] <= offsets[t, 0]:
            continue  # no characters: neither starts, ends nor breaks a span
        if label == OUT:
            open_run = False
        elif label == BEGIN or not open_run:
            runs.append([t, t + 1])
            open_run = True
        else:
            runs[-1][1] = t + 1
    spans: list[Span] = []
    for lo, hi in runs:
        chars = offsets[lo:hi]
        chars = chars[chars[:, 1] > chars[:, 0]]
        start, end = widen_to_words(text, int(chars[:, 0].min()), int(chars[:, 1].max()))
        if not any(ch.isalnum() for ch in text[start:end]):
            continue
        if spans and start < spans[-1].end:
            continue
        score = float(probs[np.arange(lo, hi), labels[lo:hi]].mean())
        spans.append(Span(start, end, score))
    return spans


def pack(sequences: Sequence[np.ndarray], chunk_tokens: int) -> tuple[np.ndarray, int, list[tuple[int, int]]]:
    """Where each of ``sequences`` starts when they are laid end to end with :data:`CONTEXT` zero rows before each
    and after the last, the layout's length, and chunks ``[lo, hi)`` of it, about ``chunk_tokens`` long, that
    start and end with a block of zero rows."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    starts = np.r_[0, np.cumsum(lengths + CONTEXT)[:-1]] + CONTEXT
    total = int(starts[-1] + lengths[-1] + CONTEXT) if len(sequences) else CONTEXT
    chunks, lo = [], 0
    for i in range(len(sequences)):
        end = int(starts[i] + lengths[i]) + CONTEXT
        if end - lo >= chunk_tokens or i == len(sequences) - 1:
            chunks.append((lo, end))
            lo = end - CONTEXT
    return starts, total, chunks


def fit(features: Sequence[np.ndarray], labels: Sequence[np.ndarray], *, epochs: int = 20, seed: int = 0,
        hidden: int = 64, lr: float = 2e-3, chunk_tokens: int = 2048) -> tuple[SpanTagger, list[float]]:
    """A :class:`SpanTagger` trained on texts' token features and labels (seeded; Adam, cross-entropy over
    tokens); returns it in eval mode and the mean loss of each epoch."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    starts, total, chunks = pack(features, chunk_tokens)
    dim = features[0].shape[1]
    x = torch.zeros((total, dim), dtype=torch.float32)
    y = torch.full((total,), -100, dtype=torch.long)  # separators are not scored
    for s, f, lab in zip(starts.tolist(), features, labels):
        x[s : s + len(f)] = torch.from_numpy(np.asarray(f, dtype=np.float32))
        y[s : s + len(f)] = torch.from_numpy(lab)
    model = SpanTagger(dim, hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    losses = []
    for epoch in range(epochs):
        model.train()
        seen = 0.0
        for c in rng.permutation(len(chunks)).tolist():
            lo, hi = chunks[c]
            loss = nn.functional.cross_entropy(model(x[lo:hi]), y[lo:hi], ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += loss.item()
        losses.append(seen / max(1, len(chunks)))
        log.info("tagger epoch %d: loss %.4f", epoch + 1, losses[-1])
    return model.eval(), losses


@torch.inference_mode()
def tag(model: SpanTagger, features: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Label probabilities ``[n, 3]`` of each text's token features, all texts in one forward."""
    if not features:
        return []
    starts, total, _ = pack(features, 1)
    x = torch.zeros((total, model.dim), dtype=torch.float32)
    for s, f in zip(starts.tolist(), features):
        x[s : s + len(f)] = torch.from_numpy(np.asarray(f, dtype=np.float32))
    probs = model(x).softmax(-1).numpy()
    return [probs[s : s + len(f)] for s, f in zip(starts.tolist(), features)]
