"""The mention detector of a trained run, ``RUN/detector/``: a :class:`detect.tagger.SpanTagger` on the token
features of the run's own encoder (its training store's: same model files, dtype, prefix, max length), read at
the detector's own layers: by default the middle of the network and the last (:func:`default_layers`),
concatenated. The middle layer holds more of the word and its neighbours than the last one, which a
sentence-embedding model such as e5 trains for its pooled vector; ``bench/detect.py --layers`` measures the
choice. Both come from one forward of the linker's own encoder: no second copy of the model.

``xel-detect --model RUN`` writes it (:mod:`detect.train`); ``xel-link --detect``, ``Linker.link_text`` and
``xel-serve`` read it. The directory holds ``tagger.safetensors`` (the weights), ``detector.json`` (the encoder
it was trained on, its settings, the training data's counts, the losses and the English dev scores) and
``tokens-*.npz`` (the cached token features of the training sentences, reused by a rerun on the same data and
encoder).
"""

from __future__ import annotations

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
        self.layers = layers_of(info["encoder"])
        self.tokens = 0  # tokens tagged so far (speed reports)

    def spans(self, texts: Sequence[str]) -> list[list[Span]]:
        """The detected spans of each text: character offsets, sorted and non-overlapping."""
        feats = token_features(self.encoder, texts, self.layers)
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
        trained = info.get("encoder")
        want = encoder_signature(settings, layers_of(trained) if isinstance(trained, dict) else None)
        if trained != want:
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
        return cls(encoder, tagger.eval(), info)


def default_layers(encoder: TextEncoder) -> tuple[int, int]:
    """The hidden-state indices the tagger reads by default: the middle of ``encoder`` (6 of a 12-layer model; 0
    is the embeddings) and the last."""
    return int(encoder.model.config.num_hidden_layers) // 2, -1


def check_layers(encoder: TextEncoder, layers: Sequence[int]) -> tuple[int, ...]:
    """``layers`` as a tuple, each a hidden-state index of ``encoder``; else :class:`DetectorError`."""
    n = int(encoder.model.config.num_hidden_layers)
    for layer in layers:
        if not -n - 1 <= layer <= n:
            raise DetectorError(f"layer {layer} is out of range for a {n}-layer encoder; allowed -{n + 1}..{n}")
    if not layers:
        raise DetectorError("no layers; the tagger reads at least one hidden state")
    return tuple(layers)


def layers_of(signature: dict[str, Any]) -> tuple[int, ...]:
    """The layers a detector's ``encoder`` record names (a detector of an older xel read one, an int)."""
    layer = signature.get("layer", -1)
    return (layer,) if isinstance(layer, int) else tuple(layer)


def encoder_signature(settings: EncoderSettings, layers: Sequence[int] | None = None) -> dict[str, Any]:
    """What makes token features the same: the model files' fingerprint and how they are run (``layers``: the
    hidden states read, by default the settings' one layer)."""
    layer: int | list[int] = settings.layer if layers is None else (
        layers[0] if len(layers) == 1 else list(layers))
    return {"fingerprint": settings.identity["fingerprint"], "layer": layer,
            "max_length": settings.max_length, "prefix": settings.prefix, "dtype": settings.dtype,
            "backend": settings.backend}
