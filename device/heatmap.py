"""Coarse anomaly heatmaps from per-tile scores, and the grid drawn over a frame.

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

import numpy as np

from device.preprocess import InputSpec, prepare_frame


def tile_heatmap(tile_scores: np.ndarray, spec: InputSpec) -> np.ndarray:
    """(H, W) float32 map at working size: max score of the tiles covering each pixel."""
    if not spec.tiled:
        h, w = spec.size
        return np.full((h, w), float(np.max(tile_scores)), np.float32)
    hm = np.full(spec.working_size, -np.inf, np.float32)
    for s, (x, y, w, h) in zip(tile_scores, spec.tile_boxes()):
        np.maximum(hm[y:y + h, x:x + w], s, out=hm[y:y + h, x:x + w])
    return hm


def patch_heatmap(patch_scores: np.ndarray, spec: InputSpec) -> np.ndarray:
    """(H, W) float32 map at working size (network size without a grid) from a patch
    extractor's scores (T, h, w): each tile's h x w patch map stretched over its box
    (bilinear), the maximum where tiles overlap. Finer than :func:`tile_heatmap`."""
    import cv2

    patch_scores = np.asarray(patch_scores, np.float32)
    boxes = spec.tile_boxes() if spec.tiled else [(0, 0, spec.size[1], spec.size[0])]
    if patch_scores.ndim != 3 or patch_scores.shape[0] != len(boxes):
        raise ValueError(f"patch scores must be ({len(boxes)}, h, w), found {patch_scores.shape}")
    hm = np.full(spec.working_size if spec.tiled else spec.size, -np.inf, np.float32)
    for s, (x, y, w, h) in zip(patch_scores, boxes):
        cell = cv2.resize(s, (w, h), interpolation=cv2.INTER_LINEAR)
        np.maximum(hm[y:y + h, x:x + w], cell, out=hm[y:y + h, x:x + w])
    return hm


def draw_tile_overlay(image, tile_scores: np.ndarray, spec: InputSpec, threshold: float,
                      heatmap: np.ndarray | None = None, patch_scores: np.ndarray | None = None) -> np.ndarray:
    """The frame as the detector saw it (ROI, colour, working size), each tile tinted by its
    score (or by ``heatmap``, or by the :func:`patch_heatmap` of ``patch_scores`` (T, h, w))
    and the tiles over the threshold outlined in red. Returns uint8 RGB."""
    import cv2

    if heatmap is None and patch_scores is not None:
        heatmap = patch_heatmap(patch_scores, spec)

    frame = prepare_frame(image, spec.replace(grid=None, tile=None, stride=None, working_size=None,
                                              size=spec.working_size or spec.size))
    hm = tile_heatmap(tile_scores, spec) if heatmap is None else heatmap
    lo, hi = float(np.min(hm)), max(float(np.max(hm)), threshold * 1.5)
    norm = np.clip((hm - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
    colour = np.ascontiguousarray(cv2.applyColorMap(norm, cv2.COLORMAP_JET)[:, :, ::-1])
    out = cv2.addWeighted(frame, 0.6, colour, 0.4, 0)
    for s, (x, y, w, h) in zip(tile_scores, spec.tile_boxes()):
        if s > threshold:
            cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (255, 0, 0), 2)
    return out
