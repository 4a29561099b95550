"""Shared fixtures of the device-daemon tests: a tiny real bundle, replay frames, configs.

The bundle is built once per session with the real pipeline (Keras MobileNetV2 α0.35 at
32 px with the shared ImageNet weights -> int8 TFLite -> bank through the same .tflite), so the daemon
runs the exact code path of the appliance. Tests that need it skip when TensorFlow is absent.

Frames: "normal" parts are the bank images themselves (score ~0 -> PASS), "defects" are
noise images (far from the bank -> REJECT), so decisions are known in advance.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

FRAME_HW = (48, 64)
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANOMALY_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2_0.35_224_no_top_imagenet.weights.h5"
N_BANK = 24


def normal_image(i: int) -> np.ndarray:
    """Smooth gradient 'part' with a per-index phase (RGB uint8, 48x64)."""
    h, w = FRAME_HW
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    ph = i * 0.37
    r = 128 + 100 * np.sin(x / 9.0 + ph)
    g = 128 + 100 * np.cos(y / 7.0 - ph)
    b = 128 + 60 * np.sin((x + y) / 11.0 + 2 * ph)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def defect_image(i: int) -> np.ndarray:
    """Noise 'part': far from every bank feature."""
    rng = np.random.default_rng(1000 + i)
    return rng.integers(0, 256, size=FRAME_HW + (3,), dtype=np.uint8)


def build_bundle(dest: Path, size=(32, 32)) -> Path:
    """A real bundle (int8 TFLite extractor, l2 features, k=1) at ``dest``."""
    tf = pytest.importorskip("tensorflow", reason="building a test bundle needs TensorFlow (trainer extra)")
    from device.bundle import npy_bytes, write_bundle
    from device.extractor import TFLiteExtractor, normalize_features
    from device.preprocess import InputSpec, preprocess
    from device.scoring import KNNScorer
    from models.backbone import build_extractor
    from trainer.convert import convert

    if not WEIGHTS.is_file():
        # Random-init MobileNetV2 features collapse to one point after int8 conversion.
        pytest.skip(f"test bundle needs the ImageNet α0.35 weights at {WEIGHTS} (set ANOMALY_SHARED)")
    tf.keras.utils.set_random_seed(0)
    model, info = build_extractor(alpha=0.35, size=size, weights=str(WEIGHTS))
    spec = InputSpec(size=size, pixel_scale=1.0, pixel_offset=0.0)
    imgs = [normal_image(i) for i in range(N_BANK)]
    batch = np.concatenate([preprocess(im, spec) for im in imgs])
    blob = convert(model, representative=batch, mode="int8")
    ext = TFLiteExtractor(blob)
    bank = normalize_features(ext(batch), "l2").astype(np.float32)
    loo = KNNScorer(bank, 1).leave_one_out()
    thr = float(loo.max())
    manifest = {
        "input": spec.to_dict(),
        "extractor": {"file": "extractor.tflite", "quantization": "int8", "feature_normalize": "l2",
                      **ext.describe()},
        "backbone": info,
        "scoring": {"method": "knn", "k": 1, "metric": "euclidean"},
        "threshold": {"value": thr, "target_frr": 0.0, "method": "leave-one-out max (test bundle)"},
    }
    return write_bundle(dest, manifest, {"extractor.tflite": blob, "bank.npy": npy_bytes(bank),
                                         "calibration_scores.npy": npy_bytes(loo.astype(np.float32))})


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("bundle") / "bundle")


def write_frames(folder: Path, pattern: str) -> list[str]:
    """Write frames for ``pattern`` ('N' normal, 'D' defect) as PNGs; returns the expected decisions."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    expected = []
    for i, c in enumerate(pattern):
        img = normal_image(i % N_BANK) if c == "N" else defect_image(i)
        cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        expected.append("PASS" if c == "N" else "REJECT")
    return expected


def write_config(path: Path, bundle: Path, camera: str, journal: Path, extra: str = "") -> Path:
    """A device.toml; ``camera`` is the body of [camera], ``extra`` more sections."""
    path.write_text(textwrap.dedent(f"""\
        [bundle]
        path = "{bundle}"

        [camera]
        {camera}

        [journal]
        path = "{journal}"
        """) + textwrap.dedent(extra))
    return path


def pin_edges(pin, t_cleared: float) -> list[tuple[float, bool]]:
    """Absolute (monotonic) times of a MockPin's recorded state changes after ``clear_states()``."""
    out, t = [], t_cleared
    for s in pin.states[1:]:
        t += s.timestamp
        out.append((t, bool(s.state)))
    return out


def pulses(edges: list[tuple[float, bool]]) -> list[tuple[float, float]]:
    """(start, width) of each high pulse in an edge list."""
    out, start = [], None
    for t, level in edges:
        if level and start is None:
            start = t
        elif not level and start is not None:
            out.append((start, t - start))
            start = None
    return out


def env_no_notify() -> dict:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    return env


def wait_rows(journal: Path, n: int, timeout: float, alive=lambda: True) -> int:
    """Wait until the journal at ``journal`` holds ``n`` decision rows (read-only, so it never
    competes with the writer); returns the count. Raises TimeoutError (or RuntimeError when
    ``alive()`` turns false, e.g. the service process exited) instead of waiting forever."""
    import sqlite3
    import time

    deadline = time.monotonic() + timeout
    got = 0
    while True:
        if journal.exists():
            try:
                db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1.0)
                try:
                    got = db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
                finally:
                    db.close()
            except sqlite3.Error:
                got = 0                       # not created yet
        if got >= n:
            return got
        if not alive():
            raise RuntimeError(f"{journal}: the writer stopped at {got} of {n} rows")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{journal}: {got} of {n} rows after {timeout:g} s")
        time.sleep(0.01)                      # poll interval of the wait, not a synchronisation


@contextlib.contextmanager
def service_process(cfg: Path, stderr=subprocess.PIPE):
    """The real service, ``anomaly-device run --config cfg``, as a process (it takes the camera lock
    itself, so ``deploy`` signals it); yields the ``Popen``. On exit it is stopped with SIGTERM
    (killed after 30 s); ``returncode`` then says how it ended."""
    p = subprocess.Popen([sys.executable, "-m", "device.cli", "run", "--config", str(cfg)], cwd=ROOT,
                         env=env_no_notify(), stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    try:
        yield p
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def journal_rows(journal: Path, sql: str, args=()) -> list[tuple]:
    """Rows of ``sql`` on the journal opened read-only (never competing with the writer); ``[]``
    while the service is still creating it."""
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.OperationalError:          # no journal file yet
        return []
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


class FaultySource:
    """A looping folder source that fails on cue (a camera fault without hardware): read number
    ``fail_read`` and open number ``fail_open`` raise (``"<name>: read timed out"``, ``"<name>:
    still unplugged"``); after ``dead_after`` reads every read and every reopen fails for good
    (``"<name>: read failed"``, ``"<name>: device gone"``), calling ``on_open_failure`` first."""

    def __init__(self, path, fail_read: int | None = None, fail_open: int | None = None,
                 dead_after: int | None = None, name: str = "flaky"):
        from device.camera import FolderSource

        self.inner, self.name, self.reads, self.opens = FolderSource(path, loop=True), name, 0, 0
        self.fail_read, self.fail_open, self.dead_after = fail_read, fail_open, dead_after
        self.on_open_failure = None

    def open(self):
        from device.camera import CameraError

        self.opens += 1
        gone = self.dead_after is not None and self.opens > 1
        if gone or self.opens == self.fail_open:
            if self.on_open_failure:
                self.on_open_failure()
            raise CameraError(f"{self.name}: {'device gone' if gone else 'still unplugged'}")
        self.inner.open()

    def read(self):
        from device.camera import CameraError

        self.reads += 1
        if self.dead_after is not None and self.reads > self.dead_after:
            raise CameraError(f"{self.name}: read failed")
        if self.reads == self.fail_read:
            raise CameraError(f"{self.name}: read timed out")
        return self.inner.read()

    def close(self):
        self.inner.close()


def ready_notifier():
    """A notifier without a socket whose ``is_ready`` event tells the test the daemon is ready."""
    from device.notify import Notifier

    class ReadyNotifier(Notifier):
        def __init__(self):
            super().__init__(env={})
            self.is_ready = threading.Event()

        def ready(self, status: str = "") -> bool:
            self.is_ready.set()
            return super().ready(status)

    return ReadyNotifier()


class NotifyListener:
    """systemd's notify socket, for tests: collects ``(monotonic time, message)`` of every datagram sent
    to ``path`` until :meth:`close` (a context manager); :meth:`notifier` gives the daemon's side."""

    def __init__(self, path: Path):
        self.path, self.messages = str(path), []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.messages.append((time.monotonic(), self._sock.recv(4096).decode()))
            except socket.timeout:
                if self._done.is_set():
                    return

    def notifier(self, watchdog_usec: int = 100000):
        from device.notify import Notifier

        return Notifier(env={"NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": str(watchdog_usec)})

    def close(self) -> None:
        """Read what was sent, then stop. Idempotent."""
        self._done.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> "NotifyListener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
