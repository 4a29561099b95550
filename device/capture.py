"""Collect training images with the installed camera: ``anomaly-device capture``.

Frames come through exactly what ``run`` uses — the configured camera
(:func:`device.camera.make_source`), the trigger classes and the camera ROI
(:func:`device.daemon.crop`) — without scoring, and are written as an MVTec
``train/good/`` folder plus ``capture.json``, which records the conditions (source,
resolution, exposure, gain, white balance, ROI, trigger, time) and the images' sha256 and
brightness / sharpness statistics.

The bundle trained on the folder carries :func:`capture_record` of that file as its
``capture`` manifest record, and :func:`capture_mismatches` tells the device (``deploy``,
the service at start) when its camera settings differ from those the bundle was trained on.

The capture takes the service's camera lock (:mod:`device.servicelock`), so it refuses to
run while ``anomaly-device run`` holds the camera, and the service cannot start meanwhile.

Example:
    >>> rec = capture(load_config("device.toml"), "data/", count=200)   # doctest: +SKIP
    >>> rec["count"], rec["resolution"]                                   # doctest: +SKIP
    (200, [640, 480])
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from device.errors import AnomalyError, ConfigError

log = logging.getLogger(__name__)

SCHEMA = "anomaly-capture"
SCHEMA_VERSION = 1
CAPTURE_FILE = "capture.json"
CAMERA_KEYS = ("stream", "exposure_us", "analogue_gain", "awb_gains", "roi")
LIVE_SOURCES = ("picamera2", "opencv")


def make_trigger(cfg, pin_factory=None, interval_ms: float | None = None):
    """The configured trigger (as ``run`` makes it); ``interval_ms`` sets a free-run rate."""
    from device.trigger import make_trigger as build

    t = cfg.trigger
    if t.mode == "free-run" and interval_ms:
        t = t.model_copy(update={"rate_hz": 1000.0 / interval_ms})
    if t.mode == "gpio" and pin_factory is None:
        from device.gpio import make_pin_factory

        pin_factory = make_pin_factory(cfg.outputs.pin_factory)
    return build(t, pin_factory)


def _write_png(path: Path, image: np.ndarray) -> str:
    """Write atomically; returns the file's sha256."""
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)
    if not ok:
        raise AnomalyError(f"{path}: cannot encode the frame as PNG")
    data = buf.tobytes()
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def _camera_conditions(cam, src, first_shape) -> dict[str, Any]:
    out = {"source": cam.source, "source_name": getattr(src, "name", "?"),
           "resolution": [int(first_shape[1]), int(first_shape[0])] if first_shape else None,
           "requested_resolution": [cam.width, cam.height] if cam.source in LIVE_SOURCES else None,
           "channels": int(first_shape[2]) if first_shape and len(first_shape) == 3 else 1,
           **{k: (list(getattr(cam, k)) if isinstance(getattr(cam, k), tuple) else getattr(cam, k))
              for k in CAMERA_KEYS}}
    out["path" if cam.source in ("folder", "video") else "index"] = (str(cam.path) if cam.source in
                                                                    ("folder", "video") else cam.index)
    meta = getattr(src, "metadata", None)     # a source may report what the camera actually used
    if callable(meta):
        try:
            out["camera_metadata"] = meta()
        except Exception as exc:  # optional: never fail a capture over it
            log.debug("camera metadata unavailable: %s", exc)
    return out


def _prepare_out(out: Path, append: bool) -> tuple[Path, int]:
    good = out / "train" / "good"
    good.mkdir(parents=True, exist_ok=True)
    have = sorted(p for p in good.iterdir() if p.suffix.lower() == ".png")
    if have and not append:
        raise ConfigError(f"{good}: already holds {len(have)} images; use another --out or --append")
    start = max((int(p.stem) for p in have if p.stem.isdigit()), default=-1) + 1
    return good, start


def capture(cfg, out: str | Path, count: int, interval_ms: float | None = None, append: bool = False,
            progress: Callable[[int, int], None] | None = None, source=None, pin_factory=None,
            stop: Callable[[], bool] | None = None, trigger=None) -> dict[str, Any]:
    """Grab ``count`` frames into ``out/train/good/`` and write ``out/capture.json``.

    Args:
        cfg: device config (camera, trigger, ROI as for ``run``).
        interval_ms: free-run: one frame every ``interval_ms``; other triggers: triggers closer
            than this to the last saved frame are skipped.
        progress: called with ``(saved, count)`` after each frame.
        source, pin_factory, trigger: instances to use instead of the configured ones (tests).
        stop: polled between triggers; returning True ends the capture early.

    Returns:
        The capture record written to ``capture.json``.

    Raises:
        ServiceBusyError: the service (or another capture) holds the camera.
        CameraError: the camera cannot be opened or fails.
    """
    from device.camera import make_source
    from device.servicelock import ServiceLock, pid_file_for

    if count < 1:
        raise ConfigError(f"--count must be >= 1, found {count}")
    out = Path(out)
    with ServiceLock(pid_file_for(cfg), "capture"):
        good, start = _prepare_out(out, append)
        src = source if source is not None else make_source(cfg.camera)
        trig = trigger if trigger is not None else make_trigger(cfg, pin_factory, interval_ms)
        t0 = time.time()
        gap = interval_ms / 1000.0 if interval_ms and cfg.trigger.mode != "free-run" else 0.0
        src.open()
        try:
            images, skipped, first_shape = _grab(cfg, src, trig, good, start, count, gap, progress, stop)
        finally:
            src.close()
            trig.close()
        return _record(cfg, src, first_shape, images, count, interval_ms, skipped, t0, out)


def _grab(cfg, src, trig, good: Path, start: int, count: int, gap: float, progress, stop
          ) -> tuple[list[dict], int, tuple | None]:
    """The capture loop: ``(images written, triggers skipped for the minimum gap, first frame shape)``."""
    from device.camera import EndOfStream
    from device.camera import crop

    images, skipped, first_shape, last = [], 0, None, -float("inf")
    while len(images) < count and not (stop and stop()):
        t = trig.wait(cfg.trigger.timeout_s)
        if t is None:
            continue
        if t - last < gap:
            skipped += 1
            continue
        try:
            frame = src.read()
        except EndOfStream as exc:
            log.warning("%s: stopping after %d of %d images", exc, len(images), count)
            break
        last = t
        img = crop(frame.image, cfg.camera.roi)
        first_shape = first_shape or frame.image.shape
        name = f"{start + len(images):04d}.png"
        images.append({"file": f"train/good/{name}", "sha256": _write_png(good / name, img),
                       "frame": frame.index, "name": frame.name})
        if progress:
            progress(len(images), count)
    return images, skipped, first_shape


def _record(cfg, src, first_shape, images, count, interval_ms, skipped, t0, out: Path) -> dict[str, Any]:
    from device.drift import image_stats

    cond = _camera_conditions(cfg.camera, src, first_shape)
    rec = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": socket.gethostname(),
           **cond, "trigger": {"mode": cfg.trigger.mode, "rate_hz": cfg.trigger.rate_hz, "interval_ms": interval_ms},
           "count": len(images), "requested": count, "skipped_triggers": skipped, "config": str(cfg.source_file),
           "image_stats": image_stats([out / im["file"] for im in images]) if images else None,
           "images": images}
    path = out / CAPTURE_FILE
    tmp = path.with_name(f".{CAPTURE_FILE}.tmp")
    tmp.write_text(json.dumps(rec, indent=1) + "\n")
    os.replace(tmp, path)
    log.info("captured %d images from %s into %s", len(images), cond["source_name"], out)
    return rec


# ---------------------------------------------------------------- the bundle's capture record
def capture_record(capture: str | Path | dict) -> dict[str, Any]:
    """The manifest record ``capture`` for a bundle trained on a captured folder.

    Args:
        capture: ``capture.json`` (its path, the folder holding it, or the parsed dict).

    Returns:
        ``{"source", "resolution", "stream", "exposure_us", "analogue_gain", "awb_gains", "roi",
        "count", "captured", "host", "capture_sha256"}`` (sha256 of the ``capture.json`` bytes).

    Raises:
        ConfigError: the file is missing or is not a capture record.

    Example:
        >>> capture_record({"schema": "anomaly-capture", "source": "picamera2", "resolution": [640, 480],
        ...                 "exposure_us": 8000, "count": 3})["exposure_us"]
        8000
    """
    sha = None
    if not isinstance(capture, dict):
        p = Path(capture)
        p = p / CAPTURE_FILE if p.is_dir() else p
        try:
            raw = p.read_bytes()
            capture = json.loads(raw)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{p}: not a readable capture record ({exc})") from exc
        sha = hashlib.sha256(raw).hexdigest()
    if not isinstance(capture, dict) or capture.get("schema") != SCHEMA:
        raise ConfigError(f"capture record: schema is {capture.get('schema') if isinstance(capture, dict) else capture!r},"
                          f" expected {SCHEMA!r}")
    keys = ("source", "resolution", *CAMERA_KEYS, "count", "host")
    rec = {k: capture.get(k) for k in keys}
    rec["captured"] = capture.get("finished")
    rec["capture_sha256"] = sha
    return rec


def _fmt(key: str, v) -> str:
    if key in ("exposure_us", "analogue_gain") and not v:
        return "0 (auto)"
    if key == "awb_gains" and v is None:
        return "auto"
    return str(list(v) if isinstance(v, tuple) else v)


def capture_mismatches(camera, manifest) -> list[str]:
    """Where the running camera config differs from the bundle's ``capture`` record (empty when the
    bundle has none); ``manifest`` is the typed manifest or its dict. One readable line per difference, for a log warning or a journal event.

    Example:
        >>> from device.config import CameraConfig
        >>> capture_mismatches(CameraConfig(source="picamera2", exposure_us=0),
        ...                    {"capture": {"source": "picamera2", "exposure_us": 8000, "resolution": [640, 480]}})
        ['[camera].exposure_us is 0 (auto); the training images were captured with 8000']
    """
    if manifest is None:
        return []
    rec = manifest.get("capture") if isinstance(manifest, dict) else getattr(manifest, "capture", None)
    if not isinstance(rec, dict):
        return []
    out = []
    if rec.get("source") and rec["source"] != camera.source:
        out.append(f"[camera].source is {camera.source!r}; the training images came from {rec['source']!r}")
    if camera.source in LIVE_SOURCES and rec.get("source") == camera.source and rec.get("resolution"):
        if list(rec["resolution"]) != [camera.width, camera.height]:
            out.append(f"[camera] resolution is {camera.width}x{camera.height}; the training images were "
                       f"{rec['resolution'][0]}x{rec['resolution'][1]}")
    for key in CAMERA_KEYS:
        if key not in rec or (key == "stream" and camera.source != "picamera2"):
            continue
        want, have = rec[key], getattr(camera, key, None)
        norm = (lambda v: list(v) if isinstance(v, (list, tuple)) else v)
        if norm(want) != norm(have) and not (key in ("exposure_us", "analogue_gain") and not want and not have):
            out.append(f"[camera].{key} is {_fmt(key, have)}; the training images were captured with "
                       f"{_fmt(key, want)}")
    return out
