"""One threshold calibration for every detector.

A part is rejected when its score is strictly greater than the threshold
(:func:`core.decision.decide`). The threshold is chosen from scores of normal images not
used to build the model (held-out, or leave-one-out) so that at most
``floor(target_frr * n)`` of them would be rejected.

Every input is validated: the scores must be a non-empty 1-D array of finite numbers, the rate
a number in [0, 1); anything else raises ``ValueError`` saying expected vs found.

Example:
    >>> calibrate_threshold([0.1, 0.2, 0.3, 0.4], target_frr=0.25)
    0.3
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def check_rate(target_frr, where: str = "target false-reject rate") -> float:
    """``target_frr`` as a float in [0, 1), else ``ValueError`` naming ``where``."""
    if isinstance(target_frr, bool) or not isinstance(target_frr, (int, float, np.floating)):
        raise ValueError(f"{where} must be a number in [0, 1), found {type(target_frr).__name__} {target_frr!r}")
    v = float(target_frr)
    if not (math.isfinite(v) and 0.0 <= v < 1.0):
        raise ValueError(f"{where} must be in [0, 1), found {target_frr!r}")
    return v


def check_scores(normal_scores: Sequence[float], where: str = "calibration scores") -> np.ndarray:
    """Normal scores as a float64 1-D array: non-empty, every value finite."""
    s = np.asarray(normal_scores)
    if s.dtype == object or s.dtype.kind not in "fiu":
        raise ValueError(f"{where} must be numbers, found dtype {s.dtype}")
    s = s.astype(np.float64)
    if s.ndim != 1:
        raise ValueError(f"{where} must be a 1-D array of scores, found shape {s.shape}")
    if s.size == 0:
        raise ValueError(f"{where}: threshold calibration needs at least one normal score")
    bad = int((~np.isfinite(s)).sum())
    if bad:
        raise ValueError(f"{where}: {bad} of {s.size} scores are not finite (NaN or infinite)")
    return s


def calibrate_threshold(normal_scores: Sequence[float], target_frr: float = 0.01) -> float:
    """Smallest threshold rejecting at most ``floor(target_frr * n)`` of ``normal_scores``."""
    rate = check_rate(target_frr)
    s = np.sort(check_scores(normal_scores))
    allowed = int(math.floor(rate * s.size + 1e-9))
    return float(s[s.size - 1 - allowed])


def false_reject_rate(normal_scores: Sequence[float], threshold: float) -> float:
    s = np.asarray(normal_scores, np.float64)
    return float(np.mean(s > threshold)) if s.size else 0.0


def describe_calibration(normal_scores: Sequence[float], target_frr: float, method: str) -> dict:
    """Manifest entry: the threshold and how it was chosen."""
    t = calibrate_threshold(normal_scores, target_frr)
    s = check_scores(normal_scores)
    return {"value": t, "target_frr": float(target_frr), "method": method, "n_calibration": int(s.size),
            "achieved_frr": false_reject_rate(s, t),
            "normal_score_median": float(np.median(s)), "normal_score_max": float(s.max())}
