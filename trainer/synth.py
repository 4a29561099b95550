"""Synthetic defects drawn on normal images (OpenCV), with their masks.

Used twice: to build the embedded demo's anomalous test images, and for model
selection when a line has few or no real defect images (validation defects are
made from held-out normal images).

Example:
    >>> import numpy as np
    >>> img, mask = add_defect(np.full((64, 64, 3), 128, np.uint8), "spot", np.random.default_rng(0))
    >>> bool(mask.any())
    True
"""
from __future__ import annotations

from typing import Callable

import numpy as np

DEFECT_KINDS = ("scratch", "spot", "crack", "cutpaste", "blur", "brightness")


def _cv2():
    import cv2

    return cv2


def _contrast_color(img: np.ndarray, mask: np.ndarray, rng) -> tuple:
    """A colour that stands out against the pixels under ``mask``."""
    base = img[mask > 0].mean(axis=0) if mask.any() else img.reshape(-1, img.shape[-1]).mean(axis=0)
    dark = base.mean() > 127
    lvl = rng.uniform(0, 60) if dark else rng.uniform(195, 255)
    return tuple(float(np.clip(lvl + rng.normal(0, 10), 0, 255)) for _ in range(3))


def scratch(img, rng, scale=1.0):
    cv2 = _cv2()
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    n = int(rng.integers(2, 5))
    pts = [(rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h)]
    ang = rng.uniform(0, 2 * np.pi)
    seg = max(h, w) * rng.uniform(0.12, 0.25) * scale
    for _ in range(n):
        ang += rng.normal(0, 0.3)
        x, y = pts[-1]
        pts.append((np.clip(x + seg * np.cos(ang), 0, w - 1), np.clip(y + seg * np.sin(ang), 0, h - 1)))
    thick = max(1, int(round(max(h, w) / 96 * rng.uniform(1, 2.5) * scale)))
    cv2.polylines(mask, [np.int32(pts)], False, 255, thick, cv2.LINE_AA)
    return _paint(img, mask, _contrast_color(img, mask, rng), rng)


def spot(img, rng, scale=1.0):
    cv2 = _cv2()
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    r = max(2, int(min(h, w) * rng.uniform(0.04, 0.10) * scale))
    c = (int(rng.uniform(r, w - r)), int(rng.uniform(r, h - r)))
    cv2.ellipse(mask, c, (r, max(2, int(r * rng.uniform(0.6, 1.0)))), rng.uniform(0, 180), 0, 360, 255, -1,
                cv2.LINE_AA)
    return _paint(img, mask, _contrast_color(img, mask, rng), rng)


def crack(img, rng, scale=1.0):
    cv2 = _cv2()
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    x, y = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    ang = rng.uniform(0, 2 * np.pi)
    pts = [(x, y)]
    for _ in range(int(rng.integers(8, 16))):
        ang += rng.normal(0, 0.7)
        step = max(h, w) * 0.04 * scale
        x, y = np.clip(x + step * np.cos(ang), 0, w - 1), np.clip(y + step * np.sin(ang), 0, h - 1)
        pts.append((x, y))
    cv2.polylines(mask, [np.int32(pts)], False, 255, max(1, round(max(h, w) / 128 * scale)), cv2.LINE_AA)
    return _paint(img, mask, (20.0, 20.0, 20.0) if img.mean() > 60 else (230.0, 230.0, 230.0), rng)


def cutpaste(img, rng, scale=1.0):
    """Copy a patch of the image itself to another place, rotated (CutPaste, Li et al. 2021)."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    ph, pw = (max(4, int(d * rng.uniform(0.12, 0.25) * scale)) for d in (h, w))
    sy, sx = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
    patch = np.ascontiguousarray(np.rot90(img[sy:sy + ph, sx:sx + pw], int(rng.integers(1, 4))))
    patch = cv2.resize(patch, (pw, ph))
    if patch.ndim == 2:
        patch = patch[:, :, None]
    patch = np.clip(patch.astype(np.float32) * rng.uniform(0.7, 1.3), 0, 255).astype(np.uint8)
    ty, tx = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
    out = img.copy()
    out[ty:ty + ph, tx:tx + pw] = patch.reshape(out[ty:ty + ph, tx:tx + pw].shape)
    mask = np.zeros((h, w), np.uint8)
    mask[ty:ty + ph, tx:tx + pw] = 255
    return out, mask


def _disc(img, rng, scale):
    """A random filled disc mask (8-16 % of the short side) and its radius."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    r = max(3, int(min(h, w) * rng.uniform(0.08, 0.16) * scale))
    _cv2().circle(mask, (int(rng.uniform(r, w - r)), int(rng.uniform(r, h - r))), r, 255, -1)
    return mask, r


def blur(img, rng, scale=1.0):
    cv2 = _cv2()
    mask, r = _disc(img, rng, scale)
    k = 2 * max(2, r // 2) + 1
    blurred = cv2.GaussianBlur(img, (k, k), 0)
    out = np.where((mask > 0)[..., None] if img.ndim == 3 else mask > 0, blurred, img)
    return out.astype(np.uint8), mask


def brightness(img, rng, scale=1.0):
    cv2 = _cv2()
    mask, r = _disc(img, rng, scale)
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), r / 3)
    gain = rng.choice([-1, 1]) * rng.uniform(50, 90)
    add = soft[..., None] * gain if img.ndim == 3 else soft * gain
    return np.clip(img.astype(np.float32) + add, 0, 255).astype(np.uint8), mask


def _paint(img, mask, color, rng):
    alpha = (mask.astype(np.float32) / 255)[..., None] * rng.uniform(0.75, 1.0)
    out = img.astype(np.float32) * (1 - alpha) + np.float32(color)[None, None, :img.shape[2]] * alpha
    return out.astype(np.uint8), mask


KINDS: dict[str, Callable] = {"scratch": scratch, "spot": spot, "crack": crack, "cutpaste": cutpaste,
                              "blur": blur, "brightness": brightness}


def add_defect(img: np.ndarray, kind: str, rng: np.random.Generator, scale: float = 1.0):
    """Return ``(defective image, mask)`` for a uint8 (H, W, 3) image."""
    if kind not in KINDS:
        raise ValueError(f"unknown defect kind {kind!r}; expected one of {DEFECT_KINDS}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return KINDS[kind](np.ascontiguousarray(img), rng, scale)


def synthetic_defects(images, kinds=DEFECT_KINDS, seed: int = 0, per_image: int = 1, scale: float = 1.0):
    """One defect of a cycling kind on each image; returns (images, masks, kinds).

    ``scale`` shrinks the defects (1.0: sized to the whole image); a tiled bundle draws them at
    tile scale, so validation asks the question tiling is for."""
    rng = np.random.default_rng(seed)
    out, masks, used = [], [], []
    for i, img in enumerate(images):
        for j in range(per_image):
            kind = kinds[(i * per_image + j) % len(kinds)]
            d, m = add_defect(img, kind, rng, scale)
            out.append(d)
            masks.append(m)
            used.append(kind)
    return out, masks, used
