"""PLC handshake lines, as vision sensors offer them (Cognex, Keyence, Omron, Banner).

Lines (each optional; BCM pins from ``[outputs]``; one polarity ``handshake_active_high``)::

    READY        on while the service can inspect (bundle loaded, camera up, no fault)
    BUSY         on from an accepted trigger to its decision
    TRIGGER_ACK  a pulse of result_width_ms on each accepted trigger
    PASS / FAIL  the decision (FAIL for REJECT and ERROR), set just before the strobe; held until
                 the next accepted trigger (pass_fail_hold_ms = 0) or for pass_fail_hold_ms
    RESULT       the strobe, driven after the decision is journaled: a pulse of result_width_ms
                 ("pulse") or one level change per decision ("toggle", for PLCs that scan
                 slower than a pulse)

Order per part: trigger -> BUSY on, TRIGGER_ACK on (and PASS/FAIL cleared when held until the
next trigger) ... decision journaled -> PASS or FAIL on -> RESULT edge -> BUSY off. A PLC
latches PASS/FAIL on the RESULT edge; they are already valid then.

A trigger that arrives while BUSY, or while not READY, is **missed**: :meth:`Handshake.trigger`
returns ``False`` and counts it, and the service journals it (the part goes uninspected; the
PLC sees no BUSY for it). On a fault and on close every line goes to its safe level:
inactive (READY off tells the PLC the sensor cannot inspect); a part accepted before the fault
gets no result (:attr:`Handshake.pending` is cleared). Pulse ends run on one timer thread; the
edges a PLC acts on (BUSY, PASS/FAIL, RESULT) are driven synchronously, in the thread that
calls (the photo-eye's gpiozero callback thread for :meth:`~Handshake.trigger`).

Example:
    >>> from gpiozero.pins.mock import MockFactory
    >>> with Handshake(ready_pin=5, busy_pin=6, result_pin=13, pass_pin=19, fail_pin=26,
    ...                pin_factory=MockFactory()) as hs:
    ...     hs.set_ready(True)
    ...     hs.trigger(), hs.busy, hs.trigger()
    ...     hs.result("PASS"); hs.busy, hs.missed
    (True, True, False)
    (False, 1)
"""
from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

LINES = ("ready", "busy", "result", "pass", "fail", "trigger_ack")
RESULT_MODES = ("pulse", "toggle")


class _Timer:
    """One thread running callbacks at clock times (pulse ends)."""

    def __init__(self, clock: Callable[[], float], name: str):
        self.clock = clock
        self._heap: list = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def at(self, t: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (t, next(self._seq), fn))
            self._cond.notify()

    def _run(self) -> None:
        from device.gpio import next_due

        with self._cond:
            while (due := next_due(self._cond, self._heap, self.clock, lambda: self._stop)) is not None:
                (_, _, fn), _ = due
                try:
                    fn()
                except Exception:  # a dead pin must not kill the timer
                    log.exception("handshake timer callback failed")

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=1.0)


class Handshake:
    """The handshake lines of one inspection station (see the module docstring).

    Args:
        ready_pin, busy_pin, result_pin, pass_pin, fail_pin, trigger_ack_pin: BCM pins (``None``: no line).
        active_high: polarity of every handshake line.
        result_mode: ``"pulse"`` or ``"toggle"``.
        result_width_ms: RESULT (and TRIGGER_ACK) pulse width.
        pass_fail_hold_ms: PASS/FAIL hold; 0 = until the next accepted trigger.
        pin_factory: gpiozero pin factory (tests: ``MockFactory()``).
        clock: monotonic clock of the pulse timer.

    Attributes:
        missed_busy, missed_not_ready: triggers refused; ``missed`` is their sum.
        pending: the time of the accepted trigger awaiting its result (``None``: none; a fault
            clears it, so the service can tell a trigger accepted before a fault).
        results: decisions strobed. strobe_overruns: results that came while the RESULT pulse
            was still on (parts faster than 2 x result_width_ms: use ``toggle``).
        edges: ``(time, line, level)`` of the last 10000 line changes.
    """

    def __init__(self, ready_pin: int | None = None, busy_pin: int | None = None, result_pin: int | None = None,
                 pass_pin: int | None = None, fail_pin: int | None = None, trigger_ack_pin: int | None = None,
                 active_high: bool = True, result_mode: str = "pulse", result_width_ms: float = 50.0,
                 pass_fail_hold_ms: float = 0.0, pin_factory=None, clock: Callable[[], float] = time.monotonic):
        if result_mode not in RESULT_MODES:
            raise ValueError(f"result_mode must be one of {RESULT_MODES}, found {result_mode!r}")
        if result_width_ms <= 0 or pass_fail_hold_ms < 0:
            raise ValueError(f"need result_width_ms > 0 and pass_fail_hold_ms >= 0, found {result_width_ms}, "
                             f"{pass_fail_hold_ms}")
        from device.gpio import make_output

        self.mode, self.width = result_mode, result_width_ms / 1e3
        self.hold = pass_fail_hold_ms / 1e3
        self.clock = clock
        self._lock = threading.RLock()
        self._dev: dict[str, object] = {}
        self._level = {name: False for name in LINES}
        self._gen = {name: 0 for name in LINES}
        self.edges: collections.deque = collections.deque(maxlen=10000)
        self.ready = self.busy = self.faulted = self._closed = False
        self.pending: float | None = None
        self.missed_busy = self.missed_not_ready = self.results = self.strobe_overruns = 0
        pins = dict(zip(LINES, (ready_pin, busy_pin, result_pin, pass_pin, fail_pin, trigger_ack_pin)))
        try:
            for name, pin in pins.items():
                if pin is not None:
                    self._dev[name] = make_output(pin, active_high, False, pin_factory)
        except Exception:
            self.close()
            raise
        self._timer = _Timer(clock, "handshake")

    @classmethod
    def from_config(cls, outputs, pin_factory=None) -> "Handshake | None":
        """From the ``[outputs]`` section (:class:`device.config.OutputsConfig`); ``None`` when it
        names no handshake pin."""
        pins = {f"{n}_pin": getattr(outputs, f"{n}_pin") for n in LINES}
        if all(p is None for p in pins.values()):
            return None
        return cls(**pins, active_high=outputs.handshake_active_high, result_mode=outputs.result_mode,
                   result_width_ms=outputs.result_width_ms, pass_fail_hold_ms=outputs.pass_fail_hold_ms,
                   pin_factory=pin_factory)

    @property
    def missed(self) -> int:
        return self.missed_busy + self.missed_not_ready

    # ------------------------------------------------------------ lines
    def _set(self, name: str, on: bool) -> None:
        self._gen[name] += 1
        if self._level[name] == on:
            return
        dev = self._dev.get(name)
        if dev is not None:
            (dev.on if on else dev.off)()
        self._level[name] = on
        self.edges.append((self.clock(), name, on))

    def _off_later(self, name: str, delay: float) -> None:
        gen = self._gen[name]

        def off():
            with self._lock:
                if self._gen[name] == gen and not self._closed:
                    self._set(name, False)

        self._timer.at(self.clock() + delay, off)

    def level(self, name: str) -> bool:
        """Logical level of a line (``True`` = active), whether or not it has a pin."""
        return self._level[name]

    # ------------------------------------------------------------ the protocol
    def set_ready(self, ready: bool) -> None:
        """The service can (or cannot) inspect: bundle loaded and camera up."""
        with self._lock:
            self.ready = bool(ready)
            self._set("ready", self.ready and not self.faulted and not self._closed)

    def trigger(self, t: float | None = None) -> bool:
        """A trigger arrived (call it where the trigger is received, before queueing it).

        Returns:
            True: accepted (BUSY on; the part will get a :meth:`result`). False: missed
            (busy or not ready); counted, and the caller journals it and drops the trigger.
        """
        return self.accept(t) is None

    def accept(self, t: float | None = None) -> str | None:
        """:meth:`trigger` saying why a trigger is missed: ``None`` (accepted), ``"busy"`` or
        ``"not ready"``."""
        with self._lock:
            if self._closed or self.faulted or not self.ready:
                self.missed_not_ready += 1
                return "not ready"
            if self.busy:
                self.missed_busy += 1
                return "busy"
            self.busy = True
            self.pending = self.clock() if t is None else t
            if self.hold == 0:
                self._set("pass", False)
                self._set("fail", False)
            self._set("busy", True)
            if self._level["trigger_ack"]:     # the last ACK pulse is still on: a new edge for this part
                self._set("trigger_ack", False)
            self._set("trigger_ack", True)
            self._off_later("trigger_ack", self.width)
            return None

    def result(self, decision) -> None:
        """The decision of the part in flight, after it is journaled: PASS or FAIL, the RESULT
        strobe, BUSY off. ``decision``: ``"PASS"``, ``"REJECT"`` or ``"ERROR"`` (or the enum)."""
        with self._lock:
            self.pending = None
            if self._closed or self.faulted:
                self.busy = False
                return
            ok = decision == "PASS"
            self._set("fail" if ok else "pass", False)
            self._set("pass" if ok else "fail", True)
            if self.hold > 0:
                self._off_later("pass" if ok else "fail", self.hold)
            if self.mode == "toggle":
                self._set("result", not self._level["result"])
            else:
                if self._level["result"]:
                    self.strobe_overruns += 1
                    log.warning("handshake: decision %d came while the RESULT pulse was still on "
                                "(parts faster than 2 x result_width_ms; use result_mode = \"toggle\")",
                                self.results + 1)
                    self._set("result", False)
                self._set("result", True)
                self._off_later("result", self.width)
            self.results += 1
            self._set("busy", False)
            self.busy = False

    def fault(self, faulted: bool) -> None:
        """Every line to its safe level (inactive) while ``faulted``; READY back when it clears."""
        with self._lock:
            self.faulted = bool(faulted)
            if self.faulted:
                self._safe()
            else:
                self._set("ready", self.ready and not self._closed)

    def _safe(self) -> None:
        self.busy = False
        self.pending = None
        for name in LINES:
            self._set(name, False)

    def close(self) -> None:
        """Safe levels, stop the timer, release the pins. Idempotent."""
        with self._lock:
            if getattr(self, "_closed", False):
                return
            self._closed = True
            if hasattr(self, "_level"):
                self._safe()
        if hasattr(self, "_timer"):
            self._timer.close()
        for dev in self._dev.values():
            try:
                dev.close()
            except Exception as exc:  # pragma: no cover
                log.warning("closing %r: %s", dev, exc)
        self._dev = {}

    def __enter__(self) -> "Handshake":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
