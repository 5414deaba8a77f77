"""Benchmark of the ``xel-train`` step: batched factorised scoring vs a naive per-example loop, and epoch time.

    python -m bench.train                          # from the repo root: 100k mentions x 30 candidates, dim 384
    python -m bench.train --mentions 10000 --entities 10000   # scaled down
    python -m bench.train --scorer residual        # the default scorer: every candidate, listwise softmax

(Run it as a module: as a script, ``bench/train.py`` would shadow the ``train`` package.)

Both sides score the gold and ``--negatives`` negatives of each mention, take the hinge loss and update the
model. The naive loop does it one mention at a time by concatenating ``[ms; es]`` / ``[mc; ec]`` and running the
plain MLPs (:meth:`Ranker.score_concat`). With ``--scorer residual`` both sides score every candidate of a
mention with the residual scorer's features and take the listwise softmax loss; the naive loop builds each
pair's feature vector one pair at a time (cosines, interactions, ``hs``/``hc`` on concatenations) and runs ``g``
on it. Writes ``bench/results/train.json`` (``train-residual.json``) and prints a table.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click
import torch
from torch.nn import functional as F
from xel.train.data import KB, Mentions
from xel.train.evaluate import rank
from xel.train.loop import LoopSettings, Trainer
from xel.train.model import ModelSpec, Ranker
from xel.train.residual import ResidualScorer


def synthetic(mentions: int, entities: int, k: int, dim: int) -> Mentions:
    g = torch.Generator().manual_seed(0)
    kb = KB(ids=[f"Q{i}" for i in range(entities)], index={}, langs=["en"] * entities,
            es=torch.randn(entities, dim, generator=g), ec=torch.randn(entities, dim, generator=g),
            popularity=torch.zeros(entities, 0))
    cand = torch.randint(entities, (mentions, k), generator=g)
    return Mentions(kb=kb, ids=[str(i) for i in range(mentions)], langs=["en"] * mentions, types=[None] * mentions,
                    golds=[kb.ids[int(c)] for c in cand[:, 0]], ms=torch.randn(mentions, dim, generator=g),
                    mc=torch.randn(mentions, dim, generator=g), cand=cand,
                    cand_mask=torch.ones(mentions, k, dtype=torch.bool),
                    gold_pos=torch.zeros(mentions, dtype=torch.long),
                    gold_kb=cand[:, 0].clone())


def naive_pairs_per_s(model: Ranker, data: Mentions, n: int, negatives: int, margin: float, lr: float) -> float:
    opt = torch.optim.Adam(model.linker_parameters(), lr=lr)
    kb = data.kb
    start = time.perf_counter()
    for i in range(n):
        ents = torch.cat([data.gold_kb[i : i + 1], data.cand[i, 1 : 1 + negatives]])
        scores = torch.stack([
            model.score_concat(data.ms[i : i + 1], data.mc[i : i + 1], kb.es[e : e + 1], kb.ec[e : e + 1],
                               kb.popularity[e : e + 1])[0]
            for e in ents.tolist()
        ])
        loss = F.relu(margin - (scores[0] - scores[1:].max()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return n * (1 + negatives) / (time.perf_counter() - start)


def naive_residual_pairs_per_s(model: ResidualScorer, data: Mentions, n: int, lr: float, temperature: float) -> float:
    opt = torch.optim.Adam(model.linker_parameters(), lr=lr)
    kb = data.kb
    start = time.perf_counter()
    for i in range(n):
        scores = []
        for e in data.cand[i].tolist():
            ms, mc, es, ec = data.ms[i], data.mc[i], kb.es[e], kb.ec[e]
            m_sh, e_sh = model.shared(ms[None])[0], model.shared(es[None])[0]
            mc_z, ec_z = model.standardize_contexts(mc[None])[0], model.standardize_contexts(ec[None])[0]
            pm, pe = model.name_projection(m_sh), model.name_projection(e_sh)
            cm, ce = model.context_projection(mc_z), model.context_projection(ec_z)
            pairs = ((ms, es), (mc, ec), (ms, ec), (mc, es))
            parts = [model.hs(torch.cat([m_sh, e_sh])[None])[0], model.hc(torch.cat([mc_z, ec_z])[None])[0],
                     torch.stack([F.cosine_similarity(a, b, dim=0) for a, b in pairs]),
                     pm * pe, (pm - pe).abs(), cm * ce, (cm - ce).abs()]
            scores.append(F.cosine_similarity(ms, es, dim=0) + model.g(torch.cat(parts)[None])[0, 0])
        loss = F.cross_entropy(torch.stack(scores)[None] / temperature, torch.zeros(1, dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return n * data.cand.shape[1] / (time.perf_counter() - start)


@click.command()
@click.option("--mentions", default=100_000, show_default=True)
@click.option("--entities", default=100_000, show_default=True)
@click.option("--candidates", default=30, show_default=True)
@click.option("--dim", default=384, show_default=True)
@click.option("--negatives", default=10, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--naive-mentions", default=300, show_default=True, help="mentions timed in the naive loop")
@click.option("--threads", default=0, show_default=True, help="0: all available cores")
@click.option("--scorer", type=click.Choice(["paper", "residual"]), default="paper", show_default=True)
@click.option("--out", default=None, help="default: bench/results/train.json (train-residual.json)")
def main(mentions: int, entities: int, candidates: int, dim: int, negatives: int, batch_size: int,
         naive_mentions: int, threads: int, scorer: str, out: str | None) -> None:
    threads = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    data = synthetic(mentions, entities, candidates, dim)
    torch.manual_seed(0)
    out = out or f"bench/results/train{'-residual' if scorer == 'residual' else ''}.json"
    residual = scorer == "residual"
    spec = ModelSpec(dim=dim, hs_sizes=(256,), hc_sizes=(256,), final_sizes=(128, 64), dropout=0.1, scorer=scorer,
                     feature_groups=("paper", "cosines", "interactions") if residual else ())
    settings = LoopSettings(lr=1e-3, batch_size=batch_size, negatives=negatives, margin=0.5,
                            loss="softmax" if residual else "hinge")
    build = ResidualScorer if residual else Ranker
    model = build(spec)
    trainer = Trainer(model, data, settings, 0)
    pairs_per_mention = candidates if residual else 1 + negatives
    trainer.main_step(torch.arange(batch_size))  # warm-up
    steps = max(1, min(50, mentions // batch_size))
    start = time.perf_counter()
    for s in range(steps):
        trainer.main_step(torch.arange(s * batch_size, (s + 1) * batch_size) % mentions)
    step_time = time.perf_counter() - start
    batched = steps * batch_size * pairs_per_mention / step_time
    if residual:
        naive = naive_residual_pairs_per_s(build(spec), data, max(1, naive_mentions // 3), 1e-3, 0.05)
    else:
        naive = naive_pairs_per_s(Ranker(spec), data, naive_mentions, negatives, 0.5, 1e-3)
    start = time.perf_counter()
    trainer.epoch(0)
    epoch_s = time.perf_counter() - start
    start = time.perf_counter()
    rank(model, data)
    eval_s = time.perf_counter() - start
    result = {
        "mentions": mentions, "entities": entities, "candidates": candidates, "dim": dim, "negatives": negatives,
        "batch_size": batch_size, "threads": threads, "scorer": scorer,
        "model": "hs 256, hc 256, final 128,64" + (" (g), groups paper+cosines+interactions" if residual else ""),
        "trainer_pairs_per_s": round(batched), "naive_pairs_per_s": round(naive),
        "speedup": round(batched / naive, 1), "epoch_s": round(epoch_s, 2),
        "eval_all_candidates_s": round(eval_s, 2), "eval_pairs_per_s": round(mentions * candidates / eval_s),
        "torch": torch.__version__,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    click.echo("\n".join(f"{k:<{width}}  {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
