"""The mention detector of a trained run, ``RUN/detector/``: a :class:`detect.tagger.SpanTagger` on the token
features of the run's own encoder (its training store's: same model files, dtype, prefix, max length), read at
the detector's own layer: by default the middle of the network (:func:`middle_layer`), whose token features hold
more of the word and its neighbours than the last layer's, which a sentence-embedding model such as e5 trains
for its pooled vector (``bench/detect.py --layer`` measures the choice). The linker's encoder is shared: the
detector reads another of its layers, with no second copy of the model.

``xel-detect --model RUN`` writes it (:mod:`detect.train`); ``xel-link --detect``, ``Linker.link_text`` and
``xel-serve`` read it. The directory holds ``tagger.safetensors`` (the weights), ``detector.json`` (the encoder
it was trained on, its settings, the training data's counts, the losses and the English dev scores) and
``tokens-*.npz`` (the cached token features of the training sentences, reused by a rerun on the same data and
encoder).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load, save
from xel.detect.tagger import Span, SpanTagger, decode, tag
from xel.detect.tokens import token_features
from xel.precompute.encoding import TextEncoder
from xel.precompute.files import atomic_write_bytes
from xel.precompute.settings import EncoderSettings

DETECTOR_DIR = "detector"
WEIGHTS = "tagger.safetensors"
INFO = "detector.json"


class DetectorError(ValueError):
    """A detector directory is missing, incomplete or was trained on another encoder; the message says which."""


class Detector:
    """Finds mentions in raw text: token features, tagger, :func:`detect.tagger.decode`."""

    def __init__(self, encoder: TextEncoder, tagger: SpanTagger, info: dict[str, Any]):
        self.encoder, self.tagger, self.info = encoder, tagger, info
        self.tokens = 0  # tokens tagged so far (speed reports)

    def spans(self, texts: Sequence[str]) -> list[list[Span]]:
        """The detected spans of each text: character offsets, sorted and non-overlapping."""
        feats = token_features(self.encoder, texts)
        self.tokens += sum(len(f) for f in feats)
        probs = tag(self.tagger, [f.features for f in feats])
        return [decode(text, f.offsets, p) for text, f, p in zip(texts, feats, probs)]

    def save(self, folder: Path) -> None:
        """Weights, then ``detector.json`` with their sha256, each written atomically with the umask's mode: a
        detector that loads is whole, and one whose weights were changed on disk is refused."""
        weights = save(self.tagger.state_dict())
        atomic_write_bytes(Path(folder) / WEIGHTS, weights)
        self.info = {**self.info, "weights_sha256": hashlib.sha256(weights).hexdigest()}
        atomic_write_bytes(Path(folder) / INFO,
                           (json.dumps(self.info, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, folder: Path, encoder: TextEncoder, settings: EncoderSettings) -> Detector:
        """The detector in ``folder``, on ``encoder`` (the run's, whose ``settings`` must be the ones it was
        trained with)."""
        folder = Path(folder)
        if not (folder / WEIGHTS).is_file() or not (folder / INFO).is_file():
            raise DetectorError(f"{folder}: no trained detector ({WEIGHTS}, {INFO}); train one with "
                                f"`xel-detect --model {folder.parent}`")
        info = json.loads((folder / INFO).read_text(encoding="utf-8"))
        layer = info.get("encoder", {}).get("layer", settings.layer)
        want = encoder_signature(dataclasses.replace(settings, layer=layer))
        if info.get("encoder") != want:
            raise DetectorError(f"{folder}/{INFO}: trained on encoder {info.get('encoder')}, but the run's store "
                                f"encodes with {want}; retrain it with `xel-detect --model {folder.parent}`")
        weights = (folder / WEIGHTS).read_bytes()
        got, want_sha = hashlib.sha256(weights).hexdigest(), info.get("weights_sha256")
        if want_sha is None:
            raise DetectorError(f"{folder}/{INFO}: records no sha256 of {WEIGHTS} (an older xel-detect wrote it); "
                                f"retrain it with `xel-detect --model {folder.parent}`")
        if got != want_sha:
            raise DetectorError(f"{folder / WEIGHTS}: sha256 {got[:12]}… is not the {want_sha[:12]}… that {INFO} "
                                f"recorded (changed or damaged on disk); retrain it with "
                                f"`xel-detect --model {folder.parent}`")
        tagger = SpanTagger(info["dim"], info["hidden"])
        tagger.load_state_dict(load(weights), strict=True)
        return cls(at_layer(encoder, layer), tagger.eval(), info)


def middle_layer(encoder: TextEncoder) -> int:
    """The hidden-state index of the middle of ``encoder`` (6 of a 12-layer model; 0 is the embeddings)."""
    return int(encoder.model.config.num_hidden_layers) // 2


def at_layer(encoder: TextEncoder, layer: int) -> TextEncoder:
    """``encoder`` reading hidden-state ``layer`` (as :class:`precompute.encoding.TextEncoder`'s ``layer``): the
    encoder itself when it already does, else a shallow copy that shares its model and tokenizer."""
    n = int(encoder.model.config.num_hidden_layers)
    if not -n - 1 <= layer <= n:
        raise DetectorError(f"layer {layer} is out of range for a {n}-layer encoder; allowed -{n + 1}..{n}")
    if layer % (n + 1) == encoder.layer % (n + 1):
        return encoder
    out = copy.copy(encoder)
    out.layer = layer
    return out


def encoder_signature(settings: EncoderSettings) -> dict[str, Any]:
    """What makes token features the same: the model files' fingerprint and how they are run."""
    return {"fingerprint": settings.identity["fingerprint"], "layer": settings.layer,
            "max_length": settings.max_length, "prefix": settings.prefix, "dtype": settings.dtype,
            "backend": settings.backend}
