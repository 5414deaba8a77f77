"""On a slice of the bundled real sample, with the real encoder: the untrained residual scorer is exactly nn.

Precomputes 110 English (50 of them in test documents) and 40 German sample mentions and a KB of their golds
plus 150 other sample entities with the built multilingual-e5-small, generates candidates, and checks that the
residual scorer before its first step without centring (``--epochs 0 --no-centre``) predicts, for every test
mention, the candidate an independent numpy cosine argmax picks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from xel.precompute.config import PrecomputeConfig
from xel.precompute.run import run as run_precompute
from xel.precompute.store import open_store
from xel.retrieval.build import BuildConfig, run_build
from xel.retrieval.candidate_lists import CandidatesConfig, run_candidates
from xel.retrieval.files import read_candidates
from xel.retrieval.search import SearchOptions
from xel.retrieval.splits import document_of, split_of
from xel.train.config import TrainConfig
from xel.train.evaluate import predict
from xel.train.fit import fit
from xel.train.prepare import prepare

from tests.conftest import write_jsonl
from tests.test_encoder_real import encoder_dir

pytestmark = [pytest.mark.real_encoder, pytest.mark.ray, pytest.mark.slow]
SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"


def _slice(out: Path) -> Path:
    mentions = [json.loads(x) for x in (SAMPLE / "mentions.jsonl").read_text("utf-8").splitlines()]
    kb = [json.loads(x) for x in (SAMPLE / "kb.jsonl").read_text("utf-8").splitlines()]
    english = [m for m in mentions if m["lang"] == "en"]
    held_out = [m for m in english if split_of(document_of(m)) == "test"][:50]
    picked = held_out + [m for m in english if m not in held_out][:60] + [m for m in mentions if m["lang"] == "de"][:40]
    golds = {m["gold"] for m in picked if m["gold"]}
    entries = [e for e in kb if e["id"] in golds] + [e for e in kb if e["id"] not in golds][:150]
    write_jsonl(out / "mentions.jsonl", picked)
    write_jsonl(out / "kb.jsonl", entries)
    return out


def test_untrained_residual_equals_nn_on_the_sample(tmp_path, ray_session) -> None:
    model = encoder_dir()
    if not (model / "xel-encoder.json").is_file():
        pytest.skip(f"no encoder build in {model}: run `xel-encoder build --out {model}`")
    data = _slice(tmp_path / "data")
    store_dir = tmp_path / "h5"
    run_precompute(PrecomputeConfig(data=data, model=model, out=store_dir, dtype="fp32"))
    run_build(BuildConfig(features=str(store_dir), out=str(tmp_path / "index")))
    run_candidates(CandidatesConfig(search=SearchOptions(index=str(tmp_path / "index"), features=str(store_dir)),
                                    out=str(tmp_path / "cands"), k=10))
    cands_file = tmp_path / "cands" / "candidates.jsonl"
    cfg = TrainConfig(features=str(store_dir), candidates=str(cands_file), epochs=0, centre=False, threads=1,
                      progress=False, plots=False, eval_lang=("en", "de"))
    data_ = prepare(cfg)
    result = fit(cfg, data_, 0, progress=False)
    test = data_.splits.test
    preds = predict(result.test_ranked, test, float("-inf"))
    store = open_store(store_dir)
    ids, ms, _ = store.load("ms")
    kb_ids, es, _ = store.load("es")
    unit = lambda x: x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)  # noqa: E731
    ms, es = dict(zip(ids, unit(ms))), dict(zip(kb_ids, unit(es)))
    lists = read_candidates(cands_file)
    checked = 0
    for mid, pred in zip(test.ids, preds):
        cands = [kb for kb, _, _ in lists[mid]][: cfg.max_candidates]
        cos = np.array([ms[mid] @ es[kb] for kb in cands])
        best = [kb for kb, c in zip(cands, cos) if c >= cos.max() - 1e-6]
        assert pred in best, (mid, pred, best)
        checked += 1
    assert checked == len(test) >= 80 and {"en", "de"} <= set(test.langs)
