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

from core.registry import Registry

log = logging.getLogger(__name__)


class Trigger:
    """A trigger plug-in (registered in :data:`TRIGGERS` under ``[trigger] mode``): ``wait(timeout)``
    returns the part's reference time or ``None``; a context manager with an idempotent ``close()``."""

    @classmethod
    def from_config(cls, cfg, pin_factory=None) -> "Trigger":   # pragma: no cover - each subclass
        raise NotImplementedError

    def wait(self, timeout: float) -> float | None:   # pragma: no cover - each subclass
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FreeRunTrigger(Trigger):
    """A trigger every ``1 / rate_hz`` seconds (``rate_hz = 0``: immediately, as fast as frames come)."""

    def __init__(self, rate_hz: float = 0.0):
        self.period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        self._next = time.monotonic()

    @classmethod
    def from_config(cls, cfg, pin_factory=None) -> "FreeRunTrigger":
        return cls(cfg.rate_hz)

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


class QueueTrigger(Trigger):
    """Triggers queued by :meth:`fire` from another thread (a signal handler, a GPIO callback).

    ``gate``: an optional ``callable(t) -> bool`` run in the firing thread before a trigger is
    queued; False drops it (the PLC handshake refuses a trigger while BUSY: a missed part).
    """

    def __init__(self, maxsize: int = 1000):
        self._q: queue.Queue = queue.Queue(maxsize=maxsize)
        self.gate = None

    def fire(self, t: float | None = None) -> None:
        t = time.monotonic() if t is None else t
        if self.gate is not None and not self.gate(t):
            return
        try:
            self._q.put_nowait(t)
        except queue.Full:
            log.warning("%s queue full: trigger dropped", type(self).__name__)

    def wait(self, timeout: float) -> float | None:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None


class SoftwareTrigger(QueueTrigger):
    """Triggered by :meth:`fire` (``SIGUSR1`` in the daemon)."""

    @classmethod
    def from_config(cls, cfg, pin_factory=None) -> "SoftwareTrigger":
        return cls()


TRIGGERS = Registry("trigger mode")
TRIGGERS.register("free-run", FreeRunTrigger)
TRIGGERS.register("software", SoftwareTrigger)
TRIGGERS.register("gpio", "device.gpio:GpioTrigger")


def make_trigger(cfg, pin_factory=None) -> Trigger:
    """The trigger ``[trigger] mode`` names, built from its config section."""
    return TRIGGERS.get(cfg.mode).from_config(cfg, pin_factory)
