"""Shared fixtures: a tiny random encoder, a tiny dataset, a tiny store, and one Ray runtime per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# FAISS/torch OpenMP threads sleep instead of spinning between calls: on a busy machine spinning made faiss tests
# 20x slower (a preset test 51 s instead of 2 s); set before either library is imported
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _installed_from_this_checkout() -> None:
    """An editable install maps ``xel.*`` to the checkout that ran ``pip install -e``: tests run from another
    checkout (a git worktree, a second clone) with that environment would test the other checkout's code."""
    import xel.train

    here = Path(__file__).resolve().parent.parent
    got = Path(xel.train.__file__).resolve().parent.parent
    if got != here:
        pytest.exit(f"xel is installed from {got}, not from this checkout ({here}): run "
                    "`pip install -e '.[encoder,dev]'` here, in its own virtual environment", returncode=4)


_installed_from_this_checkout()

KB = [
    {"id": "Q1", "name": "Barack Obama", "description": "44th president of the United States", "lang": "en",
     "links": 10},
    {"id": "Q2", "name": "Moscow", "description": "capital of Russia", "lang": "en", "links": 5},
    {"id": "Q3", "name": "Senate of the Republic", "description": None, "lang": "en", "links": None},
    {"id": "Q4", "name": "Beijing", "description": "capital of the People's Republic of China", "lang": "en",
     "links": 7},
    {"id": "Q5", "name": "Angela Merkel", "description": "Chancellor of Germany from 2005 to 2021", "lang": "en",
     "links": 3},
]
LONG = " ".join(["Paris is the capital of France and Berlin is the capital of Germany."] * 6)
MENTIONS = [
    {"id": "m1", "lang": "en", "sentence": "Barack Obama visited Moscow in 2009.", "start": 0, "end": 12,
     "context": "Barack Obama visited Moscow in 2009.", "gold": "Q1", "type": "PER"},
    {"id": "m2", "lang": "en", "sentence": "Barack Obama visited Moscow in 2009.", "start": 21, "end": 27,
     "context": "Barack Obama visited Moscow in 2009. It was cold.", "gold": "Q2", "type": "GPE"},
    {"id": "m3", "lang": "ru", "sentence": "Бывший президент США Барак Обама с женой Мишель.", "start": 21,
     "end": 32, "context": "Бывший президент США Барак Обама с женой Мишель.", "gold": "Q1", "type": "PER"},
    {"id": "m4", "lang": "zh", "sentence": "北京是中华人民共和国的首都。", "start": 0, "end": 2,
     "context": "北京是中华人民共和国的首都。", "gold": "Q4", "type": "GPE"},
    {"id": "m5", "lang": "de", "sentence": "Angela Merkel war Bundeskanzlerin", "start": 7, "end": 13,
     "context": "Angela Merkel war Bundeskanzlerin", "gold": "Q5", "type": "PER"},
    {"id": "m6", "lang": "en", "sentence": LONG + " Obama", "start": len(LONG) + 1, "end": len(LONG) + 6,
     "context": LONG + " Obama", "gold": None},
    {"id": "m7", "lang": "es", "sentence": "El Senado de la República aprobó la ley.", "start": 3, "end": 9,
     "context": "El Senado de la República aprobó la ley.", "gold": "Q3", "type": "ORG"},
]
TEXT = [
    {"id": "t1", "lang": "en", "text": "London and Tokyo are large cities."},
    {"id": "t2", "lang": "ru", "text": "Бывший президент США."},
]


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """CLI tests run entry points in this process (``xel-train --threads``, ``xel-detect``), which set torch's
    process-wide thread count: restore it after each test, so that no test's float sums depend on which tests ran
    before it."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tests.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    data = tmp_path / "data"
    write_jsonl(data / "kb.jsonl", KB)
    write_jsonl(data / "mentions.jsonl", MENTIONS)
    write_jsonl(data / "text.jsonl", TEXT)
    return data


@pytest.fixture(scope="session")
def capital_stores(tmp_path_factory, tiny_model_dir, ray_session) -> Path:
    """The capital-cities data (:func:`tests.train_fixtures.capital_cities`) precomputed on the tiny model, indexed,
    and its candidates (``k=5``), laid out as xel-experiment lays them out: ``<root>/data``, ``<root>/h5``,
    ``<root>/index``, ``<root>/candidates``. Read only: :func:`capital_run` trains on it, and a test that needs the
    same store beside stores of its own (``tests/test_link_other_kb.py``) copies it."""
    from xel.precompute.config import PrecomputeConfig
    from xel.precompute.run import run as run_precompute
    from xel.retrieval.build import BuildConfig, run_build
    from xel.retrieval.candidate_lists import CandidatesConfig, run_candidates
    from xel.retrieval.search import SearchOptions

    from tests.train_fixtures import capital_cities

    root = tmp_path_factory.mktemp("capital-run")
    data = capital_cities(root / "data")
    run_precompute(PrecomputeConfig(data=data, model=tiny_model_dir, out=root / "h5", dtype="fp32"))
    run_build(BuildConfig(features=str(root / "h5"), out=str(root / "index")))
    run_candidates(CandidatesConfig(search=SearchOptions(index=str(root / "index"), features=str(root / "h5")),
                                    out=str(root / "candidates"), k=5))
    return root


@pytest.fixture(scope="session")
def capital_run(capital_stores) -> Path:
    """A residual run trained end to end on :func:`capital_stores`: the run ``<root>/train/en`` beside the store's
    ``<root>/h5``, ``<root>/index`` and ``<root>/candidates``. Shared by the linker's and the detector's tests; a
    test that writes into the run works on a copy."""
    from xel.train import nil as train_nil
    from xel.train.config import TrainConfig
    from xel.train.run import run as run_train

    root = capital_stores
    out = root / "train" / "en"
    with pytest.MonkeyPatch.context() as patch:  # 10 German mentions: calibrate them, so the linker must too
        patch.setattr(train_nil, "MIN_CALIBRATION_MENTIONS", 3)
        run_train(TrainConfig(features=str(root / "h5"), candidates=str(root / "candidates" / "candidates.jsonl"),
                              out=str(out), train_lang=("en",), epochs=3, tune_nil=True, plots=False, progress=False,
                              threads=1))
    return out


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray runtime (2 CPUs) for all tests that need one; precompute joins it. Its workers run at the
    niceness xel-precompute's own local Ray gives them (``precompute/ray_session.py``), not at Ray's default of 15,
    at which the encoder actors got a small share of the CPU whenever anything else ran beside the suite."""
    ray = pytest.importorskip("ray")
    from xel.precompute.ray_session import WORKER_NICENESS, environment

    if not ray.is_initialized():
        with environment({WORKER_NICENESS: os.environ.get(WORKER_NICENESS, "0")}):  # read by the raylet
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_model_dir, ray_session) -> Path:
    """A store written by the real precompute on the tiny model and tiny data (fp32, shard size 3)."""
    from xel.precompute.config import PrecomputeConfig
    from xel.precompute.run import run

    root = tmp_path_factory.mktemp("store")
    data = root / "data"
    write_jsonl(data / "kb.jsonl", KB)
    write_jsonl(data / "mentions.jsonl", MENTIONS)
    write_jsonl(data / "text.jsonl", TEXT)
    out = root / "h5"
    run(PrecomputeConfig(data=data, model=tiny_model_dir, out=out, dtype="fp32", shard_size=3))
    return out
