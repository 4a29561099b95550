"""Reject-line scheduling on gpiozero mock pins: pulses during a fault hold, dropped pulses reported,
life cycle. Timing is driven by an injected clock, so nothing here depends on the machine's load."""
from __future__ import annotations

import threading

import pytest

pytest.importorskip("gpiozero", reason="GPIO tests need gpiozero (device extra)")
from gpiozero.pins.mock import MockFactory, MockPin  # noqa: E402

from device.gpio import Outputs, PulseScheduler  # noqa: E402
from device.lifecycle import ClosedError  # noqa: E402


class FakeClock:
    """A monotonic clock the test moves by hand; ``advance`` wakes the scheduler and waits until it
    has driven every edge now due (synchronised on the scheduler's condition, with a timeout)."""

    def __init__(self, t: float = 100.0):
        self.t = t
        self.sched: PulseScheduler | None = None

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.set(self.t + dt)

    def set(self, t: float) -> None:
        self.t = t
        assert self.sched.settle(timeout=5.0), "scheduler did not drive the due edges"


def fake_scheduler(safe_active: bool = False, **kw):
    f = MockFactory()
    from gpiozero import DigitalOutputDevice

    dev = DigitalOutputDevice(17, pin_factory=f)
    clock = FakeClock()
    s = PulseScheduler(dev, "reject", clock=clock, **kw)
    clock.sched = s
    return s, clock, f.pin(17), dev


def levels(s: PulseScheduler) -> list[tuple[float, bool]]:
    return [(t, lvl) for _, t, lvl in s.edges]


def test_pulses_queue_faster_than_the_delay_merge_never_early_never_short():
    """Four parts 100 ms apart with 5 ms pulses; a fifth 2 ms after the fourth merges with it."""
    s, clock, pin, dev = fake_scheduler()
    t0 = clock.t + 0.05
    for i in range(4):
        s.pulse(t0 + 0.100 * i, 0.005, tag=i)
    s.pulse(t0 + 0.302, 0.005, tag=4)
    assert s.pending == 5
    while s.pending:
        clock.set(s.next_due())                # exactly when each edge is due
    want = [(t0 + 0.100 * i + d, lvl) for i in range(3) for d, lvl in ((0, True), (0.005, False))]
    want += [(t0 + 0.300, True), (t0 + 0.302 + 0.005, False)]
    assert levels(s) == want
    s.close()
    dev.close()


def test_late_rising_edge_keeps_its_full_width():
    s, clock, pin, dev = fake_scheduler()
    s.pulse(100.01, 0.02)
    clock.set(100.05)                          # the scheduler was starved for 40 ms: rises late
    clock.set(100.069)
    assert [lvl for _, lvl in levels(s)] == [True]
    clock.set(100.05 + 0.02)                   # falls a full width after the actual rising edge
    assert levels(s) == [(100.05, True), (100.05 + 0.02, False)]
    s.close()
    dev.close()


@pytest.mark.parametrize("safe_active", [False, True])
def test_fault_hold_does_not_mask_queued_pulses(safe_active):
    """A part decided REJECT is rejected even if the camera faults before its pulse is due."""
    s, clock, pin, dev = fake_scheduler()
    s.hold(None)
    s.pulse(100.1, 0.01, tag=7)
    s.hold(safe_active)                        # camera fault: line to the safe level
    clock.set(100.05)
    assert bool(pin.state) == safe_active
    clock.set(100.1)
    assert pin.state == 1                      # the pulse fires under the hold
    clock.set(100.1 + 0.01)
    assert bool(pin.state) == safe_active      # back to the safe level after the pulse
    if not safe_active:
        assert levels(s) == [(100.1, True), (100.1 + 0.01, False)]
    s.close()
    dev.close()


def test_pulses_dropped_at_close_are_reported_by_tag():
    dropped = []
    s, clock, pin, dev = fake_scheduler(on_dropped=lambda tags, why: dropped.append((tags, why)))
    s.hold(None)
    s.pulse(100.01, 0.005, tag=1)
    s.pulse(105.0, 0.005, tag=2)
    s.pulse(106.0, 0.005, tag=3)
    clock.set(100.01)
    s.close(final_level=False, drain_s=0.0)
    assert dropped == [([2, 3], "not fired: the reject line was closed before they were due")]
    s.close()                                  # idempotent, nothing reported twice
    assert len(dropped) == 1
    with pytest.raises(ClosedError, match="reject"):
        s.pulse(clock.t, 0.005, tag=4)
    assert dropped[-1] == ([4], "not fired: the reject line is closed")
    dev.close()


class DeadPin(MockPin):
    """A mock output that fails when told to (a disconnected expander, a dead driver)."""

    dead = False

    def _set_state(self, value):
        if DeadPin.dead:
            raise OSError(5, "Input/output error")
        super()._set_state(value)


def test_pulse_on_a_dead_pin_is_reported():
    from gpiozero import DigitalOutputDevice

    dropped = []
    f = MockFactory(pin_class=DeadPin)
    dev = DigitalOutputDevice(17, pin_factory=f)
    clock = FakeClock()
    s = PulseScheduler(dev, "reject", clock=clock, on_dropped=lambda tags, why: dropped.append((tags, why)))
    clock.sched = s
    s.pulse(100.01, 0.005, tag=42)
    DeadPin.dead = True
    try:
        clock.set(100.01)
        clock.set(100.01 + 0.005)
    finally:
        DeadPin.dead = False
    assert dropped and dropped[0][0] == [42] and "Input/output error" in dropped[0][1]
    s.close()
    dev.close()


def test_outputs_context_manager_and_closed_error():
    f = MockFactory()
    with Outputs(reject_pin=17, alarm_pin=27, safe_level="active", pin_factory=f) as out:
        out.run_mode()
        assert f.pin(17).state == 0
    assert f.pin(17).state == 1                # safe level at close
    out.close()                                # idempotent
    for call in (out.run_mode, lambda: out.fault(True), lambda: out.set_alarm(True),
                 lambda: out.pulse(0.0, 0.01)):
        with pytest.raises(ClosedError, match="outputs are closed"):
            call()


def test_outputs_report_dropped_pulses_at_close():
    f = MockFactory()
    got = threading.Event()
    dropped = []

    def on_dropped(tags, why):
        dropped.append(tags)
        got.set()

    out = Outputs(reject_pin=17, pin_factory=f, on_dropped=on_dropped)
    out.run_mode()
    import time

    out.pulse(time.monotonic() + 60.0, 0.01, tag=11)
    out.close(drain_s=0.0)
    assert got.wait(5) and dropped == [[11]]


def test_dry_run_mock_pins_keep_a_bounded_history():
    """``pin_factory = "mock"`` (dry runs, selftest, the soak benchmark) must not grow for ever."""
    from device.gpio import MOCK_PIN_HISTORY, make_pin_factory

    f = make_pin_factory("mock")
    out = Outputs(reject_pin=17, pin_factory=f)
    for i in range(3 * MOCK_PIN_HISTORY):
        out.reject_device.on() if i % 2 else out.reject_device.off()
    assert MOCK_PIN_HISTORY <= len(f.pin(17).states) <= 2 * MOCK_PIN_HISTORY + 1
    assert [s.state for s in f.pin(17).states[-2:]] == [False, True]
    out.close()
