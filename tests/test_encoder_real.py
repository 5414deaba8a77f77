"""The built multilingual-e5-small encoder reproduces recorded token ids and embeddings: ``pytest -m real_encoder``.

Needs a build (``xel-encoder build --out models/multilingual-e5-small``); the directory is read from
``XEL_ENCODER_DIR``.  Regenerate the fixture from a trusted build with
``python -m tests.test_encoder_real --write``.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

FIXTURE = Path(__file__).parent / "data" / "encoder_expected.json"
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "models" / "multilingual-e5-small"
PREFIX = "query: "
SENTENCES = {
    "en": "Barack Obama was born in Honolulu, Hawaii.",
    "es": "Madrid es la capital de España.",
    "zh": "巴拉克·奥巴马出生于夏威夷檀香山。",
    "ru": "Лев Толстой написал роман «Война и мир».",
    "fa": "تهران پایتخت ایران است.",
    "de": "Angela Merkel war Bundeskanzlerin der Bundesrepublik Deutschland.",
}
HEAD_DIMS = 16
ABS_TOL = 1e-4
MIN_COSINE = 0.9999  # the stored full vector is float16, so exact equality is not expected


def encoder_dir() -> Path:
    """The build to test: ``$XEL_ENCODER_DIR`` or ``models/multilingual-e5-small`` in the checkout."""
    return Path(os.environ.get("XEL_ENCODER_DIR", DEFAULT_DIR))


def embed(model_dir: Path, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
    """Token ids and fp32 mean-pooled ``last_hidden_state`` (over non-padding tokens) of ``PREFIX + text``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).float().eval()
    batch = tok([PREFIX + t for t in texts], padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = ((hidden * mask).sum(1) / mask.sum(1)).numpy().astype(np.float64)
    ids = [row[row_mask.bool()].tolist() for row, row_mask in zip(batch["input_ids"], batch["attention_mask"])]
    return ids, pooled


def encode_unit_f16(vector: np.ndarray) -> str:
    """Base64 of the L2-normalized vector as little-endian float16."""
    unit = vector / np.linalg.norm(vector)
    return base64.b64encode(unit.astype("<f2").tobytes()).decode("ascii")


def decode_unit_f16(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), "<f2").astype(np.float64)


def write_fixture(model_dir: Path) -> None:
    """Record ids and embeddings of ``SENTENCES`` from the build in ``model_dir``."""
    langs = list(SENTENCES)
    ids, pooled = embed(model_dir, [SENTENCES[lang] for lang in langs])
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    marker = json.loads((model_dir / "xel-encoder.json").read_text("utf-8"))
    fixture = {
        "encoder": marker["source_model"],
        "source_sha256": marker["source_sha256"],
        "prefix": PREFIX,
        "pooling": "fp32 mean of last_hidden_state over non-padding tokens (not normalized)",
        "cosine_matrix": np.round(unit @ unit.T, 6).tolist(),
        "sentences": [
            {
                "lang": lang,
                "text": SENTENCES[lang],
                "input_ids": row_ids,
                "head": np.round(vec[:HEAD_DIMS], 7).tolist(),
                "norm": round(float(np.linalg.norm(vec)), 6),
                "unit_f16": encode_unit_f16(vec),
            }
            for lang, row_ids, vec in zip(langs, ids, pooled)
        ],
    }
    FIXTURE.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", "utf-8")


@pytest.fixture(scope="module")
def built() -> tuple[dict, list[list[int]], np.ndarray]:
    model_dir = encoder_dir()
    if not (model_dir / "xel-encoder.json").is_file():
        pytest.skip(
            f"no encoder build in {model_dir}: run `xel-encoder build --out {model_dir}` or set XEL_ENCODER_DIR"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fixture = json.loads(FIXTURE.read_text("utf-8"))
    ids, pooled = embed(model_dir, [s["text"] for s in fixture["sentences"]])
    return fixture, ids, pooled


@pytest.mark.real_encoder
def test_token_ids_equal_recorded(built: tuple[dict, list[list[int]], np.ndarray]) -> None:
    fixture, ids, _ = built
    for expected, got in zip(fixture["sentences"], ids):
        assert got == expected["input_ids"], expected["lang"]


@pytest.mark.real_encoder
def test_embeddings_match_recorded(built: tuple[dict, list[list[int]], np.ndarray]) -> None:
    fixture, _, pooled = built
    for expected, vec in zip(fixture["sentences"], pooled):
        np.testing.assert_allclose(vec[:HEAD_DIMS], expected["head"], atol=ABS_TOL, rtol=0, err_msg=expected["lang"])
        assert abs(np.linalg.norm(vec) - expected["norm"]) < ABS_TOL, expected["lang"]
        reference = decode_unit_f16(expected["unit_f16"])
        cosine = float(vec @ reference / (np.linalg.norm(vec) * np.linalg.norm(reference)))
        assert cosine >= MIN_COSINE, (expected["lang"], cosine)
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(unit @ unit.T, fixture["cosine_matrix"], atol=ABS_TOL, rtol=0)


@pytest.mark.real_encoder
def test_cross_language_neighbours(built: tuple[dict, list[list[int]], np.ndarray]) -> None:
    """Sentences about the same entity (Obama: en, zh) are each other's nearest neighbour."""
    fixture, _, pooled = built
    langs = [s["lang"] for s in fixture["sentences"]]
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -1.0)
    assert langs[int(np.argmax(sims[langs.index("en")]))] == "zh"
    assert langs[int(np.argmax(sims[langs.index("zh")]))] == "en"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_encoder_real --write")
    write_fixture(encoder_dir())
