"""GPIO outputs and the photo-eye input: the only module that imports ``gpiozero``.

:class:`PulseScheduler` drives the reject line from a timer thread: each reject is a
pulse at ``t_trigger + delay`` of a fixed width, so pulses stay right when parts
arrive faster than the conveyor delay (several pulses queued at once). Overlapping
pulses merge into one longer pulse. A rising edge that fires late (a starved CPU)
keeps its full width: the falling edge is scheduled from the actual rising edge. A *hold* forces the line to the fail-safe level
(camera fault, model error, stop) while queued pulses keep their schedule underneath.

The pin factory is passed in (``pin_factory=``) or named (``"mock"``, ``"lgpio"``);
gpiozero's ``MockFactory`` records every state change with a timestamp, which the
tests compare to the journal.

Example:
    >>> from gpiozero.pins.mock import MockFactory
    >>> out = Outputs(reject_pin=17, pin_factory=MockFactory())
    >>> out.reject.pulse(time.monotonic() + 0.01, 0.005)
    >>> out.close()
"""
from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from typing import Callable

from device.trigger import SoftwareTrigger

log = logging.getLogger(__name__)


def make_pin_factory(name: str | None):
    """A gpiozero pin factory by entry-point name (``mock``, ``lgpio``, ``rpigpio``…);
    ``None``/``""`` leaves gpiozero's default (``$GPIOZERO_PIN_FACTORY`` or auto-detect)."""
    if not name:
        return None
    if name.lower() == "mock":
        from gpiozero.pins.mock import MockFactory

        return MockFactory()
    from importlib.metadata import entry_points

    for ep in entry_points(group="gpiozero_pin_factories"):
        if ep.name in (name, name.lower()):
            return ep.load()()
    from device.errors import ConfigError

    raise ConfigError(f"[outputs].pin_factory: unknown gpiozero pin factory {name!r} "
                      f"(e.g. 'lgpio' on a Pi 5, 'mock' for dry runs)")


class PulseScheduler:
    """Timed pulses on one ``DigitalOutputDevice`` from a dedicated thread.

    Args:
        device: gpiozero output device (``on()``/``off()``), or any object with them.
        name: for logs and the thread name.
        clock: monotonic clock the schedule uses (``time.monotonic``, like MockPin).
        keep_edges: how many actual edges to remember in :attr:`edges`.
    """

    def __init__(self, device, name: str = "reject", clock: Callable[[], float] = time.monotonic,
                 keep_edges: int = 10000):
        self.device, self.name, self.clock = device, name, clock
        self._heap: list[tuple[float, int, float]] = []   # (time, seq, width >= 0: on / -1: off)
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._active = 0             # pulses currently on
        self._hold: bool | None = None
        self._level = False
        self._stop = False
        #: (scheduled time, actual time, level) of each edge driven
        self.edges: collections.deque = collections.deque(maxlen=keep_edges)
        self._thread = threading.Thread(target=self._run, name=f"pulse-{name}", daemon=True)
        self._thread.start()

    def pulse(self, t_on: float, width_s: float) -> None:
        """Queue a pulse from ``t_on`` (clock time; now if in the past) lasting ``width_s``."""
        with self._cond:
            heapq.heappush(self._heap, (t_on, next(self._seq), float(width_s)))
            self._cond.notify()

    def hold(self, level: bool | None) -> None:
        """Force the line to ``level`` (fail-safe), or ``None`` to release to the pulse schedule."""
        with self._cond:
            self._hold = level
            self._apply(None)

    @property
    def pending(self) -> int:
        """Edges still queued."""
        with self._cond:
            return len(self._heap)

    def drain(self, timeout: float) -> bool:
        """Wait until every queued edge has been driven; False on timeout."""
        end = self.clock() + timeout
        while self.pending:
            if self.clock() > end:
                return False
            time.sleep(0.001)
        return True

    def _apply(self, t_sched: float | None) -> None:
        want = self._hold if self._hold is not None else self._active > 0
        if want != self._level:
            (self.device.on if want else self.device.off)()
            self._level = want
            self.edges.append((t_sched, self.clock(), want))

    def _run(self) -> None:
        with self._cond:
            while not self._stop:
                if not self._heap:
                    self._cond.wait()
                    continue
                t, _, width = self._heap[0]
                now = self.clock()
                if t > now:
                    self._cond.wait(t - now)
                    continue
                heapq.heappop(self._heap)
                if width >= 0:      # rising edge: the falling one keeps the full width even if late
                    self._active += 1
                    heapq.heappush(self._heap, (now + width, next(self._seq), -1.0))
                else:
                    self._active = max(0, self._active - 1)
                try:
                    self._apply(t)
                except Exception:  # a dead pin must not kill the scheduler thread
                    log.exception("%s: cannot drive output", self.name)

    def close(self, final_level: bool | None = None, drain_s: float = 0.0) -> None:
        """Stop the thread (after ``drain_s`` for queued pulses) and leave the line at ``final_level``."""
        if drain_s > 0:
            self.drain(drain_s)
        with self._cond:
            self._stop = True
            dropped = sum(1 for e in self._heap if e[2] >= 0)
            self._heap.clear()
            self._active = 0
            if final_level is not None:
                self._hold = final_level
            self._apply(None)
            self._cond.notify()
        self._thread.join(timeout=1.0)
        if dropped:
            log.warning("%s: %d queued pulse(s) dropped at close", self.name, dropped)


class Outputs:
    """Reject line (+ optional alarm line) with fail-safe behaviour.

    Args:
        reject_pin: BCM pin of the reject actuator (``None``: no line, decisions are journaled only).
        safe_level: ``"inactive"`` or ``"active"``: the reject line while faulted or stopped.
        pin_factory: gpiozero factory instance (tests: ``MockFactory()``), or ``None`` for the default.
    """

    def __init__(self, reject_pin: int | None = None, reject_active_high: bool = True,
                 alarm_pin: int | None = None, alarm_active_high: bool = True,
                 safe_level: str = "inactive", pin_factory=None):
        from gpiozero import DigitalOutputDevice

        self.safe_active = safe_level == "active"
        self._factory = pin_factory
        self.reject_device = self.alarm_device = None
        self.reject: PulseScheduler | None = None
        try:
            if reject_pin is not None:
                self.reject_device = DigitalOutputDevice(reject_pin, active_high=reject_active_high,
                                                         initial_value=self.safe_active, pin_factory=pin_factory)
                self.reject = PulseScheduler(self.reject_device, "reject")
                self.reject._level = self.safe_active
                self.reject.hold(self.safe_active)        # safe until the loop runs
            if alarm_pin is not None:
                self.alarm_device = DigitalOutputDevice(alarm_pin, active_high=alarm_active_high,
                                                        initial_value=False, pin_factory=pin_factory)
        except Exception:
            self.close()
            raise
        self.alarm_on = False

    def run_mode(self) -> None:
        """Release the reject line to the pulse schedule (normal operation)."""
        if self.reject:
            self.reject.hold(None)

    def fault(self, faulted: bool) -> None:
        """Hold the reject line at the safe level while ``faulted``."""
        if self.reject:
            self.reject.hold(self.safe_active if faulted else None)

    def set_alarm(self, on: bool) -> None:
        if on != self.alarm_on:
            self.alarm_on = on
            log.warning("alarm %s", "RAISED" if on else "cleared")
            if self.alarm_device is not None:
                (self.alarm_device.on if on else self.alarm_device.off)()

    def close(self, drain_s: float = 0.0) -> None:
        """Safe level on the reject line, alarm off, release the pins. Idempotent."""
        if self.reject is not None:
            self.reject.close(final_level=self.safe_active, drain_s=drain_s)
            self.reject = None
        for dev in (self.reject_device, self.alarm_device):
            if dev is not None:
                try:
                    dev.close()
                except Exception as exc:  # pragma: no cover
                    log.warning("closing %r: %s", dev, exc)
        self.reject_device = self.alarm_device = None


class GpioTrigger(SoftwareTrigger):
    """Photo-eye input (``gpiozero.Button`` with debounce): each press is one part.

    ``wait(timeout)`` returns the monotonic press time, or ``None`` on timeout.
    """

    def __init__(self, pin: int, bounce_ms: float = 5.0, pull_up: bool = True, pin_factory=None):
        from gpiozero import Button

        super().__init__()
        self._button = Button(pin, pull_up=pull_up, bounce_time=(bounce_ms / 1000.0) or None,
                              pin_factory=pin_factory)
        self._button.when_pressed = lambda *_: self.fire()

    def close(self) -> None:
        if self._button is not None:
            self._button.close()
            self._button = None
