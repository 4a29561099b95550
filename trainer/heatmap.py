"""Coarse anomaly heatmaps from per-tile scores, overlays, and pixel AUROC.

A tiled bundle scores every tile, so a frame's tile grid is a heatmap that costs
nothing extra. Each pixel takes the highest score of the tiles covering it.

Example:
    >>> import numpy as np
    >>> from device.preprocess import InputSpec
    >>> spec = InputSpec(size=(32, 32), working_size=(64, 64), grid=(2, 2))
    >>> float(tile_heatmap(np.array([0, 1, 2, 3.]), spec)[48, 48])
    3.0
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from device.preprocess import InputSpec


def tile_heatmap(tile_scores: np.ndarray, spec: InputSpec) -> np.ndarray:
    """(H, W) float32 map at working size: max score of the tiles covering each pixel."""
    if not spec.tiled:
        h, w = spec.size
        return np.full((h, w), float(np.max(tile_scores)), np.float32)
    hm = np.full(spec.working_size, -np.inf, np.float32)
    for s, (x, y, w, h) in zip(tile_scores, spec.tile_boxes()):
        np.maximum(hm[y:y + h, x:x + w], s, out=hm[y:y + h, x:x + w])
    return hm


def overlay_png(image_rgb: np.ndarray, tile_scores: np.ndarray, spec: InputSpec, threshold: float,
                path: str | Path) -> Path:
    """Frame (at working size) with each tile's score drawn as a translucent colour and
    tiles over the threshold outlined in red."""
    import cv2

    frame = cv2.resize(image_rgb, (spec.working_size or spec.size)[::-1], interpolation=cv2.INTER_AREA)
    hm = tile_heatmap(tile_scores, spec)
    lo, hi = float(np.min(tile_scores)), max(float(np.max(tile_scores)), threshold * 1.5)
    norm = np.clip((hm - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(norm, cv2.COLORMAP_JET)[:, :, ::-1]
    out = cv2.addWeighted(frame, 0.6, colour, 0.4, 0)
    for s, (x, y, w, h) in zip(tile_scores, spec.tile_boxes()):
        if s > threshold:
            cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (255, 0, 0), 2)
    cv2.imwrite(str(path), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    return Path(path)


def pixel_auroc(heatmaps: list[np.ndarray], masks: list[np.ndarray | None], side: int = 64) -> float:
    """Pixel AUROC over images with masks (good images: all-zero masks), at ``side`` px."""
    import cv2
    from sklearn.metrics import roc_auc_score

    scores, labels = [], []
    for hm, m in zip(heatmaps, masks):
        hm_s = cv2.resize(hm, (side, side), interpolation=cv2.INTER_NEAREST)
        m_s = np.zeros((side, side), bool) if m is None else cv2.resize(
            (m >= 128).astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST) > 0
        scores.append(hm_s.ravel())
        labels.append(m_s.ravel())
    y = np.concatenate(labels)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.concatenate(scores)))
