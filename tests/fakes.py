"""Build small, valid feature stores directly (no encoder), for retrieval and trainer tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from xel.precompute.shards import shard_path, write_shard
from xel.precompute.store import write_manifest, write_records

FAKE_ENCODER = {"name": "fake", "fingerprint": "fake-encoder-0"}


def make_store(
    root: str | Path,
    features: dict[str, tuple[list[str], np.ndarray, list[str]]],
    *,
    kb: list[dict[str, Any]] | None = None,
    mentions: list[dict[str, Any]] | None = None,
    text: list[dict[str, Any]] | None = None,
    encoder: dict[str, Any] | None = None,
    shard_size: int = 1000,
) -> Path:
    """Write a finished store at ``root``: ``features[kind] = (ids, float array [N, D], langs)``; each row's
    row hash is a hash of its vector (what it "encoded")."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, list[dict[str, Any]]] = {}
    dim = None
    for kind, (ids, feats, langs) in features.items():
        feats = np.asarray(feats, dtype=np.float16)
        dim = feats.shape[1]
        shards = []
        for i, start in enumerate(range(0, len(ids), shard_size)):
            end = start + shard_size
            path = shard_path(root, kind, i)
            checksum = write_shard(
                path, kind=kind, start=start, ids=ids[start:end], langs=langs[start:end],
                features=feats[start:end], input_hash="fake",
                row_hashes=[hashlib.sha256(row.tobytes()).hexdigest() for row in feats[start:end]],
            )
            shards.append({"path": str(path.relative_to(root)), "rows": len(ids[start:end]), "checksum": checksum})
        kinds[kind] = shards
    for name, records in (("kb", kb), ("mentions", mentions), ("text", text)):
        write_records(root, name, records or [])
    enc = dict(encoder or FAKE_ENCODER)
    enc.setdefault("fingerprint", hashlib.sha256(json.dumps(enc, sort_keys=True).encode()).hexdigest())
    write_manifest(root, encoder=enc, model=None, layer=-1, max_length=512, prefix="", dtype="fp32", dim=dim,
                   shards=kinds)
    return root
