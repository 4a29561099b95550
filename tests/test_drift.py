"""Drift watch: the two-sample test, image statistics, and replays through a real tiny bundle
(stable, brightness ramp, scene switch), plus the fallback reference when a bundle has no statistics."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cv2", reason="drift statistics need OpenCV (device extra)")

from daemon_helpers import bundle_dir  # noqa: F401,E402
from lifecycle_helpers import derived_bundle, drift_replay, part, phases, scene  # noqa: E402

from device.drift import DriftMonitor, frame_stats, image_stats, ks_2samp  # noqa: E402


def test_ks_statistic_and_p_value_agree_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.2, 0.5):
        a, b = np.sort(rng.normal(0, 1, 400)), np.sort(rng.normal(shift, 1, 150))
        d, p = ks_2samp(a, b)
        ref = stats.ks_2samp(a, b, method="asymp")
        assert d == pytest.approx(ref.statistic, abs=1e-12)
        assert abs(np.log10(p) - np.log10(ref.pvalue)) < 0.3, (p, ref.pvalue)


def test_frame_stats_follow_brightness_and_blur():
    import cv2

    img = part(1.0, seed=1)
    b, s = frame_stats(img)
    b2, _ = frame_stats(part(1.0, seed=1, gain=0.5))
    _, s_blur = frame_stats(cv2.GaussianBlur(img, (7, 7), 3))
    assert b2 == pytest.approx(b / 2, rel=0.05)
    assert s_blur < s / 3
    big = cv2.resize(img, (640, 480))                 # downscaled before the statistics
    assert frame_stats(big)[0] == pytest.approx(b, rel=0.02)
    rec = image_stats([img, part(2.0, seed=2)])
    assert rec["n"] == 2 and rec["brightness"]["p05"] <= rec["brightness"]["median"] <= rec["brightness"]["p95"]
    assert "Laplacian" in rec["method"]


def test_scores_fed_directly_stable_then_shifted():
    rng = np.random.default_rng(1)
    cal = rng.gamma(4.0, 0.05, 300)
    thr = float(np.quantile(cal, 0.99))
    m = DriftMonitor(cal, thr, window=300)
    stable = rng.gamma(4.0, 0.05, 20000)
    changes = [m.update_values(s, "PASS" if s <= thr else "REJECT") for s in stable]
    assert not any(changes) and m.state.level == "ok"
    shifted = rng.gamma(4.0, 0.05, 600) * 1.4
    changes = [c for c in (m.update_values(s, "PASS" if s <= thr else "REJECT") for s in shifted) if c]
    assert [c.level for c in changes][-1] == "drift"
    assert "KS" in changes[-1].reason and changes[-1].signals["scores"]["p"] < 1e-6
    back = [c for c in (m.update_values(s, "PASS") for s in rng.gamma(4.0, 0.05, 1500)) if c]
    assert back and back[-1].level == "ok"        # recovers once the window is normal again


def test_errors_and_rejects_do_not_enter_the_score_window():
    m = DriftMonitor(np.linspace(0, 1, 100), 1.0, window=50, min_scores=10)
    for _ in range(200):
        m.update_values(5.0, "REJECT")
        m.update_values(None, "ERROR")
    assert m.state.level == "ok" and not m._scores


@pytest.fixture(scope="module")
def drift_bundle(bundle_dir, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("drift")
    train = [part(p, seed=i) for i, p in enumerate(phases(60, 1))]
    calib = [part(p, seed=1000 + i) for i, p in enumerate(phases(150, 2))]
    with_stats = derived_bundle(bundle_dir, root / "b", train, calib, target_frr=0.02)
    without = derived_bundle(bundle_dir, root / "b0", train, calib, target_frr=0.02, stats=False)
    return with_stats, without


def stable_frames(n, seed=7):
    return [part(p, seed=seed * 10000 + i) for i, p in enumerate(phases(n, seed))]


def test_stable_replay_raises_nothing(drift_bundle):
    m, changes = drift_replay(drift_bundle[0], stable_frames(500))
    assert changes == [] and m.state.level == "ok"
    s = m.summary()
    assert s["signals"]["scores"]["n"] >= 50 and s["signals"]["scores"]["p"] > 1e-3
    assert s["signals"]["image"]["reference"] == "bundle image_stats"


def test_brightness_ramp_raises_drift(drift_bundle):
    n0, ramp = 100, 300
    gains = np.r_[np.ones(n0), np.linspace(1.0, 1.6, ramp)]
    frames = [part(p, seed=i, gain=g) for i, (p, g) in enumerate(zip(phases(n0 + ramp, 8), gains))]
    m, changes = drift_replay(drift_bundle[0], frames)
    assert changes and all(i >= n0 for i, _ in changes)             # nothing before the ramp
    first_drift = next(i for i, c in changes if c.level == "drift")
    assert "brightness" in dict(changes)[first_drift].reason
    gain_then = gains[first_drift]
    assert gain_then < 1.35, f"drift raised only at gain {gain_then:.2f}"   # tolerance 15 % (+ median lag)


def test_scene_switch_raises_drift(drift_bundle):
    n0 = 120
    frames = stable_frames(n0, seed=9) + [scene(i) for i in range(80)]
    m, changes = drift_replay(drift_bundle[0], frames)
    assert changes and all(i >= n0 for i, _ in changes)
    drift = [(i, c) for i, c in changes if c.level == "drift"]
    assert drift and drift[0][0] - n0 < 25
    assert "sharpness" in drift[0][1].reason or "brightness" in drift[0][1].reason


def test_bundle_without_image_stats_learns_reference_from_first_frames(drift_bundle):
    frames = stable_frames(150, seed=11) + [part(p, seed=i, gain=0.6) for i, p in enumerate(phases(100, 12))]
    m, changes = drift_replay(drift_bundle[1], frames)
    assert "first 100 frames" in m.describe()
    assert changes and changes[0][0] >= 150
    drift = [c for _, c in changes if c.level == "drift"]
    assert drift and "first 100 frames of this run" in drift[0].reason


def test_worker_evaluates_off_the_caller_and_hands_back_changes():
    from device.drift import DriftWorker

    w = DriftWorker(DriftMonitor(None, reference={"brightness": {"median": 100.0}, "sharpness": {"median": 0.0}},
                                 persist=2, stats_window=3), queue_size=4)
    try:
        grey = lambda v: np.full((48, 64, 3), v, np.uint8)            # noqa: E731
        for v in (100, 100, 100, 150, 150, 150, 150):
            assert w.submit(None, "REJECT", grey(v)) or w.flush()      # never blocks: full queue -> False
        assert w.flush() and w.monitor.frames + w.dropped == 7
        assert [c.level for c in w.changes] == ["drift"] and "brightness 150 vs 100" in w.changes[0].reason
        assert len(w.cost_ms) == w.monitor.frames
    finally:
        w.close()
        w.close()                                                      # idempotent
