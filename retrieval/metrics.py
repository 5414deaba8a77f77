"""Entity-linking metrics shared by the nn baseline (``xel-nn eval``) and the trainer (``xel-train``), and candidate
recall@k (``xel-nn candidates``).

Definitions (per group of mentions; a prediction is a KB id or ``None`` for NIL):

* ``micro``: fraction of all mentions whose prediction, NIL included, equals the gold.
* ``p``: correct links / predicted links (predictions that are not NIL).
* ``r``: correct links / gold non-NIL mentions.
* ``f1``: harmonic mean of ``p`` and ``r``.
* ``nonnil_f1``: F1 over the gold non-NIL mentions only (a NIL prediction there counts against recall,
  a wrong link against precision).
* ``nil_p``, ``nil_r``, ``nil_f1``: the NIL decision itself: correct NIL predictions / NIL predictions, / gold
  NIL mentions, and their harmonic mean.

The paper scores with the TAC 2015 scorer (Ji et al., 2015). Ours differs in that mentions are gold spans
(no span matching), NIL clusters are not scored (a NIL prediction is right when the gold is NIL), and
``micro`` counts correct NILs as correct.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Scores:
    n: int
    micro: float
    p: float
    r: float
    f1: float
    nonnil_f1: float
    nil_p: float = 0.0
    nil_r: float = 0.0
    nil_f1: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def score(golds: Sequence[str | None], preds: Sequence[str | None]) -> Scores:
    """Scores of one group of mentions; ``golds[i]`` and ``preds[i]`` are KB ids or ``None`` (NIL)."""
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} golds but {len(preds)} predictions")
    n = len(golds)
    correct_links = sum(1 for g, p in zip(golds, preds) if p is not None and p == g)
    predicted = sum(1 for p in preds if p is not None)
    gold_links = sum(1 for g in golds if g is not None)
    p = correct_links / predicted if predicted else 0.0
    r = correct_links / gold_links if gold_links else 0.0
    nonnil_predicted = sum(1 for g, q in zip(golds, preds) if g is not None and q is not None)
    nonnil_p = correct_links / nonnil_predicted if nonnil_predicted else 0.0
    correct_nil = sum(1 for g, q in zip(golds, preds) if g is None and q is None)
    nil_p = correct_nil / (n - predicted) if n - predicted else 0.0
    nil_r = correct_nil / (n - gold_links) if n - gold_links else 0.0
    return Scores(
        n=n,
        micro=sum(1 for g, q in zip(golds, preds) if g == q) / n if n else 0.0,
        p=p,
        r=r,
        f1=_f1(p, r),
        nonnil_f1=_f1(nonnil_p, r),
        nil_p=nil_p,
        nil_r=nil_r,
        nil_f1=_f1(nil_p, nil_r),
    )


def score_groups(
    golds: Sequence[str | None],
    preds: Sequence[str | None],
    langs: Sequence[str],
    types: Sequence[str | None] | None = None,
) -> dict[str, Scores]:
    """Scores for ``all``, each language (``lang:ru``) and each type within a language (``type:ru:PER``)."""
    groups: dict[str, list[int]] = {"all": list(range(len(golds)))}
    for i, lang in enumerate(langs):
        groups.setdefault(f"lang:{lang}", []).append(i)
        if types is not None and types[i] is not None:
            groups.setdefault(f"type:{lang}:{types[i]}", []).append(i)
    return {
        name: score([golds[i] for i in idx], [preds[i] for i in idx]) for name, idx in sorted(groups.items())
    }


def format_table(rows: dict[str, Scores] | dict[str, dict[str, float]], title: str = "") -> str:
    """A fixed-width text table of scores, one row per group."""
    cols = ("n", "micro", "p", "r", "f1", "nonnil_f1")
    lines = [title] if title else []
    lines.append(f"{'group':<22}" + "".join(f"{c:>11}" for c in cols))
    for name, s in rows.items():
        d = s.as_dict() if isinstance(s, Scores) else s
        cells = [f"{int(d['n']):>11d}"] + [f"{d[c]:>11.3f}" for c in cols[1:]]
        lines.append(f"{name:<22}" + "".join(cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- recall@k

RECALL_KS = (1, 5, 10, 20, 50, 100)


def hit_rank(candidates: Sequence[str], gold: str | None) -> int | None:
    """1-based rank of ``gold`` in ``candidates``, ``None`` when absent or NIL."""
    if gold is None:
        return None
    for rank, kb in enumerate(candidates, start=1):
        if kb == gold:
            return rank
    return None


def recall_at_k(
    lists: Sequence[Sequence[str]], golds: Sequence[str | None], ks: Sequence[int] = RECALL_KS
) -> dict[str, float]:
    """``{"n": mentions with a gold, "R@k": fraction whose gold is within the first k}``; NIL golds are skipped."""
    ranks = [hit_rank(c, g) for c, g in zip(lists, golds) if g is not None]
    n = len(ranks)
    out: dict[str, float] = {"n": n}
    for k in ks:
        out[f"R@{k}"] = sum(1 for r in ranks if r is not None and r <= k) / n if n else 0.0
    return out


def recall_table(
    per_source: dict[str, Sequence[Sequence[str]]], golds: Sequence[str | None], langs: Sequence[str],
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{group: {source: recall_at_k}}`` for ``all`` and each ``lang:xx``."""
    groups: dict[str, list[int]] = {"all": list(range(len(golds)))}
    for i, lang in enumerate(langs):
        groups.setdefault(f"lang:{lang}", []).append(i)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, idx in sorted(groups.items()):
        table[name] = {
            source: recall_at_k([lists[i] for i in idx], [golds[i] for i in idx], ks)
            for source, lists in per_source.items()
        }
    return table


def format_recall_table(table: dict[str, dict[str, dict[str, float]]], ks: Sequence[int] = RECALL_KS) -> str:
    """Fixed-width text: one row per (group, source), columns n and R@k."""
    lines = [f"{'group':<14}{'source':<8}{'n':>8}" + "".join(f"{'R@' + str(k):>8}" for k in ks)]
    for group, sources in table.items():
        for source, row in sources.items():
            lines.append(f"{group:<14}{source:<8}{int(row['n']):>8d}" + "".join(f"{row[f'R@{k}']:>8.3f}" for k in ks))
    return "\n".join(lines)


def plot_recall(table: dict[str, dict[str, dict[str, float]]], path: str, ks: Sequence[int] = RECALL_KS) -> None:
    """A PNG with one panel per group (``all``, each language) and one recall@k curve per source."""
    from matplotlib.figure import Figure  # saves through Agg without pyplot: no global backend to set

    groups = list(table)
    fig = Figure(figsize=(4 * len(groups), 3.5))
    axes = fig.subplots(1, len(groups), squeeze=False, sharey=True)
    for ax, group in zip(axes[0], groups):
        for source, row in table[group].items():
            ax.plot(ks, [row[f"R@{k}"] for k in ks], marker="o", label=source)
        ax.set_xscale("log")
        ax.set_xticks(list(ks), [str(k) for k in ks])
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{group} (n={int(next(iter(table[group].values()))['n'])})")
        ax.set_xlabel("k")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("recall@k")
    axes[0][-1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
