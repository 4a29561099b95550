"""Shared helpers of the panel tests: journals written as the daemon writes them, panel configs,
a panel served from a thread, a real Mosquitto broker, a headless Chromium, screenshots.

Journals are written through :class:`device.journal.Journal` (the daemon's own writer) where the
daemon is not the point; tests that need the daemon use ``daemon_helpers``. Mosquitto and Chromium
tests skip with the reason when the binary is absent (``scripts/ci-deps.sh`` installs them in CI).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file()
                                                else None)
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (apt-get install mosquitto; "
                                                               "CI: scripts/ci-deps.sh)")
needs_chromium = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                    reason="chromium / chromedriver not installed (apt-get install chromium "
                                           "chromium-driver; CI: scripts/ci-deps.sh)")
TIMING = {"capture_ms": 0.05, "preprocess_ms": 0.3, "inference_ms": 0.7, "knn_ms": 1.2, "decision_ms": 0.01}


def wait_until(pred: Callable[[], object], timeout: float, what, every: float = 0.02):
    """Poll ``pred`` until it returns a truthy value (returned); fail the test naming ``what`` (a
    string, or a callable giving one, evaluated at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ journals
def part_image(i: int, defect: bool):
    import numpy as np

    rng = np.random.default_rng(i)
    img = np.full((48, 64, 3), 140, np.uint8)
    img[:, :, 1] = (np.arange(64) * 3).astype(np.uint8)
    if defect:
        y, x = int(rng.integers(5, 30)), int(rng.integers(5, 45))
        img[y:y + 12, x:x + 14] = 20
    return img


def write_rows(journal, archive: Path | None, pattern: str, start_frame: int = 0, threshold: float = 0.5,
               tiles: bool = True) -> list[int]:
    """Journal one decision per letter of ``pattern`` (P pass, R reject, E error) as the daemon does:
    rejects and errors get an archived PNG (the clean frame) and, for rejects with ``tiles``, a 2x2
    tile grid and the score-overlay picture beside the frame (:func:`device.archive.overlay_path`).
    Returns the row ids."""
    import cv2

    from device.archive import overlay_path

    ids = []
    for k, c in enumerate(pattern):
        i = start_frame + k
        decision = {"P": "PASS", "R": "REJECT", "E": "ERROR"}[c]
        if c == "E":
            score = None
        else:
            score = threshold * (1.6 + 0.01 * (i % 7)) if c == "R" else threshold * (0.2 + 0.01 * (i % 50))
        grid = [[0.1, 0.2], [0.3, score]] if tiles and score is not None else None
        rid = journal.decision(i, f"frame{i:05d}.png", score, threshold, decision, time.monotonic(), dict(TIMING),
                               tiles={"tile_grid": grid, "worst_tile": [32, 24, 32, 24]} if grid else None)
        if archive is not None and c != "P":
            p = archive / time.strftime("%Y%m%d") / f"{i:09d}_{decision.lower()}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), part_image(i, True))
            if grid:
                cv2.imwrite(str(overlay_path(p)), 255 - part_image(i, True))
            journal.set_image(rid, str(p))
        ids.append(rid)
    return ids


def fake_bundle(dest: Path, calibration=None, threshold: float = 0.5) -> Path:
    """A verified bundle whose extractor is not a runnable model: enough for what the panel reads
    (manifest, digest, calibration scores); the daemon cannot run it."""
    import numpy as np

    from device.bundle import npy_bytes, write_bundle

    cal = np.asarray(calibration if calibration is not None else np.linspace(0.05, 0.6, 200), np.float32)
    bank = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    manifest = {"input": {"size": [32, 32]},
                "extractor": {"file": "extractor.tflite", "quantization": "int8", "feature_normalize": "none",
                              "input_shape": [32, 32, 3], "output_dim": 8},
                "backbone": {}, "scoring": {"method": "knn", "k": 1, "metric": "euclidean"},
                "threshold": {"value": threshold, "target_frr": 0.01, "method": "test"}}
    return write_bundle(dest, manifest, {"extractor.tflite": b"TFL3" + bytes(64), "bank.npy": npy_bytes(bank),
                                         "calibration_scores.npy": npy_bytes(cal)})


def panel_config(tmp: Path, journal: Path, archive: Path | None = None, bundle: Path | None = None,
                 panel: str = "", mqtt: str = "") -> Path:
    """A device.toml with [panel] (store in ``tmp``, any free port) and optional [mqtt] body."""
    cfg = tmp / "device.toml"
    cfg.write_text(textwrap.dedent(f"""\
        [bundle]
        path = "{bundle or tmp / 'bundle'}"

        [camera]
        source = "folder"
        path = "{tmp / 'frames'}"

        [journal]
        path = "{journal}"
        archive_dir = "{archive or ''}"

        [panel]
        store = "{tmp / 'panel.sqlite'}"
        bind = "127.0.0.1:0"
        """) + textwrap.dedent(panel) + (f"\n[mqtt]\n{textwrap.dedent(mqtt)}" if mqtt else ""))
    return cfg


@contextlib.contextmanager
def running_panel(cfg_path: Path, publish: bool = True):
    """A :class:`PanelService` served from a thread; yields ``(service, base_url)``."""
    from device.panel.service import PanelService
    from device.panel.panel_config import load_panel_config

    with PanelService(load_panel_config(cfg_path), publish=publish) as svc:
        yield svc, svc.serve_in_thread()


def add_user(cfg_path: Path, name: str = "ana", password: str = "line-1-operator") -> tuple[str, str]:
    from device.panel.panel_config import load_panel_config
    from device.panel.store import PanelStore

    with PanelStore(load_panel_config(cfg_path).panel.store) as s:
        s.add_user(name, password, replace=True)
    return name, password


def hidden(html: str, name: str = "csrf") -> str:
    """The value of the page's hidden form field ``name`` (the CSRF token by default)."""
    import re

    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, f"no hidden {name} field in the page"
    return m.group(1)


def login(client, user: str, password: str):
    """Log ``client`` (an ``httpx.Client`` on the panel) in through the login form; returns the response."""
    token = hidden(client.get("/login").text)
    return client.post("/login", data={"csrf": token, "username": user, "password": password, "next": "/actions"})


# ------------------------------------------------------------------------------------ mosquitto
class Broker:
    """A real Mosquitto on a free 127.0.0.1 port with persistence (sessions survive a restart)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        folder.mkdir(parents=True, exist_ok=True)
        import pwd

        me = pwd.getpwuid(os.getuid()).pw_name     # as root, mosquitto would switch to its own user
        self.conf.write_text(f"user {me}\nlistener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {folder}/\nautosave_interval 1\n"
                             f"log_dest file {self.log}\nlog_type error\nlog_type warning\n")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "Broker":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

        def listening():
            if self.proc.poll() is not None:
                pytest.fail(f"mosquitto exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return True
            return False

        wait_until(listening, timeout, f"mosquitto listening on 127.0.0.1:{self.port}", 0.05)
        return self

    def stop(self) -> None:
        """Graceful stop (SIGTERM: mosquitto saves its sessions)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def broker(folder: Path):
    b = Broker(folder).start()
    try:
        yield b
    finally:
        b.stop()


class Subscriber:
    """A persistent-session MQTT subscriber (QoS 2) collecting (topic, payload) in order."""

    def __init__(self, port: int, topic: str, client_id: str = "test-subscriber"):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.reconnect_delay_set(1, 2)
        c.on_connect = lambda cl, u, f, rc, p=None: cl.subscribe(topic, qos=2)
        c.on_subscribe = lambda *a: self.connected.set()          # SUBACK: the broker routes to us now
        c.on_disconnect = lambda *a: self.connected.clear()
        c.on_message = self._on_message
        self.client = c
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()
        wait_until(self.connected.is_set, 10, "the test subscriber's subscription")

    def _on_message(self, client, userdata, msg):
        import json

        with self.lock:
            self.messages.append((msg.topic, json.loads(msg.payload) if msg.payload else None))

    def of(self, kind: str) -> list[dict]:
        with self.lock:
            return [p for t, p in self.messages if t.endswith("/" + kind)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------------------------ browser
def chrome(download_dir: Path | None = None):
    """Headless Debian Chromium through chromedriver, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="panel-chrome-")
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
              "--window-size=1300,1000", f"--user-data-dir={profile}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    driver._panel_profile = profile
    return driver


def quit_chrome(driver) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(getattr(driver, "_panel_profile", ""), ignore_errors=True)


def screenshot(driver, folder: Path, name: str) -> Path:
    """Save a PNG of the page under ``folder`` and, when ``ANOMALY_TEST_ARTIFACTS`` is set, copy it there."""
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{name}.png"
    assert driver.save_screenshot(str(p)), f"screenshot {p} failed"
    dest = os.environ.get("ANOMALY_TEST_ARTIFACTS")
    if dest:
        Path(dest, "panel").mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, Path(dest, "panel", p.name))
    return p


def severe_console_errors(driver) -> list[str]:
    """Browser console errors (a CSP violation or a JS exception shows here)."""
    try:
        logs = driver.get_log("browser")
    except Exception:  # pragma: no cover - logging not supported by this driver
        return []
    return [e["message"] for e in logs if e.get("level") == "SEVERE" and "favicon" not in e["message"]]
