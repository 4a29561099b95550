"""`anomaly-device capture`: frames from a replayed camera through the configured trigger and ROI into
an MVTec folder with capture.json; refusal while the service holds the camera; the capture record."""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

pytest.importorskip("cv2", reason="capture needs OpenCV (device extra)")
pytest.importorskip("gpiozero", reason="capture needs gpiozero (device extra)")

from daemon_helpers import write_config  # noqa: E402
from lifecycle_helpers import part, replace, write_pngs  # noqa: E402

from device.capture import capture, capture_mismatches, capture_record  # noqa: E402
from device.config import load_config  # noqa: E402
from device.servicelock import ServiceLock, pid_file_for  # noqa: E402

ROI = [4, 2, 40, 30]


@pytest.fixture
def cam_cfg(tmp_path) -> Path:
    write_pngs(tmp_path / "frames", [part(i / 3, seed=i) for i in range(6)])
    return write_config(tmp_path / "d.toml", tmp_path / "state" / "bundle",
                        f'source = "folder"\npath = "{tmp_path / "frames"}"\nroi = {ROI}',
                        tmp_path / "state" / "journal.sqlite")


def test_capture_from_a_replayed_camera(cam_cfg, tmp_path):
    import cv2

    cfg = load_config(cam_cfg)
    seen = []
    rec = capture(cfg, tmp_path / "data", 4, progress=lambda i, n: seen.append((i, n)))
    files = sorted((tmp_path / "data" / "train" / "good").glob("*.png"))
    assert [f.name for f in files] == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    img = cv2.imread(str(files[0]))
    assert img.shape == (ROI[3], ROI[2], 3)                                  # the ROI, as `run` crops it
    on_disk = json.loads((tmp_path / "data" / "capture.json").read_text())
    assert on_disk == rec
    assert rec["count"] == 4 and rec["resolution"] == [64, 48] and rec["roi"] == ROI
    assert rec["source"] == "folder" and rec["source_name"].startswith("folder:")
    assert rec["trigger"]["mode"] == "free-run" and rec["image_stats"]["n"] == 4
    for im, f in zip(rec["images"], files):
        assert im["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    # the frame source read frame i in order: the saved pixels are its ROI
    src = cv2.imread(str(tmp_path / "frames" / "0002.png"))
    x, y, w, h = ROI
    assert (cv2.imread(str(files[2])) == src[y:y + h, x:x + w]).all()


def test_capture_command_progress_and_refusals(cam_cfg, tmp_path, capsys):
    from device.cli import main

    out = tmp_path / "d1"
    assert main(["capture", "--config", str(cam_cfg), "--out", str(out), "--count", "3"]) == 0
    cap = capsys.readouterr()
    assert "\r" not in cap.err and "\x1b" not in cap.err and "capture: 3/3" in cap.err    # no TTY: plain lines
    assert "captured 3 of 3 images" in cap.out
    # an existing folder is not mixed into, unless asked to
    assert main(["capture", "--config", str(cam_cfg), "--out", str(out), "--count", "2"]) == 2
    assert "already holds 3 images" in capsys.readouterr().err
    assert main(["capture", "--config", str(cam_cfg), "--out", str(out), "--count", "2", "--append"]) == 0
    assert sorted(p.name for p in (out / "train" / "good").iterdir())[-1] == "0004.png"
    # the replay ends before the count: what was captured is kept, exit 1
    assert main(["capture", "--config", str(cam_cfg), "--out", str(tmp_path / "d2"), "--count", "10"]) == 1
    assert json.loads((tmp_path / "d2" / "capture.json").read_text())["count"] == 6
    capsys.readouterr()
    # the service holds the camera: one line, exit 2
    with ServiceLock(pid_file_for(load_config(cam_cfg)), "run"):
        assert main(["capture", "--config", str(cam_cfg), "--out", str(tmp_path / "d3"), "--count", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "held by `anomaly-device run`" in err[0]
    assert not (tmp_path / "d3").exists()


def test_capture_on_photo_eye_trigger(tmp_path):
    import time

    from gpiozero.pins.mock import MockFactory

    write_pngs(tmp_path / "frames", [part(i / 3, seed=i) for i in range(6)])
    cfg = load_config(write_config(tmp_path / "d.toml", tmp_path / "b", f'source = "folder"\npath = "{tmp_path / "frames"}"',
                                   tmp_path / "j.sqlite", '[trigger]\nmode = "gpio"\npin = 4\nbounce_ms = 0\n'
                                   'timeout_s = 0.05\n'))
    factory = MockFactory()
    saved = threading.Semaphore(0)
    result = {}
    th = threading.Thread(target=lambda: result.update(capture(cfg, tmp_path / "data", 2, pin_factory=factory,
                                                                progress=lambda i, n: saved.release())))
    th.start()
    eye = factory.pin(4)
    for _ in range(2):
        end = time.monotonic() + 10
        while not saved.acquire(timeout=0.05):     # press until the part is captured (the capture opens its input)
            assert time.monotonic() < end, "no frame captured on the photo-eye"
            eye.drive_low()                        # pull-up input: low = beam broken
            eye.drive_high()
    th.join(timeout=10)
    assert not th.is_alive() and result["count"] == 2 and result["trigger"]["mode"] == "gpio"


def test_minimum_gap_skips_triggers(tmp_path):
    import time

    from device.trigger import SoftwareTrigger

    write_pngs(tmp_path / "frames", [part(i / 3, seed=i) for i in range(6)])
    cfg = load_config(write_config(tmp_path / "d.toml", tmp_path / "b", f'source = "folder"\npath = "{tmp_path / "frames"}"',
                                   tmp_path / "j.sqlite", '[trigger]\nmode = "software"\ntimeout_s = 0.05\n'))
    trig = SoftwareTrigger()
    t0 = time.monotonic()
    for dt in (0.0, 0.01, 0.2, 0.25, 0.5):       # parts 10 ms and 50 ms after a saved one are skipped
        trig.fire(t0 + dt)
    rec = capture(cfg, tmp_path / "data", 3, interval_ms=100, trigger=trig)
    assert rec["count"] == 3 and rec["skipped_triggers"] == 2
    assert [im["frame"] for im in rec["images"]] == [0, 1, 2]


def test_capture_record_and_mismatch_warnings(cam_cfg, tmp_path):
    cfg = load_config(cam_cfg)
    capture(cfg, tmp_path / "data", 2)
    rec = capture_record(tmp_path / "data")
    raw = (tmp_path / "data" / "capture.json").read_bytes()
    assert rec["capture_sha256"] == hashlib.sha256(raw).hexdigest() and rec["count"] == 2
    assert rec["source"] == "folder" and rec["roi"] == ROI and rec["resolution"] == [64, 48]
    assert capture_mismatches(cfg.camera, {"capture": rec}) == []
    other = replace(cfg.camera, roi=(0, 0, 32, 32), exposure_us=9000)
    lines = capture_mismatches(other, {"capture": rec})
    assert len(lines) == 2 and any("[camera].roi" in s for s in lines) and any("exposure_us is 9000" in s for s in lines)
    assert capture_mismatches(cfg.camera, {}) == []
    with pytest.raises(Exception, match="capture record"):
        capture_record({"schema": "something-else"})
