"""PLC handshake on gpiozero's mock pins: edge order and timing, missed triggers, safe levels."""
from __future__ import annotations

import time

import pytest

pytest.importorskip("gpiozero", reason="handshake tests need gpiozero (device extra)")

from gpiozero.pins.mock import MockFactory  # noqa: E402
from lifecycle_helpers import pin_times, wait_until  # noqa: E402

from device.handshake import Handshake  # noqa: E402

PINS = {"ready_pin": 5, "busy_pin": 6, "result_pin": 13, "pass_pin": 19, "fail_pin": 26, "trigger_ack_pin": 21}
WIDTH = 0.030


def station(factory, **kw) -> tuple[Handshake, dict]:
    hs = Handshake(**PINS, pin_factory=factory, result_width_ms=WIDTH * 1e3, **kw)
    pins = {name[:-4]: factory.pin(p) for name, p in PINS.items()}
    return hs, pins


def rises(pin) -> list[float]:
    return [t for t, lvl in pin_times(pin) if lvl]


def falls(pin) -> list[float]:
    return [t for t, lvl in pin_times(pin) if not lvl]


def test_edge_order_and_timing_pulse_mode():
    f = MockFactory()
    hs, p = station(f)
    with hs:
        assert all(pin.state == 0 for pin in p.values())       # nothing active before READY
        hs.set_ready(True)
        assert p["ready"].state == 1
        for decision, line in (("PASS", "pass"), ("REJECT", "fail"), ("ERROR", "fail")):
            t_trig = time.monotonic()
            assert hs.trigger(t_trig)
            assert p["busy"].state == 1 and p["trigger_ack"].state == 1 and hs.busy
            assert p["pass"].state == 0 and p["fail"].state == 0     # cleared by the trigger (hold until next)
            t_dec = time.monotonic()
            hs.result(decision)
            other = "fail" if line == "pass" else "pass"
            assert p[line].state == 1 and p[other].state == 0 and p["busy"].state == 0
            # order: PASS/FAIL set, then the RESULT edge, then BUSY off; all after the decision
            t_line, t_res, t_busy_off = rises(p[line])[-1], rises(p["result"])[-1], falls(p["busy"])[-1]
            assert t_dec <= t_line <= t_res <= t_busy_off
            assert rises(p["busy"])[-1] >= t_trig and rises(p["busy"])[-1] - t_trig < 0.005
            wait_until(lambda: p["result"].state == 0 and p["trigger_ack"].state == 0, what="end of the strobe")
            width = falls(p["result"])[-1] - t_res
            assert WIDTH - 0.001 <= width <= WIDTH + 0.05, width
            ack = falls(p["trigger_ack"])[-1] - rises(p["trigger_ack"])[-1]
            assert WIDTH - 0.001 <= ack <= WIDTH + 0.05, ack
            assert p[line].state == 1                       # held until the next trigger
        assert hs.results == 3 and hs.missed == 0
    assert all(pin.state == 0 for pin in p.values())           # close: safe level everywhere


def test_trigger_while_busy_or_not_ready_is_missed():
    f = MockFactory()
    hs, p = station(f)
    with hs:
        assert not hs.trigger() and hs.missed_not_ready == 1        # not READY yet
        hs.set_ready(True)
        assert hs.trigger()
        n_busy_rises = len(rises(p["busy"]))
        assert not hs.trigger() and not hs.trigger()                 # two more parts while busy
        assert hs.missed_busy == 2 and hs.missed == 3
        assert len(rises(p["busy"])) == n_busy_rises                 # the PLC saw no BUSY for them
        hs.result("PASS")
        assert hs.trigger()                                          # accepted again after the decision
        hs.result("REJECT")
        assert hs.results == 2


def test_toggle_mode_one_level_change_per_decision():
    f = MockFactory()
    hs, p = station(f, result_mode="toggle")
    with hs:
        hs.set_ready(True)
        levels = []
        for d in ("PASS", "PASS", "REJECT", "PASS"):
            hs.trigger()
            hs.result(d)
            levels.append(p["result"].state)
        assert levels == [1, 0, 1, 0]
        assert [lvl for _, lvl in pin_times(p["result"])] == [True, False, True, False]


def test_pass_fail_hold_width():
    f = MockFactory()
    hs, p = station(f, pass_fail_hold_ms=40)
    with hs:
        hs.set_ready(True)
        hs.trigger()
        hs.result("REJECT")
        t_on = rises(p["fail"])[-1]
        wait_until(lambda: p["fail"].state == 0, what="FAIL hold to end")
        assert 0.039 <= falls(p["fail"])[-1] - t_on <= 0.04 + 0.05
        hs.trigger()                          # with a hold width the trigger does not clear the lines
        hs.result("PASS")
        assert p["pass"].state == 1 and p["fail"].state == 0


def test_fault_and_close_drive_safe_levels_active_low():
    f = MockFactory()
    hs, p = station(f, active_high=False)
    hs.set_ready(True)
    assert p["ready"].state == 0 and p["busy"].state == 1          # active-low: READY on = low
    hs.trigger()
    assert p["busy"].state == 0
    hs.fault(True)
    assert all(pin.state == 1 for pin in p.values())                 # every line inactive (high)
    assert not hs.trigger() and hs.missed_not_ready == 1
    hs.result("PASS")                                                # the decision of a faulted part: no strobe
    assert p["result"].state == 1 and hs.results == 0
    hs.fault(False)
    assert p["ready"].state == 0 and hs.trigger()
    hs.close()
    hs.close()                                                       # idempotent
    assert all(pin.state == 1 for pin in p.values())


def test_strobe_overrun_counted_and_edge_still_seen():
    f = MockFactory()
    hs, p = station(f)
    with hs:
        hs.set_ready(True)
        for d in ("PASS", "REJECT"):
            hs.trigger()
            hs.result(d)                    # the second comes while the first pulse is still on
        assert hs.strobe_overruns == 1
        assert len(rises(p["result"])) == 2     # a low-high edge for each decision


def test_edges_after_journal_commit(tmp_path):
    """The service's order per part, with a real journal: BUSY from the trigger, the RESULT strobe
    only after the decision row is committed."""
    from device.journal import Journal

    f = MockFactory()
    hs, p = station(f)
    with hs, Journal(tmp_path / "j.sqlite") as j:
        hs.set_ready(True)
        commits = []
        for i, d in enumerate(["PASS", "REJECT", "PASS"]):
            t = time.monotonic()
            assert hs.trigger(t)
            row = j.decision(frame=i, name=f"f{i}", score=0.1, threshold=0.5, decision=d, t_trigger=t)
            commits.append((row, time.monotonic()))
            hs.result(d)
        rows = j.decisions()
        for r, (_, t_commit), t_busy, t_res in zip(rows, commits, rises(p["busy"]), rises(p["result"])):
            assert r["t_trigger"] <= t_busy <= t_commit <= t_res
        assert [r["decision"] for r in rows] == ["PASS", "REJECT", "PASS"]


def test_from_config():
    from device.config import OutputsConfig

    f = MockFactory()
    assert Handshake.from_config(OutputsConfig(reject_pin=17), f) is None
    out = OutputsConfig(ready_pin=5, busy_pin=6, result_mode="toggle", result_width_ms=20.0)
    with Handshake.from_config(out, f) as hs:
        assert hs.mode == "toggle"
        hs.set_ready(True)
        assert f.pin(5).state == 1
    with pytest.raises(ValueError, match="result_mode"):
        Handshake(result_mode="strobe", pin_factory=f)


def test_accept_says_why_and_a_fault_drops_the_pending_part():
    f = MockFactory()
    hs, p = station(f)
    with hs:
        assert hs.accept(1.0) == "not ready"
        hs.set_ready(True)
        assert hs.accept(2.0) is None and hs.pending == 2.0
        assert hs.accept(3.0) == "busy" and hs.pending == 2.0
        hs.fault(True)
        assert hs.pending is None and not hs.busy
        hs.fault(False)
        assert hs.accept(4.0) is None
        n_ack = len(rises(p["trigger_ack"]))
        hs.result("PASS")
        assert hs.pending is None and hs.accept(5.0) is None      # the next part comes within the ACK pulse...
        assert len(rises(p["trigger_ack"])) == n_ack + 1            # ...and still gets its own ACK edge
