"""Reject-image archive (and a sample of passes) with size and age retention.

Images are written by a background thread from a bounded queue, so a slow SD card
never stalls the frame loop (when the queue is full the image is skipped and logged).
Files go to ``<dir>/<YYYYMMDD>/<run>_<frame>_<decision>.png``: ``run`` names this start of the
service (time and a random suffix), so frame numbers that start again at 0 after a restart never
overwrite an earlier picture and an old journal row never points at a newer one. That file (the one
the journal row names) is always the clean frame as the model saw it before its preprocessing (after
the camera ROI), so ``learn`` can learn from it; a tiled bundle's score map drawn over the frame is
written beside it as ``<run>_<frame>_<decision>_overlay.png`` (:func:`overlay_path`). After every
The archive keeps an index of its files, so after every write the oldest files are deleted until
it is under ``max_mb`` and no file is older than ``max_age_days`` (the cap holds at all times);
every ``rescan_every`` writes the index is rebuilt from the disk (files deleted by journal
retention, ``learn`` or by hand).

Example:
    >>> with ImageArchive("/tmp/archive", max_mb=100) as a:          # doctest: +SKIP
    ...     path = a.submit(frame_image, frame=12, decision="REJECT")
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import secrets
import threading
import time
from pathlib import Path

import numpy as np

from device.lifecycle import ClosedError, Closing, wait_drained

log = logging.getLogger(__name__)


def overlay_path(image: str | Path) -> Path:
    """The score-overlay picture written beside archived ``image`` (it may not exist: untiled bundles
    have none).

    Example:
        >>> overlay_path("/a/20260101/20260101T120000-3fa2_000000012_reject.png").name
        '20260101T120000-3fa2_000000012_reject_overlay.png'
    """
    root, ext = os.path.splitext(str(image))
    return Path(root + "_overlay" + ext)


def run_id() -> str:
    """A name for one start of the service: ``20260101T120000-3fa2`` (sortable, unique)."""
    return time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)


class ImageArchive(Closing):
    """Background PNG writer with retention; a context manager (``close()`` is idempotent).

    Args:
        root: archive folder (created).
        max_mb, max_age_days: retention limits.
        queue_size: images waiting to be written; beyond it new ones are skipped.
        prune_every: deprecated (the limits are applied after every write); kept for callers.
        rescan_every: rebuild the file index from the disk after this many writes.
    """

    def __init__(self, root: str | Path, max_mb: float = 500.0, max_age_days: float = 30.0,
                 queue_size: int = 32, prune_every: int = 50, rescan_every: int = 1000):
        self.root = Path(root)
        self._root = str(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_mb * 1e6)
        self.max_age_s = max_age_days * 86400.0
        self.prune_every = prune_every
        self.rescan_every = max(1, int(rescan_every))
        self._index: collections.deque = collections.deque()   # (mtime, size, path), oldest first
        self._bytes = 0
        self._lock = threading.Lock()
        self.run = run_id()
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        self._written = 0
        self.dropped = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="archive", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray | None, frame: int, decision: str, overlay=None) -> str | None:
        """Queue ``image`` (RGB or grey uint8); returns the path it will have, or None if not saved
        (queue full, or no image: an undecodable frame).

        ``overlay``: ``(tile_scores, input_spec, threshold[, heatmap, patch_scores])`` of a tiled bundle:
        the score grid drawn over the frame is also saved, as :func:`overlay_path` of the returned path
        (drawn in the writer thread, off the frame path). The returned path is always the clean image.

        Raises:
            ClosedError: after :meth:`close`.
        """
        if self._closed:
            raise ClosedError(f"archive {self.root} is closed")
        if image is None:
            return None
        # str, not Path: pathlib interns every name it parses, and each frame's name is new (a service
        # writing millions of them grows the interpreter's table of interned strings)
        path = os.path.join(self._root, time.strftime("%Y%m%d"), f"{self.run}_{frame:09d}_{decision.lower()}.png")
        try:
            self._q.put_nowait((path, image, overlay))
        except queue.Full:
            self.dropped += 1
            log.warning("archive queue full: image of frame %d not saved (%d dropped)", frame, self.dropped)
            return None
        return path

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued image is written; False on timeout."""
        return wait_drained(self._q, self._thread, timeout)

    def _run(self) -> None:
        try:
            self.prune()                       # index what earlier runs left (off the service's start)
        except Exception as exc:  # noqa: BLE001 - the archive must not stop the service
            log.error("archive: cannot index %s: %s", self.root, exc)
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                self._write(*item)
            finally:
                self._q.task_done()

    def _write(self, path: str, img: np.ndarray, overlay) -> None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with self._lock:                   # room first: the cap holds while the file is written
                self._enforce(reserve=(img.nbytes + 4096) * (2 if overlay is not None else 1))
            written = [path]
            _write_png(path, img)
            if overlay is not None:
                from device.heatmap import draw_tile_overlay

                written.append(str(overlay_path(path)))
                _write_png(written[-1], draw_tile_overlay(img, *overlay))
            self._written += 1
            if self._written % self.rescan_every == 0:
                self.prune()
            else:
                with self._lock:
                    for f in written:
                        size = os.stat(f).st_size
                        self._index.append((time.time(), size, f))
                        self._bytes += size
                    self._enforce()
        except Exception as exc:
            log.error("archive: cannot write %s: %s", path, exc)

    def _enforce(self, reserve: int = 0) -> int:
        """Delete the oldest indexed files while over ``max_mb`` (less ``reserve`` bytes about to be
        written: a PNG is never much larger than its pixels) or older than ``max_age_days``."""
        now, removed = time.time(), 0
        while self._index and (self._bytes + reserve > self.max_bytes or now - self._index[0][0] > self.max_age_s):
            _, size, p = self._index.popleft()
            self._bytes -= size
            try:
                os.unlink(p)
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("archive: cannot delete %s: %s", p, exc)
        if removed:
            log.debug("archive: pruned %d file(s), %.1f MB kept", removed, self._bytes / 1e6)
        return removed

    def prune(self) -> int:
        """Rebuild the file index from the disk and delete files beyond the size and age limits,
        oldest first; returns how many."""
        files = []
        for folder, _, names in os.walk(self._root):
            for name in names:
                if not name.endswith(".png"):
                    continue
                f = os.path.join(folder, name)
                try:
                    st = os.stat(f)
                except OSError:
                    continue
                files.append((st.st_mtime, st.st_size, f))
        files.sort()
        with self._lock:
            self._index = collections.deque(files)
            self._bytes = sum(f[1] for f in files)
            return self._enforce()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop. Idempotent."""
        self._closed = True
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join(timeout)


def _write_png(path: str, img: np.ndarray) -> None:
    """Write an RGB or grey uint8 image as PNG (temporary file + rename: never a half file)."""
    import cv2

    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    tmp = os.path.splitext(path)[0] + ".tmp.png"
    if not cv2.imwrite(str(tmp), bgr):
        raise OSError("cv2.imwrite returned False")
    os.replace(tmp, path)
