"""Fail closed with real bundles: a bad bundle never reaches a decision.

* ``verify`` refuses bundles that cannot run (random, empty or truncated ``.tflite``, a different
  model) with a message naming the file, exit 2, no traceback;
* a running daemon asked to reload (SIGHUP) a bundle of each bad class journals ``reload_failed``
  and keeps deciding with the old one (every row carries the old digest);
* a frame that scores NaN is an ERROR decision (rejected, alarm), never a PASS.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gpiozero", reason="daemon tests need gpiozero (device extra)")

from daemon_helpers import bundle_dir, build_bundle, write_config, write_frames  # noqa: F401,E402
from gpiozero.pins.mock import MockFactory  # noqa: E402
from tamper import BAD_BUNDLES, rehash  # noqa: E402

from device.bundle import bundle_digest  # noqa: E402
from device.camera import FolderSource  # noqa: E402
from device.config import load_config  # noqa: E402
from device.daemon import Daemon  # noqa: E402
from device.journal import Journal  # noqa: E402
from device.notify import Notifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _verify(bundle: Path):
    return subprocess.run([sys.executable, "-m", "device.cli", "verify", str(bundle)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("name", ["random_tflite", "empty_tflite", "truncated_tflite", "nan_threshold",
                                  "nan_bank_rehashed"])
def test_verify_refuses_bundles_that_cannot_run(bundle_dir, tmp_path, name):
    b = Path(shutil.copytree(bundle_dir, tmp_path / "b"))
    tamper, says = BAD_BUNDLES[name]
    tamper(b)
    r = _verify(b)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_verify_runs_a_test_inference_and_refuses_another_model(bundle_dir, tmp_path):
    r = _verify(bundle_dir)
    assert r.returncode == 0 and "OK, digest " + bundle_digest(bundle_dir)[:16] in r.stdout and "test inference" in r.stdout
    other = build_bundle(tmp_path / "other", size=(48, 48))
    b = Path(shutil.copytree(bundle_dir, tmp_path / "b"))
    rehash(b, "extractor.tflite", (other / "extractor.tflite").read_bytes())
    r = _verify(b)
    assert r.returncode == 2 and "extractor.tflite: model input [48, 48, 3] does not match" in r.stderr, r.stderr


class Scripted(FolderSource):
    """Replays a folder in a loop and runs ``actions[n]`` just before frame ``n`` is read."""

    def __init__(self, path, actions):
        super().__init__(path, loop=True)
        self.actions, self.reads = actions, 0

    def read(self):
        act = self.actions.get(self.reads)
        self.reads += 1
        if act:
            act()
        return super().read()


@pytest.mark.parametrize("name", sorted(BAD_BUNDLES))
def test_reload_of_a_bad_bundle_keeps_the_old_one(bundle_dir, tmp_path, name):
    live = Path(shutil.copytree(bundle_dir, tmp_path / "live"))
    old_digest = bundle_digest(live)
    expected = write_frames(tmp_path / "frames", "NNDND")
    cfg = write_config(tmp_path / "d.toml", live, f'source = "folder"\npath = "{tmp_path / "frames"}"',
                       tmp_path / "j.sqlite", "[outputs]\nreject_pin = 17\nalarm_pin = 27\n")
    tamper, says = BAD_BUNDLES[name]
    holder = {}

    def break_and_reload():
        tamper(live)
        holder["d"].request_reload()

    d = Daemon(load_config(cfg), config_path=cfg, pin_factory=MockFactory(), notifier=Notifier(env={}),
               source=Scripted(tmp_path / "frames", {5: break_and_reload}), max_frames=10)
    holder["d"] = d
    assert d.run(signals=False) == 0
    with Journal(tmp_path / "j.sqlite") as j:
        rows, events = j.decisions(), j.events(limit=100)
    failed = [e for e in events if e["kind"] == "reload_failed"]
    assert len(failed) == 1 and says in failed[0]["message"], failed
    assert len(rows) == 10 and {r["bundle_digest"] for r in rows} == {old_digest}
    assert [r["decision"] for r in rows] == expected * 2        # the old bundle kept deciding, no ERROR


def test_nan_score_is_an_error_decision_never_a_pass(bundle_dir, tmp_path, monkeypatch):
    from core.decision import Decision
    from device.detector import Detector

    det = Detector.from_bundle(bundle_dir)
    monkeypatch.setattr(det.scorer, "row_scores", lambda feats: np.full(len(feats), np.nan, np.float32))
    r = det.inspect(np.zeros((48, 64, 3), np.uint8))
    assert r.decision is Decision.ERROR and r.rejects and "non-finite" in r.reason
    r = det.inspect(b"not an image")
    assert r.decision is Decision.ERROR and "cannot score" in r.reason


def test_daemon_journals_error_rows_and_rejects_them(bundle_dir, tmp_path, monkeypatch):
    """Frames that score NaN are journaled ERROR with a reason, pulsed like rejects, and raise the alarm."""
    expected = write_frames(tmp_path / "frames", "NNN")
    cfg = write_config(tmp_path / "d.toml", bundle_dir, f'source = "folder"\npath = "{tmp_path / "frames"}"',
                       tmp_path / "j.sqlite", "[outputs]\nreject_pin = 17\nalarm_pin = 27\n")
    factory = MockFactory()
    d = Daemon(load_config(cfg), pin_factory=factory, notifier=Notifier(env={}))
    real_start = d.start

    def start_then_break():
        real_start()
        monkeypatch.setattr(d.detector.scorer, "row_scores", lambda feats: np.full(len(feats), np.nan, np.float32))

    d.start = start_then_break
    assert d.run(signals=False) == 0
    with Journal(tmp_path / "j.sqlite") as j:
        rows, events = j.decisions(), j.events(limit=100)
    assert [r["decision"] for r in rows] == ["ERROR"] * len(expected)
    assert all(r["reason"] and "non-finite" in r["reason"] and r["reject_at"] is not None for r in rows)
    assert [e["kind"] for e in events].count("model_error") == 1
    assert any(s.state for s in factory.pin(27).states)            # the alarm was raised
    assert sum(1 for s in factory.pin(17).states[1:] if s.state) >= 1


@pytest.mark.parametrize("scale, refused", [(1.0, False), (1e-11, False), (0.0, True)])
def test_test_inference_refuses_an_extractor_that_cannot_tell_inputs_apart(bundle_dir, scale, refused):
    """The canary check is relative to the features' scale: tiny but distinct features run (a Gaussian
    or normalised scorer is scale-free); features identical for a black and a patterned input (here:
    the real extractor's output collapsed to a constant) are refused before any part is scored."""
    from device.detector import Detector, check_inference
    from device.errors import BundleError

    det = Detector.from_bundle(bundle_dir)
    real = det.extractor

    class Scaled:                   # the bundle's own extractor, its output scaled (0: collapsed to a constant)
        runtime = real.runtime

        def __call__(self, batch):
            f = real(batch)
            return f * scale if scale else np.full_like(f, 0.5)

    det.extractor = Scaled()
    if refused:
        with pytest.raises(BundleError, match="cannot tell parts apart"):
            check_inference(det)
    else:
        assert check_inference(det)
