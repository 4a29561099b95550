"""One threshold calibration for every detector.

A part is rejected when its score is strictly greater than the threshold. The
threshold is chosen from scores of held-out normal images so that at most
``floor(target_frr * n)`` of them would be rejected.

Example:
    >>> calibrate_threshold([0.1, 0.2, 0.3, 0.4], target_frr=0.25)
    0.3
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def calibrate_threshold(normal_scores: Sequence[float], target_frr: float = 0.01) -> float:
    """Smallest threshold rejecting at most ``floor(target_frr * n)`` of ``normal_scores``."""
    s = np.sort(np.asarray(normal_scores, np.float64))
    if s.size == 0:
        raise ValueError("threshold calibration needs at least one normal score")
    if not 0.0 <= target_frr < 1.0:
        raise ValueError(f"target false-reject rate must be in [0, 1), found {target_frr}")
    allowed = int(math.floor(target_frr * s.size + 1e-9))
    return float(s[s.size - 1 - allowed])


def false_reject_rate(normal_scores: Sequence[float], threshold: float) -> float:
    s = np.asarray(normal_scores, np.float64)
    return float(np.mean(s > threshold)) if s.size else 0.0


def describe_calibration(normal_scores: Sequence[float], target_frr: float, method: str) -> dict:
    """Manifest entry: the threshold and how it was chosen."""
    t = calibrate_threshold(normal_scores, target_frr)
    s = np.asarray(normal_scores, np.float64)
    return {"value": t, "target_frr": target_frr, "method": method, "n_calibration": int(s.size),
            "achieved_frr": false_reject_rate(s, t),
            "normal_score_median": float(np.median(s)), "normal_score_max": float(s.max())}
