"""Frame sources behind one small interface: image folder, OpenCV ``VideoCapture``, picamera2.

Every source yields uint8 RGB (or grey) arrays. ``picamera2`` is imported only inside
:class:`Picamera2Source`, so everything else runs (and is tested) on x86.

A source raises :class:`CameraError` when the camera is gone or a read fails or times
out (the daemon then retries with back-off) and :class:`EndOfStream` when a replay
source has no more frames. A frame that was read but cannot be decoded (a corrupt file in a
replay folder, an image above ``[camera] max_pixels``) is not a camera fault: it comes back as a
:class:`Frame` whose ``error`` says why (no image), and the daemon decides it ERROR. A looping
video that becomes unreadable (truncated, overwritten) is a camera fault, never an end of stream.

Example:
    >>> src = FolderSource("frames/", loop=False)      # doctest: +SKIP
    >>> with src:                                       # doctest: +SKIP
    ...     frame = src.read()
    ...     frame.image.shape, frame.index
    ((480, 640, 3), 0)
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from core.registry import Registry
from device.errors import AnomalyError

log = logging.getLogger(__name__)


class CameraError(AnomalyError, IOError):
    """The camera could not be opened, was disconnected, or a read failed or timed out."""


class EndOfStream(AnomalyError, EOFError):
    """A replay source (folder or video file) has no more frames."""


@dataclasses.dataclass
class Frame:
    """One captured frame.

    Attributes:
        image: uint8 (H, W, 3) RGB or (H, W) grey; None when ``error`` is set.
        index: frame counter of the source (0-based).
        t_capture: ``time.monotonic()`` when the frame was captured.
        name: where it came from (file name, ``video:12``, ``picamera2:lores``).
        error: why this frame has no image (undecodable or oversized file); None for a good frame.
    """

    image: np.ndarray | None
    index: int
    t_capture: float
    name: str
    error: str | None = None


@runtime_checkable
class FrameSource(Protocol):
    """What the daemon needs from a camera. ``close()`` is idempotent."""

    name: str

    def open(self) -> None: ...

    def read(self) -> Frame: ...

    def close(self) -> None: ...


class _Base:
    name = "source"

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()


class FolderSource(_Base):
    """Replays the images of a folder in sorted order (decoded with OpenCV, RGB out).

    A file that cannot be decoded (corrupt, empty, not an image, above ``max_pixels``) gives a
    frame with ``error`` set and the replay goes on with the next file.

    Args:
        path: folder of images (searched recursively).
        loop: start again after the last image instead of raising :class:`EndOfStream`.
        cache: keep decoded frames in memory (benchmarks: no disk in the loop).
        max_pixels: larger images are refused from their header (default: the preprocessing limit).
    """

    def __init__(self, path: str | Path, loop: bool = False, cache: bool = False, max_pixels: int | None = None):
        self.path = Path(path)
        self.loop = loop
        self.cache = cache
        self.max_pixels = max_pixels
        self.name = f"folder:{self.path}"
        self._files: list[Path] = []
        self._cache: dict[int, np.ndarray] = {}
        self._i = 0
        self._open = False

    def open(self) -> None:
        from device.errors import ImageError
        from device.preprocess import list_images

        try:
            self._files = list_images([self.path])
        except ImageError as exc:
            raise CameraError(f"folder source: {exc}") from exc
        self._i = 0
        self._open = True
        log.info("replaying %d images from %s%s", len(self._files), self.path, " (looping)" if self.loop else "")

    def read(self) -> Frame:
        from device.errors import ImageError
        from device.preprocess import decode_image

        if not self._open:
            raise CameraError(f"{self.name}: read before open()")
        if self._i >= len(self._files) and not self.loop:
            raise EndOfStream(f"{self.name}: all {len(self._files)} images replayed")
        n = self._i % len(self._files)
        f = self._files[n]
        idx = self._i
        self._i += 1
        img = self._cache.get(n)
        if img is None:
            try:
                img = decode_image(f, max_pixels=self.max_pixels)
            except ImageError as exc:        # this frame only: the replay goes on
                log.debug("%s: %s", self.name, exc)
                return Frame(None, idx, time.monotonic(), f.name, error=str(exc))
            if self.cache:
                self._cache[n] = img
        return Frame(img, idx, time.monotonic(), f.name)

    def close(self) -> None:
        self._open = False
        self._cache.clear()


class VideoSource(_Base):
    """OpenCV ``VideoCapture``: a video file (replay) or a USB camera index.

    A looping file is expected to play forever: when it can no longer be read from the start (it
    was truncated, emptied or replaced) or it changed on disk, that is a :class:`CameraError` (the
    daemon retries it, alarms, and systemd restarts the service), not an end of stream. Without
    ``loop`` the end of the file is :class:`EndOfStream`.

    Args:
        target: file path or camera index.
        loop: for files, rewind at the end instead of raising :class:`EndOfStream`.
        width, height: requested capture size for cameras (files keep their own).
    """

    def __init__(self, target: str | int, loop: bool = False, width: int | None = None, height: int | None = None):
        self.target = target
        self.is_file = not isinstance(target, int)
        self.loop = loop
        self.width, self.height = width, height
        self.name = f"video:{target}" if self.is_file else f"opencv:{target}"
        self._cap = None
        self._i = 0
        self._stat: tuple | None = None

    def _file_id(self) -> tuple | None:
        try:
            st = Path(self.target).stat()
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def open(self) -> None:
        import cv2

        if self.is_file and not Path(self.target).is_file():
            raise CameraError(f"{self.name}: video file not found")
        cap = cv2.VideoCapture(str(self.target) if self.is_file else int(self.target))
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"{self.name}: cannot open (unsupported codec, busy or absent device)")
        if not self.is_file and self.width and self.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        self._cap = cap
        self._i = 0
        self._stat = self._file_id() if self.is_file else None

    def _rewind(self):
        """Looping file at its end: check it is the file that was opened, then read it from the start."""
        import cv2

        now = self._file_id()
        if now != self._stat:
            what = "is gone" if now is None else ("is empty" if now[1] == 0 else "changed on disk")
            raise CameraError(f"{self.name}: looping video {what} after {self._i} frames (truncated or replaced)")
        self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise CameraError(f"{self.name}: looping video cannot be read from its start again "
                              f"after {self._i} frames (truncated or replaced?)")
        return bgr

    def read(self) -> Frame:
        import cv2

        if self._cap is None:
            raise CameraError(f"{self.name}: read before open()")
        ok, bgr = self._cap.read()
        if (not ok or bgr is None) and self.is_file and self.loop:
            bgr = self._rewind()
        elif not ok or bgr is None:
            if self.is_file:
                raise EndOfStream(f"{self.name}: end of video after {self._i} frames")
            raise CameraError(f"{self.name}: read failed (camera disconnected?)")
        t = time.monotonic()
        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else bgr
        idx = self._i
        self._i += 1
        return Frame(img, idx, t, f"{self.name}:{idx}")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class Picamera2Source(_Base):
    """Raspberry Pi camera via picamera2 (imported here only).

    The ``lores`` stream (YUV420, luminance scored) is the cheap analysis stream; ``main``
    gives RGB. Exposure, analogue gain and white balance can be fixed so lighting drift
    is not scored as an anomaly.
    """

    def __init__(self, stream: str = "lores", width: int = 640, height: int = 480, exposure_us: int = 0,
                 analogue_gain: float = 0.0, awb_gains: tuple[float, float] | None = None):
        self.stream, self.size = stream, (int(width), int(height))
        self.exposure_us, self.analogue_gain, self.awb_gains = exposure_us, analogue_gain, awb_gains
        self.name = f"picamera2:{stream}"
        self._cam = None
        self._i = 0

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise CameraError("picamera2 is not installed (on Raspberry Pi OS: apt install python3-picamera2)") from exc
        try:
            cam = Picamera2()
            if self.stream == "lores":
                cfg = cam.create_video_configuration(lores={"size": self.size, "format": "YUV420"})
            else:
                cfg = cam.create_video_configuration(main={"size": self.size, "format": "RGB888"})
            cam.configure(cfg)
            controls = {}
            if self.exposure_us:
                controls.update(AeEnable=False, ExposureTime=int(self.exposure_us))
            if self.analogue_gain:
                controls.update(AeEnable=False, AnalogueGain=float(self.analogue_gain))
            if self.awb_gains:
                controls.update(AwbEnable=False, ColourGains=tuple(self.awb_gains))
            if controls:
                cam.set_controls(controls)
            cam.start()
        except Exception as exc:  # picamera2/libcamera raise many types
            raise CameraError(f"{self.name}: cannot start camera ({type(exc).__name__}: {exc})") from exc
        self._cam = cam
        self._i = 0

    def read(self) -> Frame:
        if self._cam is None:
            raise CameraError(f"{self.name}: read before open()")
        try:
            arr = self._cam.capture_array(self.stream)
        except Exception as exc:
            raise CameraError(f"{self.name}: capture failed ({type(exc).__name__}: {exc})") from exc
        t = time.monotonic()
        if self.stream == "lores":
            arr = arr[: self.size[1], : self.size[0]]     # Y plane of YUV420
        else:
            arr = arr[:, :, ::-1]                         # RGB888 is BGR in memory
        idx = self._i
        self._i += 1
        return Frame(np.ascontiguousarray(arr), idx, t, f"{self.name}:{idx}")

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            except Exception as exc:  # pragma: no cover - hardware
                log.warning("%s: error while closing: %s", self.name, exc)
            self._cam = None


class TimeoutSource(_Base):
    """Wraps a live source so a read that hangs longer than ``timeout_s`` raises :class:`CameraError`.

    Reads run on a helper thread; after a timeout the wrapped source is closed and the
    stuck thread is abandoned (it is a daemon thread), so the frame loop keeps running.
    """

    def __init__(self, inner: FrameSource, timeout_s: float):
        self.inner, self.timeout_s = inner, float(timeout_s)
        self.name = inner.name
        self._req: queue.Queue | None = None
        self._res: queue.Queue | None = None
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        self.inner.open()
        self._req, self._res = queue.Queue(), queue.Queue()
        req, res = self._req, self._res

        def worker():
            while req.get() is not None:
                try:
                    res.put((True, self.inner.read()))
                except BaseException as exc:  # handed to the caller
                    res.put((False, exc))

        self._thread = threading.Thread(target=worker, name=f"read-{self.name}", daemon=True)
        self._thread.start()

    def read(self) -> Frame:
        if self._req is None:
            raise CameraError(f"{self.name}: read before open()")
        self._req.put(1)
        try:
            ok, val = self._res.get(timeout=self.timeout_s)
        except queue.Empty:
            self._req = None      # abandon the stuck reader
            self.inner.close()
            raise CameraError(f"{self.name}: read timed out after {self.timeout_s:g} s") from None
        if not ok:
            raise val
        return val

    def close(self) -> None:
        if self._req is not None:
            self._req.put(None)
            self._req = None
        self.inner.close()


def crop(image: np.ndarray, roi) -> np.ndarray:
    """Camera-level region of interest ``(x, y, w, h)``, applied before the bundle's preprocessing."""
    if roi is None:
        return image
    x, y, w, h = roi
    H, W = image.shape[:2]
    if x >= W or y >= H:
        raise CameraError(f"[camera].roi {tuple(roi)} lies outside the {W}x{H} frame")
    return image[y:y + h, x:x + w]


SOURCES = Registry("camera source")
"""Frame-source plug-ins by ``[camera] source``: each a function ``(camera config) -> FrameSource``."""
SOURCES.register("folder", lambda cam: FolderSource(cam.path, loop=cam.loop, max_pixels=max_pixels(cam)))
SOURCES.register("video", lambda cam: VideoSource(cam.path, loop=cam.loop))
SOURCES.register("opencv", lambda cam: VideoSource(int(cam.index), width=cam.width, height=cam.height))
SOURCES.register("picamera2", lambda cam: Picamera2Source(cam.stream, cam.width, cam.height, cam.exposure_us,
                                                          cam.analogue_gain, cam.awb_gains))
LIVE_SOURCES = ("opencv", "picamera2")      # reads that hang are faults (wrapped in a TimeoutSource)


def make_source(cam) -> FrameSource:
    """Source for a :class:`~device.config.CameraConfig` (the :data:`SOURCES` plug-in it names)."""
    src = SOURCES.get(cam.source)(cam)
    if cam.source in LIVE_SOURCES and cam.read_timeout_s > 0:
        src = TimeoutSource(src, cam.read_timeout_s)
    return src


DEFAULT_MAX_PIXELS = 50_000_000


def max_pixels(cam) -> int:
    """``[camera] max_pixels`` of a camera config (the preprocessing default where it has none)."""
    return int(getattr(cam, "max_pixels", None) or DEFAULT_MAX_PIXELS)
