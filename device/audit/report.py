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
import html
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
    """Self-contained HTML (no scripts, no network), panels linked relatively."""
    path = Path(path)
    cols = [k for k in (rows[0] if rows else {}) if k != panel_key]
    h = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
         "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}img{max-width:100%}"
         ".card{margin:1em 0;border-top:1px solid #888}</style></head><body>",
         f"<h1>{html.escape(title)}</h1>", "<h2>Summary</h2><table>"]
    for k, v in summary.items():
        h.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(_fmt(v)))}</td></tr>")
    h.append("</table><h2>Scores</h2><table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
    for r in rows:
        h.append("<tr>" + "".join(f"<td>{html.escape(str(_fmt(r.get(c, ''))))}</td>" for c in cols) + "</tr>")
    h.append("</table><h2>Images</h2>")
    for r in rows:
        if r.get(panel_key):
            rel = html.escape(str(r[panel_key]))
            h.append(f"<div class='card'><p>{html.escape(str(r.get('image', '')))}</p>"
                     f"<a href='{rel}'><img src='{rel}' loading='lazy'></a></div>")
    h.append("</body></html>\n")
    path.write_text("\n".join(h))
    return path
