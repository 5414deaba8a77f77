"""The ONNX Runtime backend (``--backend onnx``, ``--dtype int8``) and ``--dtype auto`` on the tiny model."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from xel.precompute import onnx_backend
from xel.precompute.cli import main
from xel.precompute.config import PrecomputeConfig, PrecomputeError
from xel.precompute.encoding import TextEncoder
from xel.precompute.hardware import auto_dtype
from xel.precompute.identity import EncodeError
from xel.precompute.items import context_item, entity_item, mention_item
from xel.precompute.run import run
from xel.precompute.settings import resolve_encoder
from xel.precompute.store import open_store

from tests.conftest import LONG, MENTIONS
from tests.tiny import build_tiny_model

pytest.importorskip("onnxruntime")

ITEMS = [
    mention_item("m1", "en", "Barack Obama visited Moscow in 2009.", 0, 12),
    mention_item("m2", "ru", "Бывший президент США Барак Обама с женой Мишель.", 21, 32),
    context_item("c1", "en", LONG + " Obama", LONG + " Obama", len(LONG) + 1, len(LONG) + 6),  # windowed
    entity_item("e1", "zh", "北京是中华人民共和国的首都"),
    entity_item("e2", "en", "Paris"),  # short: padded in its batch
    entity_item("e3", "de", "Angela Merkel war Bundeskanzlerin der Bundesrepublik Deutschland."),
]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture
def in_cache(onnx_cache, monkeypatch) -> Path:
    monkeypatch.setenv(onnx_backend.CACHE_ENV, str(onnx_cache))
    return onnx_cache


@pytest.mark.parametrize("layer", [-1, 1])
def test_onnx_fp32_equals_torch(tiny_model_dir, in_cache, layer):
    torch_enc = TextEncoder.load(resolve_encoder(tiny_model_dir, dtype="fp32", device="cpu", layer=layer))
    onnx_enc = TextEncoder.load(resolve_encoder(tiny_model_dir, dtype="fp32", device="cpu", layer=layer,
                                                backend="onnx"))
    assert onnx_enc.backend == "onnx" and torch_enc.backend == "torch"
    want, got = torch_enc.encode(ITEMS), onnx_enc.encode(ITEMS)
    assert cosine(want, got).min() >= 0.9999
    # batched in one forward (with padding) equals one text at a time
    one_by_one = np.concatenate([onnx_enc.encode([it]) for it in ITEMS])
    np.testing.assert_allclose(got.astype(np.float32), one_by_one.astype(np.float32), atol=2e-3)


def test_several_layers_in_one_forward_equal_each_layer_alone_on_both_backends(tiny_model_dir, in_cache):
    """The mention detector's token features: ``hidden(ids, layers)`` concatenates the layers' hidden states."""
    from xel.detect.tokens import token_features

    texts = [it.text for it in ITEMS]
    for backend in ("torch", "onnx"):
        encoders = {x: TextEncoder.load(resolve_encoder(tiny_model_dir, dtype="fp32", device="cpu", layer=x,
                                                        backend=backend)) for x in (1, -1)}
        both = token_features(encoders[-1], texts, (1, -1))
        alone = [token_features(encoders[x], texts) for x in (1, -1)]
        for got, a, b in zip(both, *alone):
            np.testing.assert_allclose(got.features.astype(np.float32),
                                       np.concatenate([a.features, b.features], axis=1).astype(np.float32),
                                       atol=2e-3)
            assert not np.allclose(a.features, b.features, atol=1e-2)  # two different layers


def test_int8_runs_and_agrees_with_torch(tiny_model_dir, in_cache):
    settings = resolve_encoder(tiny_model_dir, dtype="int8", device="cpu")
    assert settings.backend == "onnx"  # int8 picks the onnx backend
    int8 = TextEncoder.load(settings)
    want = TextEncoder.load(resolve_encoder(tiny_model_dir, dtype="fp32", device="cpu")).encode(ITEMS)
    got = int8.encode(ITEMS)
    assert np.isfinite(got).all()
    assert cosine(want, got).min() >= 0.98
    assert not np.array_equal(want, got)  # it did run quantised
    path = onnx_backend.model_path(tiny_model_dir, settings.identity["fingerprint"], "int8")
    import onnx

    nodes = onnx.load(str(path)).graph.node
    ops = {node.op_type for node in nodes}
    assert "DynamicQuantizeLinear" in ops and ({"MatMulInteger", "DynamicQuantizeMatMul"} & ops)
    # the feed-forward down-projections stay fp32 (QUANTIZE["fp32_nodes"])
    kept = onnx_backend.ffn_down_projections(onnx_backend.model_path(tiny_model_dir, settings.identity["fingerprint"],
                                                                     "fp32"))
    assert len(kept) == 2  # one per layer of the tiny model
    assert {n.name for n in nodes if n.op_type == "MatMul"} >= set(kept)


def test_the_cache_is_built_once_even_by_racing_actors(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_backend.CACHE_ENV, str(tmp_path / "cache"))
    calls = {"export": 0, "quantize": 0}
    export, quantize = onnx_backend.export_fp32, onnx_backend.quantize_int8

    def counted_export(*args):
        calls["export"] += 1
        return export(*args)

    def counted_quantize(*args):
        calls["quantize"] += 1
        return quantize(*args)

    monkeypatch.setattr(onnx_backend, "export_fp32", counted_export)
    monkeypatch.setattr(onnx_backend, "quantize_int8", counted_quantize)
    fingerprint = resolve_encoder(tiny_model_dir).identity["fingerprint"]
    paths, errors = [], []

    def build() -> None:
        try:
            paths.append(onnx_backend.model_path(tiny_model_dir, fingerprint, "int8"))
        except Exception as e:  # noqa: BLE001 - the test reports it below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(paths)) == 1 and paths[0].is_file()
    assert calls == {"export": 1, "quantize": 1}
    TextEncoder.load(resolve_encoder(tiny_model_dir, dtype="int8", device="cpu"))
    TextEncoder.load(resolve_encoder(tiny_model_dir, dtype="fp32", backend="onnx", device="cpu"))
    assert calls == {"export": 1, "quantize": 1}  # loads reuse the cache
    leftovers = [p.name for p in (tmp_path / "cache" / fingerprint[:16]).iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


VNNI = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
AVX_VNNI = "processor\t: 0\nflags\t\t: fpu sse avx2 avx_vnni\n"
AVX2 = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n"
AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n"


@pytest.mark.parametrize("cpuinfo,gate,want", [
    (VNNI, True, "int8"), (AVX_VNNI, True, "int8"),
    (VNNI, None, "fp32"), (VNNI, False, "fp32"),  # no int8 unless the quality gate passed for this encoder
    (AVX2, True, "fp32"), (AVX2, None, "fp32"),  # this machine's kind: no VNNI
    (AMX, True, "bf16"),
])
def test_auto_dtype_from_cpu_flags(cpuinfo, gate, want):
    dtype, reason = auto_dtype(on_gpu=False, cpuinfo=cpuinfo, int8_gate=gate)
    assert dtype == want and reason
    assert auto_dtype(on_gpu=True, cpuinfo=cpuinfo, int8_gate=gate)[0] == "bf16"


VNNI_CPU = "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
PLAIN_CPU = "flags\t\t: fpu sse2 avx2\n"


def test_auto_is_left_to_where_the_encoder_runs_and_reads_the_gate_verdict(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_backend, "GATE_FILE", tmp_path / "int8_gate.json")
    settings = resolve_encoder(tiny_model_dir, device="cpu")
    assert (settings.dtype, settings.backend) == ("auto", None)  # the driver decides nothing machine-dependent
    here = settings.resolved(cpuinfo=VNNI_CPU)
    assert (here.dtype, here.backend) == ("fp32", "torch") and "was not run" in here.dtype_reason
    onnx_backend.record_gate(settings.identity["fingerprint"], {"passed": True})
    assert onnx_backend.gate_passed(settings.identity["fingerprint"]) is True
    here = settings.resolved(cpuinfo=VNNI_CPU)
    assert (here.dtype, here.backend) == ("int8", "onnx") and "passed" in here.dtype_reason
    assert here.encoded_with() == {"dtype": "int8", "backend": "onnx", "device": "cpu",
                                   "dtype_reason": here.dtype_reason}
    assert settings.resolved(cpuinfo=PLAIN_CPU).dtype == "fp32"  # another machine, the same settings
    assert resolve_encoder(tiny_model_dir, device="cpu", backend="torch").resolved(cpuinfo=VNNI_CPU).dtype == "fp32"
    onnx_backend.record_gate(settings.identity["fingerprint"], {"passed": False})
    assert "failed" in settings.resolved(cpuinfo=VNNI_CPU).dtype_reason
    monkeypatch.setattr(onnx_backend, "QUANTIZE", {**onnx_backend.QUANTIZE, "per_channel": False})
    assert onnx_backend.gate_passed(settings.identity["fingerprint"]) is None  # a verdict holds for its recipe only


def test_each_shard_records_the_dtype_its_own_machine_chose(tiny_data, tiny_model_dir, tmp_path, monkeypatch):
    """Two workers with the same (auto) settings on machines with different CPU flags: each shard records what its
    worker ran, and the manifest says which rows ran what (the driver's CPU decides nothing)."""
    from xel.precompute import hardware
    from xel.precompute.config import run_settings
    from xel.precompute.plan import plan_tasks
    from xel.precompute.run import encoders_of
    from xel.precompute.schema import scan_inputs
    from xel.precompute.shards import read_shard
    from xel.precompute.worker import ShardWorker

    monkeypatch.setattr(onnx_backend, "GATE_FILE", tmp_path / "int8_gate.json")
    monkeypatch.setenv(onnx_backend.CACHE_ENV, str(tmp_path / "cache"))
    settings = resolve_encoder(tiny_model_dir, device="cpu")
    onnx_backend.record_gate(settings.identity["fingerprint"], {"passed": True})
    cfg = PrecomputeConfig(data=tiny_data, model=tiny_model_dir, out=tmp_path / "h5", kinds=("ms", "es"))
    tasks = plan_tasks(cfg, scan_inputs(tiny_data), run_settings(cfg, settings)).tasks
    ran, real_flags = {}, hardware.cpu_flags
    for kind, flags in (("ms", VNNI_CPU), ("es", PLAIN_CPU)):  # what each worker's /proc/cpuinfo says
        monkeypatch.setattr(hardware, "cpu_flags", lambda cpuinfo=None, flags=flags: real_flags(flags))
        result = ShardWorker(settings, threads=1).run(tasks[kind][0])
        shard = read_shard(tasks[kind][0].path)
        assert shard.encoded_with == result["encoded_with"]
        ran[kind] = shard.encoded_with
    assert (ran["ms"]["dtype"], ran["ms"]["backend"]) == ("int8", "onnx")
    assert (ran["es"]["dtype"], ran["es"]["backend"]) == ("fp32", "torch")
    entries = {kind: [{"rows": tasks[kind][0].rows, **ran[kind]}] for kind in ran}
    fields = encoders_of(entries, settings)
    most = max(ran, key=lambda kind: tasks[kind][0].rows)
    assert fields["dtype"] == ran[most]["dtype"]
    assert sorted((e["dtype"], e["rows"]) for e in fields["encoded_with"]) == \
        sorted((ran[kind]["dtype"], tasks[kind][0].rows) for kind in ran)


@pytest.mark.parametrize("backend,dtype,device,message", [
    ("torch", "int8", "cpu", "dtype 'int8' does not run on backend 'torch'"),
    ("onnx", "bf16", "cpu", "dtype 'bf16' does not run on backend 'onnx'"),
    ("onnx", "fp32", "cuda", "backend onnx runs on the CPU"),
])
def test_impossible_backend_and_dtype_are_refused(tiny_model_dir, backend, dtype, device, message, monkeypatch):
    with pytest.raises(EncodeError, match=message):
        resolve_encoder(tiny_model_dir, dtype=dtype, device=device, backend=backend)


def test_cli_refuses_int8_on_torch_with_a_clear_message(tiny_data, tiny_model_dir, tmp_path):
    result = CliRunner().invoke(main, ["--data", str(tiny_data), "--model", str(tiny_model_dir), "--out",
                                       str(tmp_path / "h5"), "--backend", "torch", "--dtype", "int8"])
    assert result.exit_code != 0
    assert "dtype 'int8' does not run on backend 'torch'" in result.output
    assert not (tmp_path / "h5").exists()


@pytest.mark.ray
def test_int8_store_records_its_backend_and_refuses_fp32_appends(tiny_data, tiny_model_dir, tmp_path, ray_session):
    out = tmp_path / "h5"
    run(PrecomputeConfig(data=tiny_data, model=tiny_model_dir, out=out, kinds=("ms", "es"), dtype="int8"))
    store = open_store(out)
    assert (store.manifest["dtype"], store.manifest["backend"]) == ("int8", "onnx")
    # a query encodes exactly as the store did (xel-nn query builds its encoder from the manifest)
    query = TextEncoder.from_manifest(store.manifest, device="cpu")
    assert query.backend == "onnx" and query.dtype == "int8"
    ids, features, _ = store.load("ms")
    wanted = [mention_item(m["id"], m["lang"], m["sentence"], m["start"], m["end"]) for m in MENTIONS]
    assert [it.id for it in wanted] == ids
    np.testing.assert_array_equal(query.encode(wanted), features)
    changed = {**store.manifest, "settings": {**store.manifest["settings"], "quantization": {"per_channel": False}}}
    with pytest.raises(EncodeError, match="queries would not encode as the store did"):
        TextEncoder.from_manifest(changed, device="cpu")
    for dtype, backend, refused in (("fp32", None, "dtype: store has 'int8', this run asks 'fp32'"),
                                    ("fp32", "onnx", "dtype: store has 'int8', this run asks 'fp32'"),
                                    ("auto", None, "this run asks")):
        with pytest.raises(PrecomputeError, match=refused):
            run(PrecomputeConfig(data=tiny_data, model=tiny_model_dir, out=out, kinds=("ms", "es"), dtype=dtype,
                                 backend=backend))
    summary = run(PrecomputeConfig(data=tiny_data, model=tiny_model_dir, out=out, kinds=("ms", "es"), dtype="int8"))
    assert summary["encoded_shards"] == 0  # the same settings resume


@pytest.mark.ray
def test_onnx_fp32_store_is_not_a_torch_fp32_store(tiny_data, tiny_model_dir, tmp_path, ray_session):
    out = tmp_path / "h5"
    run(PrecomputeConfig(data=tiny_data, model=tiny_model_dir, out=out, kinds=("es",), dtype="fp32", backend="onnx"))
    with pytest.raises(PrecomputeError, match="backend: store has 'onnx', this run asks 'torch'"):
        run(PrecomputeConfig(data=tiny_data, model=tiny_model_dir, out=out, kinds=("es",), dtype="fp32"))


@pytest.fixture(scope="module")
def other_export(tmp_path_factory) -> Path:
    """Another model's exported ``model.onnx`` (the tiny model with another seed): the same graph, other weights."""
    root = tmp_path_factory.mktemp("other-onnx")
    out = root / "model.onnx"
    onnx_backend.export_fp32(build_tiny_model(root / "model", seed=1), out)
    return out


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_a_tampered_onnx_cache_is_refused_naming_the_file_and_the_fix(tiny_model_dir, tmp_path, monkeypatch,
                                                                      other_export, dtype):
    """Issue 25.1: another model's model.onnx copied over the cached export was trusted: the store recorded the
    clean fingerprint and its features differed."""
    monkeypatch.setenv(onnx_backend.CACHE_ENV, str(tmp_path / "cache"))
    settings = resolve_encoder(tiny_model_dir, dtype=dtype, backend="onnx", device="cpu")
    built = onnx_backend.model_path(tiny_model_dir, settings.identity["fingerprint"], dtype)
    record = json.loads((built.parent / onnx_backend.BUILD_FILE).read_text())
    assert set(record["files"]) == {"model.onnx"} and len(record["files"]["model.onnx"]) == 64
    shutil.copyfile(other_export, built)
    with pytest.raises(onnx_backend.OnnxBackendError,
                       match=rf"{built}: sha256 .* differs from the .* recorded in build.json .* delete {built.parent} "
                             "and rerun"):
        TextEncoder.load(settings)
    shutil.rmtree(built.parent)  # the fix the message names: built again, then it loads
    assert np.isfinite(TextEncoder.load(settings).encode(ITEMS[:2])).all()


def test_a_cache_built_without_a_record_is_built_again(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_backend.CACHE_ENV, str(tmp_path / "cache"))
    fingerprint = resolve_encoder(tiny_model_dir).identity["fingerprint"]
    path = onnx_backend.model_path(tiny_model_dir, fingerprint, "fp32")
    (path.parent / onnx_backend.BUILD_FILE).unlink()  # as an older xel left it
    path.write_bytes(b"not a model")
    assert onnx_backend.model_path(tiny_model_dir, fingerprint, "fp32") == path
    assert onnx_backend.check_build(path.parent)
    TextEncoder.load(resolve_encoder(tiny_model_dir, dtype="fp32", backend="onnx", device="cpu"))


def test_a_file_added_to_the_cache_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_backend.CACHE_ENV, str(tmp_path / "cache"))
    fingerprint = resolve_encoder(tiny_model_dir).identity["fingerprint"]
    path = onnx_backend.model_path(tiny_model_dir, fingerprint, "fp32")
    (path.parent / "model.onnx.data").write_bytes(b"external weights")
    with pytest.raises(onnx_backend.OnnxBackendError, match=r"holds files \['model.onnx', 'model.onnx.data'\]"):
        onnx_backend.model_path(tiny_model_dir, fingerprint, "fp32")


@pytest.mark.ray
def test_precompute_on_a_tampered_onnx_cache_stops_with_one_line(tiny_data, tiny_model_dir, tmp_path, monkeypatch,
                                                                 other_export, ray_session):
    monkeypatch.setenv(onnx_backend.CACHE_ENV, str(tmp_path / "cache"))
    fingerprint = resolve_encoder(tiny_model_dir).identity["fingerprint"]
    fp32 = onnx_backend.model_path(tiny_model_dir, fingerprint, "fp32")
    shutil.copyfile(other_export, fp32)
    result = CliRunner().invoke(main, ["--data", str(tiny_data), "--model", str(tiny_model_dir), "--out",
                                       str(tmp_path / "h5"), "--backend", "onnx", "--dtype", "fp32", "--kinds", "es"])
    assert result.exit_code == 1, result.output
    assert f"{fp32}: sha256" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "h5" / "manifest.json").exists()


def test_int8_without_the_onnx_runtime_is_refused_before_any_work_naming_the_extra(tiny_data, tiny_model_dir,
                                                                                    tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    out = tmp_path / "h5"
    result = CliRunner().invoke(main, ["--data", str(tiny_data), "--model", str(tiny_model_dir), "--out", str(out),
                                       "--dtype", "int8"])
    assert result.exit_code == 1
    assert "needs onnxruntime" in result.output and "pip install -e '.[encoder]'" in result.output
    assert not (out / "manifest.json").exists()


def test_auto_that_would_pick_int8_without_the_onnx_runtime_is_refused_before_ray(tiny_data, tiny_model_dir,
                                                                                 tmp_path, monkeypatch):
    """--dtype auto (the default) on a VNNI CPU, int8 passed the gate: a missing runtime is named before Ray."""
    import importlib.util

    import ray
    from xel.precompute import hardware

    monkeypatch.setattr(onnx_backend, "GATE_FILE", tmp_path / "int8_gate.json")
    onnx_backend.record_gate(resolve_encoder(tiny_model_dir).identity["fingerprint"], {"passed": True})
    real_flags, real_spec = hardware.cpu_flags, importlib.util.find_spec
    monkeypatch.setattr(hardware, "cpu_flags", lambda cpuinfo=None: real_flags(VNNI_CPU))
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real_spec(name, *a))
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started before the dependency check"))
    out = tmp_path / "h5"
    result = CliRunner().invoke(main, ["--data", str(tiny_data), "--model", str(tiny_model_dir), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "needs onnxruntime" in result.output and "--dtype auto on a CPU with VNNI" in result.output
    assert not (out / "manifest.json").exists()



def test_the_int8_gate_is_one_sided():
    """int8 above fp32 (NIL-threshold noise) passes; more than 0.01 below, or a row cosine under 0.99, fails."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "bench" / "int8_gate.py"
    spec = importlib.util.spec_from_file_location("int8_gate", path)
    gate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gate)
    good = {"ms": np.array([0.999, 0.995]), "es": np.array([0.998, 0.994])}
    gated = ("dense R@10", "ranker F1")
    pairs = {"dense R@10": {"all": (0.90, 0.89), "lang:de": (0.78, 0.79)},  # -0.01 exactly, and better
             "ranker F1": {"all": (0.60, 0.70)},  # far better: passes
             "nn F1": {"all": (0.60, 0.40)}}  # shown, not gated
    assert gate.gate_failures(good, pairs, gated) == []
    worse = {**pairs, "ranker F1": {"all": (0.60, 0.589), "lang:en": (0.70, 0.70)}}
    assert gate.gate_failures(good, worse, gated) == ["ranker F1 all"]
    assert gate.gate_failures({**good, "es": np.array([0.999, 0.989])}, pairs, gated) == ["cos es min"]
