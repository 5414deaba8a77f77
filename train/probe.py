"""The language probe: how well a fresh classifier tells the languages apart from a model's ``hs0`` outputs.

+A is meant to make ``hs0`` language-invariant; this measures it. After training, a logistic regression
(scikit-learn) is fit on frozen ``hs0`` outputs of half of the held-out unannotated text
(:attr:`train.text.LanguageText.held_out`, never seen by the adversary) and scored on the other half, with
every language downsampled to the same count so that chance is ``1 / languages``. Without +A the model has no
``hs0`` and the probe reads the standardized name features the scorer sees instead. Accuracy near chance means
invariant; near 1.0 means the languages stay separable.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from xel.train.model import Ranker
from xel.train.text import LanguageText


def probe_accuracy(features: dict[str, np.ndarray], seed: int = 0) -> tuple[float, float]:
    """(held-out accuracy, chance) of a logistic regression telling ``features``' languages apart."""
    rng = np.random.default_rng(seed)
    n = min(len(x) for x in features.values())
    half = n // 2
    if half < 2 or len(features) < 2:
        counts = {k: len(v) for k, v in features.items()}
        raise ValueError(f"the probe needs >= 4 rows in each of >= 2 languages, got {counts}")
    x_fit, y_fit, x_eval, y_eval = [], [], [], []
    for label, lang in enumerate(sorted(features)):
        rows = rng.permutation(len(features[lang]))[: 2 * half]
        x_fit.append(features[lang][rows[:half]])
        x_eval.append(features[lang][rows[half:]])
        y_fit += [label] * half
        y_eval += [label] * half
    clf = LogisticRegression(max_iter=2000, random_state=seed)
    clf.fit(np.concatenate(x_fit), np.array(y_fit))
    accuracy = float((clf.predict(np.concatenate(x_eval)) == np.array(y_eval)).mean())
    return accuracy, 1.0 / len(features)


def language_probe(model: Ranker, text: LanguageText, seed: int = 0) -> dict[str, float]:
    """``{"probe_accuracy", "probe_chance", "probe_rows"}`` on ``model``'s ``hs0`` (see the module docstring)."""
    model.eval()
    with torch.inference_mode():
        feats = {lang: model.shared(x).numpy() for lang, x in text.held_out.items() if len(x)}
    accuracy, chance = probe_accuracy(feats, seed)
    return {"probe_accuracy": accuracy, "probe_chance": chance, "probe_rows": min(len(x) for x in feats.values())}
