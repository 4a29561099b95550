"""Helpers shared by the audit detectors (AnoGAN, energy projection, NKN).

All audit detectors work on grey images as float32 arrays ``(N, H, W)`` in ``[0, 1]``.
The conversion from uint8 is decided by the dtype (declared), never by the pixel values.

Example:
    >>> import numpy as np
    >>> as_grey_batch(np.zeros((2, 8, 8), np.uint8)).dtype
    dtype('float32')
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


def as_grey_batch(images: Sequence | np.ndarray) -> np.ndarray:
    """Stack images into a float32 ``(N, H, W)`` batch in ``[0, 1]``.

    Args:
        images: uint8 arrays (0..255) or float arrays already in [0, 1]; each (H, W),
            (H, W, 1) or (H, W, 3) (RGB is averaged to grey).

    Raises:
        ValueError: images of different sizes or an unsupported shape/dtype.
    """
    if isinstance(images, np.ndarray) and images.ndim in (3, 4) and images.dtype != object:
        arr = images
    else:
        items = [np.asarray(im) for im in images]
        if not items:
            raise ValueError("no images given")
        shapes = {im.shape[:2] for im in items}
        if len(shapes) > 1:
            raise ValueError(f"images must all have the same size, found {sorted(shapes)}")
        arr = np.stack(items)
    if arr.ndim == 4:
        if arr.shape[-1] == 3:
            arr = arr.astype(np.float32).mean(axis=-1) if arr.dtype != np.uint8 else arr.mean(axis=-1)
        elif arr.shape[-1] == 1:
            arr = arr[..., 0]
        else:
            raise ValueError(f"expected 1 or 3 channels, found shape {arr.shape}")
    if arr.ndim != 3:
        raise ValueError(f"expected (N, H, W[, C]) images, found shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    raise ValueError(f"unsupported image dtype {arr.dtype}; use uint8 or float in [0, 1]")


def check_size(x: np.ndarray, size, what: str, model: str) -> None:
    """Refuse a batch whose image size is not the one ``model`` was built for."""
    if tuple(x.shape[1:3]) != tuple(size):
        raise ValueError(f"{what}: images are {x.shape[1]}x{x.shape[2]}, the {model} expects "
                         f"{size[0]}x{size[1]}")


def smooth_maps(maps: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Gaussian-smooth each (H, W) map of a batch (no-op when ``sigma <= 0``)."""
    if sigma <= 0:
        return maps.astype(np.float32)
    import cv2

    return np.stack([cv2.GaussianBlur(m.astype(np.float32), (0, 0), sigma) for m in maps])


def score_from_maps(maps: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Image score = maximum of the smoothed map (higher = more anomalous)."""
    return smooth_maps(maps, sigma).reshape(len(maps), -1).max(axis=1).astype(np.float64)


def weights_to_bytes(model) -> bytes:
    """Serialise a Keras model's weights (``.weights.h5``) to bytes."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.weights.h5"
        model.save_weights(str(p))
        return p.read_bytes()


def weights_from_bytes(model, data: bytes, name: str = "weights") -> None:
    """Load ``.weights.h5`` bytes into a built Keras model.

    Raises:
        ValueError: the weights do not fit the architecture (message names ``name``).
    """
    fd, tmp = tempfile.mkstemp(suffix=".weights.h5")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            model.load_weights(tmp)
        except Exception as exc:  # Keras raises ValueError or h5py errors
            raise ValueError(f"{name}: weights do not fit the {model.name} architecture ({exc})") from exc
    finally:
        os.unlink(tmp)


def set_seed(seed: int) -> None:
    """Seed numpy, Python and Keras/TensorFlow."""
    import keras

    keras.utils.set_random_seed(int(seed))


def batches(n: int, size: int):
    """Yield ``slice`` objects covering ``range(n)`` in chunks of ``size``."""
    for i in range(0, n, max(1, size)):
        yield slice(i, min(n, i + size))
