"""The audit methods behind one small interface (TensorFlow imported lazily).

Each method maps to a detector class in :mod:`models` following the scoring contract.
Trainable methods (``anogan``, ``projection``) also serialise to bundle entries via
``params()`` / ``to_files(prefix)`` / ``from_files(params, files, prefix)``.

Example:
    >>> det = make_detector("projection", (128, 128), {"kind": "vae"})   # doctest: +SKIP
"""
from __future__ import annotations

import logging

from core.registry import Registry

log = logging.getLogger(__name__)

METHODS = Registry("audit method")
"""Audit plug-ins (detector classes following :mod:`core.contract`), imported on first use."""
METHODS.register("anogan", "models.anogan:AnoGANDetector")
METHODS.register("projection", "models.autoencoders:ProjectionDetector")
METHODS.register("nkn", "models.nkn:NKNDetector")
TRAINABLE = ("anogan", "projection")


def detector_class(method: str):
    """The detector class of ``method`` (imports TensorFlow on first use)."""
    if method not in METHODS:
        raise ValueError(f"unknown audit method {method!r}; expected one of {', '.join(METHODS.names())}")
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        from device.errors import RuntimeMissingError

        raise RuntimeMissingError(f"audit {method} needs TensorFlow (only the audit commands do): "
                                  f"pip install 'tensorflow>=2.16' (or the [audit] extra)")
    return METHODS.get(method)


def make_detector(method: str, size: tuple[int, int] | None, options: dict):
    """A fresh (unfitted) detector; ``options`` are its keyword arguments."""
    cls = detector_class(method)
    opts = {k: v for k, v in options.items() if v is not None}
    if method in TRAINABLE:
        if size is None:
            raise ValueError(f"{method} needs an image size")
        opts["size"] = tuple(size)
    return cls(**opts)


def model_size(det) -> tuple[int, int] | None:
    """Input (H, W) a fitted detector expects (``None``: any size)."""
    cfg = getattr(det, "config", None)
    return tuple(cfg.size) if cfg is not None and getattr(cfg, "size", None) else None


def prefix(method: str) -> str:
    """Bundle entry prefix of a method's weight files."""
    return f"audit_{method}"


def fit_and_calibrate(method: str, x, options: dict, target_frr: float = 0.01, seed: int = 0,
                      holdout: float = 0.2):
    """Fit ``method`` on normal images and calibrate its threshold on a held-out part.

    Args:
        x: (N, H, W) uint8 or float normal images.
        holdout: fraction held out for :func:`core.threshold.describe_calibration`
            (none when fewer than 5 images).

    Returns:
        ``(detector, threshold entry or None)``.
    """
    import time

    import numpy as np

    from core.threshold import describe_calibration

    x = np.asarray(x)
    order = np.random.default_rng(seed).permutation(len(x))
    n_cal = int(len(x) * holdout) if len(x) >= 5 else 0
    cal, train = order[:n_cal], order[n_cal:]
    det = make_detector(method, tuple(x.shape[1:3]), options)
    t0 = time.perf_counter()
    det.fit(x[train])
    log.info("fitted %s on %d normal images in %.1f s", method, len(train), time.perf_counter() - t0)
    thr = None
    if n_cal:
        scores = det.anomaly_score(x[cal]).scores
        thr = describe_calibration(scores, target_frr, f"{method}: held-out normal images ({n_cal})")
    return det, thr
