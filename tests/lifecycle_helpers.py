"""Shared pieces of the life-cycle tests (capture, versions, learn, drift, handshake).

Bundles: :func:`derived_bundle` takes the session's tiny real bundle (``daemon_helpers.build_bundle``:
MobileNetV2 α0.35 at 32 px, int8 TFLite) and rebuilds bank, calibration and threshold from
generated parts *with the device code* (features from the bundle's own ``.tflite``), the way
``fit`` writes a bundle: bank from training parts (optionally coreset-subsampled to a cap),
threshold from held-out normal parts at a target false-reject rate, with their feature rows
(``calibration_features.npy``) and the training images' ``image_stats``.

Parts: :func:`part` renders the 'product' of ``daemon_helpers.normal_image`` at any phase, with
sensor noise, a brightness gain and an optional 'new condition' (a dark bar across the part
that the first bank never saw: a new fixture, a label), and :func:`scene` a different scene.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FRAME_HW = (48, 64)


def part(phase: float, seed: int = 0, gain: float = 1.0, bar: bool = False, noise: float = 3.0) -> np.ndarray:
    """The gradient 'part' at ``phase`` (RGB uint8, 48x64)."""
    h, w = FRAME_HW
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin(x / 9.0 + phase)
    g = 128 + 100 * np.cos(y / 7.0 - phase)
    b = 128 + 60 * np.sin((x + y) / 11.0 + 2 * phase)
    img = np.stack([r, g, b], -1)
    if bar:
        img[18:30, :, :] *= 0.35
    img = img * gain + np.random.default_rng(seed).normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def scene(i: int) -> np.ndarray:
    """Something else in front of the camera: a fine checkerboard of another brightness."""
    h, w = FRAME_HW
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(5000 + i)
    img = ((x // 3 + y // 3) % 2) * 200 + 20 + rng.normal(0, 3, (h, w))
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def phases(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 2 * np.pi, n)


def features(det, images) -> np.ndarray:
    from device.preprocess import preprocess

    return np.concatenate([det.features(preprocess(im, det.spec)) for im in images])


def derived_bundle(base: Path, dest: Path, train, calib=None, target_frr: float = 0.05, cap: int | None = None,
                   with_features: bool = True, capture: dict | None = None, stats: bool = True,
                   threshold: float | None = None, grid: tuple[int, int] | None = None) -> Path:
    """A bundle from ``base``'s extractor with a bank of ``train`` parts (coreset-subsampled to
    ``cap``), calibrated on held-out ``calib`` parts at ``target_frr`` (see the module docstring).
    ``grid``: a tile grid over a 64x64 working size with per-position banks."""
    from core.threshold import describe_calibration
    from device.bundle import load_bundle, npy_bytes, write_bundle
    from device.detector import Detector
    from device.drift import image_stats
    from device.scoring import TileScorer, bank_rows

    b = load_bundle(base)
    body = b.manifest.body()
    spec = b.input_spec
    n_tiles, idx = 1, None
    if grid is not None:
        spec = spec.replace(working_size=(64, 64), grid=tuple(grid))
        body["input"] = spec.to_dict()
        n_tiles = grid[0] * grid[1]
    with Detector(b) as det:
        det.spec = spec
        f_train = features(det, train)
        f_cal = features(det, calib) if calib is not None else None
    if grid is None:
        keep = bank_rows(f_train, cap, "coreset", "knn", 1, 0)
    else:
        pos = np.tile(np.arange(n_tiles), len(train))
        keep = np.concatenate([np.flatnonzero(pos == i)[bank_rows(f_train[pos == i], cap // n_tiles if cap else None,
                                                                  "coreset", "knn", 1, 0)] for i in range(n_tiles)])
        idx = pos[keep].astype(np.int32)
    bank = np.ascontiguousarray(f_train[keep], np.float32)
    body["scoring"] = {**body["scoring"], "bank_size": int(len(bank)), "bank_source_images": len(train),
                       "bank_subsample": "coreset" if len(keep) < len(f_train) else "none",
                       "bank_mode": "per_position" if grid else "shared"}
    files = {"extractor.tflite": b.files["extractor.tflite"], "bank.npy": npy_bytes(bank)}
    if idx is not None:
        files["bank_tile_index.npy"] = npy_bytes(idx)
    if f_cal is not None:
        cal = TileScorer(bank, b.k, "knn", n_tiles=n_tiles, tile_index=idx).frame_scores(f_cal).astype(np.float32)
        body["threshold"] = describe_calibration(cal, target_frr, "held-out normal quantile (test bundle)")
        files["calibration_scores.npy"] = npy_bytes(cal)
        if with_features:
            files["calibration_features.npy"] = npy_bytes(f_cal.astype(np.float32))
    if threshold is not None:
        body["threshold"] = {**body["threshold"], "value": float(threshold)}
    body.pop("capture", None)
    body.pop("lineage", None)
    if stats:
        body["image_stats"] = image_stats(list(train))
    else:
        body.pop("image_stats", None)
    if capture is not None:
        body["capture"] = capture
    return Path(write_bundle(dest, body, files))


def drift_replay(bundle, frames, **monitor_kw):
    """Frames through the device path (:meth:`Detector.inspect`) into a drift monitor with the
    bundle's references (``monitor_kw`` overrides its attributes); returns ``(monitor, [(frame index,
    DriftState)])`` of every change of state. ``bundle``: a loaded bundle or its folder."""
    from device.bundle import load_bundle
    from device.detector import Detector
    from device.drift import DriftMonitor

    b = load_bundle(bundle) if isinstance(bundle, (str, Path)) else bundle
    m = DriftMonitor.from_bundle(b, b.threshold.value)
    for k, v in monitor_kw.items():
        setattr(m, k, v)
    changes = []
    with Detector(b) as det:
        for i, img in enumerate(frames):
            c = m.update(det.inspect(img), img)
            if c:
                changes.append((i, c))
    return m, changes


def write_pngs(folder: Path, images, start: int = 0) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, im in enumerate(images, start):
        p = folder / f"{i:04d}.png"
        cv2.imwrite(str(p), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
        out.append(p)
    return out


def pin_times(pin) -> list[tuple[float, bool]]:
    """Absolute monotonic times of a MockPin's recorded level changes (after its first state)."""
    t = pin._last_change
    out = []
    for s in reversed(pin.states[1:]):
        out.append((t, bool(s.state)))
        t -= s.timestamp
    return list(reversed(out))


def wait_until(cond, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``cond`` until true; fail after ``timeout`` seconds."""
    import time

    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)


def replace(obj, **changes):
    """A config section with ``changes`` (pydantic ``model_copy`` or ``dataclasses.replace``)."""
    import dataclasses

    if hasattr(obj, "model_copy"):
        return obj.model_copy(update=changes)
    return dataclasses.replace(obj, **changes)
