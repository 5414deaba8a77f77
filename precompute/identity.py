"""What an encoder is: a Hugging Face model directory identified by the sha256 of its files (not by its directory's
name), its own prefix, and the refusal of models that ship their own code. Read by ``xel-precompute`` once per run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from xel.precompute.files import file_sha256

log = logging.getLogger(__name__)


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


ENCODER_MARKER = "xel-encoder.json"


# what identifies an encoder: its architecture and the sha256 of its files, not the name of its directory
ENCODER_CONTENT = ("model_type", "hidden_size", "config_sha256", "weights_sha256", "tokenizer_sha256")


class EncodeError(ValueError):
    """A text cannot be encoded as asked (for example, its span covers no subword)."""


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
