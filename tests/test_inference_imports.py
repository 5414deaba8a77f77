"""Linking loads the model, its pair features and its NIL rule, never the trainer's data preparation or its loop
(issue 26): what ``xel.link.linker`` imports of ``xel.train`` is the part a trained run needs to score."""

from __future__ import annotations

import json
import subprocess
import sys

TRAINING_ONLY = ("xel.train.prepare", "xel.train.fit", "xel.train.loop", "xel.train.run", "xel.train.outputs",
                 "xel.train.adversarial", "xel.train.text", "xel.train.search", "xel.train.resume",
                 "xel.train.experiment", "xel.train.plots", "xel.train.probe", "xel.train.cli")
SCORING = ("xel.train.model", "xel.train.residual", "xel.train.checkpoint", "xel.train.pairs", "xel.train.nil",
           "xel.train.nil_logit", "xel.train.evaluate", "xel.train.splits")


def test_the_linker_imports_no_training_code() -> None:
    code = "import sys, json, xel.link.linker; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout))
    assert not loaded & set(TRAINING_ONLY), sorted(loaded & set(TRAINING_ONLY))
    assert set(SCORING) <= loaded  # the check can fail: these are what the linker scores with
    assert "ray" not in loaded and "matplotlib" not in loaded


def test_training_only_modules_exist() -> None:
    import importlib

    for name in TRAINING_ONLY:  # a renamed module would make the test above pass vacuously
        importlib.import_module(name)
