"""The one image AUROC and the one pixel AUROC (rank statistic, ties averaged; no scikit-learn).

* :func:`auroc`: probability that a random anomalous item scores above a random normal one
  (ties count one half) - the Mann-Whitney U statistic over ``n_pos * n_neg``; ``nan`` when
  only one class is present. Identical to ``sklearn.metrics.roc_auc_score``.
* :func:`pixel_auroc`: :func:`auroc` over every pixel of every (mask, map) pair of equal
  shape; a mask pixel is anomalous when it is non-zero (binarise grey masks first). Callers that
  compare maps and masks at a common resolution bring them there first (for instance
  ``trainer.heatmap.cells_at``: a cell is anomalous when any of its mask pixels is).

Example:
    >>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _rankdata(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), np.float64)
    # average ranks over runs of ties
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve; ``nan`` when only one class is present."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _rankdata(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], max_pixels: int = 4_000_000,
                seed: int = 0) -> float:
    """Pixel AUROC over all pixels of all (mask, map) pairs.

    Args:
        masks: binary (H, W) ground-truth masks (empty masks count as all-normal pixels).
        maps: anomaly maps of the same shapes.
        max_pixels: above this many pixels a seeded uniform subsample is used.
    """
    if len(masks) != len(maps):
        raise ValueError(f"{len(masks)} masks but {len(maps)} maps")
    for i, (m, a) in enumerate(zip(masks, maps)):
        if np.shape(m) != np.shape(a):
            raise ValueError(f"pair {i}: mask {np.shape(m)} and map {np.shape(a)} differ")
    y = np.concatenate([np.asarray(m).ravel() for m in masks]) if masks else np.zeros(0)
    s = np.concatenate([np.asarray(a, np.float64).ravel() for a in maps]) if maps else np.zeros(0)
    if y.size > max_pixels:
        idx = np.random.default_rng(seed).choice(y.size, max_pixels, replace=False)
        y, s = y[idx], s[idx]
    return auroc(y, s)
