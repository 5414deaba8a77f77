"""Span max-pooled encoder features: tokenize once, window around the span, bucket by length, pool.

This is the hot path of ``xel-precompute`` and the query path of ``xel-nn query``; both call
:meth:`TextEncoder.encode`, so a query encodes exactly as the store did.

Every text to encode is an :class:`~precompute.items.EncodeItem`: the ``text``, the character span ``pool``
whose subwords are max-pooled, and the span ``anchor`` that a window must contain when the text is longer than the
encoder's limit. For ``ms`` both spans are the mention; for ``mc`` the pool is the whole context and the anchor is the
mention inside it; for ``es``, ``ec`` and ``text`` the pool is the whole text and the window is its start.
An encoder prefix (e5's ``"query: "``) is tokenized once and put in front of every window, so offsets
are never shifted by hand. Special tokens never enter a pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from xel.precompute.hardware import pick_device
from xel.precompute.identity import EncodeError
from xel.precompute.items import EncodeItem, EncodeStats
from xel.precompute.onnx_backend import OnnxEncoder, model_path
from xel.precompute.settings import EncoderSettings, max_length_limit, resolve_backend

log = logging.getLogger(__name__)


CPU_TOKEN_BUDGET = 16384


def token_budget(device: torch.device, hidden: int, intermediate: int, free_bytes: int | None = None) -> int:
    """Tokens per forward batch: 16,384 on CPU; on GPU sized from free memory.

    An inference forward in bf16 holds roughly ``2 bytes x (8 x hidden + 2 x intermediate)`` of activations per
    token at its peak; a third of the free memory goes to them, between 16,384 and 262,144 tokens (about 100k
    for an XLM-R-base shape on an 80 GB H100; about 116k with 8 GiB free).
    """
    if device.type != "cuda":
        return CPU_TOKEN_BUDGET
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    per_token = 2 * (8 * hidden + 2 * intermediate)
    return int(min(262144, max(CPU_TOKEN_BUDGET, free_bytes // 3 // per_token)))


@dataclass
class _Tokenized:
    ids: list[np.ndarray]
    pool_masks: list[np.ndarray]
    windowed: int


class TextEncoder:
    """A frozen Hugging Face encoder that turns :class:`EncodeItem` s into span max-pooled float16 vectors; the
    model is a torch module, or an :class:`~precompute.onnx_backend.OnnxEncoder` (fp32 or int8, on the CPU)."""

    def __init__(
        self,
        model: torch.nn.Module | OnnxEncoder,
        tokenizer: Any,
        *,
        layer: int = -1,
        max_length: int | None = None,
        prefix: str = "",
        dtype: str = "bf16",
        device: torch.device | str = "cpu",
        max_tokens_per_batch: int | None = None,
        max_batch_rows: int = 256,
    ):
        self.backend = "onnx" if isinstance(model, OnnxEncoder) else "torch"
        self.device = torch.device(device)
        resolve_backend(self.backend, dtype, self.device.type)
        self.model = model if self.backend == "onnx" else model.eval().to(self.device)
        if dtype == "bf16" and self.device.type == "cuda":
            self.model = self.model.to(torch.bfloat16)
        self.tokenizer = tokenizer
        self.layer = layer
        self.dtype = dtype
        self.prefix = prefix
        config = model.config
        self.max_tokens_per_batch = max_tokens_per_batch or token_budget(
            self.device, config.hidden_size, getattr(config, "intermediate_size", 4 * config.hidden_size)
        )
        self.max_batch_rows = max_batch_rows
        n_layers = config.num_hidden_layers
        if not -n_layers - 1 <= layer <= n_layers:
            raise EncodeError(
                f"layer {layer} is out of range for a {n_layers}-layer encoder; allowed -{n_layers + 1}..{n_layers}"
            )
        self.max_length = max_length_limit(config.model_type, config.max_position_embeddings,
                                           getattr(tokenizer, "model_max_length", None), max_length)
        self.head, self.tail = self._special_tokens()
        # The prefix's trailing space is dropped: the content's own leading word marker (SentencePiece "▁")
        # stands for it, so prefix + content tokenizes as the joined string would.
        self.prefix_ids = np.asarray(
            tokenizer(prefix.rstrip(), add_special_tokens=False)["input_ids"] if prefix.strip() else [], dtype=np.int64
        )
        self.budget = self.max_length - len(self.head) - len(self.tail) - len(self.prefix_ids)
        if self.budget < 1:
            raise EncodeError(f"max length {self.max_length} leaves no room for text after specials and prefix")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.dim = int(config.hidden_size)
        self.settings: EncoderSettings | None = None  # what it was loaded with (:meth:`load`), resolved

    @classmethod
    def load(cls, settings: EncoderSettings, threads: int | None = None) -> TextEncoder:
        """The encoder ``settings`` describe (already hashed: nothing is hashed here), with what they leave to this
        machine decided here (:meth:`EncoderSettings.resolved`); the result keeps them as ``settings``. ``threads``
        sizes an ONNX Runtime session; torch's threads are the process's, set by its entry point."""
        import transformers
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        settings = settings.resolved()
        tokenizer = AutoTokenizer.from_pretrained(settings.model)
        if not tokenizer.is_fast:
            raise EncodeError(f"{settings.model}: the tokenizer is not a fast tokenizer; offsets are required")
        if settings.backend == "onnx":
            path = model_path(settings.model, settings.identity["fingerprint"], settings.dtype)
            model = OnnxEncoder(path, AutoConfig.from_pretrained(settings.model), threads)
        else:
            model = AutoModel.from_pretrained(settings.model)
        encoder = cls(model, tokenizer, layer=settings.layer, max_length=settings.max_length, prefix=settings.prefix,
                      dtype=settings.dtype, device=pick_device(settings.device),
                      max_tokens_per_batch=settings.max_tokens_per_batch)
        encoder.settings = settings
        return encoder

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], model_dir: str | Path | None = None, device: str = "auto",
                      threads: int | None = None) -> TextEncoder:
        """The encoder a store was built with, set up exactly as precompute used it; refuses another model."""
        return cls.load(EncoderSettings.from_manifest(manifest, model_dir, device), threads)

    def _special_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """The special tokens the tokenizer puts before and after a text (``<s>`` ... ``</s>``)."""
        with_specials = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        for i in range(len(with_specials) - len(plain) + 1):
            if with_specials[i : i + len(plain)] == plain:
                return (np.asarray(with_specials[:i], np.int64), np.asarray(with_specials[i + len(plain) :], np.int64))
        raise EncodeError("cannot locate the text between the tokenizer's special tokens")

    def tokenize(self, items: Sequence[EncodeItem]) -> _Tokenized:
        """Token ids (specials and prefix included) and pool masks, windowed to the encoder's limit."""
        enc = self.tokenizer(
            [it.text for it in items], add_special_tokens=False, return_offsets_mapping=True,
            return_attention_mask=False,
        )
        ids_out: list[np.ndarray] = []
        masks_out: list[np.ndarray] = []
        windowed = 0
        n_head = len(self.head) + len(self.prefix_ids)
        for it, ids, offsets in zip(items, enc["input_ids"], enc["offset_mapping"]):
            off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
            ids = np.asarray(ids, dtype=np.int64)
            lo, hi = self._window(off, it.anchor)
            windowed += (lo, hi) != (0, len(ids))
            s, e = off[lo:hi, 0], off[lo:hi, 1]
            in_pool = (s < it.pool[1]) & (e > it.pool[0])
            if not in_pool.any():
                raise EncodeError(
                    f"{it.id}: span [{it.pool[0]}, {it.pool[1]}) = {it.text[it.pool[0]:it.pool[1]]!r} covers no "
                    "subword of the tokenized text; the span must cover a word"
                )
            ids_out.append(np.concatenate([self.head, self.prefix_ids, ids[lo:hi], self.tail]))
            mask = np.zeros(n_head + (hi - lo) + len(self.tail), dtype=bool)
            mask[n_head : n_head + hi - lo] = in_pool
            masks_out.append(mask)
        return _Tokenized(ids_out, masks_out, windowed)

    def _window(self, offsets: np.ndarray, anchor: tuple[int, int]) -> tuple[int, int]:
        """Token range of at most ``budget`` tokens containing the anchor span, centred on it."""
        n, budget = len(offsets), self.budget
        if n <= budget:
            return 0, n
        if anchor == (0, 0):
            return 0, budget
        hit = np.nonzero((offsets[:, 0] < anchor[1]) & (offsets[:, 1] > anchor[0]))[0]
        if len(hit) == 0:
            return 0, budget
        a0, a1 = int(hit[0]), int(hit[-1]) + 1
        if a1 - a0 >= budget:
            return a0, a0 + budget
        lo = max(0, min(a0 - (budget - (a1 - a0)) // 2, n - budget))
        return lo, lo + budget

    def batches(self, lengths: np.ndarray, max_padding: float = 0.08) -> Iterator[np.ndarray]:
        """Indices grouped longest first; a batch ends at the token budget (rows x longest row), at the row cap,
        or where the next text is more than ``max_padding`` shorter than the batch's longest, so that no
        batch is more than ``max_padding`` padding.
        """
        order = np.argsort(-lengths, kind="stable")
        sorted_lengths = lengths[order]
        start = 0
        while start < len(order):
            longest = int(sorted_lengths[start])
            size = max(1, min(self.max_batch_rows, self.max_tokens_per_batch // max(longest, 1)))
            end = min(start + size, len(order))
            # the first text shorter than (1 - max_padding) x longest starts the next batch
            cut = start + int(np.searchsorted(-sorted_lengths[start:end], -(1 - max_padding) * longest, side="right"))
            end = max(start + 1, min(end, cut))
            yield order[start:end]
            start = end

    @torch.inference_mode()
    def forward(self, ids: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                rows: Sequence[int] | None = None) -> np.ndarray:
        """Pooled float32 vectors ``[len(masks), dim]`` for one batch of token id rows: mask ``j`` pools row
        ``rows[j]`` (by default row ``j``), so texts with the same tokens share one forward pass."""
        rows = np.arange(len(ids)) if rows is None else np.asarray(rows, dtype=np.int64)
        pool = np.zeros((len(masks), max(len(x) for x in ids)), dtype=bool)
        for j, m in enumerate(masks):
            pool[j, : len(m)] = m
        hidden = self.hidden(ids).float()
        pool_t = torch.from_numpy(pool).to(self.device)
        rows_t = torch.from_numpy(rows).to(self.device)
        out = []
        for lo in range(0, len(masks), len(ids)):  # at most one batch of hidden states copied at a time
            part = hidden.index_select(0, rows_t[lo : lo + len(ids)])
            out.append(part.masked_fill(~pool_t[lo : lo + len(ids), :, None], float("-inf")).amax(dim=1))
        return torch.cat(out).cpu().numpy()

    @torch.inference_mode()
    def hidden(self, ids: Sequence[np.ndarray], layers: Sequence[int] | None = None) -> torch.Tensor:
        """The hidden states of the encoder's ``layer`` ``[rows, longest, dim]`` for one batch of token id rows
        (padded; the pad positions hold whatever the model gives them): what :meth:`forward` pools. With
        ``layers``, those hidden states (indices as ``layer``'s) concatenated, ``[rows, longest, dim * len]``, from
        one forward: the token features of the mention detector (:mod:`detect.tokens`)."""
        layers = [self.layer] if layers is None else list(layers)
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(ids), width), dtype=np.int64)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = x
            attention[row, : len(x)] = 1
        if self.backend == "onnx":
            return torch.from_numpy(self.model.hidden_state(input_ids, attention, layers))
        inputs = {
            "input_ids": torch.from_numpy(input_ids).to(self.device, non_blocking=True),
            "attention_mask": torch.from_numpy(attention).to(self.device, non_blocking=True),
        }
        want_all = layers != [-1]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16"):
            out = self.model(**inputs, output_hidden_states=want_all)
        if not want_all:
            return out.last_hidden_state
        return torch.cat([out.hidden_states[x] for x in layers], dim=-1)

    def encode(
        self, items: Sequence[EncodeItem], stats: EncodeStats | None = None, chunk_size: int = 2048,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Span max-pooled float16 features ``[len(items), dim]`` in the order of ``items``.

        Items are tokenized in chunks on a background thread (the fast tokenizer releases the GIL), so the
        next chunk is tokenized while the model runs on this one; within a chunk, batches are length-bucketed.
        Items whose encoder input is the same token row (the mentions of one sentence for ``ms``, of one context
        for ``mc``; a repeated name) share one forward pass and differ only in what they pool: items are chunked in
        order of their text so that such items meet. ``on_batch(rows, tokens)`` is called after each forward batch
        with the items it finished and the unpadded tokens it encoded (progress reporting).
        """
        out = np.zeros((len(items), self.dim), dtype=np.float16)
        order = sorted(range(len(items)), key=lambda i: items[i].text)
        chunks = [order[start : start + chunk_size] for start in range(0, len(order), chunk_size)]
        total = EncodeStats()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
            future = pool.submit(self.tokenize, [items[i] for i in chunks[0]]) if chunks else None
            for j, chunk in enumerate(chunks):
                positions = np.asarray(chunk)  # the chunk's items' positions in ``items``
                tok = future.result()
                if j + 1 < len(chunks):
                    future = pool.submit(self.tokenize, [items[i] for i in chunks[j + 1]])
                first: dict[bytes, int] = {}
                row_of = np.fromiter((first.setdefault(x.tobytes(), len(first)) for x in tok.ids), dtype=np.int64,
                                     count=len(tok.ids))
                unique = np.unique(row_of, return_index=True)[1]  # row r's first item
                by_row = np.argsort(row_of, kind="stable")  # items grouped by row, rows in order
                row_start = np.searchsorted(row_of[by_row], np.arange(len(unique) + 1))
                lengths = np.fromiter((len(tok.ids[i]) for i in unique), dtype=np.int64, count=len(unique))
                t0 = time.perf_counter()
                padded = 0
                for idx in self.batches(lengths):
                    padded += len(idx) * int(lengths[idx].max())
                    members = np.concatenate([by_row[row_start[r] : row_start[r + 1]] for r in idx])
                    local = np.empty(len(unique), dtype=np.int64)
                    local[idx] = np.arange(len(idx))
                    pooled = self.forward([tok.ids[unique[r]] for r in idx], [tok.pool_masks[i] for i in members],
                                          local[row_of[members]])
                    out[positions[members]] = pooled
                    if on_batch is not None:
                        on_batch(len(members), int(lengths[idx].sum()))
                total.add(EncodeStats(
                    texts=len(tok.ids), tokens=int(lengths.sum()), padded_tokens=padded, windowed=tok.windowed,
                    shared=len(tok.ids) - len(unique), forward_seconds=time.perf_counter() - t0,
                ))
        if stats is not None:
            stats.add(total)
        return out
