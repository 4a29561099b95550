"""The one scoring contract every detector follows (k-NN on DOC features, AnoGAN,
energy projection, NKN).

``fit(normal_images) -> self`` and ``anomaly_score(images) -> Scores``; higher scores
mean more anomalous; ``Scores.maps`` optionally carries a per-pixel map per image.
Thresholds are chosen outside the detectors by :func:`core.threshold.calibrate_threshold`.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@dataclasses.dataclass
class Scores:
    """Image scores (N,) and optional per-pixel maps (N, H, W), higher = more anomalous."""

    scores: np.ndarray
    maps: np.ndarray | None = None
    extra: dict | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@runtime_checkable
class AnomalyDetector(Protocol):
    def fit(self, normal_images: Sequence) -> "AnomalyDetector": ...

    def anomaly_score(self, images: Sequence) -> Scores: ...
