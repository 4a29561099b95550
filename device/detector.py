"""The fast path: bundle -> preprocess -> TFLite extractor -> k-NN score.

Example:
    >>> det = Detector.from_bundle("bundle/")                 # doctest: +SKIP
    >>> det.anomaly_score(["a.png", "b.png"]).scores          # doctest: +SKIP
    array([0.31, 0.77], dtype=float32)
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from device.bundle import Bundle, load_bundle
from device.contract import Scores
from device.extractor import TFLiteExtractor, normalize_features
from device.preprocess import preprocess
from device.scoring import make_scorer, scorer_for_bundle

log = logging.getLogger(__name__)


class Detector:
    """Scores images with a verified bundle; no TensorFlow needed.

    Args:
        bundle: a loaded :class:`~device.bundle.Bundle`.
        num_threads: TFLite interpreter threads.
        threshold, target_frr: optional deployment override of the bundle threshold.
    """

    def __init__(self, bundle: Bundle, num_threads: int = 1, threshold: float | None = None,
                 target_frr: float | None = None, runtime: str | None = None):
        self.bundle = bundle
        self.spec = bundle.input_spec
        ext = bundle.manifest["extractor"]
        self.extractor = TFLiteExtractor(bundle.extractor_bytes, num_threads=num_threads,
                                         pixel_scale=self.spec.pixel_scale, pixel_offset=self.spec.pixel_offset,
                                         runtime=runtime)
        self.normalize = ext.get("feature_normalize", "none")
        self.patches = bundle.patches_per_tile   # patch extractor: h*w descriptors per tile
        self.scorer = scorer_for_bundle(bundle)   # honours an optional PCA shortlist bank
        self.tile_index = bundle.tile_index
        if self.tile_index is not None:   # per-position banks: each tile against its own position's bank
            self.position_scorers = [make_scorer(bundle.scoring_method, bundle.bank[self.tile_index == i], bundle.k)
                                     for i in range(len(self.spec.tile_boxes()))]
        self.last_tile_scores = np.zeros(0, np.float32)
        self.last_patch_scores = np.zeros((0, self.patches), np.float32)   # (tiles, h*w) with patches
        self.threshold, self.threshold_source = bundle.threshold_for(threshold, target_frr)
        self.last_timing: dict[str, float] = {}

    @classmethod
    def from_bundle(cls, path: str | Path, **kwargs) -> "Detector":
        return cls(load_bundle(path), **kwargs)

    def fit(self, normal_images: Sequence) -> "Detector":
        """Replace the bank with features of ``normal_images`` (same extractor)."""
        feats = self.features(self._batch(normal_images))
        self.scorer = make_scorer(self.bundle.scoring_method, feats, self.bundle.k)
        self.tile_index = None
        return self

    def _batch(self, images: Sequence) -> np.ndarray:
        return np.concatenate([preprocess(im, self.spec) for im in images], axis=0)

    def features(self, batch_u8: np.ndarray) -> np.ndarray:
        """Normalised features for a preprocessed uint8 batch: (N, D), or (N * h*w, C) patch
        rows (input-major) for a patch extractor."""
        f = self.extractor(batch_u8)
        if self.patches > 1:
            f = f.reshape(f.shape[0] * self.patches, -1)
        return normalize_features(f, self.normalize)

    def score_batch(self, batch_u8: np.ndarray) -> np.ndarray:
        """Image scores for a batch of untiled network inputs (N, H, W, 3)."""
        return self.scorer.score(self.features(batch_u8)).reshape(-1, self.patches).max(axis=1)

    def score_one(self, image) -> float:
        """Score one image (path, bytes or array): the worst tile's score.

        Records per-stage timing in ``last_timing`` and the per-tile scores (row-major,
        see ``spec.tile_boxes()``) in ``last_tile_scores``.
        """
        t0 = time.perf_counter()
        batch = preprocess(image, self.spec)
        t1 = time.perf_counter()
        feats = self.features(batch)
        t2 = time.perf_counter()
        self.last_tile_scores = self._tile_scores(feats)
        score = float(self.last_tile_scores.max())
        t3 = time.perf_counter()
        self.last_timing = {"preprocess_ms": (t1 - t0) * 1e3, "inference_ms": (t2 - t1) * 1e3,
                            "knn_ms": (t3 - t2) * 1e3}
        return score

    def _tile_scores(self, feats: np.ndarray) -> np.ndarray:
        """Tile scores (T,) from feature rows; with patches a tile scores as its worst patch."""
        p = self.patches
        if self.tile_index is None:
            rows = self.scorer.score(feats)
        else:
            rows = np.concatenate([self.position_scorers[i].score(feats[i * p:(i + 1) * p])
                                   for i in range(len(feats) // p)]).astype(np.float32)
        self.last_patch_scores = rows.reshape(-1, p)
        return self.last_patch_scores.max(axis=1) if p > 1 else rows

    def score_frame(self, image) -> dict:
        """Score plus what a decision record keeps of a tiled frame: the per-tile grid
        (rows x columns) and the worst tile's box in working-size pixels."""
        score = self.score_one(image)
        boxes = self.spec.tile_boxes()
        worst = int(np.argmax(self.last_tile_scores))
        return {"score": score, "tile_grid": self.last_tile_scores.reshape(self.spec.grid_shape).tolist(),
                "worst_tile": list(boxes[worst]), "worst_tile_index": worst}

    def anomaly_score(self, images: Sequence) -> Scores:
        return Scores(scores=np.array([self.score_one(im) for im in images], np.float32))

    def is_anomalous(self, score: float) -> bool:
        return score > self.threshold
