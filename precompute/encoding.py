"""Span max-pooled encoder features: tokenize once, window around the span, bucket by length, pool.

This is the hot path of ``xel-precompute`` and the query path of ``xel-nn query``; both call
:meth:`TextEncoder.encode`, so a query encodes exactly as the store did.

Every text to encode is an :class:`EncodeItem`: the ``text``, the character span ``pool`` whose subwords are
max-pooled, and the span ``anchor`` that a window must contain when the text is longer than the encoder's
limit. For ``ms`` both spans are the mention; for ``mc`` the pool is the whole context and the anchor is the
mention inside it; for ``es``, ``ec`` and ``text`` the pool is the whole text and the window is its start.
An encoder prefix (e5's ``"query: "``) is tokenized once and put in front of every window, so offsets
are never shifted by hand. Special tokens never enter a pool.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from xel.precompute.onnx_backend import QUANTIZE, OnnxEncoder, gate_passed, model_path
from xel.precompute.store import file_sha256

log = logging.getLogger(__name__)

# RoBERTa-style models number positions from padding_idx + 1, so two position rows are not usable.
_OFFSET_POSITION_MODELS = ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ENCODER_MARKER = "xel-encoder.json"
# what identifies an encoder: its architecture and the sha256 of its files, not the name of its directory
ENCODER_CONTENT = ("model_type", "hidden_size", "config_sha256", "weights_sha256", "tokenizer_sha256")


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


class EncodeError(ValueError):
    """A text cannot be encoded as asked (for example, its span covers no subword)."""


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
    forward_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, other: EncodeStats) -> None:
        self.texts += other.texts
        self.tokens += other.tokens
        self.padded_tokens += other.padded_tokens
        self.windowed += other.windowed
        self.forward_seconds += other.forward_seconds

    @property
    def padding_fraction(self) -> float:
        return 1 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0


def encoder_identity(model_dir: str | Path) -> dict[str, Any]:
    """Name and content hashes of a Hugging Face model directory; ``fingerprint`` summarises them."""
    model_dir = Path(model_dir)
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise EncodeError(
            f"{model_dir}: not a Hugging Face model directory (no config.json); pass a directory written by "
            "save_pretrained, or build the default encoder with `xel-encoder build`"
        )
    weights = [model_dir / w for w in WEIGHT_FILES if (model_dir / w).is_file()]
    if not weights:
        raise EncodeError(f"{model_dir}: no weights file ({' or '.join(WEIGHT_FILES)})")
    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise EncodeError(f"{model_dir}: no tokenizer.json; a fast tokenizer (with offsets) is required")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EncodeError(f"{config_file}: unreadable ({e}); a Hugging Face config.json is required") from None
    refuse_custom_code(model_dir, config)
    ident = {
        "name": model_dir.resolve().name,
        "model_type": config.get("model_type"),
        "hidden_size": config.get("hidden_size"),
        "config_sha256": file_sha256(config_file),
        "weights_sha256": file_sha256(weights[0]),
        "tokenizer_sha256": file_sha256(tokenizer_file),
    }
    # by content only: a copied or renamed model directory is the same encoder
    ident["fingerprint"] = hashlib.sha256(
        json.dumps({k: ident[k] for k in ENCODER_CONTENT}, sort_keys=True).encode()).hexdigest()
    return ident


def same_encoder(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two encoder identities describe the same model files (whatever their directories are called)."""
    return all(a.get(k) is not None and a.get(k) == b.get(k) for k in ENCODER_CONTENT)


def refuse_custom_code(model_dir: Path, config: dict[str, Any]) -> None:
    """Refuse, before any work, a model whose config or tokenizer config asks for code from its own directory
    (``auto_map``): xel loads models with ``trust_remote_code`` off and never runs such code."""
    tok_file = model_dir / "tokenizer_config.json"
    try:
        tok_config = json.loads(tok_file.read_text(encoding="utf-8")) if tok_file.is_file() else {}
    except (OSError, ValueError):
        tok_config = {}
    for name, data in (("config.json", config), ("tokenizer_config.json", tok_config)):
        if isinstance(data, dict) and data.get("auto_map"):
            raise EncodeError(
                f"{model_dir / name}: 'auto_map' {data['auto_map']!r} asks for custom Python code shipped with the "
                "model; xel never runs a model's own code (trust_remote_code stays off). Use a model whose "
                "architecture transformers itself provides (BERT, XLM-R, ...)"
            )


def default_prefix(model_dir: str | Path) -> str:
    """The prefix the encoder was trained with, as recorded by ``xel-encoder build`` (e5: ``"query: "``)."""
    marker = Path(model_dir) / ENCODER_MARKER
    if marker.is_file():
        return str(json.loads(marker.read_text(encoding="utf-8")).get("prefix", ""))
    return ""


def max_length_limit(model_type: str | None, max_position_embeddings: int, tokenizer_limit: int | None,
                     requested: int | None) -> int:
    """Subwords per text, specials included: the model's position limit (RoBERTa-style models number positions from
    ``padding_idx + 1``, so two rows are not usable), the tokenizer's ``model_max_length`` when it is a real limit,
    and ``requested`` (``--max-length``), whichever is smallest."""
    limit = max_position_embeddings - (2 if model_type in _OFFSET_POSITION_MODELS else 0)
    if isinstance(tokenizer_limit, int) and tokenizer_limit < 10**6:
        limit = min(limit, tokenizer_limit)
    return min(limit, requested or limit)


@dataclass(frozen=True)
class EncoderSettings:
    """How a store's encoder runs: resolved once (:func:`resolve_encoder`) by the precompute driver, passed to each
    actor, recorded in the store manifest, and read back from it at query time (:meth:`from_manifest`)."""

    model: str  # the model directory, as given (each Ray node resolves it in its own working directory)
    identity: dict[str, Any]  # encoder_identity(model): name, content hashes, fingerprint; hashed once
    dtype: str  # "bf16" | "fp32" | "int8"
    device: str  # "cpu" | "cuda"
    layer: int
    max_length: int  # resolved: never above the model's or the tokenizer's limit
    prefix: str
    max_tokens_per_batch: int | None = None  # None: 16,384 on CPU, sized from free memory on GPU
    backend: str = "torch"  # "torch" | "onnx" (ONNX Runtime, CPU; int8 runs only there)
    dtype_reason: str = ""  # why --dtype auto chose ``dtype`` (empty when the dtype was given)

    def manifest_fields(self) -> dict[str, Any]:
        """What the store manifest records of the encoder (``model`` resolved on the driver)."""
        return {"encoder": self.identity, "model": str(Path(self.model).resolve()), "layer": self.layer,
                "max_length": self.max_length, "prefix": self.prefix, "dtype": self.dtype, "device": self.device,
                "backend": self.backend, **({"dtype_reason": self.dtype_reason} if self.dtype_reason else {})}

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], model_dir: str | Path | None = None,
                      device: str = "auto") -> EncoderSettings:
        """The settings a store was built with, to run its encoder again here (``device``); refuses a model
        directory whose content differs from the one the store was built with."""
        given = model_dir is not None
        model_dir = Path(model_dir or manifest["model"])
        try:
            identity = encoder_identity(model_dir)
        except EncodeError as e:
            if given:
                raise
            raise EncodeError(f"{e}. The store was built with the model at {model_dir}; if it was moved or copied, "
                              "pass its new place with --model DIR") from None
        if not same_encoder(identity, manifest["encoder"]):
            raise EncodeError(
                f"{model_dir}: its files (config, weights, tokenizer sha256) differ from those of the encoder the "
                f"store was built with ({manifest['encoder'].get('name')}); pass that model with --model DIR"
            )
        identity = {**identity, "fingerprint": manifest["encoder"]["fingerprint"]}
        backend = manifest.get("backend", "torch")  # stores written before backends existed ran torch
        recipe = manifest.get("settings", {}).get("quantization")
        if manifest["dtype"] == "int8" and recipe != QUANTIZE:
            raise EncodeError(f"the store was encoded in int8 quantised as {recipe}, this xel quantises as {QUANTIZE}; "
                              "queries would not encode as the store did. Rerun xel-precompute into a new --out")
        return cls(model=str(model_dir), identity=identity, dtype=manifest["dtype"],
                   device="cpu" if backend == "onnx" else _device_kind(device), layer=manifest["layer"],
                   max_length=manifest["max_length"], prefix=manifest["prefix"], backend=backend)


def resolve_encoder(
    model: str | Path, *, layer: int = -1, max_length: int | None = None, prefix: str | None = None,
    dtype: str = "auto", device: str = "auto", max_tokens_per_batch: int | None = None, backend: str | None = None,
) -> EncoderSettings:
    """Resolve what the flags leave open, once: the model's identity (its files hashed), the prefix (the encoder's
    own when ``None``), the max length (the model's limit when ``None``), the device (``auto``: this machine's GPU
    if any, else the CPU), the dtype (``auto``: :func:`auto_dtype`) and the backend (``None``: onnx for int8,
    else torch)."""
    identity = encoder_identity(model)
    config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    tok_cfg = Path(model) / "tokenizer_config.json"
    tokenizer_limit = json.loads(tok_cfg.read_text(encoding="utf-8")).get("model_max_length") \
        if tok_cfg.is_file() else None
    device = _device_kind(device)
    reason = ""
    if dtype == "auto":
        dtype, reason = auto_dtype(on_gpu=device == "cuda", int8_gate=gate_passed(model, identity["fingerprint"]))
        if dtype == "int8" and backend == "torch":
            dtype, reason = "fp32", f"{reason}; but --backend torch runs no int8"
        log.info("--dtype auto: %s (%s)", dtype, reason)
    backend = resolve_backend(backend, dtype, device)
    return EncoderSettings(
        model=str(model), identity=identity, dtype=dtype, device=device,
        layer=layer, prefix=default_prefix(model) if prefix is None else prefix,
        max_length=max_length_limit(config.get("model_type"), int(config["max_position_embeddings"]),
                                    tokenizer_limit, max_length),
        max_tokens_per_batch=max_tokens_per_batch, backend=backend, dtype_reason=reason,
    )


def resolve_backend(backend: str | None, dtype: str, device: str) -> str:
    """``None``: onnx for int8, else torch. Refuses what a backend cannot run: int8 on torch, bf16 on onnx, onnx
    on a GPU (xel installs ONNX Runtime's CPU build)."""
    backend = backend or ("onnx" if dtype == "int8" else "torch")
    allowed = {"torch": ("fp32", "bf16"), "onnx": ("fp32", "int8")}
    if backend not in allowed:
        raise EncodeError(f"backend {backend!r} is unknown; allowed: {', '.join(allowed)}")
    if dtype not in allowed[backend]:
        raise EncodeError(f"dtype {dtype!r} does not run on backend {backend!r}; allowed there: "
                          f"{', '.join(allowed[backend])} (int8 runs on --backend onnx, bf16 on --backend torch)")
    if backend == "onnx" and device != "cpu":
        raise EncodeError(f"backend onnx runs on the CPU, not on device {device!r}; use --backend torch on a GPU")
    return backend


def _device_kind(requested: str) -> str:
    """``cpu`` or ``cuda`` as asked; ``auto``: ``cuda`` when this process sees a GPU, else ``cpu``."""
    return pick_device("auto").type if requested == "auto" else requested


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags, from ``cpuinfo`` (the text of ``/proc/cpuinfo``; read here when ``None``)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    lines = [line.split(":", 1)[-1] for line in cpuinfo.splitlines() if line.startswith("flags")]
    return {flag for line in lines for flag in line.split()}


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU multiplies bf16 matrices in hardware at more than fp32 speed (Intel AMX, ``amx_bf16``).
    With only AVX-512 BF16, autocast's casts cost more than they save: on a 2-core Xeon without AMX the shard
    worker ran 0.65x as fast in bf16 as in fp32 (e5-small) and 0.61x (XLM-R-base shape); bench/precompute.py."""
    return "amx_bf16" in cpu_flags(cpuinfo)


VNNI_FLAGS = ("avx512_vnni", "avx_vnni")  # int8 dot products in one instruction (Cascade Lake+, Zen 4+, Alder Lake+)


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """True when the CPU multiplies int8 in hardware (VNNI); without it int8 GEMMs widen to 16 bits first."""
    return any(flag in cpu_flags(cpuinfo) for flag in VNNI_FLAGS)


def auto_dtype(on_gpu: bool, cpuinfo: str | None = None, int8_gate: bool | None = None) -> tuple[str, str]:
    """What ``--dtype auto`` runs, and why: bf16 on a GPU and on an AMX CPU (measured faster than fp32 there);
    int8 (ONNX Runtime) on a CPU with VNNI when int8 passed the quality gate for this encoder (``int8_gate``:
    :func:`precompute.onnx_backend.gate_passed`); else fp32."""
    if on_gpu:
        return "bf16", "GPU"
    if cpu_has_native_bf16(cpuinfo):
        return "bf16", "CPU with AMX (amx_bf16)"
    if cpu_has_vnni(cpuinfo):
        if int8_gate:
            return "int8", "CPU with VNNI, and int8 passed the quality gate for this encoder"
        why = "failed" if int8_gate is False else "was not run for"
        return "fp32", f"CPU with VNNI, but the int8 quality gate {why} this encoder (bench/int8_gate.py)"
    return "fp32", "CPU without VNNI or AMX"


def resolve_dtype(requested: str, on_gpu: bool, cpuinfo: str | None = None, int8_gate: bool | None = None) -> str:
    """``requested``, or for ``auto`` the choice of :func:`auto_dtype`."""
    return auto_dtype(on_gpu, cpuinfo, int8_gate)[0] if requested == "auto" else requested


def pick_device(requested: str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise EncodeError(f"device {requested!r} requested but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(requested)


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

    @classmethod
    def load(cls, settings: EncoderSettings, threads: int | None = None) -> TextEncoder:
        """The encoder ``settings`` describe (already resolved and hashed: nothing is hashed here), on its device."""
        import transformers
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        tokenizer = AutoTokenizer.from_pretrained(settings.model)
        if not tokenizer.is_fast:
            raise EncodeError(f"{settings.model}: the tokenizer is not a fast tokenizer; offsets are required")
        if settings.backend == "onnx":
            path = model_path(settings.model, settings.identity["fingerprint"], settings.dtype)
            model = OnnxEncoder(path, AutoConfig.from_pretrained(settings.model), threads)
        else:
            model = AutoModel.from_pretrained(settings.model)
        return cls(model, tokenizer, layer=settings.layer, max_length=settings.max_length, prefix=settings.prefix,
                   dtype=settings.dtype, device=pick_device(settings.device),
                   max_tokens_per_batch=settings.max_tokens_per_batch)

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
    def forward(self, ids: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> np.ndarray:
        """Pooled float32 vectors for one batch of token id rows and pool masks."""
        pool = np.zeros((len(ids), max(len(x) for x in ids)), dtype=bool)
        for row, m in enumerate(masks):
            pool[row, : len(m)] = m
        hidden = self.hidden(ids)
        pool_t = torch.from_numpy(pool).to(self.device)
        pooled = hidden.float().masked_fill(~pool_t[..., None], float("-inf")).amax(dim=1)
        return pooled.cpu().numpy()

    @torch.inference_mode()
    def hidden(self, ids: Sequence[np.ndarray]) -> torch.Tensor:
        """The hidden states of the encoder's ``layer`` ``[rows, longest, dim]`` for one batch of token id rows
        (padded; the pad positions hold whatever the model gives them): what :meth:`forward` pools, and the
        token features of the mention detector (:mod:`detect.tokens`)."""
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(ids), width), dtype=np.int64)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = x
            attention[row, : len(x)] = 1
        if self.backend == "onnx":
            hidden = torch.from_numpy(self.model.hidden_state(input_ids, attention, self.layer))
        else:
            inputs = {
                "input_ids": torch.from_numpy(input_ids).to(self.device, non_blocking=True),
                "attention_mask": torch.from_numpy(attention).to(self.device, non_blocking=True),
            }
            want_all = self.layer != -1
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16"):
                out = self.model(**inputs, output_hidden_states=want_all)
            hidden = out.hidden_states[self.layer] if want_all else out.last_hidden_state
        return hidden

    def encode(
        self, items: Sequence[EncodeItem], stats: EncodeStats | None = None, chunk_size: int = 2048,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Span max-pooled float16 features ``[len(items), dim]`` in the order of ``items``.

        Items are tokenized in chunks on a background thread (the fast tokenizer releases the GIL), so the
        next chunk is tokenized while the model runs on this one; within a chunk, batches are length-bucketed.
        ``on_batch(rows)`` is called after each forward batch (progress reporting).
        """
        out = np.zeros((len(items), self.dim), dtype=np.float16)
        starts = list(range(0, len(items), chunk_size))
        total = EncodeStats()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
            future = pool.submit(self.tokenize, items[0:chunk_size]) if starts else None
            for j, start in enumerate(starts):
                tok = future.result()
                if j + 1 < len(starts):
                    future = pool.submit(self.tokenize, items[starts[j + 1] : starts[j + 1] + chunk_size])
                lengths = np.fromiter((len(x) for x in tok.ids), dtype=np.int64, count=len(tok.ids))
                t0 = time.perf_counter()
                padded = 0
                for idx in self.batches(lengths):
                    padded += len(idx) * int(lengths[idx].max())
                    pooled = self.forward([tok.ids[i] for i in idx], [tok.pool_masks[i] for i in idx])
                    out[start + idx] = pooled
                    if on_batch is not None:
                        on_batch(len(idx))
                total.add(EncodeStats(
                    texts=len(tok.ids), tokens=int(lengths.sum()), padded_tokens=padded, windowed=tok.windowed,
                    forward_seconds=time.perf_counter() - t0,
                ))
        if stats is not None:
            stats.add(total)
        return out
