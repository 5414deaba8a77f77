"""Train a run's mention detector: ``xel-detect --model RUN [--data MENTIONS] [--lang en]`` writes ``RUN/detector/``.

The training sentences are the ``--lang`` sentences of the ``train`` documents of ``--data`` (default: the
mentions the run's store was computed from, ``<store>/inputs/mentions.jsonl``), grouped by sentence
(:mod:`detect.spans`); the ``dev`` and ``test`` documents are held out and scored (span P/R/F1, exact match).
Token features come from the run's own encoder (its store's settings), are computed once and cached in
``RUN/detector/tokens-<hash>.npz`` (the hash covers the encoder and the texts): a rerun with other epochs or
another seed reads them back instead of encoding again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from xel.detect.detector import DETECTOR_DIR, Detector, DetectorError, check_layers, default_layers, encoder_signature
from xel.detect.metrics import prf
from xel.detect.spans import SpanSentence, read_span_sentences, span_stats
from xel.detect.tagger import decode, fit, tag, token_labels
from xel.detect.tokens import TokenFeatures, feature_dim, token_features
from xel.link.run_files import resolve_run_config
from xel.precompute.encoding import TextEncoder
from xel.precompute.settings import EncoderSettings
from xel.precompute.store import open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectConfig:
    model: str  # the run directory (xel-train's: config.json names the store)
    data: str | None = None  # a mentions file or directory; None: the store's inputs/mentions.jsonl
    lang: str = "en"
    epochs: int = 20
    seed: int = 0
    hidden: int = 64
    layers: tuple[int, ...] | None = None  # the hidden states tagged, concatenated; None: the middle and the last
    device: str = "auto"


def cached_features(folder: Path, encoder: TextEncoder, settings: EncoderSettings, texts: list[str],
                    layers: tuple[int, ...] | None = None) -> list[TokenFeatures]:
    """The token features of ``texts``, from ``folder/tokens-<hash>.npz`` when it holds them, else encoded once
    and written there (older caches removed)."""
    key = hashlib.sha256(json.dumps([encoder_signature(settings, layers), texts],
                                    ensure_ascii=False).encode()).hexdigest()
    path = folder / f"tokens-{key[:16]}.npz"
    if path.is_file():
        with np.load(path) as cache:
            feats, offs, lengths = cache["features"], cache["offsets"], cache["lengths"]
        log.info("token features of %d texts read from %s", len(texts), path)
        cuts = np.cumsum(lengths)[:-1]
        return [TokenFeatures(f, o) for f, o in zip(np.split(feats, cuts), np.split(offs, cuts))]
    t0 = time.perf_counter()
    out = token_features(encoder, texts, layers)
    log.info("encoded %d texts (%d tokens) in %.1f s", len(texts), sum(map(len, out)), time.perf_counter() - t0)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("tokens-*.npz"):
        old.unlink()
    tmp = folder / f".{path.name}.tmp.npz"
    np.savez(tmp, features=np.concatenate([f.features for f in out]) if out else
             np.zeros((0, feature_dim(encoder, layers))),
             offsets=np.concatenate([f.offsets for f in out]) if out else np.zeros((0, 2), np.int64),
             lengths=np.asarray([len(f) for f in out], dtype=np.int64))
    tmp.replace(path)
    return out


def by_corpus(sentences: list[SpanSentence]) -> dict[str, list[int]]:
    """The positions of ``sentences`` per corpus (:attr:`detect.spans.SpanSentence.corpus`)."""
    out: dict[str, list[int]] = {}
    for i, s in enumerate(sentences):
        out.setdefault(s.corpus, []).append(i)
    return out


def score(sentences: list[SpanSentence], found: list[list[tuple[int, int]]]) -> dict[str, float | int]:
    return prf([s.spans for s in sentences], found)


def run(cfg: DetectConfig) -> dict[str, Any]:
    """Train and save ``RUN/detector/``; returns its ``detector.json`` content."""
    run_dir = Path(cfg.model)
    train_cfg = resolve_run_config(run_dir)
    store = open_store(train_cfg.features)
    data = Path(cfg.data) if cfg.data else store.root / "inputs" / "mentions.jsonl"
    sentences = [s for s in read_span_sentences(data) if s.lang == cfg.lang]
    train = [s for s in sentences if s.split == "train"]  # with sentences that hold no mention: they teach O
    held = [s for s in sentences if s.split != "train"]
    if not any(s.spans for s in train):
        raise DetectorError(f"{data}: no {cfg.lang!r} sentences with mentions in its train documents; the detector "
                            "learns from them (--lang names the language with annotations)")
    settings = EncoderSettings.from_manifest(store.manifest, device=cfg.device)
    encoder = TextEncoder.load(settings)
    layers = check_layers(encoder, cfg.layers or default_layers(encoder))
    folder = run_dir / DETECTOR_DIR
    t0 = time.perf_counter()
    feats = cached_features(folder, encoder, settings, [s.text for s in train + held], layers)
    encode_s = time.perf_counter() - t0
    labels = [token_labels(f.offsets, s.spans) for f, s in zip(feats, train)]
    t0 = time.perf_counter()
    tagger, losses = fit([f.features for f in feats[: len(train)]], labels, epochs=cfg.epochs, seed=cfg.seed,
                         hidden=cfg.hidden)
    train_s = time.perf_counter() - t0
    held_feats = feats[len(train):]
    probs = tag(tagger, [f.features for f in held_feats])
    found = [[(x.start, x.end) for x in decode(s.text, f.offsets, p)] for s, f, p in zip(held, held_feats, probs)]
    info = {"encoder": encoder_signature(settings, layers), "dim": feature_dim(encoder, layers), "hidden": cfg.hidden,
            "config": asdict(cfg), "data": str(data), "data_stats": span_stats(sentences),
            "train_sentences": len(train), "train_tokens": int(sum(len(f) for f in feats[: len(train)])),
            "losses": [round(x, 5) for x in losses], "encode_seconds": round(encode_s, 1),
            "train_seconds": round(train_s, 1), "held_out": score(held, found) if held else None,
            "held_out_by_corpus": {corpus: score([held[i] for i in rows], [found[i] for i in rows])
                                   for corpus, rows in by_corpus(held).items()}}
    Detector(encoder, tagger, info).save(folder)
    return info
