"""Replayed frames -> daemon -> gpiozero MockFactory: pulses against the journal, signals, faults.

Every wait synchronises on the daemon's own progress (frames read by the source, journal rows,
notifier messages) and has a timeout; no sleep or timer stands in for synchronisation."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("gpiozero", reason="daemon tests need gpiozero (device extra)")
pytest.importorskip("cv2", reason="daemon tests need OpenCV (device extra)")

from daemon_helpers import (FaultySource, NotifyListener, bundle_dir, defect_image, env_no_notify,  # noqa: F401,E402
                            normal_image, pin_edges, pulses, ready_notifier, wait_rows, write_config, write_frames)
from gpiozero.pins.mock import MockFactory  # noqa: E402

from device.camera import FolderSource  # noqa: E402
from device.config import load_config  # noqa: E402
from device.daemon import Daemon  # noqa: E402
from device.errors import BundleError  # noqa: E402
from device.journal import Journal  # noqa: E402
from device.notify import Notifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PATTERN = "NNDNDDNNNDDDN"


def outputs(delay_ms=100, width_ms=15, rate=25.0, extra=""):
    return (f"[trigger]\nrate_hz = {rate}\n\n[outputs]\nreject_pin = 17\nalarm_pin = 27\n"
            f"reject_delay_ms = {delay_ms}\nreject_width_ms = {width_ms}\n{extra}")


RUN_TIMEOUT = float(os.environ.get("ANOMALY_TEST_RUN_TIMEOUT", "120"))


def run_bounded(d, signals: bool = False, timeout: float = RUN_TIMEOUT) -> int:
    """``d.run()`` that cannot hang the suite: past ``timeout`` (a safety net, not a synchronisation)
    the daemon is asked to stop and the test fails."""
    fired = threading.Event()

    def stop():
        fired.set()
        d.request_stop()

    guard = threading.Timer(timeout, stop)
    guard.daemon = True
    guard.start()
    try:
        code = d.run(signals=signals)
    finally:
        guard.cancel()
    assert not fired.is_set(), f"the daemon was still running after {timeout:g} s"
    return code


def run_daemon(cfg_path, factory=None, **kw):
    factory = factory or MockFactory()
    cfg = load_config(cfg_path)
    d = Daemon(cfg, config_path=cfg_path, pin_factory=factory, notifier=kw.pop("notifier", Notifier(env={})), **kw)
    pin = factory.pin(17)
    t0 = time.monotonic()
    pin.clear_states()
    return d, pin, t0


# Real-time slack of the pulse thread on a busy machine (CI shares cores). The design guarantees
# pulses are never early and never shorter than configured; lateness is a load property (see
# BENCHMARKS.md) and only bounded loosely here.
TOL = float(os.environ.get("ANOMALY_PULSE_TOL_MS", "60")) / 1e3


def check_pulses_match_journal(rows, edges, width_s: float, late_tol: float | None = None) -> None:
    """The reject line was active for every REJECT/ERROR row, from its ``reject_at`` (never early, at
    most ``late_tol`` late) for at least the configured width, and never outside those pulses: a part
    is rejected if and only if its row says so. Pulses of parts decided close together merge into one
    longer pulse (a loaded machine decides parts in bursts), so each pulse is matched to the rows it
    covers rather than one pulse per row."""
    tol = TOL if late_tol is None else late_tol
    want = sorted(r["reject_at"] for r in rows if r["decision"] != "PASS")
    assert all(r["reject_at"] is None for r in rows if r["decision"] == "PASS")
    got = [(a, a + w) for a, w in pulses(edges)]
    for at in want:
        assert any(a <= at + tol and b >= at + width_s - 0.001 for a, b in got), \
            f"no pulse covers the reject due at {at:.4f} for {width_s} s: {got}"
    for a, b in got:
        covered = [at for at in want if at - 0.001 <= a <= at + tol or a <= at <= b]
        assert covered, f"pulse at {a:.4f} without a REJECT row: {want}"
        assert any(at - 0.001 <= a <= at + tol for at in covered), f"pulse at {a:.4f} early or late: {covered}"
        assert b <= max(covered) + width_s + tol, f"pulse {a:.4f}-{b:.4f} longer than its rows {covered}"


def test_folder_replay_pulses_match_journal(bundle_dir, tmp_path):
    expected = write_frames(tmp_path / "frames", PATTERN)
    cfg = write_config(tmp_path / "d.toml", bundle_dir, f'source = "folder"\npath = "{tmp_path / "frames"}"',
                       tmp_path / "j.sqlite", outputs(delay_ms=150, width_ms=10, rate=12.5))
    d, pin, t0 = run_daemon(cfg)
    assert run_bounded(d) == 0
    rows = Journal(tmp_path / "j.sqlite").decisions()
    assert [r["decision"] for r in rows] == expected
    # Parts come every 80 ms with a 150 ms delay: several pulses were queued at once.
    rej = [r for r in rows if r["decision"] == "REJECT"]
    assert any(b["t_trigger"] < a["reject_at"] for a, b in zip(rej, rej[1:]))
    check_pulses_match_journal(rows, pin_edges(pin, t0), 0.010)
    assert pin.state == 0  # safe level "inactive" after the stop
    for r in rows:
        assert r["threshold"] == pytest.approx(d.detector.threshold.value)
        assert r["bundle_digest"] == d.detector.bundle.digest
        assert r["preprocess_ms"] > 0 and r["inference_ms"] > 0 and r["knn_ms"] > 0


def test_video_replay_pulses_match_journal(bundle_dir, tmp_path):
    import cv2

    video = tmp_path / "line.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert w.isOpened(), "OpenCV cannot write MJPG here"
    pattern = "NDNNDDN"
    for i, c in enumerate(pattern):
        img = normal_image(i) if c == "N" else defect_image(i)
        w.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    w.release()
    cfg = write_config(tmp_path / "d.toml", bundle_dir, f'source = "video"\npath = "{video}"',
                       tmp_path / "j.sqlite", outputs(delay_ms=60, width_ms=10, rate=12.5))
    d, pin, t0 = run_daemon(cfg)
    assert run_bounded(d) == 0
    rows = Journal(tmp_path / "j.sqlite").decisions()
    assert [r["decision"] for r in rows] == ["PASS" if c == "N" else "REJECT" for c in pattern]
    assert rows[0]["name"] == f"video:{video}:0"
    check_pulses_match_journal(rows, pin_edges(pin, t0), 0.010)


def test_overlapping_pulses_merge_and_fast_parts(bundle_dir, tmp_path):
    """Free-running as fast as possible: pulses wider than the part spacing merge, none lost."""
    write_frames(tmp_path / "frames", "DDDDNNNNNNNNNNNND")
    cfg = write_config(tmp_path / "d.toml", bundle_dir, f'source = "folder"\npath = "{tmp_path / "frames"}"',
                       tmp_path / "j.sqlite", outputs(delay_ms=50, width_ms=30, rate=0.0))
    d, pin, t0 = run_daemon(cfg)
    run_bounded(d)
    rows = Journal(tmp_path / "j.sqlite").decisions()
    p = pulses(pin_edges(pin, t0))
    rej = [r["reject_at"] for r in rows if r["decision"] == "REJECT"]
    assert len(rej) == 5
    # Expected line: the union of [reject_at, reject_at + width] over the journal's rejects.
    union = []
    for at in rej:
        if union and at <= union[-1][1]:
            union[-1][1] = at + 0.030
        else:
            union.append([at, at + 0.030])
    assert len(p) == len(union) < len(rej)  # the first four parts (ms apart) merged into one pulse
    for (start, width), (a, b) in zip(p, union):
        assert a - 0.001 <= start <= a + TOL and b - 0.001 <= start + width <= b + TOL


class Scripted:
    """A looping folder source that runs ``actions[n]()`` when it is asked for frame ``n`` (1-based):
    the test's operator acts at known points of the run instead of after guessed delays."""

    def __init__(self, path, actions: dict):
        self.inner, self.actions, self.name, self.reads = FolderSource(path, loop=True), actions, "scripted", 0

    def open(self):
        self.inner.open()

    def read(self):
        self.reads += 1
        if self.reads in self.actions:
            self.actions[self.reads]()
        return self.inner.read()

    def close(self):
        self.inner.close()


def test_sigterm_mid_run_consistent_journal_and_safe_outputs(bundle_dir, tmp_path):
    write_frames(tmp_path / "frames", PATTERN)
    cfg = write_config(tmp_path / "d.toml", bundle_dir,
                       f'source = "folder"\npath = "{tmp_path / "frames"}"\nloop = true',
                       tmp_path / "j.sqlite", outputs(delay_ms=80, width_ms=5, rate=12.5,
                                                      extra='safe_level = "active"\n'))
    src = Scripted(tmp_path / "frames", {15: lambda: os.kill(os.getpid(), signal.SIGTERM)})
    d, pin, t0 = run_daemon(cfg, source=src)
    assert run_bounded(d, signals=True) == 0
    j = Journal(tmp_path / "j.sqlite")
    assert j.integrity_ok()
    rows = j.decisions()
    assert len(rows) == 15 and src.reads == 15          # the frame in hand when SIGTERM came was finished
    assert [e["kind"] for e in j.events()][-1] == "stop"
    edges = pin_edges(pin, t0)
    # safe level "active": held high until ready, high again at stop; queued pulses fired before that.
    assert [lvl for _, lvl in edges[:2]] == [True, False] and t_ready_ok(edges[1][0], rows)
    assert edges[-1][1] is True and pin.state == 1
    check_pulses_match_journal(rows, edges[2:-1], 0.005)
    assert signal.getsignal(signal.SIGTERM) is not d.request_stop  # handlers restored


def t_ready_ok(t_release, rows):
    """The reject line left the safe level before the first decision."""
    return t_release <= rows[0]["t_trigger"]


def _subprocess_run(cfg, sig, rows, journal):
    """Start ``anomaly-device run``, wait until it has journaled ``rows`` decisions, send ``sig``."""
    env = env_no_notify()
    p = subprocess.Popen([sys.executable, "-m", "device.cli", "run", "--config", str(cfg)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_rows(journal, rows, timeout=90, alive=lambda: p.poll() is None)
    finally:
        p.send_signal(sig)
        out, err = p.communicate(timeout=30)
    return p.returncode, err


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 0), (signal.SIGKILL, -9)])
def test_service_process_signals(bundle_dir, tmp_path, sig, code):
    write_frames(tmp_path / "frames", PATTERN)
    cfg = write_config(tmp_path / "d.toml", bundle_dir,
                       f'source = "folder"\npath = "{tmp_path / "frames"}"\nloop = true',
                       tmp_path / "j.sqlite", outputs(rate=100.0, extra='pin_factory = "mock"\n'))
    rc, err = _subprocess_run(cfg, sig, 30, tmp_path / "j.sqlite")
    assert rc == code, err[-2000:]
    db = sqlite3.connect(tmp_path / "j.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n, = db.execute("SELECT COUNT(*) FROM decisions").fetchone()
    assert n > 0, err[-2000:]
    kinds = [k for k, in db.execute("SELECT kind FROM events ORDER BY id")]
    assert kinds[0] == "start" and "ready" in kinds
    assert (kinds[-1] == "stop") == (sig == signal.SIGTERM)
    # Frame ids are consecutive: nothing but (at most) the frame in flight is missing.
    frames = [f for f, in db.execute("SELECT frame FROM decisions ORDER BY id")]
    assert frames == list(range(len(frames)))


def test_camera_fails_then_recovers(bundle_dir, tmp_path):
    write_frames(tmp_path / "frames", "NNNNNNNN")
    cfg = write_config(tmp_path / "d.toml", bundle_dir, f'source = "folder"\npath = "{tmp_path / "frames"}"\n'
                       'retry_initial_s = 0.05\nretry_max_s = 0.2', tmp_path / "j.sqlite",
                       outputs(rate=0.0, extra='safe_level = "active"\n'))
    factory = MockFactory()
    src = FaultySource(tmp_path / "frames", fail_read=4, fail_open=2)
    d, pin, t0 = run_daemon(cfg, factory, source=src, max_frames=8)
    alarm = factory.pin(27)
    alarm.clear_states()
    assert run_bounded(d) == 0
    j = Journal(tmp_path / "j.sqlite")
    kinds = [e["kind"] for e in j.events()]
    assert kinds.index("camera_fault") < kinds.index("camera_ok")
    assert "flaky: read timed out" in [e["message"] for e in j.events() if e["kind"] == "camera_fault"][0]
    assert len(j.decisions()) == 8 and src.opens == 3
    # Alarm raised during the fault and cleared after; reject line held at the safe level meanwhile.
    assert [s.state for s in alarm.states] == [False, True, False]
    levels = [lvl for _, lvl in pin_edges(pin, t0)]
    assert levels == [True, False, True, False, True]  # safe until ready, ready, fault, recovered, stop
    assert j.summary()["camera"] == "stopped"


def test_sighup_reload_keeps_old_bundle_when_new_is_bad(bundle_dir, tmp_path):
    write_frames(tmp_path / "frames", PATTERN)
    bad = tmp_path / "bad_bundle"
    shutil.copytree(bundle_dir, bad)
    with open(bad / "bank.npy", "r+b") as f:
        f.seek(200)
        f.write(b"\x01\x02")
    cam = f'source = "folder"\npath = "{tmp_path / "frames"}"\nloop = true'
    cfg = write_config(tmp_path / "d.toml", bundle_dir, cam, tmp_path / "j.sqlite", outputs(rate=100.0))

    def bad_bundle():
        write_config(cfg, bad, cam, tmp_path / "j.sqlite", outputs(rate=100.0))
        os.kill(os.getpid(), signal.SIGHUP)

    def good_bundle_new_threshold():
        write_config(cfg, bundle_dir, cam, tmp_path / "j.sqlite", outputs(rate=100.0))
        cfg.write_text(cfg.read_text().replace(f'path = "{bundle_dir}"', f'path = "{bundle_dir}"\nthreshold = 0.75', 1))
        os.kill(os.getpid(), signal.SIGHUP)

    src = Scripted(tmp_path / "frames", {5: bad_bundle, 10: good_bundle_new_threshold,
                                         15: lambda: os.kill(os.getpid(), signal.SIGTERM)})
    d, pin, t0 = run_daemon(cfg, source=src)
    assert run_bounded(d, signals=True) == 0
    j = Journal(tmp_path / "j.sqlite")
    ev = j.events()
    failed = [e for e in ev if e["kind"] == "reload_failed"]
    assert len(failed) == 1 and "bank.npy" in failed[0]["message"] and "sha256" in failed[0]["message"]
    assert [e["kind"] for e in ev].count("reload") == 1
    thr = [r["threshold"] for r in j.decisions()]
    assert len(thr) == 15
    assert thr[:10] == [thr[0]] * 10 and thr[0] != 0.75     # the old bundle kept deciding after the failure
    assert thr[10:] == [pytest.approx(0.75)] * 5            # the good reload took effect at the next frame


def test_sd_notify_ready_after_bundle_and_camera_then_watchdog(bundle_dir, tmp_path):
    write_frames(tmp_path / "frames", PATTERN)
    cfg = write_config(tmp_path / "d.toml", bundle_dir,
                       f'source = "folder"\npath = "{tmp_path / "frames"}"\nloop = true',
                       tmp_path / "j.sqlite", outputs(rate=50.0))
    with NotifyListener(tmp_path / "notify.sock") as listener:
        d, pin, t0 = run_daemon(cfg, notifier=listener.notifier(), max_frames=30)
        assert run_bounded(d) == 0
    first = [m.split("\n")[0] for _, m in listener.messages]
    assert "READY=1" in first and first[-1] == "STOPPING=1"
    i_ready = first.index("READY=1")
    assert all(not m.startswith("WATCHDOG") for m in first[:i_ready])
    assert any(m.startswith("STATUS=loading bundle") for m in first[:i_ready])
    # 30 frames at 50/s = 0.6 s with keep-alives every 50 ms (half of WatchdogSec).
    assert first[i_ready:].count("WATCHDOG=1") >= 5


def test_corrupted_bundle_documented_error(bundle_dir, tmp_path, capsys):
    from device.cli import main

    bad = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bad)
    (bad / "extractor.tflite").write_bytes((bad / "extractor.tflite").read_bytes()[:1000])
    write_frames(tmp_path / "frames", "N")
    cfg = write_config(tmp_path / "d.toml", bad, f'source = "folder"\npath = "{tmp_path / "frames"}"',
                       tmp_path / "j.sqlite")
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "extractor.tflite" in err and "truncated" in err
    with pytest.raises(BundleError, match="extractor.tflite"):
        Daemon(load_config(cfg), pin_factory=MockFactory(), notifier=Notifier(env={})).start()
    # The failure is journaled too.
    assert Journal(tmp_path / "j.sqlite").events()[-1]["kind"] == "bundle_error"


def test_selftest_and_status_commands(bundle_dir, tmp_path, capsys):
    import json

    from device.cli import main

    expected = write_frames(tmp_path / "frames", PATTERN)
    cfg = write_config(tmp_path / "d.toml", bundle_dir, 'source = "picamera2"', tmp_path / "j.sqlite",
                       outputs(rate=0.0))
    assert main(["selftest", "--config", str(cfg), "--source", str(tmp_path / "frames"), "--frames", "13",
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] and rep["frames"] == 13 and rep["rejects"] == expected.count("REJECT")
    assert rep["reject_edges"] >= 1 and rep["pins"] == "mock"
    # status reads the journal written by a run
    cfg2 = write_config(tmp_path / "d2.toml", bundle_dir, f'source = "folder"\npath = "{tmp_path / "frames"}"',
                        tmp_path / "j2.sqlite", outputs(rate=0.0, delay_ms=0, width_ms=1,
                                                        extra='pin_factory = "mock"\n'))
    assert main(["run", "--config", str(cfg2)]) == 0
    capsys.readouterr()
    assert main(["status", "--config", str(cfg2), "--json", "--last", "3"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["summary"]["decisions"] == 13 and st["summary"]["rejects"] == expected.count("REJECT")
    assert st["summary"]["camera"] == "stopped" and len(st["last"]) == 3 and st["last"][-1]["frame"] == 12
    assert main(["status", "--config", str(cfg2)]) == 0
    assert "decisions 13" in capsys.readouterr().out
    assert main(["status", "--journal", str(tmp_path / "none.sqlite")]) == 2
    assert "no journal yet" in capsys.readouterr().err


def test_projected_bundle_same_decisions(bundle_dir, tmp_path, capsys):
    """A PCA shortlist + re-rank bundle makes the daemon decide exactly as the full bank does."""
    import json

    from device.cli import main
    from device.scoring import ShortlistKNNScorer

    dest = tmp_path / "bundle-pca"
    assert main(["project-bundle", str(bundle_dir), str(dest), "--dims", "16", "--shortlist", "4"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rerank"] and info["threshold"] == info["previous_threshold"]
    expected = write_frames(tmp_path / "frames", PATTERN)
    scores = {}
    for name, b in (("full", bundle_dir), ("pca", dest)):
        cfg = write_config(tmp_path / f"{name}.toml", b, f'source = "folder"\npath = "{tmp_path / "frames"}"',
                           tmp_path / f"{name}.sqlite", outputs(rate=0.0, delay_ms=0, width_ms=1))
        d, pin, t0 = run_daemon(cfg)
        assert run_bounded(d) == 0
        scorer = getattr(d.detector.scorer, "scorer", d.detector.scorer)   # TileScorer wraps the bank's scorer
        assert isinstance(scorer, ShortlistKNNScorer) == (name == "pca")
        rows = Journal(tmp_path / f"{name}.sqlite").decisions()
        assert [r["decision"] for r in rows] == expected
        scores[name] = [r["score"] for r in rows]
    assert scores["pca"] == pytest.approx(scores["full"], abs=1e-3)  # float32 noise near 0: sqrt(~1e-7)
    # A tampered projection file is caught by the bundle's hashes.
    comp = dest / "pca_components.npy"
    data = bytearray(comp.read_bytes())
    data[-1] ^= 0xFF
    comp.write_bytes(bytes(data))
    assert main(["check-config", "--config", str(tmp_path / "pca.toml")]) == 2
    assert "pca_components.npy" in capsys.readouterr().err


def test_watchdog_fed_only_within_camera_fault_grace(bundle_dir, tmp_path):
    write_frames(tmp_path / "frames", "NNN")
    cfg = write_config(tmp_path / "d.toml", bundle_dir, f'source = "folder"\npath = "{tmp_path / "frames"}"\n'
                       'retry_initial_s = 0.05\nretry_max_s = 0.1', tmp_path / "j.sqlite",
                       outputs(rate=50.0) + "\n[service]\ncamera_fault_grace_s = 0.4\n")
    src = FaultySource(tmp_path / "frames", dead_after=5, name="dying")
    with NotifyListener(tmp_path / "wd.sock") as listener:
        d, pin, t0 = run_daemon(cfg, source=src, notifier=listener.notifier())
        src.on_open_failure = lambda: src.opens >= 12 and d.request_stop()   # ~1 s of retries at <= 0.1 s
        assert run_bounded(d) == 0
    got = listener.messages
    fault = [e for e in Journal(tmp_path / "j.sqlite").events() if e["kind"] == "camera_fault"]
    assert len(fault) == 1 and "read failed" in fault[0]["message"]
    pings = [t for t, m in got if m == "WATCHDOG=1"]
    status = [t for t, m in got if m.startswith("STATUS=camera fault")]
    assert status, got
    t_fault = status[0]
    during = [t - t_fault for t in pings if t > t_fault]
    assert during and max(during) < 0.4 + 0.15     # fed while retrying within the grace...
    assert any(0.2 < x for x in during)            # ...for most of it, then no more (systemd restarts us)


def test_gpio_photo_eye_trigger_and_reject_archive(bundle_dir, tmp_path):
    """Photo-eye edges on a mock input pin trigger frames; the delay counts from the edge; rejects archived."""
    write_frames(tmp_path / "frames", "NDND")
    cfg = write_config(tmp_path / "d.toml", bundle_dir, f'source = "folder"\npath = "{tmp_path / "frames"}"',
                       tmp_path / "j.sqlite",
                       '[trigger]\nmode = "gpio"\npin = 4\nbounce_ms = 0\ntimeout_s = 0.05\n\n'
                       '[outputs]\nreject_pin = 17\nreject_delay_ms = 30\nreject_width_ms = 10\n')
    cfg.write_text(cfg.read_text().replace(f'path = "{tmp_path / "j.sqlite"}"\n',
                                           f'path = "{tmp_path / "j.sqlite"}"\narchive_dir = "{tmp_path / "archive"}"\n'
                                           'archive_pass_every = 2\n', 1))
    factory = MockFactory()
    notifier = ready_notifier()
    d, pin, t0 = run_daemon(cfg, factory, max_frames=4, notifier=notifier)
    eye = factory.pin(4)
    presses, problems = [], []

    def photo_eye():
        try:
            assert notifier.is_ready.wait(60), "daemon never became ready"
            for i in range(4):
                presses.append(time.monotonic())
                eye.drive_low()           # pull-up input: low = beam broken = part present
                eye.drive_high()
                wait_rows(tmp_path / "j.sqlite", i + 1, timeout=30)   # the part is decided before the next
        except BaseException as exc:      # noqa: BLE001 - reported below, never a hang
            problems.append(exc)
            d.request_stop()

    th = threading.Thread(target=photo_eye)
    th.start()
    assert run_bounded(d) == 0
    th.join(60)
    assert not problems, problems
    rows = Journal(tmp_path / "j.sqlite").decisions()
    assert [r["decision"] for r in rows] == ["PASS", "REJECT", "PASS", "REJECT"]
    for r, t in zip(rows, presses):
        assert t <= r["t_trigger"] <= t + TOL    # reference = the photo-eye edge
    check_pulses_match_journal(rows, pin_edges(pin, t0), 0.010)
    saved = sorted(p.name for p in (tmp_path / "archive").rglob("*.png"))
    runs = {n.split("_")[0] for n in saved}
    assert len(runs) == 1                      # one start of the service, one run id
    assert [n.split("_", 1)[1] for n in saved] == ["000000000_pass.png", "000000001_reject.png",
                                                   "000000003_reject.png"]   # 1 in 2 passes
    assert [bool(r["image"]) for r in rows] == [True, True, False, True]
    assert all(os.path.isfile(r["image"]) for r in rows if r["image"])
