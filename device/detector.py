"""The one scoring model: a verified bundle that turns a frame into a decision.

``Detector.inspect(frame)`` runs preprocess -> TFLite extractor -> :class:`~device.scoring.TileScorer`
-> :func:`core.decision.decide` and returns a :class:`FrameResult`: the score, every tile's and
patch's score, per-stage timing and the verdict (PASS / REJECT / ERROR with its reason). It never
raises for a bad frame: a frame that cannot be decoded or scored, or scores NaN, is an ERROR
verdict. ``anomaly-device score``, the daemon, its archive overlays, ``anomaly-train evaluate``
and the life-cycle commands all call it; ``fit`` calibrates with the same extractor and
:class:`~device.scoring.TileScorer`, so training-time and device-time scores agree by construction.

No TensorFlow: numpy, OpenCV and a TFLite runtime only.

Example:
    >>> det = Detector.from_bundle("bundle/")              # doctest: +SKIP
    >>> r = det.inspect("part.png")                        # doctest: +SKIP
    >>> r.decision, r.score, r.timing["inference_ms"]      # doctest: +SKIP
    (<Decision.PASS: 'PASS'>, 0.31, 0.52)
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.contract import Scores
from core.decision import Decision, Threshold, Verdict, decide
from device.bundle import Bundle, load_bundle
from device.errors import AnomalyError, BundleError
from device.extractor import TFLiteExtractor, normalize_features
from device.manifest import InputSpec
from device.preprocess import preprocess
from device.scoring import TileScorer, make_scorer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FrameResult:
    """What one frame became.

    Attributes:
        verdict: decision, score, threshold (value and source) and reason.
        spec: the bundle's input spec (tile boxes and grid).
        tile_scores: (T,) per tile, row-major (``spec.tile_boxes()``); None on ERROR.
        patch_scores: (T, h, w) for patch bundles; None otherwise.
        timing: milliseconds per stage (``preprocess_ms``, ``inference_ms``, ``knn_ms``).
    """

    verdict: Verdict
    spec: InputSpec
    tile_scores: np.ndarray | None = None
    patch_scores: np.ndarray | None = None
    timing: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def decision(self) -> Decision:
        return self.verdict.decision

    @property
    def score(self) -> float | None:
        return self.verdict.score

    @property
    def threshold(self) -> Threshold:
        return self.verdict.threshold

    @property
    def reason(self) -> str:
        return self.verdict.reason

    @property
    def rejects(self) -> bool:
        return self.verdict.rejects

    @property
    def worst_tile_index(self) -> int | None:
        return None if self.tile_scores is None else int(np.argmax(self.tile_scores))

    @property
    def worst_tile(self) -> tuple[int, int, int, int] | None:
        """The worst tile's box ``(x, y, w, h)`` in working-size pixels."""
        i = self.worst_tile_index
        return None if i is None else tuple(self.spec.tile_boxes()[i])

    @property
    def tile_grid(self) -> list[list[float]] | None:
        """Tile scores as rows x columns (tiled bundles only)."""
        if self.tile_scores is None or not self.spec.tiled:
            return None
        return self.tile_scores.reshape(self.spec.grid_shape).round(6).tolist()

    def record(self) -> dict[str, Any]:
        """JSON-ready summary (``score --json``, MQTT, reports)."""
        r = {"decision": str(self.decision), "score": self.score, "threshold": self.threshold.value,
             "threshold_source": self.threshold.source, **{k: round(v, 3) for k, v in self.timing.items()}}
        if self.reason:
            r["reason"] = self.reason
        if self.tile_grid is not None:
            r["tile_grid"], r["worst_tile"] = self.tile_grid, list(self.worst_tile)
        return r


class Detector:
    """A verified bundle, ready to score frames; no TensorFlow needed.

    Args:
        bundle: a loaded :class:`~device.bundle.Bundle`.
        num_threads: TFLite interpreter threads.
        threshold: the deployment threshold (default: the bundle's own).
        runtime: force a TFLite runtime (see :func:`device.extractor.load_interpreter_class`).

    Raises:
        BundleError: the extractor cannot be loaded or does not match the manifest.
    """

    def __init__(self, bundle: Bundle, num_threads: int = 1, threshold: Threshold | None = None,
                 runtime: str | None = None):
        self.bundle = bundle
        self.spec = bundle.input_spec
        self.extractor = TFLiteExtractor(bundle.extractor_bytes, num_threads=num_threads,
                                         pixel_scale=self.spec.pixel_scale, pixel_offset=self.spec.pixel_offset,
                                         runtime=runtime, name=str(bundle.path / "extractor.tflite"))
        try:
            _check_interface(self.extractor, bundle)
            self.scorer = TileScorer.for_bundle(bundle)
        except (ValueError, np.linalg.LinAlgError) as exc:
            self.extractor.close()
            raise BundleError(f"{bundle.path}: {exc}") from None
        self.normalize = bundle.manifest.extractor.feature_normalize
        self.patches = bundle.patches_per_tile
        self.patch_grid = bundle.manifest.extractor.patches.grid if bundle.manifest.extractor.patches else None
        self.threshold = threshold if threshold is not None else bundle.threshold

    @classmethod
    def from_bundle(cls, path: str | Path, threshold: float | None = None, target_frr: float | None = None,
                    where: str = "cli", **kwargs) -> "Detector":
        """Load, verify and wrap a bundle; ``threshold`` / ``target_frr`` override its threshold."""
        b = load_bundle(path)
        return cls(b, threshold=b.threshold_for(threshold, target_frr, where), **kwargs)

    # ------------------------------------------------------------------------------ life cycle
    def close(self) -> None:
        """Release the interpreter. Idempotent."""
        if self.extractor is not None:
            self.extractor.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------ scoring
    def features(self, batch_u8: np.ndarray) -> np.ndarray:
        """Normalised feature rows for a preprocessed uint8 batch: (N, D), or (N * h*w, C) patch
        rows (input-major) for a patch extractor."""
        f = self.extractor(batch_u8)
        if self.patches > 1:
            f = f.reshape(f.shape[0] * self.patches, -1)
        return normalize_features(f, self.normalize)

    def score_batch(self, batch_u8: np.ndarray) -> np.ndarray:
        """Image scores for a batch of untiled network inputs (N, H, W, 3) (warm-up, verify)."""
        if self.scorer.n_tiles != 1:
            return self.scorer.frame_scores(self.features(np.repeat(batch_u8, self.scorer.n_tiles, axis=0)))
        return self.scorer.frame_scores(self.features(batch_u8))

    def inspect(self, image, threshold: Threshold | None = None) -> FrameResult:
        """Score one frame (path, bytes or array) and decide. Never raises for a bad frame: any
        failure to decode, preprocess or score, and any non-finite score, is an ERROR verdict."""
        thr = threshold if threshold is not None else self.threshold
        t0 = time.perf_counter()
        try:
            batch = preprocess(image, self.spec)
            t1 = time.perf_counter()
            feats = self.features(batch)
            t2 = time.perf_counter()
            patch = self.scorer.patch_scores(feats)[0]             # (T, patches)
            tiles = patch.max(axis=1) if self.patches > 1 else patch[:, 0]
            worst = float(tiles.max())                              # NaN or inf anywhere propagates here
            t3 = time.perf_counter()
        except Exception as exc:   # noqa: BLE001 - fail closed: any failure to score is an ERROR verdict
            return FrameResult(decide(None, thr, f"cannot score: {type(exc).__name__}: {exc}"), self.spec)
        timing = {"preprocess_ms": (t1 - t0) * 1e3, "inference_ms": (t2 - t1) * 1e3, "knn_ms": (t3 - t2) * 1e3}
        if not math.isfinite(worst):
            return FrameResult(decide(None, thr, "non-finite tile score"), self.spec, tiles, None, timing)
        pmap = patch.reshape(-1, *self.patch_grid) if self.patch_grid else None
        return FrameResult(decide(worst, thr), self.spec, tiles, pmap, timing)

    def error(self, reason: str, threshold: Threshold | None = None) -> FrameResult:
        """The ERROR result of a frame that never reached the model (e.g. undecodable)."""
        return FrameResult(decide(None, threshold if threshold is not None else self.threshold, reason), self.spec)

    # ------------------------------------------------------------------------------ scoring contract
    def fit(self, normal_images: Sequence) -> "Detector":
        """Replace the bank with features of ``normal_images`` (same extractor, shared bank)."""
        feats = self.features(np.concatenate([preprocess(im, self.spec) for im in normal_images]))
        self.scorer = TileScorer(feats, self.bundle.k, self.bundle.scoring_method,
                                 n_tiles=len(self.spec.tile_boxes()), patches=self.patches)
        return self

    def anomaly_score(self, images: Sequence) -> Scores:
        """:mod:`core.contract` scores (NaN where a frame could not be scored)."""
        out = [self.inspect(im).score for im in images]
        return Scores(scores=np.array([np.nan if s is None else s for s in out], np.float32))


def build_detector(cfg) -> "Detector":
    """Load and verify the bundle named by ``cfg`` into a :class:`~device.detector.Detector` with the
    configured threshold, and run the test inferences (a model that cannot run, or cannot tell two
    frames apart, fails now, not on the first part).

    Raises:
        BundleError: the bundle is missing, fails verification or cannot be run.
    """
    bundle = load_bundle(cfg.bundle.path)
    thr = bundle.threshold_for(cfg.bundle.threshold, cfg.bundle.target_frr, where="config")
    det = Detector(bundle, num_threads=cfg.bundle.threads, threshold=thr)
    try:
        check_inference(det)
    except BundleError:
        det.close()
        raise
    return det


def _canaries(h: int, w: int) -> np.ndarray:
    """Two network inputs no working extractor maps to the same features: black, and a seeded pattern."""
    pattern = np.random.default_rng(12345).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.stack([np.zeros((h, w, 3), np.uint8), pattern])


def check_inference(det: "Detector") -> dict[str, Any]:
    """Run the bundle on two canary inputs of its declared shape: the features must be finite, as
    wide as the bank, and different (an extractor with a constant output scores every part alike,
    i.e. passes them all); the scores must be finite. Returns what was measured.

    Raises:
        BundleError: naming the extractor file and what failed.
    """
    where = det.bundle.path / "extractor.tflite"
    h, w = det.spec.size
    t0 = time.perf_counter()
    try:
        feats = [det.features(x[None]) for x in _canaries(h, w)]
        scores = det.score_batch(_canaries(h, w))
    except Exception as exc:  # noqa: BLE001 - any failure here means the bundle cannot run
        raise BundleError(f"{where}: test inference failed: {type(exc).__name__}: {exc}") from None
    ms = (time.perf_counter() - t0) * 1e3 / 2
    if feats[0].shape[1] != det.bundle.bank.shape[1]:
        raise BundleError(f"{where}: produces {feats[0].shape[1]}-wide features, bank.npy rows are "
                          f"{det.bundle.bank.shape[1]} wide")
    if not all(np.isfinite(f).all() for f in feats) or not np.isfinite(scores).all():
        raise BundleError(f"{where}: test inference gave non-finite features or scores")
    scale = max(float(np.max(np.abs(feats[0]))), float(np.max(np.abs(feats[1]))))
    if float(np.max(np.abs(feats[0] - feats[1]))) <= 1e-6 * scale:     # relative: the scale of features is free
        raise BundleError(f"{where}: the same features for a black frame and a patterned one: the extractor "
                          f"cannot tell parts apart (every part would score alike)")
    return {"runtime": det.extractor.runtime, "test_inference_ms": round(ms, 3), "test_score": float(scores[1]),
            "feature_width": int(feats[0].shape[1])}


def _check_interface(ext: TFLiteExtractor, bundle: Bundle) -> None:
    """The model must be the one the manifest describes (input shape and type, output width)."""
    m = bundle.manifest.extractor
    where = f"{bundle.path / 'extractor.tflite'}"
    if tuple(ext.input_shape) != tuple(m.input_shape):
        raise BundleError(f"{where}: model input {list(ext.input_shape)} does not match manifest extractor.input_shape "
                          f"{list(m.input_shape)}")
    if ext.output_dim != m.output_dim:
        raise BundleError(f"{where}: model output has {ext.output_dim} values, manifest extractor.output_dim says "
                          f"{m.output_dim}")
    if m.input_dtype is not None and ext.input_dtype.name != m.input_dtype:
        raise BundleError(f"{where}: model input type {ext.input_dtype.name}, manifest says {m.input_dtype}")


def verify_runnable(bundle: Bundle, runtime: str | None = None) -> dict[str, Any]:
    """Prove a verified bundle can run on this device: load the extractor with the device runtime and
    run :func:`check_inference`. Returns what was checked.

    Raises:
        BundleError: naming the file and what failed.
    """
    with Detector(bundle, runtime=runtime) as det:
        return check_inference(det)


__all__ = ["Detector", "FrameResult", "build_detector", "check_inference", "verify_runnable", "make_scorer"]
