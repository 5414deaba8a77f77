"""PNG plots of a training run (loss by epoch, dev/test P/R/F1 by epoch, per-language test bars) and of an
``xel-experiment`` (F1 by setting, F1 by epoch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
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


def experiment_figures(out: Path, rows: dict, langs: list[str], per_setting: dict[str, list]) -> list[Path]:
    """``xel-experiment``'s figures: test F1 by setting and language (mean ± std over seeds), and each setting's
    test F1 by epoch (mean over seeds) from its runs' ``metrics.json``."""
    paths = []
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    names = list(rows)
    width = 0.8 / max(len(langs), 1)
    for j, lang in enumerate(langs):
        vals = [rows[n].get(f"lang:{lang}", {}).get("f1", (np.nan, 0.0)) for n in names]
        ax.bar(np.arange(len(names)) + j * width, [v[0] for v in vals], width, yerr=[v[1] for v in vals],
               label=lang, capsize=3)
    ax.set_xticks(np.arange(len(names)) + width * (len(langs) - 1) / 2, names)
    ax.set_ylabel("F1 (mean ± std over seeds)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    paths.append(out / "f1_by_setting.png")
    fig.savefig(paths[-1], dpi=100)

    fig = Figure(figsize=(5 * len(langs), 4))
    axes = fig.subplots(1, len(langs), squeeze=False)
    for ax, lang in zip(axes[0], langs):
        for name, runs in per_setting.items():
            curves = np.array([[e["test"].get(f"lang:{lang}", {}).get("f1", np.nan) for e in
                                json.loads((Path(r["config"]["out"]) / "metrics.json").read_text())["epochs"]]
                               for r in runs])
            ax.plot(np.nanmean(curves, axis=0), label=name)
        ax.set_title(f"{lang}: test F1 by epoch (mean over seeds; not used for selection)")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(out / "f1_by_epoch.png")
    fig.savefig(paths[-1], dpi=100)
    return paths
