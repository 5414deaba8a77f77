"""Corrupted files are refused on open with an error naming the file and what to rerun; no pickle is ever loaded."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from xel.precompute.shards import shard_path
from xel.precompute.store import StoreError, open_store
from xel.retrieval.build import build_index
from xel.retrieval.index import RetrievalError
from xel.retrieval.index_files import INDEX_MANIFEST, load_index
from xel.train.checkpoint import CheckpointError, load_checkpoint, load_state_strict, save_checkpoint
from xel.train.model import ModelSpec, Ranker

from tests.fakes import make_store

ROOT = Path(__file__).resolve().parent.parent


def _ranker() -> Ranker:
    torch.manual_seed(0)
    return Ranker(ModelSpec(dim=8, hs_sizes=(6,), hc_sizes=(6,), final_sizes=(4,), dropout=0.0))


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ------------------------------------------------------------------------------------------ (a) checkpoints


def test_checkpoint_with_a_flipped_tensor_byte_is_refused(tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    save_checkpoint(_ranker(), path)
    load_checkpoint(path)
    _flip_byte(path, path.stat().st_size - 3)  # inside the last tensor's bytes: safetensors itself cannot tell
    for load in (load_checkpoint, lambda p: load_state_strict(_ranker(), p)):
        with pytest.raises(CheckpointError, match=r"model\.safetensors: the sha256 of its tensors .* rerun the xel-"):
            load(path)


def test_truncated_checkpoint_is_refused(tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    save_checkpoint(_ranker(), path)
    _truncate(path)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable or truncated .* rerun the xel-train"):
        load_checkpoint(path)


def test_checkpoint_write_leaves_no_temporary_file(tmp_path) -> None:
    save_checkpoint(_ranker(), tmp_path / "model.safetensors")
    save_checkpoint(_ranker(), tmp_path / "model.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_checkpoint_without_checksum_loads_with_a_warning(tmp_path, caplog) -> None:
    from safetensors.torch import save_file

    model = _ranker()
    path = tmp_path / "old.safetensors"
    save_file(model.state_dict(), str(path), metadata={"spec": model.spec.to_json(), "format": "xel-ranker-1"})
    with caplog.at_level(logging.WARNING, logger="xel.train.checkpoint"):
        loaded = load_checkpoint(path)
    assert "no checksum" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("name,value", [("hs.first.weight", float("nan")), ("final.2.bias", float("inf")),
                                        ("hc.first.bias", float("-inf"))])
def test_checkpoint_with_non_finite_weights_is_refused(tmp_path, name, value) -> None:
    """Issue 25.2: a NaN weight (sha recomputed, shapes right) made xel-link write bare NaN tokens, every mention
    NIL; an inf bias changed predictions silently."""
    model = _ranker()
    state = model.state_dict()
    with torch.no_grad():
        state[name].view(-1)[0] = value
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path)  # a valid file with a matching sha256: only the values are wrong
    for load in (load_checkpoint, lambda p: load_state_strict(_ranker(), p)):
        with pytest.raises(CheckpointError, match=rf"model\.safetensors: NaN or infinite values in tensors "
                                                  rf"\{{'{name}': 1\}} .* allowed: finite numbers only"):
            load(path)


@pytest.mark.parametrize("change", [
    {"dim": -8}, {"hs_sizes": [10**12]}, {"final_sizes": 4}, {"scorer": "transformer"}, {"depth": 3},
])
def test_checkpoint_with_an_absurd_spec_is_refused_without_building_it(tmp_path, change) -> None:
    """Issue 25.5: a spec that builds no model raised a raw RuntimeError; a huge one must not be allocated."""
    from safetensors.torch import save_file
    from xel.train.checkpoint import FORMAT, tensors_sha256

    model = _ranker()
    spec = {**json.loads(model.spec.to_json()), **change}
    state = model.state_dict()
    path = tmp_path / "model.safetensors"
    save_file(state, str(path), metadata={"spec": json.dumps(spec), "format": FORMAT,
                                          "tensors_sha256": tensors_sha256(state)})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: (metadata 'spec' .* builds no model|does not "
                                              r"fit this model)"):
        load_checkpoint(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_no_output_file_ever_holds_a_bare_nan_token(tmp_path, value) -> None:
    """Issue 25.2: json.dumps wrote NaN/Infinity, which no JSON reader accepts; every writer refuses them."""
    from xel.precompute.store import NotJSONError, StoreError, atomic_write_json, json_line
    from xel.retrieval.files import write_candidates, write_predictions

    writers = {
        "predictions.jsonl": lambda p: write_predictions(p, [("m1", "Q1", 0.5, [("Q1", value)])]),
        "candidates.jsonl": lambda p: write_candidates(p, [("m1", [("Q1", value, "dense")])]),
        "metrics.json": lambda p: atomic_write_json(p, {"test": {"f1": value}}),
        "links.jsonl": lambda p: p.write_text(json_line({"id": "m1", "score": value}, p)),
    }
    for name, write in writers.items():
        path = tmp_path / name
        with pytest.raises(NotJSONError, match=rf"{name}: a NaN or infinite number cannot be written as JSON"):
            write(path)
        assert not path.exists() and not list(tmp_path.glob("*.tmp"))
    assert issubclass(NotJSONError, StoreError)  # every command's error handling reports it as one line
    assert json_line({"id": "м1", "score": 0.5}, "x") == '{"id": "м1", "score": 0.5}\n'


# ------------------------------------------------------------------------------------------ (b) FAISS index dirs


@pytest.fixture
def index_dir(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    ids = [f"Q{i}" for i in range(30)]
    langs = ["en"] * 20 + ["de"] * 10
    store = make_store(tmp_path / "store", {"es": (ids, rng.standard_normal((30, 8)), langs)})
    build_index(open_store(store), tmp_path / "index", factory="Flat")
    return tmp_path / "index"


def test_index_manifest_records_file_checksums_and_loads(index_dir) -> None:
    manifest = json.loads((index_dir / INDEX_MANIFEST).read_text())
    assert set(manifest["langs"]["en"]) >= {"index_file_sha256", "ids_file_sha256"}
    loaded = load_index(index_dir)
    assert loaded.langs["en"].ids[:2] == ["Q0", "Q1"] and loaded.langs["de"].index.ntotal == 10


@pytest.mark.parametrize("name", ["index-en.faiss", "ids-de.json"])
@pytest.mark.parametrize("damage", [_truncate, lambda p: _flip_byte(p, p.stat().st_size - 5)])
def test_corrupted_index_file_is_named_with_the_rebuild_command(index_dir, name, damage) -> None:
    damage(index_dir / name)
    with pytest.raises(RetrievalError, match=rf"{name}: sha256 .* rerun xel-nn build --features .* --out {index_dir}"):
        load_index(index_dir)


@pytest.mark.parametrize("version", [1, 0, "3"])
def test_an_index_whose_format_version_was_rewritten_is_refused_not_trusted_less(index_dir, version) -> None:
    """Issue 15.12: format_version rewritten to 1 used to skip the checksums (with only a warning)."""
    _flip_byte(index_dir / "index-en.faiss", 60)
    manifest = json.loads((index_dir / INDEX_MANIFEST).read_text())
    manifest["format_version"] = version
    (index_dir / INDEX_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RetrievalError, match=r"format_version .* this xel reads \[2, 3, 4, 5\]; rerun xel-nn build"):
        load_index(index_dir)


def test_an_index_claiming_format_2_is_still_checksummed(index_dir) -> None:
    _flip_byte(index_dir / "index-en.faiss", 60)
    manifest = json.loads((index_dir / INDEX_MANIFEST).read_text())
    manifest["format_version"] = 2
    manifest.pop("manifest_sha256")  # as an index from before format 5
    (index_dir / INDEX_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RetrievalError, match="index-en.faiss: sha256"):
        load_index(index_dir)


def test_an_index_whose_language_is_a_path_is_refused(index_dir) -> None:
    manifest = json.loads((index_dir / INDEX_MANIFEST).read_text())
    manifest["langs"]["../../x"] = manifest["langs"].pop("en")
    (index_dir / INDEX_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RetrievalError, match="language '../../x' is not an ISO 639-1 code"):
        load_index(index_dir)


@pytest.fixture
def kb_index(tmp_path) -> tuple[Path, Path]:
    """A store with ``es`` and ``ec`` rows of a 30-entry KB (row hashes of their own) and its Flat ``es`` index."""
    rng = np.random.default_rng(1)
    ids = [f"Q{i}" for i in range(30)]
    langs = ["en"] * 20 + ["de"] * 10
    kb = [{"id": q, "name": f"name {q}", "description": None, "lang": lang, "links": None}
          for q, lang in zip(ids, langs)]
    store = make_store(tmp_path / "store", {"es": (ids, rng.standard_normal((30, 8)), langs),
                                            "ec": (ids, rng.standard_normal((30, 8)), langs)}, kb=kb)
    build_index(open_store(store), tmp_path / "index", factory="Flat")
    return store, tmp_path / "index"


def _edit_manifest(index: Path, edit, recompute: bool) -> None:
    from xel.retrieval.index_files import MANIFEST_CHECKSUM, manifest_sha256

    manifest = json.loads((index / INDEX_MANIFEST).read_text())
    edit(manifest)
    if recompute:
        manifest[MANIFEST_CHECKSUM] = manifest_sha256(manifest)
    (index / INDEX_MANIFEST).write_text(json.dumps(manifest))


def _swap_two_ids(index: Path, manifest: dict) -> None:
    """Swap the first two ids of KB 'en' and record the ids file's new sha256 and row order digest."""
    import hashlib

    from xel.retrieval.vectors import ids_digest

    ids = json.loads((index / "ids-en.json").read_text())
    ids[0], ids[1] = ids[1], ids[0]
    data = (json.dumps(ids) + "\n").encode()
    (index / "ids-en.json").write_bytes(data)
    manifest["langs"]["en"].update(ids_file_sha256=hashlib.sha256(data).hexdigest(), ids_sha256=ids_digest(ids))


@pytest.mark.parametrize("field", ["kind", "ids"])
def test_an_edited_index_manifest_field_is_refused_by_its_checksum(kb_index, field) -> None:
    """Issue 25.3: kind es -> ec, or two ids swapped with the file's sha256 recomputed, loaded and changed
    predictions silently."""
    _, index = kb_index
    edit = (lambda m: m.update(kind="ec")) if field == "kind" else (lambda m: _swap_two_ids(index, m))
    _edit_manifest(index, edit, recompute=False)
    with pytest.raises(RetrievalError, match=r"manifest.json: manifest_sha256 .* differs .* the sha256 of its other "
                                             r"fields .* rerun xel-nn build"):
        load_index(index)


@pytest.mark.parametrize("field", ["kind", "ids"])
def test_an_index_whose_manifest_lies_consistently_is_refused_against_the_store(kb_index, field) -> None:
    """The manifest's checksum recomputed too: the index loads, but its ids and kind are checked against the
    store's rows (their row digests) when the two are used together."""
    from xel.retrieval.candidates import kb_table

    store, index = kb_index
    kb_table(open_store(store), load_index(index))  # untouched: accepted
    edit = (lambda m: m.update(kind="ec")) if field == "kind" else (lambda m: _swap_two_ids(index, m))
    _edit_manifest(index, edit, recompute=True)
    loaded = load_index(index)
    want = r"row 0 is 'Q1', but its row digest is not that of the store's 'es' row" if field == "ids" else \
        r"KB 'de' row 0 is 'Q20', but its row digest is not that of the store's 'ec' row"
    with pytest.raises(StoreError, match=want + r" .* rebuild the index"):
        kb_table(open_store(store), loaded)


def test_an_index_of_a_kind_the_store_lacks_is_refused(kb_index, tmp_path) -> None:
    from xel.retrieval.candidates import kb_table

    store, index = kb_index
    _edit_manifest(index, lambda m: m.update(kind="es+ec"), recompute=True)
    loaded = load_index(index)
    only_es = make_store(tmp_path / "es-only", {"es": open_store(store).load("es")},
                         kb=open_store(store).records("kb"))
    with pytest.raises(StoreError, match=r"indexes feature kind 'es\+ec', but store .* has no 'ec' rows"):
        kb_table(open_store(only_es), loaded)


# ------------------------------------------------------------------------------------------ (c) feature stores


def test_truncated_store_shard_is_named(tmp_path) -> None:
    rng = np.random.default_rng(0)
    ids = [f"Q{i}" for i in range(40)]
    root = make_store(tmp_path / "store", {"es": (ids, rng.standard_normal((40, 8)), ["en"] * 40)}, shard_size=16)
    shard = shard_path(root, "es", 1)
    _truncate(shard)
    with pytest.raises(StoreError, match=rf"{shard}: .*rerun xel-precompute"):
        open_store(root).load("es")


# ------------------------------------------------------------------------------------------ no pickles


def unsafe_loads(source: str) -> list[str]:
    """Calls in ``source`` that can unpickle: ``torch.load`` without ``weights_only=True``, ``pickle``/``dill``/
    ``joblib`` loads, ``allow_pickle=True`` anywhere."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        flag = keywords.get("allow_pickle")
        if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
            found.append(f"line {node.lineno}: {name}(allow_pickle=...)")
        if name.split(".")[-1] in ("load", "loads", "Unpickler") and name.split(".")[0] in (
            "pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle"
        ):
            found.append(f"line {node.lineno}: {name}(...)")
        if name == "torch.load" or name.endswith(".torch.load"):
            weights_only = keywords.get("weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"line {node.lineno}: {name}(...) without weights_only=True")
    return found


def test_the_pickle_detector_finds_what_it_should() -> None:
    bad = ("import torch, pickle, numpy as np\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
           "pickle.load(f)\npickle.loads(b)\nnp.load(p, allow_pickle=True)\n")
    assert len(unsafe_loads(bad)) == 5
    good = "import torch, numpy as np\ntorch.load(p, weights_only=True)\nnp.load(p)\nnp.load(p, allow_pickle=False)\n"
    assert unsafe_loads(good) == []


def test_no_source_file_can_load_a_pickle() -> None:
    files = [p for package in ("precompute", "retrieval", "train", "bench", "data")
             for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 20
    found = {str(p.relative_to(ROOT)): hits for p in files if (hits := unsafe_loads(p.read_text(encoding="utf-8")))}
    assert found == {}, f"calls that can unpickle (use safetensors, or torch.load(weights_only=True)): {found}"
