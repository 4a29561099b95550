"""Plots (PNG) for evaluation results (the HTML page itself: :func:`core.report.html_report`).

Example:
    >>> roc_png(labels, scores, "roc.png")            # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_png(labels, scores, path: str | Path, title: str = "ROC") -> Path:
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {roc_auc_score(labels, scores):.4f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false-reject rate (normal rejected)", ylabel="detection rate (defect rejected)", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def histogram_png(scores, groups, threshold: float, path: str | Path, title: str = "Score histogram") -> Path:
    plt = _plt()
    scores, groups = np.asarray(scores), np.asarray(groups)
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    bins = np.linspace(scores.min(), scores.max(), 40)
    for g in sorted(set(groups.tolist()), key=lambda g: (g != "good", g)):
        ax.hist(scores[groups == g], bins=bins, alpha=0.55, label=f"{g} ({np.sum(groups == g)})")
    ax.axvline(threshold, color="r", ls="--", label=f"threshold {threshold:.4f}")
    ax.set(xlabel="anomaly score (k-NN distance)", ylabel="images", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
