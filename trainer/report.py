"""Plots (PNG) and an offline HTML report for evaluation results.

Example:
    >>> roc_png(labels, scores, "roc.png")            # doctest: +SKIP
"""
from __future__ import annotations

import html
import json
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


def html_report(path: str | Path, title: str, metrics: dict, images: list[tuple[str, str]],
                tables: list[tuple[str, list[dict]]] = ()) -> Path:
    """Self-contained page: metrics, PNGs referenced relatively, and tables."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in metrics.items())
    imgs = "".join(f'<figure><img src="{html.escape(src)}" alt="{html.escape(cap)}"><figcaption>'
                   f"{html.escape(cap)}</figcaption></figure>" for cap, src in images)
    tabs = ""
    for name, recs in tables:
        if not recs:
            continue
        cols = list(recs[0])
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
                       for r in recs)
        tabs += f"<h2>{html.escape(name)}</h2><table><tr>{head}</tr>{body}</table>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}}figure{{display:inline-block;margin:0 1em 1em 0}}
img{{max-width:520px}}</style></head><body><h1>{html.escape(title)}</h1>
<table>{rows}</table>{imgs}{tabs}</body></html>"""
    Path(path).write_text(page)
    return Path(path)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return str(v)
