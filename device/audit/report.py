"""Audit report: per-image PNG panels, ``scores.csv`` and an offline ``report.html``.

Panels show the input, the reconstruction, the heatmap over the input (ground-truth
mask outlined when there is one), an optional extra map (e.g. NKN sigma) and the
scores. The HTML references the panels relatively, so the folder can be copied off
the device and opened in a browser without a network.

Example:
    >>> write_panel("p.png", img, rec, heat, title="score 0.4")    # doctest: +SKIP
"""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_panel(path: str | Path, image: np.ndarray, recon: np.ndarray | None, heat: np.ndarray,
                title: str = "", mask: np.ndarray | None = None, extra: np.ndarray | None = None,
                extra_title: str = "", vmax: float | None = None) -> Path:
    """Write one PNG panel.

    Args:
        image: (H, W) grey input (uint8 or float in [0, 1]).
        recon: (H, W) reconstruction in [0, 1] (or ``None``).
        heat: (H, W) anomaly map.
        mask: optional binary ground truth, drawn as a contour.
        extra: optional fourth map (e.g. predictive sigma).
        vmax: colour-scale maximum of the heatmap (default: the map's own maximum).
    """
    plt = _plt()
    img = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    cols = [("input", img, "gray", (0, 1))]
    if recon is not None:
        cols.append(("reconstruction", recon, "gray", (0, 1)))
    cols.append(("heatmap overlay", None, None, None))
    if extra is not None:
        cols.append((extra_title or "extra", extra, "viridis", (None, None)))
    fig, axes = plt.subplots(1, len(cols), figsize=(2.6 * len(cols), 2.9))
    axes = np.atleast_1d(axes)
    for ax, (name, arr, cmap, lim) in zip(axes, cols):
        ax.set_axis_off()
        ax.set_title(name, fontsize=9)
        if arr is None:
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            top = vmax if vmax is not None else float(np.max(heat)) or 1.0
            im = ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=top)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            if mask is not None and np.any(mask):
                ax.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=0.8)
        else:
            ax.imshow(arr, cmap=cmap, vmin=lim[0], vmax=lim[1])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_scores_csv(path: str | Path, rows: Sequence[dict]) -> Path:
    """One row per image; columns are the union of the rows' keys (``image`` first)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})
    return path


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def write_html(path: str | Path, title: str, summary: dict, rows: Sequence[dict], panel_key: str = "panel") -> Path:
    """The audit page (:func:`core.report.html_report`): summary, scores table, panels linked relatively."""
    from core.report import html_report

    images = [(str(r.get("image", "")), str(r[panel_key])) for r in rows if r.get(panel_key)]
    return html_report(path, title, summary, images, [("Scores", [{k: v for k, v in r.items() if k != panel_key}
                                                                  for r in rows])])
