#!/usr/bin/env python3
"""Benchmark of the line's life cycle on the device (issue 12).

Measures, on this machine (MobileNetV2 α0.35 int8 at 96 px, LiteRT 1 thread, 1 BLAS thread):

* ``learn`` of 50 confirmed-good images into a bundle with a 10,000-row bank (1280-d) capped by
  k-center coreset (the trainer's rule) and 200 calibration images' features: seconds per stage
  and peak RSS, in a fresh process with TensorFlow imports blocked (as on the Pi);
* drift watch: detection delay in frames for a brightness ramp and a scene switch (generated
  frames through the device path), false drift alarms (and warnings) per 100,000 stable frames
  (scores and statistics of real stable frames fed to the monitor directly), for the monitor's
  defaults and for the config's current defaults; the per-frame cost of the statistics on a
  640x480 frame and of one monitor update;
* PLC handshake on gpiozero mock pins: photo-eye edge -> BUSY and -> RESULT strobe (decision
  journaled to SQLite in between, no scoring), median and p99;
* deploy -> first decision carrying the new digest: PLACEHOLDER until the daemon itself holds the
  service lock (phase 2); measured here with a wrapper process that takes the lock for it and
  runs the daemon, and recorded as ``null`` with the reason when that does not work.

Writes ``scripts/bench/results/lifecycle.json`` (flat keys) and the BENCHMARKS.md section between
``<!-- lifecycle:start -->`` and ``<!-- lifecycle:end -->``.

Usage:
    nice .venv/bin/python scripts/bench/bench_lifecycle.py [--bank 10000] [--learn-images 50]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

for _k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the device runs 1 BLAS thread
    os.environ.setdefault(_k, "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts" / "bench")]
import numpy as np  # noqa: E402

log = logging.getLogger("bench_lifecycle")
SIZE = 96
START, END = "<!-- lifecycle:start -->", "<!-- lifecycle:end -->"


def pct(a, q) -> float:
    return round(float(np.percentile(np.asarray(a, np.float64), q)), 4)


# ---------------------------------------------------------------- bundles
def base_bundle(tmp: Path) -> Path:
    """The real 96-px int8 extractor (TensorFlow, once), as tests/daemon_helpers builds it."""
    from daemon_helpers import build_bundle

    return build_bundle(tmp / "base", size=(SIZE, SIZE))


def big_parent(base: Path, dest: Path, n_bank: int, n_cal: int = 200) -> Path:
    """A bundle whose bank holds ``n_bank`` real feature rows of generated parts, declared as
    coreset-subsampled (so learn keeps it at that cap), with 200 calibration images' features."""
    from core.threshold import describe_calibration
    from device.bundle import load_bundle, npy_bytes, write_bundle
    from device.detector import Detector
    from device.drift import image_stats
    from device.scoring import TileScorer
    from lifecycle_helpers import features, part, phases

    b = load_bundle(base)
    train = [part(p, seed=i) for i, p in enumerate(phases(n_bank, 1))]
    calib = [part(p, seed=10 ** 6 + i) for i, p in enumerate(phases(n_cal, 2))]
    with Detector(b) as det:
        bank = np.ascontiguousarray(features(det, train), np.float32)
        f_cal = features(det, calib).astype(np.float32)
    cal = TileScorer(bank, b.k).frame_scores(f_cal).astype(np.float32)
    body = b.manifest.body()
    body["scoring"] = {**body["scoring"], "bank_size": n_bank, "bank_source_images": int(n_bank * 1.2),
                       "bank_subsample": "coreset"}
    body["threshold"] = describe_calibration(cal, 0.01, "held-out normal quantile (bench bundle)")
    body["image_stats"] = image_stats(train[:300])
    return Path(write_bundle(dest, body, {"extractor.tflite": b.files["extractor.tflite"], "bank.npy": npy_bytes(bank),
                                          "calibration_scores.npy": npy_bytes(cal),
                                          "calibration_features.npy": npy_bytes(f_cal)}))


# ---------------------------------------------------------------- learn
LEARN = textwrap.dedent("""
    import importlib.abc, json, sys, time
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                raise ImportError("blocked: " + name)
    sys.meta_path.insert(0, Block())
    from device.config import load_config
    from device.learn import learn
    t = time.perf_counter()
    res = learn(load_config(sys.argv[1]), good=[sys.argv[2]], out=sys.argv[3])
    res["wall_s"] = time.perf_counter() - t
    # VmHWM, not ru_maxrss: ru_maxrss survives exec() and would report the benchmark's own peak
    res["peak_rss_mb"] = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
    print(json.dumps({k: res[k] for k in ("timing", "bank", "threshold", "wall_s", "peak_rss_mb", "scores_before",
                                          "scores_after")}))
""")


def bench_learn(parent: Path, tmp: Path, n_images: int) -> dict:
    from daemon_helpers import write_config
    from lifecycle_helpers import part, phases, write_pngs

    write_pngs(tmp / "confirmed", [part(p, seed=7 * 10 ** 6 + i, bar=True) for i, p in enumerate(phases(n_images, 3))])
    cfg = write_config(tmp / "learn.toml", parent, f'source = "folder"\npath = "{tmp}"', tmp / "j.sqlite")
    r = subprocess.run([sys.executable, "-c", LEARN, str(cfg), str(tmp / "confirmed"), str(tmp / "child")],
                       cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    res = json.loads(r.stdout.strip().splitlines()[-1])
    t = res["timing"]
    return {"learn_images": n_images, "learn_bank_rows": res["bank"]["before"], "learn_total_s": round(res["wall_s"], 2),
            "learn_features_s": t["features_s"], "learn_bank_coreset_s": t["bank_s"],
            "learn_threshold_s": t["threshold_s"], "learn_write_verify_s": t["write_verify_s"],
            "learn_preview_s": t["preview_s"], "learn_peak_rss_mb": round(res["peak_rss_mb"], 1),
            "learn_new_rows_kept": res["bank"]["new_rows_kept"],
            "learn_threshold_old": round(res["threshold"]["old"], 5), "learn_threshold_new": round(res["threshold"]["new"], 5),
            "learn_scores_median_before": round(float(np.median(res["scores_before"])), 4),
            "learn_scores_median_after": round(float(np.median(res["scores_after"])), 4)}


def bench_coreset_projected(parent: Path, n_images: int) -> dict:
    """For comparison (NOT the current rule): the same k-center greedy on a 128-d random projection of
    the rows (PatchCore's practice), over the parent bank plus ``n_images`` new rows."""
    from device.bundle import load_bundle
    from device.scoring import kcenter_greedy

    bank = load_bundle(parent).bank
    rng = np.random.default_rng(0)
    rows = np.concatenate([bank, bank[:n_images] + rng.normal(0, 0.01, (n_images, bank.shape[1])).astype(np.float32)])
    t0 = time.perf_counter()
    proj = rows @ (rng.normal(size=(rows.shape[1], 128)) / np.sqrt(128)).astype(np.float32)
    kcenter_greedy(proj, len(bank), 0)
    return {"coreset_projected128_s": round(time.perf_counter() - t0, 2)}


# ---------------------------------------------------------------- drift
def drift_bundle(base: Path, dest: Path) -> Path:
    from lifecycle_helpers import derived_bundle, part, phases

    train = [part(p, seed=i) for i, p in enumerate(phases(300, 1))]
    calib = [part(p, seed=1000 + i) for i, p in enumerate(phases(200, 2))]
    return derived_bundle(base, dest, train, calib, target_frr=0.02)


def _replay(bundle, frames, **kw) -> list[tuple[int, str]]:
    from device.detector import Detector
    from device.drift import DriftMonitor

    m = DriftMonitor.from_bundle(bundle, bundle.threshold.value)
    for k, v in kw.items():
        setattr(m, k, v)
    out = []
    with Detector(bundle) as det:
        for i, img in enumerate(frames):
            c = m.update(det.inspect(img), img)
            if c:
                out.append((i, c.level))
    return out


def _first(changes, level, after) -> int | None:
    return next((i - after for i, lv in changes if lv == level and i >= after), None)


def bench_drift(base: Path, tmp: Path, frames_100k: int) -> dict:
    import cv2

    from device.bundle import load_bundle
    from device.detector import Detector
    from device.drift import DriftMonitor, frame_stats
    from lifecycle_helpers import part, phases, scene

    b = load_bundle(drift_bundle(base, tmp / "drift"))
    res = {}
    n0, ramp = 200, 1000
    gains = np.r_[np.ones(n0), np.linspace(1.0, 2.0, ramp)]
    frames = [part(p, seed=i, gain=g) for i, (p, g) in enumerate(zip(phases(n0 + ramp, 8), gains))]
    ch = _replay(b, frames)
    for lv in ("warning", "drift"):
        d = _first(ch, lv, n0)
        res[f"drift_ramp_{lv}_delay_frames"] = d
        res[f"drift_ramp_{lv}_gain"] = round(float(gains[n0 + d]), 3) if d is not None else None
    res["drift_ramp_false_before_ramp"] = sum(1 for i, _ in ch if i < n0)
    ch = _replay(b, [part(p, seed=50_000 + i) for i, p in enumerate(phases(n0, 9))] + [scene(i) for i in range(300)])
    for lv in ("warning", "drift"):
        res[f"drift_scene_{lv}_delay_frames"] = _first(ch, lv, n0)
    # stable pool through the device path, then 100k draws fed to the monitor directly
    pool = [part(p, seed=90_000 + i) for i, p in enumerate(phases(3000, 10))]
    with Detector(b) as det:
        rs = [det.inspect(im) for im in pool]
    stats = [frame_stats(im) for im in pool]
    sc = [(r.score, str(r.decision)) for r in rs]
    rng = np.random.default_rng(0)
    for tag, kw in (("monitor_defaults", {}), ("config_defaults", {"warn_p": 0.01, "drift_p": 0.001})):
        m = DriftMonitor(b.calibration_scores, b.threshold.value, b.manifest.image_stats, **kw)
        n_w = n_d = 0
        for j in rng.integers(0, len(pool), frames_100k):
            c = m.update_values(*sc[j], stats[j])
            if c:
                n_w += c.level == "warning"
                n_d += c.level == "drift"
        res[f"drift_false_alarms_per_100k_{tag}"] = round(n_d * 100_000 / frames_100k, 2)
        res[f"drift_false_warnings_per_100k_{tag}"] = round(n_w * 100_000 / frames_100k, 2)
    big = cv2.resize(pool[0], (640, 480))
    t = []
    for _ in range(2000):
        t0 = time.perf_counter()
        frame_stats(big)
        t.append(time.perf_counter() - t0)
    res["drift_frame_stats_640x480_median_us"] = round(float(np.median(t)) * 1e6, 1)
    m = DriftMonitor(b.calibration_scores, b.threshold.value, b.manifest.image_stats)
    t = []
    for j in rng.integers(0, len(pool), 5000):
        t0 = time.perf_counter()
        m.update_values(*sc[j], stats[j])
        t.append(time.perf_counter() - t0)
    res["drift_update_median_us"] = round(float(np.median(t)) * 1e6, 1)
    res["drift_update_p99_us"] = round(float(np.percentile(t, 99)) * 1e6, 1)
    return res


# ---------------------------------------------------------------- handshake
def bench_handshake(tmp: Path, parts: int) -> dict:
    from gpiozero import Button
    from gpiozero.pins.mock import MockFactory

    from device.handshake import Handshake
    from device.journal import Journal
    from lifecycle_helpers import pin_times

    f = MockFactory()
    hs = Handshake(ready_pin=5, busy_pin=6, result_pin=13, pass_pin=19, fail_pin=26, trigger_ack_pin=21,
                   result_mode="toggle", pin_factory=f)
    q: queue.Queue = queue.Queue()
    done = threading.Semaphore(0)
    eye = Button(4, pull_up=True, bounce_time=None, pin_factory=f)
    eye.when_pressed = lambda *_: hs.trigger() and q.put(time.monotonic())    # phase-2 wiring: at the edge
    journal = Journal(tmp / "hs.sqlite")

    def loop():
        i = 0
        while True:
            t = q.get()
            if t is None:
                return
            journal.decision(frame=i, name="bench", score=0.1, threshold=0.5, decision="PASS", t_trigger=t)
            hs.result("PASS")
            i += 1
            done.release()

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    hs.set_ready(True)
    pin = f.pin(4)
    for name in (6, 13):
        f.pin(name).clear_states()
    t_edge = []
    for _ in range(parts):
        t_edge.append(time.monotonic())
        pin.drive_low()
        pin.drive_high()
        if not done.acquire(timeout=5):
            raise RuntimeError("handshake bench: no decision within 5 s")
    q.put(None)
    th.join()
    busy = [t for t, lvl in pin_times(f.pin(6)) if lvl]
    result = [t for t, _ in pin_times(f.pin(13))]            # toggle: every change is a strobe
    hs.close()
    journal.close()
    lat_b = (np.array(busy) - np.array(t_edge)) * 1e3
    lat_r = (np.array(result) - np.array(t_edge)) * 1e3
    return {"handshake_parts": parts, "handshake_missed": hs.missed,
            "handshake_trigger_to_busy_median_ms": pct(lat_b, 50), "handshake_trigger_to_busy_p99_ms": pct(lat_b, 99),
            "handshake_trigger_to_result_median_ms": pct(lat_r, 50),
            "handshake_trigger_to_result_p99_ms": pct(lat_r, 99)}


# ---------------------------------------------------------------- deploy (phase 2 placeholder)
SERVICE = ("import sys\nfrom device.config import load_config\nfrom device.daemon import Daemon\n"
           "from device.servicelock import hold_service_lock\ncfg = load_config(sys.argv[1])\n"
           "lock = hold_service_lock(cfg)\nsys.exit(Daemon(cfg, config_path=sys.argv[1]).run())\n")


def bench_deploy(base: Path, tmp: Path) -> dict:
    """PLACEHOLDER (phase 2): deploy -> first decision with the new digest, with a wrapper process
    standing in for the daemon's own service lock. ``null`` + the reason when it cannot run."""
    import sqlite3

    from daemon_helpers import env_no_notify, write_config, write_frames
    from device.bundle import bundle_digest, load_bundle, write_bundle
    from device.config import load_config
    from device.versions import deploy

    write_frames(tmp / "frames", "NNNN")
    cfgp = write_config(tmp / "svc.toml", tmp / "state" / "bundle", f'source = "folder"\npath = "{tmp / "frames"}"\n'
                        "loop = true", tmp / "state" / "journal.sqlite", '[trigger]\nrate_hz = 50.0\n\n[outputs]\n'
                        'pin_factory = "mock"\n')
    cfg = load_config(cfgp)
    deploy(cfg, base, unit=None)
    b = load_bundle(base)
    body = b.manifest.body()
    body["threshold"] = {**body["threshold"], "value": body["threshold"]["value"] * 1.01}
    new = Path(write_bundle(tmp / "b2", body, dict(b.files)))
    p = subprocess.Popen([sys.executable, "-c", SERVICE, str(cfgp)], cwd=ROOT, env=env_no_notify(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    journal = tmp / "state" / "journal.sqlite"
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and p.poll() is None:
            try:
                if journal.exists() and sqlite3.connect(journal).execute("SELECT COUNT(*) FROM decisions").fetchone()[0]:
                    break
            except sqlite3.Error:      # the service is still creating its journal
                pass
            time.sleep(0.05)
        t0 = time.monotonic()
        out = deploy(cfg, new, unit=None, wait_s=30)
        dt = time.monotonic() - t0
        ok = out["status"] == "confirmed" and bundle_digest(new) == out["digest"]
        return {"deploy_to_first_decision_s": round(dt, 3) if ok else None,
                "deploy_note": "wrapper takes the service lock for the daemon (phase 2 moves it into the daemon)"}
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal: the daemon integration is phase 2
        return {"deploy_to_first_decision_s": None, "deploy_note": f"not measured: {str(exc).splitlines()[0][:200]}"}
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


# ---------------------------------------------------------------- report
def update_markdown(res: dict, md: Path) -> None:
    from benchmd import write_section

    g = lambda k, f="{}": f.format(res[k]) if res.get(k) is not None else "–"  # noqa: E731
    lines = [START, "## Life cycle on the device (issue 12)", "",
             f"`{res['command']}` on {res['date']} (this machine, x86-64, 2 cores shared with other jobs, load "
             f"{res['loadavg_1min']}; MobileNetV2 α0.35 int8 at {SIZE} px, LiteRT and BLAS 1 thread)"
             + (f"; the parts not skipped re-run by `{res['rerun']}`" if res.get("rerun") else "") + ".", "",
             "| measure | value |", "| --- | --- |",
             f"| `learn` {g('learn_images')} images into a {g('learn_bank_rows', '{:,}')}-row 1280-d bank (coreset cap), "
             f"TensorFlow blocked: total (s) | {g('learn_total_s')} |",
             f"| … features (s) / bank coreset (s) / threshold re-score (s) / write + verify (s) / preview (s) | "
             f"{g('learn_features_s')} / {g('learn_bank_coreset_s')} / {g('learn_threshold_s')} / "
             f"{g('learn_write_verify_s')} / {g('learn_preview_s')} |",
             f"| … peak RSS (MB) | {g('learn_peak_rss_mb')} |",
             f"| … learned images' median score before → after; threshold old → new | "
             f"{g('learn_scores_median_before')} → {g('learn_scores_median_after')}; {g('learn_threshold_old')} → "
             f"{g('learn_threshold_new')} |",
             f"| … the same coreset on a 128-d random projection of the rows (PatchCore's practice; not the "
             f"current rule) (s) | {g('coreset_projected128_s')} |",
             f"| deploy → first decision carrying the new digest (s), service at 50 parts/s — **stand-in until "
             f"phase 2**: a wrapper process takes the service lock for the daemon | {g('deploy_to_first_decision_s')} |",
             f"| drift: brightness ramp +100 % over 1,000 frames: frames to warning / drift (gain then) | "
             f"{g('drift_ramp_warning_delay_frames')} ({g('drift_ramp_warning_gain')}) / "
             f"{g('drift_ramp_drift_delay_frames')} ({g('drift_ramp_drift_gain')}) |",
             f"| drift: scene switch: frames to warning / drift | "
             f"{g('drift_scene_warning_delay_frames') if res.get('drift_scene_warning_delay_frames') is not None else '(straight to drift)'}"
             f" / {g('drift_scene_drift_delay_frames')} |",
             f"| drift: false drift alarms / warnings per 100k stable frames, monitor defaults (warn_p 1e-4, drift_p 1e-7) | "
             f"{g('drift_false_alarms_per_100k_monitor_defaults')} / {g('drift_false_warnings_per_100k_monitor_defaults')} |",
             f"| … with warn_p 0.01, drift_p 0.001 | {g('drift_false_alarms_per_100k_config_defaults')} / "
             f"{g('drift_false_warnings_per_100k_config_defaults')} |",
             f"| drift cost per frame: statistics of a 640x480 frame (µs) / monitor update median, p99 on the loaded machine (µs) | "
             f"{g('drift_frame_stats_640x480_median_us')} / {g('drift_update_median_us')}, {g('drift_update_p99_us')} |",
             f"| handshake (mock pins, {g('handshake_parts', '{:,}')} parts): photo-eye edge → BUSY, median / p99 (ms) | "
             f"{g('handshake_trigger_to_busy_median_ms')} / {g('handshake_trigger_to_busy_p99_ms')} |",
             f"| … photo-eye edge → RESULT strobe (decision journaled in between, no scoring), median / p99 (ms) | "
             f"{g('handshake_trigger_to_result_median_ms')} / {g('handshake_trigger_to_result_p99_ms')} |",
             "", "The learn time is dominated by the k-center coreset that keeps the bank at its cap (the trainer's "
             "rule, `device.scoring.bank_rows`): one pass over the whole 51 MB bank per kept row; everything else "
             "takes about a second. Drift delays count frames "
             "from the start of the change; the stable pool is 3,000 generated parts through the device path, drawn "
             "at random.", END]
    write_section("\n".join(lines), START, END, md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bank", type=int, default=10000, help="bank rows of the learn benchmark")
    ap.add_argument("--learn-images", type=int, default=50)
    ap.add_argument("--stable-frames", type=int, default=100_000)
    ap.add_argument("--handshake-parts", type=int, default=2000)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: handshake,drift,deploy,learn,coreset")
    ap.add_argument("--out", default=str(ROOT / "scripts/bench/results/lifecycle.json"))
    ap.add_argument("--md", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    skip = set(filter(None, args.skip.split(",")))
    res = {"command": "python scripts/bench/bench_lifecycle.py " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg_1min": round(os.getloadavg()[0], 2)}
    old = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    if skip and old:     # a partial re-run: the skipped figures keep their run's command and date
        res["rerun"] = f"{res['command']} on {res['date']}"
        res.update(command=old["command"], date=old["date"], loadavg_1min=old.get("loadavg_1min"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base = base_bundle(tmp)
        made: dict = {}

        def parent() -> Path:
            if "p" not in made:
                made["p"] = big_parent(base, tmp / "parent", args.bank)
            return made["p"]
        for name, fn in (("handshake", lambda: bench_handshake(tmp, args.handshake_parts)),
                         ("drift", lambda: bench_drift(base, tmp, args.stable_frames)),
                         ("deploy", lambda: bench_deploy(base, tmp / "deploy")),
                         ("learn", lambda: bench_learn(parent(), tmp, args.learn_images)),
                         ("coreset", lambda: bench_coreset_projected(parent(), args.learn_images))):
            if name in skip:
                res.update({k: v for k, v in old.items() if k.startswith(name)})
                continue
            t = time.time()
            res.update(fn())
            print(f"{name}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    Path(args.out).write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    update_markdown(res, Path(args.md))
    print(json.dumps(res, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
