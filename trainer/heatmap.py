"""Evaluation helpers for tile grids: overlay PNGs and maps and masks at a common resolution.

The drawing itself lives in :mod:`device.heatmap` (the daemon's reject archive uses it too);
the pixel AUROC is :func:`core.metrics.pixel_auroc`.

Example:
    >>> import numpy as np
    >>> hm, m = cells_at(np.arange(16, dtype=np.float32).reshape(4, 4), np.eye(8, dtype=np.uint8) * 255, 2)
    >>> hm.tolist(), m.astype(int).tolist()
    ([[0.0, 2.0], [8.0, 10.0]], [[1, 0], [0, 1]])
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.metrics import pixel_auroc
from device.heatmap import draw_tile_overlay
from device.preprocess import InputSpec


def overlay_png(image, tile_scores: np.ndarray, spec: InputSpec, threshold: float, path: str | Path,
                heatmap: np.ndarray | None = None) -> Path:
    """Write :func:`device.heatmap.draw_tile_overlay` of ``image`` to ``path``."""
    import cv2

    cv2.imwrite(str(path), cv2.cvtColor(draw_tile_overlay(image, tile_scores, spec, threshold, heatmap),
                                        cv2.COLOR_RGB2BGR))
    return Path(path)


def cells_at(heatmap: np.ndarray, mask: np.ndarray | None, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A heatmap (nearest) and its grey mask brought to ``side`` x ``side`` cells. A cell is
    anomalous when any of its mask pixels is >= 128 (thin scratches must not vanish); no mask
    means a good image (all cells normal)."""
    import cv2

    hm = cv2.resize(np.asarray(heatmap, np.float32), (side, side), interpolation=cv2.INTER_NEAREST)
    if mask is None:
        return hm, np.zeros((side, side), bool)
    cells = cv2.resize((np.asarray(mask) >= 128).astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
    return hm, cells > 0


def grid_pixel_auroc(heatmaps: list[np.ndarray], masks: list[np.ndarray | None], side: int = 64) -> float:
    """:func:`core.metrics.pixel_auroc` of heatmaps against grey masks at ``side`` x ``side`` cells
    (:func:`cells_at`); good images pass ``None`` masks."""
    pairs = [cells_at(hm, m, side) for hm, m in zip(heatmaps, masks)]
    return pixel_auroc([m for _, m in pairs], [h for h, _ in pairs])
