"""Fault tests through the daemon (issue 9): undecodable and huge frames, a camera fault with reject
pulses in flight, a dead reject line, journal faults (disk full, read-only), a looping video
truncated. Mock pins against journal rows; waits synchronise on the source or the journal."""
from __future__ import annotations

import logging
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gpiozero", reason="daemon tests need gpiozero (device extra)")
cv2 = pytest.importorskip("cv2", reason="daemon tests need OpenCV (device extra)")

from daemon_helpers import (bundle_dir, defect_image, env_no_notify, normal_image, pin_edges,  # noqa: F401,E402
                            pulses, write_config, write_frames)
from gpiozero.pins.mock import MockFactory, MockPin  # noqa: E402
from test_daemon import check_pulses_match_journal, outputs, run_bounded, run_daemon  # noqa: E402
from mount_helpers import IS_ROOT, mount, small_tmpfs  # noqa: E402
from test_faults_frames import bad_folder, huge_png, write_video  # noqa: E402

from device.camera import CameraError, FolderSource, VideoSource  # noqa: E402
from device.daemon import EXIT_JOURNAL_FAULT  # noqa: E402
from device.journal import Journal  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def folder_cfg(bundle, tmp_path, frames, **out):
    return write_config(tmp_path / "d.toml", bundle, f'source = "folder"\npath = "{frames}"\n',
                        tmp_path / "j.sqlite", outputs(**out))


def level_at(edges, t: float, before: bool) -> bool:
    """The line's level at time ``t`` from its edges (``before``: the level before the first edge)."""
    lvl = before
    for te, le in edges:
        if te > t:
            break
        lvl = le
    return lvl


# ------------------------------------------------------------------ #3 undecodable files
def test_undecodable_files_in_a_replay_are_error_decisions_and_the_replay_goes_on(bundle_dir, tmp_path):
    want = bad_folder(tmp_path / "frames")
    cfg = folder_cfg(bundle_dir, tmp_path, tmp_path / "frames", delay_ms=20, width_ms=5, rate=50.0)
    factory = MockFactory()
    d, pin, t0 = run_daemon(cfg, factory)
    alarm = factory.pin(27)
    assert run_bounded(d) == 0                               # end of the folder, not a fault loop
    j = Journal(tmp_path / "j.sqlite")
    rows = j.decisions()
    assert ["ERROR" if w == "error" else "PASS-or-REJECT" for w in want] == \
        ["ERROR" if r["decision"] == "ERROR" else "PASS-or-REJECT" for r in rows]
    assert [r["name"] for r in rows] == ["0.png", "1.jpg", "2.png", "3.png", "4.png", "5.png"]
    for r in rows:
        if r["decision"] == "ERROR":
            assert r["name"] in r["reason"] and r["score"] is None
    kinds = [e["kind"] for e in j.events()]
    assert "camera_fault" not in kinds and "model_error" in kinds
    check_pulses_match_journal(rows, pin_edges(pin, t0), 0.005)  # every ERROR part was rejected
    assert True in [bool(s.state) for s in alarm.states]         # alarm_on_model_error


# ------------------------------------------------------------------ #7 a 20000 x 20000 frame
def test_huge_frame_is_an_error_decision_quickly_without_the_memory(bundle_dir, tmp_path):
    frames = tmp_path / "frames"
    write_frames(frames, "NND")
    huge_png(frames / "0001.png")                                 # replaces the second frame
    cfg = folder_cfg(bundle_dir, tmp_path, frames, rate=0.0, delay_ms=0, width_ms=1)
    d, pin, t0 = run_daemon(cfg)
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert run_bounded(d) == 0
    peak1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = Journal(tmp_path / "j.sqlite").decisions()
    assert [r["decision"] for r in rows] == ["PASS", "ERROR", "REJECT"]
    assert "400,000,000 pixels" in rows[1]["reason"] and "limit" in rows[1]["reason"]
    assert rows[1]["preprocess_ms"] is None or rows[1]["preprocess_ms"] < 1000
    assert rows[2]["ts"] - rows[0]["ts"] < 5.0                    # far under WatchdogSec
    assert peak1 - peak0 < 200, f"peak RSS grew by {peak1 - peak0:.0f} MB"


# ------------------------------------------------------------------ #4 camera fault with pulses in flight
class FaultAt:
    """Looping folder source: read ``at`` fails (camera unplugged), then ``fail_opens`` reopen attempts fail."""

    def __init__(self, path, at: int, fail_opens: int):
        self.inner, self.at, self.fail_opens = FolderSource(path, loop=True), at, fail_opens
        self.name, self.reads, self.opens = "faulty", 0, 0
        self.t_fault = self.t_back = None

    def open(self):
        self.opens += 1
        if 1 < self.opens <= 1 + self.fail_opens:
            raise CameraError("faulty: still unplugged")
        self.inner.open()
        if self.opens > 1:
            self.t_back = time.monotonic()

    def read(self):
        self.reads += 1
        if self.reads == self.at:
            self.t_fault = time.monotonic()
            raise CameraError("faulty: read failed")
        return self.inner.read()

    def close(self):
        self.inner.close()


@pytest.mark.parametrize("safe_level", ["inactive", "active"])
def test_reject_pulses_in_flight_fire_during_a_camera_fault(bundle_dir, tmp_path, safe_level):
    write_frames(tmp_path / "frames", "DDNDNNNN")
    cfg = write_config(tmp_path / "d.toml", bundle_dir, 'source = "folder"\npath = "-"\n'
                       'retry_initial_s = 0.2\nretry_max_s = 0.4', tmp_path / "j.sqlite",
                       outputs(rate=25.0, delay_ms=300, width_ms=10, extra=f'safe_level = "{safe_level}"\n'))
    src = FaultAt(tmp_path / "frames", at=4, fail_opens=2)
    d, pin, t0 = run_daemon(cfg, source=src, max_frames=8)
    assert run_bounded(d) == 0
    j = Journal(tmp_path / "j.sqlite")
    rows = j.decisions()
    assert len(rows) == 8 and [e["kind"] for e in j.events()].count("camera_fault") == 1
    in_fault = [r for r in rows if r["decision"] == "REJECT" and src.t_fault < r["reject_at"] < src.t_back]
    assert len(in_fault) == 2, "the test must have pulses due while the camera is down"
    edges = pin_edges(pin, t0)
    if safe_level == "inactive":
        check_pulses_match_journal(rows, edges, 0.010)           # every REJECT row fired, fault or not
    else:
        for r in rows:                                           # line active through each reject pulse
            if r["decision"] == "REJECT":
                assert level_at(edges, r["reject_at"] + 0.005, before=True)
        assert level_at(edges, (src.t_fault + src.t_back) / 2, before=True)   # safe level during the fault
    assert "pulse_dropped" not in [e["kind"] for e in j.events()]


class DeadPin(MockPin):
    """A mock output that fails once told to (a dead driver stage or expander)."""

    dead_after: float | None = None

    def _set_state(self, value):
        if DeadPin.dead_after is not None and time.monotonic() >= DeadPin.dead_after:
            raise OSError(5, "Input/output error")
        super()._set_state(value)


def test_pulses_that_cannot_be_fired_are_journaled_with_their_rows(bundle_dir, tmp_path):
    write_frames(tmp_path / "frames", "NDDN")
    cfg = folder_cfg(bundle_dir, tmp_path, tmp_path / "frames", rate=0.0, delay_ms=300, width_ms=10)
    factory = MockFactory(pin_class=DeadPin)

    class KillLine(FolderSource):
        def read(self):
            if self._i == 2:                       # after frame 1 (REJECT) was decided: the driver dies
                DeadPin.dead_after = time.monotonic()
            return super().read()

    d, pin, t0 = run_daemon(cfg, factory, source=KillLine(tmp_path / "frames"))
    try:
        assert run_bounded(d) == 0
    finally:
        DeadPin.dead_after = None
    j = Journal(tmp_path / "j.sqlite")
    rows = j.decisions()
    assert [r["decision"] for r in rows] == ["PASS", "REJECT", "REJECT", "PASS"]
    dropped = [e["message"] for e in j.events() if e["kind"] == "pulse_dropped"]
    named = sorted(int(x) for m in dropped for x in m.split("row(s) ")[1].split(", "))
    assert named == [rows[1]["id"], rows[2]["id"]], dropped
    assert all("cannot drive the output" in m and "Input/output error" in m for m in dropped)


# ------------------------------------------------------------------ #8 journal faults
class FullAfter(FolderSource):
    """Replays a folder; after ``n`` reads the journal's file may not grow any more (SQLITE_FULL)."""

    def __init__(self, path, n: int, journal: Journal):
        super().__init__(path, loop=True)
        self.n, self.journal = n, journal

    def read(self):
        if self._i == self.n:
            db = self.journal._db
            db.execute("PRAGMA max_page_count = %d" % db.execute("PRAGMA page_count").fetchone()[0])
        return super().read()


def test_disk_full_safe_level_alarm_one_line_nonzero_exit(bundle_dir, tmp_path, caplog):
    """Injected disk full (SQLite's page limit): every row journaled before the fault got its pulse
    (also those still queued when it came); the frame that could not be journaled was not acted on;
    alarm raised, one line, exit 3."""
    write_frames(tmp_path / "frames", "NDDNDNNDDNNNDN")
    cfg = folder_cfg(bundle_dir, tmp_path, tmp_path / "frames", rate=50.0, delay_ms=40, width_ms=5)
    journal = Journal(tmp_path / "j.sqlite")
    factory = MockFactory()
    src = FullAfter(tmp_path / "frames", 5, journal)
    d, pin, t0 = run_daemon(cfg, factory, source=src, journal=journal)
    alarm = factory.pin(27)
    caplog.set_level(logging.INFO)
    assert run_bounded(d) == EXIT_JOURNAL_FAULT
    rows = Journal(tmp_path / "j.sqlite").decisions()
    assert len(rows) >= 5 and src._i == len(rows) + 1      # the frame in hand was read but never journaled
    assert sum(r["decision"] == "REJECT" for r in rows) >= 2
    check_pulses_match_journal(rows, pin_edges(pin, t0), 0.005)   # rejected iff journaled REJECT
    assert pin.state == 0                                          # safe level ("inactive") at exit
    assert True in [bool(s.state) for s in alarm.states]           # alarm raised
    crit = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(crit) == 1, [r.getMessage() for r in crit]
    msg = crit[0].getMessage()
    assert "j.sqlite" in msg and "disk full" in msg and "\n" not in msg
    journal.close()


def test_read_only_journal_at_start(bundle_dir, tmp_path, caplog):
    write_frames(tmp_path / "frames", "N")
    cfg = folder_cfg(bundle_dir, tmp_path, tmp_path / "frames", rate=0.0)
    journal = Journal(tmp_path / "j.sqlite")
    journal._db.execute("PRAGMA query_only = 1")                        # as a read-only file or mount
    caplog.set_level(logging.INFO)
    d, pin, t0 = run_daemon(cfg, journal=journal)
    assert run_bounded(d) == EXIT_JOURNAL_FAULT
    crit = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(crit) == 1 and "j.sqlite" in crit[0] and "read-only" in crit[0]
    journal.close()


def _service(cfg: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "device.cli", "run", "--config", str(cfg)], cwd=ROOT,
                          env=env_no_notify(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tmpfs(tmp_path):
    with small_tmpfs(tmp_path / "small", "400k") as mnt:
        yield mnt


def test_service_on_a_full_filesystem_exits_3_with_one_line(bundle_dir, tmp_path, tmpfs):
    write_frames(tmp_path / "frames", "NDNNDN")
    cfg = write_config(tmp_path / "d.toml", bundle_dir,
                       f'source = "folder"\npath = "{tmp_path / "frames"}"\nloop = true',
                       tmpfs / "j.sqlite", outputs(rate=0.0, delay_ms=0, width_ms=1, extra='pin_factory = "mock"\n'))
    out = _service(cfg)
    assert out.returncode == EXIT_JOURNAL_FAULT, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if "CRITICAL" in ln or " ERROR " in ln]
    assert len(lines) == 1 and "j.sqlite" in lines[0] and "disk full" in lines[0], out.stderr[-3000:]
    st = subprocess.run([sys.executable, "-m", "device.cli", "status", "--journal", str(tmpfs / "j.sqlite")],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert st.returncode == 0 and "decisions" in st.stdout, st.stderr      # status works on the full disk


def test_service_with_a_read_only_journal_refuses_to_start_with_one_line(bundle_dir, tmp_path):
    """A journal on a read-only mount: refused before anything runs (exit 2, one line naming it);
    ``status`` still reads it. (Going read-only while running is the injected test above.)"""
    if not IS_ROOT:
        pytest.skip("a read-only bind mount needs root (the injected test covers the logic)")
    ro = tmp_path / "ro"
    ro.mkdir()
    with Journal(ro / "j.sqlite") as j:
        j.event("stop", "old run")
    if not mount("--bind", str(ro), str(ro)):
        pytest.skip("cannot bind-mount here")
    try:
        assert mount("-o", "remount,ro,bind", str(ro))
        write_frames(tmp_path / "frames", "N")
        cfg = write_config(tmp_path / "d.toml", bundle_dir, f'source = "folder"\npath = "{tmp_path / "frames"}"',
                           ro / "j.sqlite", outputs(rate=0.0, extra='pin_factory = "mock"\n'))
        out = _service(cfg)
        st = subprocess.run([sys.executable, "-m", "device.cli", "status", "--journal", str(ro / "j.sqlite")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)
    assert out.returncode in (2, EXIT_JOURNAL_FAULT), out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert str(ro) in out.stderr and ("writable" in out.stderr or "read-only" in out.stderr), out.stderr[-3000:]
    assert len(out.stderr.strip().splitlines()) <= 3, out.stderr[-3000:]      # a short message, no noise
    assert st.returncode == 0 and "event" in st.stdout and "stop: old run" in st.stdout, st.stderr


# ------------------------------------------------------------------ #13 looping video truncated
def test_looping_video_truncated_mid_run_is_a_camera_fault_not_the_end(bundle_dir, tmp_path):
    video = write_video(tmp_path / "line.avi", 4)
    cfg = write_config(tmp_path / "d.toml", bundle_dir, f'source = "video"\npath = "{video}"\nloop = true\n'
                       'retry_initial_s = 0.05\nretry_max_s = 0.05', tmp_path / "j.sqlite",
                       outputs(rate=0.0, delay_ms=0, width_ms=1))

    class Truncating(VideoSource):
        opens = 0

        def open(self):
            Truncating.opens += 1
            if Truncating.opens == 4:              # still failing after three retries: stop the test run
                d.request_stop()
            super().open()

        def read(self):
            if self._i == 6:
                video.write_bytes(b"")             # truncated to 0 bytes while the service loops it
            return super().read()

    factory = MockFactory()
    d, pin, t0 = run_daemon(cfg, factory, source=Truncating(str(video), loop=True))
    alarm = factory.pin(27)
    assert run_bounded(d) == 0
    j = Journal(tmp_path / "j.sqlite")
    faults = [e["message"] for e in j.events() if e["kind"] == "camera_fault"]
    assert len(faults) == 1 and "looping video" in faults[0] and "line.avi" in faults[0]
    assert Truncating.opens >= 4                                  # retried (restart path), not an end of stream
    assert len(j.decisions()) >= 6
    assert True in [bool(s.state) for s in alarm.states]
