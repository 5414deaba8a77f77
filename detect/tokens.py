"""Frozen encoder token features of whole texts, windowed, with each token's character offsets: what the mention
detector reads (``xel-detect`` trains on them, ``xel-link --detect`` tags with them).

A text is tokenized once with the store's own encoder (:class:`precompute.encoding.TextEncoder`: its tokenizer,
prefix, special tokens, layer, dtype and length limit). A text longer than the encoder's limit is cut into
windows of ``budget`` subwords that overlap by half, as contexts are windowed to the limit; each token takes its
feature from the window in which it lies farthest from an edge (the windows' middle halves tile the text), so no
token is seen without at least a quarter window of context on each side where the text has it. Windows of all
texts are length-bucketed and run in batches (:meth:`TextEncoder.batches`). Offsets are character offsets into
the text as given (Python string indices), from the fast tokenizer's offset mapping.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from xel.precompute.encoding import TextEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenFeatures:
    """One text's subword features ``[n, dim]`` (float16) and character offsets ``[n, 2]`` (int64)."""

    features: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets)


def windows(n: int, budget: int) -> list[tuple[int, int, int, int]]:
    """``(lo, hi, keep_lo, keep_hi)`` per window of a text of ``n`` tokens: the window ``[lo, hi)`` of at most
    ``budget`` tokens (windows start every ``budget // 2`` tokens, the last one ends at the text's end), and the
    tokens ``[keep_lo, keep_hi)`` that take their feature from it: those farthest from its edges there. The kept
    ranges tile ``[0, n)`` in order."""
    if n <= budget:
        return [(0, n, 0, n)]
    starts = np.unique(np.r_[np.arange(0, n - budget, max(1, budget // 2)), n - budget])
    token = np.arange(n)[:, None]
    depth = np.minimum(token - starts[None, :], starts[None, :] + budget - 1 - token)
    best = depth.argmax(axis=1)  # the first of equals: nondecreasing along the text
    out = []
    for w, lo in enumerate(starts.tolist()):
        kept = np.flatnonzero(best == w)
        if len(kept):
            out.append((lo, lo + budget, int(kept[0]), int(kept[-1]) + 1))
    return out


def feature_dim(encoder: TextEncoder, layers: Sequence[int] | None = None) -> int:
    """The width of a token feature: the encoder's, times the number of ``layers`` concatenated."""
    return encoder.dim * (1 if layers is None else len(layers))


def token_features(encoder: TextEncoder, texts: Sequence[str],
                   layers: Sequence[int] | None = None) -> list[TokenFeatures]:
    """The :class:`TokenFeatures` of each text (see the module docstring), from the encoder's ``layer`` or, with
    ``layers``, those hidden states concatenated (:meth:`precompute.encoding.TextEncoder.hidden`); an empty text
    has none."""
    enc = encoder.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True,
                            return_attention_mask=False)
    rows: list[np.ndarray] = []  # token ids of each window, specials and prefix included
    plan: list[tuple[int, int, int, int]] = []  # per window: text, where its kept tokens sit in the window, count
    offsets: list[np.ndarray] = []
    n_head = len(encoder.head) + len(encoder.prefix_ids)
    for t, (ids, offs) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
        ids = np.asarray(ids, dtype=np.int64)
        offsets.append(np.asarray(offs, dtype=np.int64).reshape(-1, 2))
        for lo, hi, keep_lo, keep_hi in windows(len(ids), encoder.budget) if len(ids) else []:
            rows.append(np.concatenate([encoder.head, encoder.prefix_ids, ids[lo:hi], encoder.tail]))
            plan.append((t, n_head + keep_lo - lo, keep_lo, keep_hi - keep_lo))
    features = [np.zeros((len(o), feature_dim(encoder, layers)), dtype=np.float16) for o in offsets]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    for idx in encoder.batches(lengths) if len(rows) else []:
        hidden = encoder.hidden([rows[i] for i in idx], layers).float().cpu().numpy()
        for b, i in enumerate(idx.tolist()):
            t, at, keep_lo, count = plan[i]
            features[t][keep_lo : keep_lo + count] = hidden[b, at : at + count]
    return [TokenFeatures(f, o) for f, o in zip(features, offsets)]
