"""What each ``xel-train --scorer`` is: its defaults and the flags it reads, in one frozen description each.

:class:`train.config.TrainConfig` takes the scorer's defaults from here (``--loss``, ``--nil-score``,
``--nil-calibration``) and refuses flags the scorer would not honour; the trainer, the epoch loop and the linker
read the description instead of comparing ``--scorer`` strings.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scorer:
    name: str  # the --scorer value; also ModelSpec.scorer in checkpoints
    default_loss: str  # --loss when not given
    losses: tuple[str, ...]  # the --loss values its training honours
    default_nil_score: str  # --nil-score when not given (train.evaluate)
    default_nil_calibration: str  # --nil-calibration when not given (train.nil)
    tunes_nil: bool  # --tune-nil when not given (and there is a dev split): the threshold picked on dev
    # True: epoch 0 is the untrained scorer (the residual's g starts at zero, so epoch 0 ranks exactly as nn),
    # evaluated and eligible for selection, and the training epochs are 1..N; False: epochs 0..N-1 are trained
    evaluates_untrained: bool
    # True: the scorer reads pair features (train.pairs) and --feature-groups, and every candidate of a mention
    # is scored in a training step (pair features exist only for candidates); False: the gold against
    # --negatives negatives sampled from the candidates and the KB
    pair_features: bool
    min_epochs: int  # --epochs below this is refused
    score_range: tuple[float, float] | None  # the range of its scores (a --nil-threshold outside is refused)
    learns_nil: bool  # it has the learned NIL logit (train.nil_logit): --nil-score learned

    @property
    def reads_negatives(self) -> bool:
        """Whether its training samples ``--negatives`` negatives (the pointwise hinge); a pair-features scorer
        scores every candidate of a mention instead."""
        return not self.pair_features

    def unread_flags(self, loss: str, given: dict[str, object]) -> list[str]:
        """The flags among ``given`` (name -> value, the ones a user set) that a run of this scorer with ``loss``
        would not read, each as ``--flag value: why``; empty when every one is read."""
        out = []
        if given.get("negatives") is not None and not self.reads_negatives:
            out.append(f"--negatives {given['negatives']}: the {self.name} scorer samples no negatives (every "
                       "candidate of a mention is scored); allowed only with --scorer "
                       + "/".join(s.name for s in SCORERS.values() if s.reads_negatives))
        if given.get("temperature") is not None and loss != "softmax":
            out.append(f"--temperature {given['temperature']}: the {loss} loss has no temperature; allowed only "
                       "with --loss softmax" + ("" if "softmax" in self.losses else
                                                f", which --scorer {self.name} does not train"))
        if given.get("nil_score") == "learned" and not self.learns_nil:
            out.append(f"--nil-score learned: the {self.name} scorer has no learned NIL logit; allowed only with "
                       "--scorer " + "/".join(s.name for s in SCORERS.values() if s.learns_nil))
        return out

    @property
    def first_trained_epoch(self) -> int:
        """The history's number of the first trained epoch (1 after an untrained epoch 0, else 0)."""
        return 1 if self.evaluates_untrained else 0


PAPER = Scorer(
    name="paper", default_loss="hinge", losses=("hinge",), default_nil_score="model",
    default_nil_calibration="none", tunes_nil=False, evaluates_untrained=False, pair_features=False, min_epochs=1,
    score_range=(-1.0, 1.0), learns_nil=False,  # tanh
)
RESIDUAL = Scorer(
    name="residual", default_loss="softmax", losses=("hinge", "softmax"), default_nil_score="csls",
    default_nil_calibration="quantile", tunes_nil=True, evaluates_untrained=True, pair_features=True, min_epochs=0,
    score_range=None, learns_nil=True,  # cos + g: unbounded
)
SCORERS: dict[str, Scorer] = {s.name: s for s in (PAPER, RESIDUAL)}


def scorer_named(name: str) -> Scorer:
    """The :class:`Scorer` called ``name``; a ``ValueError`` naming the allowed ones otherwise."""
    try:
        return SCORERS[name]
    except KeyError:
        raise ValueError(f"scorer {name!r}: allowed {list(SCORERS)}") from None
