"""Per-language centring (train.centre, the residual scorer's default): each language's mean is the mean of its
own mentions' rows, no gold is read, the untrained centred scorer ranks as the centred cosine, and the trainer
and the linker centre alike."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import torch
from xel.train.centre import kb_mean, language_means, with_centres
from xel.train.config import TrainConfig
from xel.train.data import Moments
from xel.train.evaluate import pick_best, predict, rank
from xel.train.fit import fit
from xel.train.model import ModelSpec
from xel.train.prepare import prepare
from xel.train.residual import ResidualScorer

from tests.test_residual import DIM, FAST, _mentions
from tests.train_fixtures import synthetic_store


def _two_languages(seed: int = 0):
    m = _mentions(m=20, seed=seed)
    langs = ["en"] * 12 + ["de"] * 8
    return replace(m, langs=langs, ms=m.ms + torch.tensor([3.0 if x == "de" else 0.0 for x in langs])[:, None])


def test_each_languages_mean_is_the_mean_of_its_own_rows_and_the_first_pool_that_has_it_wins() -> None:
    a, b = _two_languages(0), _two_languages(1)
    b = replace(b, langs=["de"] * 10 + ["ru"] * 10)
    means = language_means([a, b])
    assert sorted(means) == ["de", "en", "ru"]
    for lang, pool in (("en", a), ("de", a), ("ru", b)):  # de from the first pool, not b
        rows = np.array([i for i, x in enumerate(pool.langs) if x == lang])
        np.testing.assert_allclose(means[lang][0].numpy(), pool.ms.numpy()[rows].mean(axis=0), rtol=0, atol=1e-5)
        np.testing.assert_allclose(means[lang][1].numpy(), pool.mc.numpy()[rows].mean(axis=0), rtol=0, atol=1e-5)
    centred = with_centres(a, means)
    assert torch.equal(centred.centre[3], means["en"]) and torch.equal(centred.centre[15], means["de"])
    np.testing.assert_allclose(centred.kb.centre.numpy(), np.stack([a.kb.es.numpy().mean(0), a.kb.ec.numpy().mean(0)]),
                               rtol=0, atol=1e-5)
    # the KB's mean covers every KB row when its moments do (load_kb), not only the rows in memory
    every = torch.randn(50, DIM)
    kb = replace(a.kb, moments=(Moments.of(every), Moments.of(every + 1)))
    np.testing.assert_allclose(kb_mean(kb).numpy(), np.stack([every.mean(0), (every + 1).mean(0)]), atol=1e-5)


def test_the_untrained_centred_scorer_ranks_by_the_cosine_of_the_centred_vectors() -> None:
    torch.manual_seed(0)
    data = _two_languages()
    means = language_means([data])
    data = with_centres(data, means)
    spec = ModelSpec(dim=DIM, hs_sizes=(16,), hc_sizes=(8,), final_sizes=(8, 4), dropout=0.0, scorer="residual",
                     feature_groups=("cosines",), centre=True, centre_langs=("de", "en"))
    model = ResidualScorer(spec).eval()
    model.set_language_means(means)
    assert all(torch.equal(model.saved_language_means()[x], means[x]) for x in means)
    ms = data.ms.numpy() - np.stack([means[x][0].numpy() for x in data.langs])
    es = data.kb.es.numpy() - data.kb.es.numpy().mean(axis=0)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    want = np.einsum("md,mkd->mk", unit(ms), unit(es)[data.cand.numpy()])
    np.testing.assert_allclose(rank(model, data).scores.numpy(), want, rtol=0, atol=1e-5)
    assert not np.allclose(want, np.einsum("md,mkd->mk", unit(data.ms.numpy()), unit(data.kb.es.numpy())[data.cand]))
    assert torch.equal(rank(model, data).best_pos, pick_best(torch.from_numpy(want).float(), data).best_pos)


def test_centring_reads_no_target_gold(tmp_path) -> None:
    """A store whose German golds are poisoned (other entities, or NIL) trains and predicts exactly as the
    original: the German mean, its calibration and everything else the trainer computes for German come from the
    mentions' features only."""
    clean = synthetic_store(tmp_path / "clean", langs={"en": 90, "de": 40})
    poisoned = tmp_path / "poisoned"
    shutil.copytree(clean, poisoned)
    path = poisoned / "inputs" / "mentions.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, r in enumerate(rows):
        if r["lang"] == "de":
            r["gold"] = None if i % 3 == 0 else "Q0"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = {}
    for name, store in (("clean", clean), ("poisoned", poisoned)):
        cfg = TrainConfig(features=str(store), epochs=2, tune_nil=True, eval_lang=("en", "de"), **FAST)
        assert cfg.centres
        data = prepare(cfg)
        result = fit(cfg, data, 0, progress=False)
        test = data.splits.test
        out[name] = (data.centres, result.nil_rule, predict(result.test_ranked, test, result.nil_threshold),
                     result.test_ranked.scores, [g for g, x in zip(test.golds, test.langs) if x == "de"])
    (cm, cr, cp, cs, cg), (pm, pr, pp, ps, pg) = out["clean"], out["poisoned"]
    assert cg != pg  # the German golds differ
    assert sorted(cm) == sorted(pm) == ["de", "en"] and all(torch.equal(cm[x], pm[x]) for x in cm)
    assert cr == pr and cp == pp and torch.equal(cs, ps)


def test_epoch_zero_of_the_default_scorer_is_the_centred_cosine_and_no_centre_is_nn(tmp_path) -> None:
    from xel.train.evaluate import nn_scores

    path = synthetic_store(tmp_path / "s", langs={"en": 90, "de": 30})
    for centre in (True, False):
        cfg = TrainConfig(features=str(path), epochs=0, tune_nil=True, centre=centre, **FAST)
        data = prepare(cfg)
        test = data.splits.test
        got = fit(cfg, data, 0, progress=False).test_ranked.scores
        if centre:
            ms = test.ms - test.centre[:, 0]
            es = test.kb.es - test.kb.centre[0]
            want = torch.einsum("md,mkd->mk", torch.nn.functional.normalize(ms, dim=-1),
                                torch.nn.functional.normalize(es, dim=-1)[test.cand])
            assert sorted(data.centres) == ["de", "en"]
        else:
            want = nn_scores(test)
            assert data.centres == {} and test.centre is None
        torch.testing.assert_close(got.masked_fill(~test.cand_mask, 0), want.masked_fill(~test.cand_mask, 0),
                                   rtol=0, atol=1e-5)
