"""GPIO outputs and the photo-eye input: the only module that imports ``gpiozero``.

:class:`PulseScheduler` drives the reject line from a timer thread: each reject is a
pulse at ``t_trigger + delay`` of a fixed width, so pulses stay right when parts
arrive faster than the conveyor delay (several pulses queued at once). Overlapping
pulses merge into one longer pulse. A rising edge that fires late (a starved CPU)
keeps its full width: the falling edge is scheduled from the actual rising edge. A *hold* sets the
fail-safe level (camera fault, journal fault, stop) while no pulse is on: pulses already queued for
parts decided REJECT still fire; a pulse that cannot be fired is reported with its tag (the journal
row id), so the daemon journals it.

The pin factory is passed in (``pin_factory=``) or named (``"mock"``, ``"lgpio"``);
gpiozero's ``MockFactory`` records every state change with a timestamp, which the
tests compare to the journal.

Example:
    >>> from gpiozero.pins.mock import MockFactory
    >>> out = Outputs(reject_pin=17, pin_factory=MockFactory())
    >>> out.pulse(time.monotonic() + 0.01, 0.005, tag=1)
    True
    >>> out.close(drain_s=1.0)
"""
from __future__ import annotations

import collections
import functools
import heapq
import itertools
import logging
import threading
import time
from typing import Callable

from device.lifecycle import ClosedError, Closing
from device.trigger import QueueTrigger

log = logging.getLogger(__name__)


def make_pin_factory(name: str | None):
    """A gpiozero pin factory by entry-point name (``mock``, ``lgpio``, ``rpigpio``…);
    ``None``/``""`` leaves gpiozero's default (``$GPIOZERO_PIN_FACTORY`` or auto-detect)."""
    if not name:
        return None
    if name.lower() == "mock":
        from gpiozero.pins.mock import MockFactory

        return MockFactory(pin_class=_bounded_mock_pin())
    from importlib.metadata import entry_points

    for ep in entry_points(group="gpiozero_pin_factories"):
        if ep.name in (name, name.lower()):
            return ep.load()()
    from device.errors import ConfigError

    raise ConfigError(f"[outputs].pin_factory: unknown gpiozero pin factory {name!r} "
                      f"(e.g. 'lgpio' on a Pi 5, 'mock' for dry runs)")


#: State changes a dry-run ("mock") pin remembers: gpiozero's MockPin keeps every one, which a
#: service dry-running for days (or the soak benchmark) must not accumulate.
MOCK_PIN_HISTORY = 1024


@functools.lru_cache(maxsize=1)
def _bounded_mock_pin():
    from gpiozero.pins.mock import MockPin

    class BoundedMockPin(MockPin):
        """A ``MockPin`` whose ``states`` keep the last :data:`MOCK_PIN_HISTORY` changes."""

        def _change_state(self, value):
            changed = super()._change_state(value)
            if len(self.states) > 2 * MOCK_PIN_HISTORY:
                del self.states[:-MOCK_PIN_HISTORY]
            return changed

    return BoundedMockPin


def next_due(cond: threading.Condition, heap: list, clock: Callable[[], float], stopped: Callable[[], bool]):
    """The timer loop of the output threads (reject pulses, handshake pulse ends): with ``cond``
    held, wait until the earliest entry of ``heap`` (``(time, ...)`` tuples) is due by ``clock``,
    then pop it. Returns ``(entry, now)``, or ``None`` once ``stopped()``; ``cond`` is notified
    whenever the heap or the stop flag changes.

    Example:
        >>> cond, heap = threading.Condition(), [(0.0, "now")]
        >>> with cond:
        ...     next_due(cond, heap, lambda: 1.0, lambda: False)
        ((0.0, 'now'), 1.0)
    """
    while not stopped():
        if not heap:
            cond.wait()
            continue
        now = clock()
        if heap[0][0] > now:
            cond.wait(heap[0][0] - now)
            continue
        return heapq.heappop(heap), now
    return None


class PulseScheduler:
    """Timed pulses on one ``DigitalOutputDevice`` from a dedicated thread.

    A *hold* (:meth:`hold`) sets the line's level while no pulse is on: queued pulses keep firing
    under it, so a part already decided REJECT is rejected during a camera fault (with an active
    safe level the line simply stays active). A pulse that cannot be fired (closed before it was
    due, a dead output, a stopped scheduler) is reported to ``on_dropped(tags, reason)`` with the
    tags given to :meth:`pulse` (the daemon passes journal row ids and journals ``pulse_dropped``).

    Args:
        device: gpiozero output device (``on()``/``off()``), or any object with them.
        name: for logs and the thread name.
        clock: monotonic clock the schedule uses (``time.monotonic``, like MockPin); tests inject one
            and call :meth:`settle` after moving it.
        keep_edges: how many actual edges to remember in :attr:`edges`.
        on_dropped: ``callback(tags, reason)`` for pulses that could not be fired (may run in the
            scheduler thread).

    Example:
        >>> class Line:
        ...     def on(self): pass
        ...     def off(self): pass
        >>> s = PulseScheduler(Line())
        >>> s.pulse(s.clock(), 0.001, tag=1)
        True
        >>> s.drain(1.0), s.close()
        (True, None)
    """

    def __init__(self, device, name: str = "reject", clock: Callable[[], float] = time.monotonic,
                 keep_edges: int = 2048, on_dropped: Callable[[list, str], None] | None = None):
        self.device, self.name, self.clock = device, name, clock
        self.on_dropped = on_dropped
        self._heap: list[tuple[float, int, float, object]] = []   # (time, seq, width >= 0: on / -1: off, tag)
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

    def pulse(self, t_on: float, width_s: float, tag=None) -> bool:
        """Queue a pulse from ``t_on`` (clock time; now if in the past) lasting ``width_s``.

        Returns False (and reports ``tag`` as dropped) when the scheduler thread has died.

        Raises:
            ClosedError: after :meth:`close` (``tag`` is reported as dropped first).
        """
        with self._cond:
            if self._stop:
                self._report([tag], "not fired: the reject line is closed")
                raise ClosedError(f"{self.name} line is closed: pulse at {t_on:.3f} not queued")
            if not self._thread.is_alive():
                self._report([tag], "not fired: the pulse scheduler thread has stopped")
                log.error("%s: pulse scheduler is not running; pulse %r not fired", self.name, tag)
                return False
            heapq.heappush(self._heap, (t_on, next(self._seq), float(width_s), tag))
            self._cond.notify_all()
        return True

    def hold(self, level: bool | None) -> None:
        """Set the line to ``level`` (fail-safe) while no pulse is on, or ``None`` to release it to the
        pulse schedule. Queued pulses still fire under a hold."""
        with self._cond:
            self._hold = level
            self._apply(None)

    @property
    def pending(self) -> int:
        """Edges still queued."""
        with self._cond:
            return len(self._heap)

    def next_due(self) -> float | None:
        """Clock time of the next queued edge (None: nothing queued)."""
        with self._cond:
            return self._heap[0][0] if self._heap else None

    def settle(self, timeout: float = 5.0) -> bool:
        """Wake the thread and wait until every edge due by :attr:`clock` has been driven (for an
        injected clock that was just moved); False on timeout."""
        with self._cond:
            self._cond.notify_all()
            return self._cond.wait_for(
                lambda: self._stop or not self._heap or self._heap[0][0] > self.clock(), timeout)

    def drain(self, timeout: float) -> bool:
        """Wait (real time) until every queued edge has been driven; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._heap or not self._thread.is_alive(), timeout) \
                and not self._heap

    def _apply(self, t_sched: float | None) -> None:
        want = bool(self._hold) or self._active > 0
        if want != self._level:
            (self.device.on if want else self.device.off)()
            self._level = want
            self.edges.append((t_sched, self.clock(), want))

    def _report(self, tags: list, reason: str) -> None:
        tags = [t for t in tags if t is not None]
        if not tags:
            return
        log.warning("%s: %d reject pulse(s) %s (tags %s)", self.name, len(tags), reason,
                    ", ".join(map(str, tags)))
        if self.on_dropped is not None:
            try:
                self.on_dropped(tags, reason)
            except Exception:  # a failing reporter must not kill the scheduler
                log.exception("%s: reporting dropped pulses failed", self.name)

    def _run(self) -> None:
        with self._cond:
            while (due := next_due(self._cond, self._heap, self.clock, lambda: self._stop)) is not None:
                (t, _, width, tag), now = due
                if width >= 0:      # rising edge: the falling one keeps the full width even if late
                    self._active += 1
                    heapq.heappush(self._heap, (now + width, next(self._seq), -1.0, tag))
                else:
                    self._active = max(0, self._active - 1)
                try:
                    self._apply(t)
                except Exception as exc:  # a dead pin must not kill the scheduler thread
                    log.exception("%s: cannot drive output", self.name)
                    self._level = None    # unknown: the next edge drives it again
                    if width >= 0:
                        self._report([tag], f"not fired: cannot drive the output ({exc})")
                self._cond.notify_all()   # settle() / drain() waiters

    def close(self, final_level: bool | None = None, drain_s: float = 0.0) -> None:
        """Stop the thread (after ``drain_s`` for queued pulses) and leave the line at ``final_level``.
        Pulses not yet started are reported as dropped. Idempotent."""
        if self._stop:
            return
        if drain_s > 0:
            self.drain(drain_s)
        with self._cond:
            self._stop = True
            dropped = [e[3] for e in sorted(self._heap) if e[2] >= 0]
            self._heap.clear()
            self._active = 0
            if final_level is not None:
                self._hold = final_level
            try:
                self._apply(None)
            except Exception:
                log.exception("%s: cannot set the final level", self.name)
            self._cond.notify_all()
        self._thread.join(timeout=1.0)
        if dropped:
            log.warning("%s: %d queued pulse(s) dropped at close", self.name, len(dropped))
            self._report(dropped, "not fired: the reject line was closed before they were due")


class Outputs(Closing):
    """Reject line (+ optional alarm line) with fail-safe behaviour; a context manager.

    Args:
        reject_pin: BCM pin of the reject actuator (``None``: no line, decisions are journaled only).
        safe_level: ``"inactive"`` or ``"active"``: the reject line while faulted or stopped.
        pin_factory: gpiozero factory instance (tests: ``MockFactory()``), or ``None`` for the default.
        on_dropped: ``callback(tags, reason)`` for reject pulses that could not be fired.
    """

    def __init__(self, reject_pin: int | None = None, reject_active_high: bool = True,
                 alarm_pin: int | None = None, alarm_active_high: bool = True,
                 safe_level: str = "inactive", pin_factory=None,
                 on_dropped: Callable[[list, str], None] | None = None):
        from gpiozero import DigitalOutputDevice

        self.safe_active = safe_level == "active"
        self._factory = pin_factory
        self.reject_device = self.alarm_device = None
        self.reject: PulseScheduler | None = None
        self._closed = False
        self.alarm_on = False
        try:
            if reject_pin is not None:
                self.reject_device = DigitalOutputDevice(reject_pin, active_high=reject_active_high,
                                                         initial_value=self.safe_active, pin_factory=pin_factory)
                self.reject = PulseScheduler(self.reject_device, "reject", on_dropped=on_dropped)
                self.reject._level = self.safe_active
                self.reject.hold(self.safe_active)        # safe until the loop runs
            if alarm_pin is not None:
                self.alarm_device = DigitalOutputDevice(alarm_pin, active_high=alarm_active_high,
                                                        initial_value=False, pin_factory=pin_factory)
        except Exception:
            self.close()
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("outputs are closed (reject and alarm lines released)")

    def run_mode(self) -> None:
        """Release the reject line to the pulse schedule (normal operation)."""
        self._check_open()
        if self.reject:
            self.reject.hold(None)

    def fault(self, faulted: bool) -> None:
        """Hold the reject line at the safe level while ``faulted`` (queued pulses still fire)."""
        self._check_open()
        if self.reject:
            self.reject.hold(self.safe_active if faulted else None)

    def pulse(self, t_on: float, width_s: float, tag=None) -> bool:
        """Queue a reject pulse (see :meth:`PulseScheduler.pulse`); False without a reject line."""
        self._check_open()
        return self.reject.pulse(t_on, width_s, tag) if self.reject is not None else False

    def set_alarm(self, on: bool) -> None:
        self._check_open()
        if on != self.alarm_on:
            self.alarm_on = on
            log.warning("alarm %s", "RAISED" if on else "cleared")
            if self.alarm_device is not None:
                (self.alarm_device.on if on else self.alarm_device.off)()

    def close(self, drain_s: float = 0.0) -> None:
        """Queued pulses fire (up to ``drain_s``; the rest are reported), safe level on the reject
        line, release the pins. Idempotent."""
        self._closed = True
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


def make_output(pin: int, active_high: bool = True, initial_value: bool = False, pin_factory=None):
    """One digital output line (``gpiozero.DigitalOutputDevice``), e.g. a PLC handshake line
    (:mod:`device.handshake`); ``initial_value`` is the logical level it starts at."""
    from gpiozero import DigitalOutputDevice

    return DigitalOutputDevice(pin, active_high=active_high, initial_value=initial_value, pin_factory=pin_factory)


class GpioTrigger(QueueTrigger):
    """Photo-eye input (``gpiozero.Button`` with debounce): each press is one part.

    ``wait(timeout)`` returns the monotonic press time, or ``None`` on timeout.
    """

    def __init__(self, pin: int, bounce_ms: float = 5.0, pull_up: bool = True, pin_factory=None):
        from gpiozero import Button

        super().__init__()
        self._button = Button(pin, pull_up=pull_up, bounce_time=(bounce_ms / 1000.0) or None,
                              pin_factory=pin_factory)
        self._button.when_pressed = lambda *_: self.fire()

    @classmethod
    def from_config(cls, cfg, pin_factory=None) -> "GpioTrigger":
        return cls(cfg.pin, cfg.bounce_ms, cfg.pull_up, pin_factory=pin_factory)

    def close(self) -> None:
        if self._button is not None:
            self._button.close()
            self._button = None
