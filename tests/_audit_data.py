"""Tiny generated textures for the audit tests (no shared data needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def stripes(n: int, size: int = 16, period: int = 4, seed: int = 0) -> np.ndarray:
    """(n, size, size) uint8 vertical stripes with random phase and mild noise."""
    rng = np.random.default_rng(seed)
    xx = np.mgrid[:size, :size][1]
    out = []
    for _ in range(n):
        ph = rng.uniform(0, 2 * np.pi)
        img = 128 + 70 * np.sin(2 * np.pi * xx / period + ph) + 4 * rng.standard_normal((size, size))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def paste_defect(img: np.ndarray, y: int, x: int, side: int, value: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Copy of ``img`` with a flat square at (y, x), and its binary mask."""
    out = img.copy()
    out[y:y + side, x:x + side] = value
    mask = np.zeros(img.shape, np.uint8)
    mask[y:y + side, x:x + side] = 1
    return out, mask


def write_pngs(folder: Path, images, names=None) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        p = folder / (names[i] if names else f"img{i:03d}.png")
        cv2.imwrite(str(p), im)
        paths.append(p)
    return paths
