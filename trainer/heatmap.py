"""Evaluation helpers for tile grids: overlay PNGs and pixel AUROC from the grid.

The drawing itself lives in :mod:`device.heatmap` (the daemon's reject archive uses it too).

Example:
    >>> overlay_png("part.png", tile_scores, spec, threshold, "overlay.png")   # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from device.heatmap import draw_tile_overlay, patch_heatmap, tile_heatmap  # noqa: F401  (re-exported)
from device.preprocess import InputSpec


def overlay_png(image, tile_scores: np.ndarray, spec: InputSpec, threshold: float, path: str | Path,
                heatmap: np.ndarray | None = None) -> Path:
    """Write :func:`device.heatmap.draw_tile_overlay` of ``image`` to ``path``."""
    import cv2

    cv2.imwrite(str(path), cv2.cvtColor(draw_tile_overlay(image, tile_scores, spec, threshold, heatmap),
                                        cv2.COLOR_RGB2BGR))
    return Path(path)


def pixel_auroc(heatmaps: list[np.ndarray], masks: list[np.ndarray | None], side: int = 64) -> float:
    """Pixel AUROC over images with masks (good images: all-zero masks), at ``side`` px."""
    import cv2
    from sklearn.metrics import roc_auc_score

    scores, labels = [], []
    for hm, m in zip(heatmaps, masks):
        hm_s = cv2.resize(hm, (side, side), interpolation=cv2.INTER_NEAREST)
        # a cell is defective when any of its pixels is (thin scratches must not vanish)
        m_s = np.zeros((side, side), bool) if m is None else cv2.resize(
            (m >= 128).astype(np.float32), (side, side), interpolation=cv2.INTER_AREA) > 0
        scores.append(hm_s.ravel())
        labels.append(m_s.ravel())
    y = np.concatenate(labels)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.concatenate(scores)))
