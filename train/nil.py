"""The NIL decision of a run: which score is compared with the threshold, and its per-language calibration.

Read by the trainer (:mod:`train.fit`) and the linker (:class:`link.linker.Linker`) alike, and saved with the
run (``metrics.json``'s ``nil_rule``), so that ``xel-link`` decides NIL exactly as the trainer's evaluation did.

* The score (``--nil-score``, :func:`train.evaluate.with_nil_score`): ``csls`` by default for the residual
  scorer, the cosine of the chosen entity minus the mention's background similarity.
* The threshold: tuned on the training language's dev mentions (``--tune-nil``), where the labels are.
* The calibration (``--nil-calibration quantile``, the residual scorer's default): a language that the run
  was not trained on gets its NIL scores shifted so that their upper quantile (:data:`QUANTILE`, the 90th
  percentile) equals that of the training language's dev mentions. It is computed from the mentions of that
  language **without their labels** (zero-shot allows unlabelled target text, as +A does). Why the upper
  quantile: in another script even the correct links have lower scores (Russian mentions against Latin-script
  names), so an English threshold calls most of them NIL; the top tenth of a language's mentions are almost all
  confident links in every language, whatever its NIL rate (34% in the sample's German, 16% in Russian), while a
  mean or a median moves with the NIL rate.
* A language without a calibration (not seen when the run was evaluated) is left as is; the linker logs it and
  :meth:`NilRule.calibrated` can add one from unlabelled mentions of that language.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from xel.train.data import Mentions
from xel.train.evaluate import Ranked, with_nil_score

QUANTILE = 0.9
CALIBRATIONS = ("none", "quantile")
# fewer mentions of a language than this give no calibration (a quantile of a handful of scores is noise)
MIN_CALIBRATION_MENTIONS = 20


class NilRuleError(ValueError):
    """A saved NIL rule is malformed; the message names the field and what is allowed."""


def upper_quantile(values: torch.Tensor) -> float | None:
    """The :data:`QUANTILE` of the finite ``values`` (mentions with candidates), None below
    :data:`MIN_CALIBRATION_MENTIONS` of them."""
    v = values[torch.isfinite(values)].double().numpy()
    return float(np.quantile(v, QUANTILE)) if len(v) >= MIN_CALIBRATION_MENTIONS else None


@dataclass(frozen=True)
class NilRule:
    score: str  # train.config.NIL_SCORES
    threshold: float
    calibration: str = "none"  # CALIBRATIONS
    train_langs: tuple[str, ...] = ()
    reference: float | None = None  # QUANTILE of the score over the threshold's dev mentions
    shifts: dict[str, float] = field(default_factory=dict)  # language -> added to its mentions' NIL scores

    def scored(self, ranked: Ranked, mentions: Mentions) -> Ranked:
        """``ranked`` with this rule's NIL score, uncalibrated."""
        return with_nil_score(ranked, mentions, self.score)

    def calibrated(self, ranked: Ranked, mentions: Mentions) -> NilRule:
        """This rule with a shift for every language of ``mentions`` that it was not trained on and has no shift
        yet, from those mentions' NIL scores (``ranked`` as :meth:`scored` gives it); never reads a gold."""
        if self.calibration != "quantile" or self.reference is None:
            return self
        shifts = dict(self.shifts)
        decision = ranked.decision
        for lang in sorted(set(mentions.langs) - set(self.train_langs) - set(shifts)):
            rows = torch.tensor([i for i, x in enumerate(mentions.langs) if x == lang])
            q = upper_quantile(decision[rows])
            if q is not None:
                shifts[lang] = self.reference - q
        return replace(self, shifts=shifts)

    def apply(self, ranked: Ranked, mentions: Mentions) -> Ranked:
        """``ranked`` (as :meth:`scored` gives it) with each mention's NIL score shifted by its language's shift."""
        if not self.shifts:
            return ranked
        shift = torch.tensor([self.shifts.get(x, 0.0) for x in mentions.langs], dtype=ranked.decision.dtype)
        return replace(ranked, nil_score=ranked.decision + shift)

    def missing(self, langs: Sequence[str]) -> list[str]:
        """Languages among ``langs`` that this rule would calibrate but has no shift for."""
        if self.calibration != "quantile" or self.reference is None:
            return []
        return sorted(set(langs) - set(self.train_langs) - set(self.shifts))

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "threshold": self.threshold, "calibration": self.calibration,
                "quantile": QUANTILE, "train_langs": list(self.train_langs), "reference": self.reference,
                "shifts": dict(sorted(self.shifts.items()))}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> NilRule:
        from xel.train.config import NIL_SCORES

        def bad(name: str, allowed: str) -> NilRuleError:
            value = data.get(name) if isinstance(data, dict) else data
            return NilRuleError(f"{where}: nil_rule field {name!r} is {value!r}; allowed {allowed}")

        def finite(x: Any) -> bool:
            return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

        if not isinstance(data, dict):
            raise bad("nil_rule", "an object {score, threshold, calibration, ...}")
        if data.get("score") not in NIL_SCORES:
            raise bad("score", f"one of {list(NIL_SCORES)}")
        if not finite(data.get("threshold")):
            raise bad("threshold", "a finite number")
        if data.get("calibration", "none") not in CALIBRATIONS:
            raise bad("calibration", f"one of {list(CALIBRATIONS)}")
        if data.get("reference") is not None and not finite(data["reference"]):
            raise bad("reference", "a finite number or null")
        shifts = data.get("shifts", {})
        if not isinstance(shifts, dict) or not all(isinstance(k, str) and finite(v) for k, v in shifts.items()):
            raise bad("shifts", "an object of language -> finite number")
        langs = data.get("train_langs", [])
        if not isinstance(langs, list) or not all(isinstance(x, str) for x in langs):
            raise bad("train_langs", "a list of language codes")
        return cls(data["score"], float(data["threshold"]), data.get("calibration", "none"), tuple(langs),
                   None if data.get("reference") is None else float(data["reference"]),
                   {k: float(v) for k, v in shifts.items()})


def tuned_rule(score: str, threshold: float, calibration: str, train_langs: Sequence[str],
               dev_ranked: Ranked | None) -> NilRule:
    """A rule whose threshold was tuned on ``dev_ranked`` (scored with ``score``), its calibration reference the
    upper quantile of the same scores; no reference (no calibration) without dev."""
    reference = upper_quantile(dev_ranked.decision) if dev_ranked is not None and calibration != "none" else None
    # no reference (a fixed threshold, or too few dev mentions): nothing to calibrate against, and the saved rule
    # says so
    return NilRule(score, threshold, calibration if reference is not None else "none", tuple(train_langs),
                   reference)
