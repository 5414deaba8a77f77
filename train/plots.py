"""PNG plots of a training run: loss by epoch, dev/test P/R/F1 by epoch, and per-language test bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # a Figure saves through Agg without pyplot: no global backend to set


def plot_run(
    history: list[dict[str, Any]], test: dict[str, dict[str, float]], out: Path, title: str = ""
) -> list[Path]:
    """``loss.png``, ``prf.png`` and ``languages.png`` in ``out``; ``title`` (the run's setting and seed) heads each."""
    head = f"{title}: " if title else ""
    evaluated = ", ".join(sorted(k.split(":", 1)[1] for k in test if k.startswith("lang:")))
    epochs = [h["epoch"] for h in history]
    paths = [out / "loss.png", out / "prf.png", out / "languages.png"]

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key in ("loss", "lang_loss", "adv_loss"):
        if any(h[key] for h in history):
            ax.plot(epochs, [h[key] for h in history], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(f"{head}training loss", fontsize="medium")
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for split in ("dev", "test"):
        if split in history[0]:
            for metric, style in (("p", ":"), ("r", "--"), ("f1", "-")):
                ax.plot(epochs, [h[split]["all"][metric] for h in history], style, label=f"{split} {metric}")
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1)
    ax.set_title(f"{head}P/R/F1 of all evaluated mentions pooled ({evaluated}); per language: languages.png",
                 fontsize="small", wrap=True)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)

    langs = sorted(k for k in test if k.startswith("lang:"))
    fig = Figure(figsize=(max(4, 1.5 * len(langs) + 2), 4))
    ax = fig.subplots()
    width = 0.2
    for j, metric in enumerate(("micro", "p", "r", "f1")):
        ax.bar([i + j * width for i in range(len(langs))], [test[g][metric] for g in langs], width, label=metric)
    ax.set_xticks([i + 1.5 * width for i in range(len(langs))], [g.split(":", 1)[1] for g in langs])
    ax.set_ylim(0, 1)
    ax.set_title(f"{head}test, chosen epoch", fontsize="medium")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    return paths
