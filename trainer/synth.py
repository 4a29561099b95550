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

import dataclasses
from typing import Callable, Sequence

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


# ---------------------------------------------------------------------------- validation defects
# Defects for *selecting* a configuration (issue 11): drawn on the source frames (before any
# resize or tiling, so every candidate sees the same defect through its own preprocessing),
# sized in source pixels from the smallest defect the user cares about up to a fraction of the
# frame (log-uniform), with a contrast relative to the image's own spread (subtle to strong:
# an AUROC that saturates at 1.0 for every candidate ranks nothing), placed where the image
# has content (a warp of a flat background changes nothing), and of two families:
#   surface: scratch, spot, crack, stain (soft low-contrast blob), texture (blur / noise patch);
#   shape:   cutpaste (a piece of the image moved), warp (local bulge / pinch), missing (a region
#            in-painted away), stretch (proportions change over a large window) - what changes an
#            object's outline or layout.
# A defect that changes nothing (mean change under its mask < MIN_CHANGE grey levels) is redrawn.

SURFACE_KINDS = ("scratch", "spot", "crack", "stain", "texture", "uneven")
SHAPE_KINDS = ("cutpaste", "warp", "missing", "stretch", "chip")
LAYOUT_KINDS = ("elastic",)
VALIDATION_KINDS = SURFACE_KINDS + SHAPE_KINDS + LAYOUT_KINDS


def family_of(kind: str) -> str:
    """``surface``, ``shape`` or ``layout``: the family a validation defect kind belongs to.

    Example:
        >>> family_of("scratch"), family_of("elastic")
        ('surface', 'layout')
    """
    base = kind.split("_")[0]
    for name, kinds in (("surface", SURFACE_KINDS), ("shape", SHAPE_KINDS), ("layout", LAYOUT_KINDS)):
        if base in kinds:
            return name
    raise ValueError(f"unknown validation defect kind {kind!r}; expected one of {VALIDATION_KINDS}")
MIN_CHANGE = 2.0


def _f32(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) if img.ndim == 3 else np.repeat(img[:, :, None], 3, 2).astype(np.float32)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W) uint8 mask -> float weights in [0, 1] with a Gaussian-blurred edge."""
    m = mask.astype(np.float32) / 255.0
    return _cv2().GaussianBlur(m, (0, 0), sigma) if sigma > 0 else m


def _shift(img, weight, amount):
    """Add ``amount`` grey levels under ``weight`` (H, W) in [0, 1]."""
    return np.clip(_f32(img) + weight[..., None] * amount, 0, 255).astype(np.uint8)


def _signed(img, centre, strength, rng):
    """Signed amplitude: away from the local level when that is near black or white, else random."""
    x, y = int(centre[0]), int(centre[1])
    g = _f32(img)[max(0, y - 2):y + 3, max(0, x - 2):x + 3].mean()
    sign = 1.0 if g < 70 else -1.0 if g > 185 else float(rng.choice([-1.0, 1.0]))
    return sign * strength


def _polyline_mask(shape, pts, thick):
    mask = np.zeros(shape[:2], np.uint8)
    _cv2().polylines(mask, [np.int32(np.round(pts))], False, 255, int(max(1, thick)), _cv2().LINE_AA)
    return mask


def v_scratch(img, rng, centre, size, strength):
    """A straight-ish line of length ``size``, 3-10 % as wide (at least 1 px)."""
    n = int(rng.integers(1, 4))
    ang = rng.uniform(0, 2 * np.pi)
    pts = [np.asarray(centre, np.float64) - 0.5 * size * np.array([np.cos(ang), np.sin(ang)])]
    for _ in range(n):
        ang += rng.normal(0, 0.25)
        pts.append(pts[-1] + size / n * np.array([np.cos(ang), np.sin(ang)]))
    mask = _polyline_mask(img.shape, pts, round(size * rng.uniform(0.03, 0.10)))
    return _shift(img, _soft(mask, 0), _signed(img, centre, strength, rng)), mask


def v_spot(img, rng, centre, size, strength):
    """A filled ellipse ``size`` across with a soft edge."""
    mask = np.zeros(img.shape[:2], np.uint8)
    ax = (max(1, int(size / 2)), max(1, int(size / 2 * rng.uniform(0.5, 1.0))))
    _cv2().ellipse(mask, (int(centre[0]), int(centre[1])), ax, rng.uniform(0, 180), 0, 360, 255, -1, _cv2().LINE_AA)
    return _shift(img, _soft(mask, max(0.5, size / 16)), _signed(img, centre, strength, rng)), mask


def v_crack(img, rng, centre, size, strength):
    """A thin jagged dark line: a random walk spanning about ``size``."""
    n = int(rng.integers(6, 14))
    ang = rng.uniform(0, 2 * np.pi)
    pts = [np.asarray(centre, np.float64)]
    for _ in range(n):
        ang += rng.normal(0, 0.7)
        pts.append(pts[-1] + size / np.sqrt(n) * 0.8 * np.array([np.cos(ang), np.sin(ang)]))
    pts = np.asarray(pts) - (np.mean(pts, axis=0) - centre)
    mask = _polyline_mask(img.shape, pts, round(size / 40))
    return _shift(img, _soft(mask, 0), -1.3 * strength), mask


def v_stain(img, rng, centre, size, strength):
    """A smooth, low-contrast blob (Gaussian profile, sigma = size / 4)."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    s = max(1.0, size / 4)
    weight = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * s * s))
    mask = (weight > 0.3).astype(np.uint8) * 255
    return _shift(img, weight, 0.7 * _signed(img, centre, strength, rng)), mask


def v_texture(img, rng, centre, size, strength):
    """The texture inside an ellipse ``size`` across is smoothed away or replaced by noise."""
    cv2 = _cv2()
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.ellipse(mask, (int(centre[0]), int(centre[1])), (max(1, int(size / 2)), max(1, int(size / 2 * rng.uniform(0.6, 1)))),
                rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA)
    x = _f32(img)
    if rng.random() < 0.5:
        other = cv2.GaussianBlur(x, (0, 0), max(1.0, size / 8))
    else:
        other = x + rng.normal(0, 0.6 * strength, x.shape[:2])[..., None].astype(np.float32)
    wgt = _soft(mask, max(0.5, size / 16))[..., None]
    return np.clip(x * (1 - wgt) + other * wgt, 0, 255).astype(np.uint8), mask


def v_cutpaste(img, rng, centre, size, strength):
    """A square piece of the image (side ``size``), rotated or flipped, pasted centred at ``centre``."""
    h, w = img.shape[:2]
    s = int(max(2, min(size, h - 1, w - 1)))
    sy, sx = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    x = _f32(img)
    patch = np.rot90(x[sy:sy + s, sx:sx + s], int(rng.integers(1, 4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    ty = int(np.clip(centre[1] - s / 2, 0, h - s))
    tx = int(np.clip(centre[0] - s / 2, 0, w - s))
    mask = np.zeros((h, w), np.uint8)
    mask[ty:ty + s, tx:tx + s] = 255
    wgt = _soft(mask, 0.5)[..., None]
    canvas = x.copy()
    canvas[ty:ty + s, tx:tx + s] = patch * rng.uniform(0.9, 1.1)
    return np.clip(x * (1 - wgt) + canvas * wgt, 0, 255).astype(np.uint8), mask


def v_warp(img, rng, centre, size, strength):
    """A local bulge or pinch of radius ``size / 2`` (the outline moves, the texture stretches)."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    r = max(2.0, size / 2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - centre[0], yy - centre[1]
    rho2 = (dx * dx + dy * dy) / (r * r)
    amount = rng.choice([-1.0, 1.0]) * rng.uniform(0.35, 0.6)
    f = np.where(rho2 < 1, 1 - amount * (1 - rho2) ** 2, 1.0).astype(np.float32)
    out = cv2.remap(np.ascontiguousarray(_f32(img)), centre[0] + dx * f, centre[1] + dy * f, cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT)
    mask = (rho2 < 1).astype(np.uint8) * 255
    return np.clip(out, 0, 255).astype(np.uint8), mask


def v_stretch(img, rng, centre, size, strength):
    """The part's proportions change: the image is scaled by 1.15-1.4 along a random axis about
    ``centre`` inside a window ``size`` across (the whole frame when ``size`` covers it)."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    ang = rng.uniform(0, np.pi)
    f = rng.uniform(1.15, 1.4) if rng.random() < 0.5 else 1 / rng.uniform(1.15, 1.4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - centre[0], yy - centre[1]
    u = dx * np.cos(ang) + dy * np.sin(ang)                    # coordinate along the stretch axis
    r = max(2.0, size / 2)
    wgt = np.clip(1.5 - np.hypot(dx, dy) / r, 0, 1).astype(np.float32)    # full inside r/2, none beyond 1.5 r
    shrink = (1 / f - 1) * wgt
    mx = (xx + u * shrink * np.cos(ang)).astype(np.float32)
    my = (yy + u * shrink * np.sin(ang)).astype(np.float32)
    out = cv2.remap(np.ascontiguousarray(_f32(img)), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return np.clip(out, 0, 255).astype(np.uint8), (wgt > 0.5).astype(np.uint8) * 255


def v_elastic(img, rng, centre, size, strength):
    """A smooth, large-scale deformation of the whole part (its shape changes, its local texture
    does not): a random displacement field smoothed over ``size / 3`` px, peak 6-15 % of the
    short side. Unlike drawn defects it leaves no local artifact, as a wrong or misshapen part
    does not; pooled features that keep the layout see it, patch features barely."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    sigma = max(2.0, size / 3)
    amp = rng.uniform(0.06, 0.15) * min(h, w)
    f = max(1.0, sigma / 4)               # smooth at low resolution, then upsample: same field, O(h w) cost
    lh, lw = max(2, int(round(h / f))), max(2, int(round(w / f)))
    field = [cv2.resize(cv2.GaussianBlur(rng.uniform(-1, 1, (lh, lw)).astype(np.float32), (0, 0), sigma / f),
                        (w, h), interpolation=cv2.INTER_LINEAR) for _ in range(2)]
    peak = max(float(np.abs(field[0]).max()), float(np.abs(field[1]).max()), 1e-6)
    dx, dy = (f * (amp / peak) for f in field)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = cv2.remap(np.ascontiguousarray(_f32(img)), xx + dx, yy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    mask = (np.hypot(dx, dy) > 0.3 * amp).astype(np.uint8) * 255
    return np.clip(out, 0, 255).astype(np.uint8), mask


def v_uneven(img, rng, centre, size, strength):
    """Uneven surface or coating: a soft, large brightness change (sigma = size / 2) over a big
    part of the frame, 0.5-1.2 x the amplitude of a spot: no edge anywhere."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    s = max(2.0, size / 2)
    weight = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * s * s)).astype(np.float32)
    mask = (weight > 0.5).astype(np.uint8) * 255
    return _shift(img, weight, rng.uniform(0.5, 1.2) * _signed(img, centre, strength, rng)), mask


def v_chip(img, rng, centre, size, strength):
    """A chipped edge or broken corner: an irregular bite out of the frame border, filled with the
    darkest or brightest level found along that border (the background behind the part)."""
    cv2 = _cv2()
    h, w = img.shape[:2]
    side = int(rng.integers(4))
    edge = [(rng.uniform(0, w), 0.0), (rng.uniform(0, w), h - 1.0), (0.0, rng.uniform(0, h)), (w - 1.0, rng.uniform(0, h))][side]
    n = int(rng.integers(5, 9))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = size / 2 * rng.uniform(0.5, 1.0, n)
    pts = np.stack([edge[0] + rad * np.cos(ang), edge[1] + rad * np.sin(ang)], 1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.int32(np.round(pts))], 255, cv2.LINE_AA)
    x = _f32(img)
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]]).mean(axis=1)
    level = float(np.percentile(border, 2) if rng.random() < 0.7 else np.percentile(border, 98))
    wgt = _soft(mask, 0.5)[..., None]
    return np.clip(x * (1 - wgt) + level * wgt, 0, 255).astype(np.uint8), mask


MISSING_FILL_SIDE = 512   # in-painting works on at most this many pixels across (larger fills: scaled down, then up)
MISSING_MAX_RADIUS = 32   # ... and with at most this radius (its cost grows with the radius squared)


def v_missing(img, rng, centre, size, strength):
    """An ellipse ``size`` across in-painted from its surroundings (a part that is not there).

    Only the ellipse's box plus a margin wider than the in-painting radius is in-painted (the
    same pixels as in-painting the whole frame). A box over :data:`MISSING_FILL_SIDE` px across
    (or with a radius over :data:`MISSING_MAX_RADIUS`) is in-painted scaled down and the fill scaled
    back: a 1000-px hole in a 1024-px frame took 9-30 s at full size (radius 125 px); the fill of
    so large a hole is smooth anyway.
    """
    cv2 = _cv2()
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.ellipse(mask, (int(centre[0]), int(centre[1])), (max(1, int(size / 2)), max(1, int(size / 2 * rng.uniform(0.5, 1)))),
                rng.uniform(0, 180), 0, 360, 255, -1)
    src = np.ascontiguousarray(_f32(img).astype(np.uint8))
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return src, mask
    radius = max(1.0, size / 8)
    m = int(np.ceil(radius)) + 2
    y0, y1, x0, x1 = max(0, ys.min() - m), min(mask.shape[0], ys.max() + m + 1), max(0, xs.min() - m), \
        min(mask.shape[1], xs.max() + m + 1)
    crop, cm = np.ascontiguousarray(src[y0:y1, x0:x1]), np.ascontiguousarray(mask[y0:y1, x0:x1])
    f = max(max(y1 - y0, x1 - x0) / MISSING_FILL_SIDE, radius / MISSING_MAX_RADIUS)
    if f > 1:
        sw, sh = max(1, round((x1 - x0) / f)), max(1, round((y1 - y0) / f))
        small = cv2.inpaint(cv2.resize(crop, (sw, sh), interpolation=cv2.INTER_AREA),
                            cv2.resize(cm, (sw, sh), interpolation=cv2.INTER_NEAREST), max(1.0, radius / f),
                            cv2.INPAINT_TELEA)
        fill = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    else:
        fill = cv2.inpaint(crop, cm, radius, cv2.INPAINT_TELEA)
    out = src.copy()
    region = out[y0:y1, x0:x1]
    region[cm > 0] = fill[cm > 0]
    return out, mask


VALIDATION_DRAW: dict[str, Callable] = {"scratch": v_scratch, "spot": v_spot, "crack": v_crack, "stain": v_stain,
                                        "texture": v_texture, "cutpaste": v_cutpaste, "warp": v_warp,
                                        "missing": v_missing, "stretch": v_stretch, "elastic": v_elastic,
                                        "uneven": v_uneven, "chip": v_chip}


def content_map(img: np.ndarray) -> np.ndarray:
    """Where an image has content: local gradient energy, smoothed, as a probability map (H, W)."""
    cv2 = _cv2()
    g = _f32(img).mean(axis=2)
    e = np.abs(cv2.Laplacian(g, cv2.CV_32F, ksize=3)) + np.abs(g - g.mean()) * 0.05
    e = cv2.GaussianBlur(e, (0, 0), max(1.0, min(g.shape) / 32))
    return e / max(float(e.sum()), 1e-9)


@dataclasses.dataclass
class ValidationDefects:
    """Synthetic defects for validation: ``images[i]`` was drawn on normal image ``source[i]``."""

    images: list
    masks: list
    kinds: list
    source: np.ndarray
    sizes: np.ndarray
    strengths: np.ndarray


def validation_defects(images: Sequence[np.ndarray], kinds: Sequence[str] = VALIDATION_KINDS, seed: int = 0,
                       min_px: float = 2.0, max_frac: float = 0.3, shape_frac: tuple = (0.15, 0.6),
                       strength: tuple = (0.4, 2.0), each: bool = True, per_image: int = 1) -> ValidationDefects:
    """Validation defects on source-resolution normal images.

    Args:
        images: uint8 (H, W) or (H, W, 3) normal images (any sizes).
        kinds: defect kinds (:data:`VALIDATION_KINDS`).
        min_px: smallest defect (source px): ``--min-defect-px``.
        max_frac: surface defects span ``min_px`` .. ``max_frac`` x the short side (log-uniform).
        shape_frac: shape defects span this range of the short side (at least ``min_px``).
        strength: amplitude range as a multiple of the image's grey-level spread (at least 8 levels).
        each: every image gets one defect of every kind (else kinds cycle over images).
        per_image: defects per (image, kind) pair (``each``) or per image (cycling).

    Returns:
        :class:`ValidationDefects` (RGB uint8 images).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> imgs = [rng.integers(0, 255, (48, 48), dtype=np.uint8) for _ in range(2)]
        >>> v = validation_defects(imgs, seed=1)
        >>> len(v.images), sorted(set(v.kinds)) == sorted(VALIDATION_KINDS)
        (24, True)
    """
    rng = np.random.default_rng(seed)
    out = ValidationDefects([], [], [], [], [], [])
    for i, img in enumerate(images):
        img = img if img.ndim == 3 else np.repeat(img[:, :, None], 3, 2)
        plan = [k for k in kinds for _ in range(per_image)] if each else \
            [kinds[(i * per_image + j) % len(kinds)] for j in range(per_image)]
        pmap = content_map(img)
        for kind in plan:
            d, m, size, st = _draw_validation(img, kind, rng, pmap, min_px, max_frac, shape_frac, strength)
            out.images.append(d)
            out.masks.append(m)
            out.kinds.append(kind)
            out.source.append(i)
            out.sizes.append(size)
            out.strengths.append(st)
    out.source, out.sizes, out.strengths = (np.asarray(v) for v in (out.source, out.sizes, out.strengths))
    return out


def _draw_validation(img, kind, rng, pmap, min_px, max_frac, shape_frac, strength):
    """One defect of ``kind``; redrawn (up to 6 times) when it changes nothing visible."""
    if kind not in VALIDATION_DRAW:
        raise ValueError(f"unknown validation defect kind {kind!r}; expected one of {VALIDATION_KINDS}")
    h, w = img.shape[:2]
    short = min(h, w)
    if kind in LAYOUT_KINDS or kind == "uneven":
        lo, hi = 0.3 * short, 1.0 * short
    elif kind in SHAPE_KINDS:
        lo, hi = max(min_px, shape_frac[0] * short), shape_frac[1] * short
    else:
        lo, hi = min_px, max(min_px, max_frac * short)
    spread = max(8.0, float(img.std()))
    flat = pmap.ravel()
    for _ in range(6):
        size = float(np.exp(rng.uniform(np.log(lo), np.log(max(lo, hi)))))
        st = float(rng.uniform(*strength) * spread)
        if rng.random() < 0.7:
            j = int(rng.choice(flat.size, p=flat))
            centre = (float(j % w), float(j // w))
        else:
            centre = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
        d, m = VALIDATION_DRAW[kind](img, rng, centre, size, st)
        sel = m > 0
        if sel.any() and float(np.abs(d[sel].astype(np.float32) - img[sel]).mean()) >= MIN_CHANGE:
            break
    return d, m, size, st
