"""When to grab a frame: free-run at a rate, a software trigger, or (in :mod:`device.gpio`) a photo-eye.

Each trigger's ``wait(timeout)`` returns the part's reference time (``time.monotonic()``),
from which the reject delay is counted, or ``None`` when nothing came within ``timeout``
(the daemon then feeds the watchdog and waits again).

Example:
    >>> t = SoftwareTrigger()
    >>> t.fire(); t.wait(0.1) is not None
    True
"""
from __future__ import annotations

import logging
import queue
import time

log = logging.getLogger(__name__)


class FreeRunTrigger:
    """A trigger every ``1 / rate_hz`` seconds (``rate_hz = 0``: immediately, as fast as frames come)."""

    def __init__(self, rate_hz: float = 0.0):
        self.period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        self._next = time.monotonic()

    def wait(self, timeout: float) -> float | None:
        if self.period == 0:
            return time.monotonic()
        now = time.monotonic()
        if self._next - now > timeout:
            time.sleep(timeout)
            return None
        if self._next > now:
            time.sleep(self._next - now)
        t = max(self._next, now)
        self._next = max(self._next + self.period, time.monotonic() - self.period)  # no catch-up burst
        return t

    def close(self) -> None:
        pass


class SoftwareTrigger:
    """Triggered by :meth:`fire` (another thread, ``SIGUSR1`` in the daemon)."""

    def __init__(self, maxsize: int = 1000):
        self._q: queue.Queue = queue.Queue(maxsize=maxsize)

    def fire(self, t: float | None = None) -> None:
        try:
            self._q.put_nowait(time.monotonic() if t is None else t)
        except queue.Full:
            log.warning("software trigger queue full: trigger dropped")

    def wait(self, timeout: float) -> float | None:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        pass
