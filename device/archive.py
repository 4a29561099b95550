"""Reject-image archive (and a sample of passes) with size and age retention.

Images are written by a background thread from a bounded queue, so a slow SD card
never stalls the frame loop (when the queue is full the image is skipped and logged).
Files go to ``<dir>/<YYYYMMDD>/<frame>_<decision>.png``; after every ``prune_every``
writes the oldest files are deleted until the archive is under ``max_mb`` and no file is
older than ``max_age_days``.

Example:
    >>> a = ImageArchive("/tmp/archive", max_mb=100)            # doctest: +SKIP
    >>> path = a.submit(frame_image, frame=12, decision="REJECT") # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class ImageArchive:
    def __init__(self, root: str | Path, max_mb: float = 500.0, max_age_days: float = 30.0,
                 queue_size: int = 32, prune_every: int = 50):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_mb * 1e6)
        self.max_age_s = max_age_days * 86400.0
        self.prune_every = prune_every
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        self._written = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="archive", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray, frame: int, decision: str, overlay=None) -> str | None:
        """Queue ``image`` (RGB or grey uint8); returns the path it will have, or None if dropped.

        ``overlay``: ``(tile_scores, input_spec, threshold)`` of a tiled bundle; the saved image is
        then the frame with the score grid drawn over it (drawn in the writer thread, off the frame path).
        """
        path = self.root / time.strftime("%Y%m%d") / f"{frame:09d}_{decision.lower()}.png"
        try:
            self._q.put_nowait((path, image, overlay))
        except queue.Full:
            self.dropped += 1
            log.warning("archive queue full: image of frame %d not saved (%d dropped)", frame, self.dropped)
            return None
        return str(path)

    def _run(self) -> None:
        import cv2

        while True:
            item = self._q.get()
            if item is None:
                return
            path, img, overlay = item
            try:
                if overlay is not None:
                    from device.heatmap import draw_tile_overlay

                    img = draw_tile_overlay(img, *overlay)
                path.parent.mkdir(parents=True, exist_ok=True)
                bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
                tmp = path.with_suffix(".tmp.png")
                if not cv2.imwrite(str(tmp), bgr):
                    raise OSError("cv2.imwrite returned False")
                os.replace(tmp, path)
                self._written += 1
                if self._written % self.prune_every == 0:
                    self.prune()
            except Exception as exc:
                log.error("archive: cannot write %s: %s", path, exc)

    def prune(self) -> int:
        """Delete files beyond the size and age limits, oldest first; returns how many."""
        files = []
        for p in self.root.rglob("*.png"):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        files.sort()
        total = sum(f[1] for f in files)
        now, removed = time.time(), 0
        for mtime, size, p in files:
            if total <= self.max_bytes and now - mtime <= self.max_age_s:
                break
            try:
                p.unlink()
                total -= size
                removed += 1
            except OSError as exc:
                log.warning("archive: cannot delete %s: %s", p, exc)
        if removed:
            log.info("archive: pruned %d file(s), %.1f MB kept", removed, total / 1e6)
        return removed

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop. Idempotent."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join(timeout)
