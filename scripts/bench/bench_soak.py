#!/usr/bin/env python3
"""Soak benchmark of the inspection service (issue 9): a million replayed frames through a real
``anomaly-device run`` process.

Set-up: MobileNetV2 α0.35 int8 at 96 px (ImageNet weights from ``../shared/weights``), bank of 1,000
Fashion-MNIST sneakers, threshold at 1 % false rejects on held-out sneakers; a looping folder of
200 frames (128x128 grey PNG, 180 held-out sneakers and 20 trousers, so about 10 % rejects); mock pins
(reject line with a 50 ms delay); image archive on with its size cap; journal retention on
(``[journal] max_mb``). Every ``--sample-s`` seconds the script samples the process's RSS and open
file descriptors, the journal's newest row id (= frames decided) and row count, and the journal's
and archive's sizes on disk.

Targets: journal rows = frames (every frame decided has its row; ids contiguous); RSS growth after
the first 10k frames <= 2 MB per million frames; journal and archive under their caps; fd count flat.

Writes ``scripts/bench/results/soak.json`` (flat keys) and the ``soak`` section of BENCHMARKS.md.

Usage:
    nice -n 10 .venv/bin/python scripts/bench/bench_soak.py [--frames 1000000] [--sample-s 10]
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # as on the device
    os.environ.setdefault(_k, "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

log = logging.getLogger("bench_soak")
SHARED = Path(os.environ.get("ANOMALY_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2_0.35_224_no_top_imagenet.weights.h5"
FASHION = SHARED / "data" / "fashion_mnist"
FRAME, SIZE = 128, 96
MARK_START, MARK_END = "<!-- soak:start -->", "<!-- soak:end -->"


def idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(dims)


def upscale(imgs: np.ndarray) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(im, (FRAME, FRAME), interpolation=cv2.INTER_LINEAR) for im in imgs])


def build_bundle(dest: Path, frames_dir: Path) -> float:
    """Bundle (sneaker bank) at ``dest`` and the 200 replay frames in ``frames_dir``; returns the threshold."""
    import cv2

    from core.threshold import calibrate_threshold
    from device.bundle import npy_bytes, write_bundle
    from device.extractor import TFLiteExtractor, normalize_features
    from device.preprocess import InputSpec, preprocess
    from device.quiet import quiet_tensorflow
    from device.scoring import KNNScorer
    from models.backbone import build_extractor
    from trainer.convert import convert

    quiet_tensorflow()
    xtr, ytr = idx(FASHION / "train-images-idx3-ubyte.gz"), idx(FASHION / "train-labels-idx1-ubyte.gz")
    xte, yte = idx(FASHION / "t10k-images-idx3-ubyte.gz"), idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    train, held, odd = upscale(xtr[ytr == 7][:1000]), upscale(xte[yte == 7][:400]), upscale(xte[yte == 1][:20])
    spec = InputSpec(size=(SIZE, SIZE), pixel_scale=1.0, pixel_offset=0.0)
    batch = np.concatenate([preprocess(im, spec) for im in train])
    model, info = build_extractor(alpha=0.35, size=(SIZE, SIZE), weights=str(WEIGHTS))
    blob = convert(model, representative=batch[:200], mode="int8")
    ext = TFLiteExtractor(blob)
    bank = normalize_features(ext(batch), "l2").astype(np.float32)
    held_f = normalize_features(ext(np.concatenate([preprocess(im, spec) for im in held[200:]])), "l2")
    calib = KNNScorer(bank, 1).score(held_f).astype(np.float32)
    thr = calibrate_threshold(calib, 0.01)
    manifest = {"input": spec.to_dict(),
                "extractor": {"file": "extractor.tflite", "quantization": "int8", "feature_normalize": "l2",
                              **ext.describe()},
                "backbone": info, "scoring": {"method": "knn", "k": 1, "metric": "euclidean"},
                "threshold": {"value": float(thr), "target_frr": 0.01, "method": "held-out sneakers"}}
    write_bundle(dest, manifest, {"extractor.tflite": blob, "bank.npy": npy_bytes(bank),
                                  "calibration_scores.npy": npy_bytes(calib)})
    frames_dir.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(np.concatenate([held[:180], odd])[np.random.default_rng(0).permutation(200)]):
        cv2.imwrite(str(frames_dir / f"{i:04d}.png"), im)
    return float(thr)


def write_config(tmp: Path, bundle: Path, frames: Path, journal_mb: float, archive_mb: float) -> Path:
    cfg = tmp / "soak.toml"
    cfg.write_text(f'[bundle]\npath = "{bundle}"\n\n[camera]\nsource = "folder"\npath = "{frames}"\nloop = true\n\n'
                   '[outputs]\nreject_pin = 17\nreject_delay_ms = 50\nreject_width_ms = 5\npin_factory = "mock"\n\n'
                   f'[journal]\npath = "{tmp / "journal.sqlite"}"\nmax_mb = {journal_mb}\n'
                   f'archive_dir = "{tmp / "archive"}"\narchive_max_mb = {archive_mb}\narchive_pass_every = 1000\n\n'
                   '[service]\nstatus_every_s = 0\n')
    return cfg


def proc_status(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "Threads"):
            out[k] = int(v.split()[0])
    return {"rss_mb": out["VmRSS"] / 1024, "threads": out["Threads"], "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def du(folder: Path, pattern: str = "*") -> int:
    total = 0
    for p in folder.rglob(pattern) if folder.exists() else []:
        try:
            total += p.stat().st_size
        except OSError:
            pass
    return total


def sample(pid: int, tmp: Path, t0: float) -> dict:
    s = {"t": time.monotonic() - t0, **proc_status(pid)}
    db = sqlite3.connect(f"file:{tmp / 'journal.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        s["frames"], s["rows"], s["min_id"] = db.execute(
            "SELECT COALESCE(MAX(id), 0), COUNT(*), COALESCE(MIN(id), 0) FROM decisions").fetchone()
    finally:
        db.close()
    sizes = {p.name: p.stat().st_size for p in tmp.glob("journal.sqlite*") if p.exists()}
    s["journal_mb"] = sum(sizes.values()) / 1e6
    s["journal_wal_mb"] = sizes.get("journal.sqlite-wal", 0) / 1e6
    s["archive_mb"] = du(tmp / "archive", "*.png") / 1e6
    return s


def soak(cfg: Path, tmp: Path, frames: int, every_s: float) -> tuple[list[dict], dict]:
    """Run the service until it has decided ``frames`` frames, sampling every ``every_s``; SIGTERM."""
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    log_path = tmp / "service.log"
    with open(log_path, "w") as logf:
        p = subprocess.Popen([sys.executable, "-m", "device.cli", "run", "--config", str(cfg)], cwd=ROOT,
                             env=env, stdout=logf, stderr=subprocess.STDOUT)
    samples, t0 = [], time.monotonic()
    try:
        while p.poll() is None:
            time.sleep(every_s)                 # the sampling period itself
            try:
                s = sample(p.pid, tmp, t0)
            except (sqlite3.Error, FileNotFoundError, KeyError) as exc:
                log.info("sample skipped: %s", exc)
                continue
            samples.append(s)
            log.info("%8.0f s  %9d frames  %7.1f fps  RSS %.1f MB  fds %d  journal %.1f MB  archive %.1f MB",
                     s["t"], s["frames"], s["frames"] / max(s["t"], 1e-9), s["rss_mb"], s["fds"], s["journal_mb"],
                     s["archive_mb"])
            if s["frames"] >= frames:
                break
        else:
            raise RuntimeError(f"service exited with {p.returncode}: {log_path.read_text()[-2000:]}")
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        code = p.wait(timeout=120)
    end = {"exit_code": code, "wall_s": time.monotonic() - t0}
    db = sqlite3.connect(tmp / "journal.sqlite")
    end["final_max_id"], end["final_rows"], end["final_min_id"] = db.execute(
        "SELECT MAX(id), COUNT(*), MIN(id) FROM decisions").fetchone()
    stop = db.execute("SELECT message FROM events WHERE kind = 'stop' ORDER BY id DESC LIMIT 1").fetchone()
    end["daemon_frames"] = int(stop[0].split()[0]) if stop else -1
    end["pulse_dropped_events"] = db.execute("SELECT COUNT(*) FROM events WHERE kind = 'pulse_dropped'").fetchone()[0]
    db.close()
    text = log_path.read_text()
    end["log_lines"] = len(text.splitlines())
    log.info("service output (%d lines), last ones:\n%s", end["log_lines"], "\n".join(text.splitlines()[-15:]))
    return samples, end


def summarise(samples: list[dict], end: dict, frames: int, journal_mb: float, archive_mb: float) -> dict:
    """Flat figures from the samples: growth after the first 10k frames, caps, fds, rows vs frames."""
    after = [s for s in samples if s["frames"] >= 10_000] or samples
    f = np.array([s["frames"] for s in after], float)
    rss = np.array([s["rss_mb"] for s in after])
    slope = float(np.polyfit(f, rss, 1)[0] * 1e6) if len(after) >= 3 and np.ptp(f) > 0 else float("nan")
    span = (after[-1]["frames"] - after[0]["frames"]) / 1e6
    half = [s for s in after if s["frames"] >= after[-1]["frames"] / 2]
    slope2 = float(np.polyfit([s["frames"] for s in half], [s["rss_mb"] for s in half], 1)[0] * 1e6) \
        if len(half) >= 3 else float("nan")
    fds = [s["fds"] for s in samples]
    last = samples[-1]
    return {
        "frames_target": frames, "frames": int(end["final_max_id"]), "daemon_frames": end["daemon_frames"],
        "rows_equal_frames": int(end["final_max_id"] == end["daemon_frames"]
                                 and end["final_rows"] == end["final_max_id"] - end["final_min_id"] + 1),
        "rows_kept": int(end["final_rows"]), "fps": last["frames"] / last["t"],
        "rss_first_mb": samples[0]["rss_mb"], "rss_at_10k_mb": after[0]["rss_mb"], "rss_end_mb": last["rss_mb"],
        "rss_max_mb": max(s["rss_mb"] for s in samples),
        "rss_growth_after_10k_mb": last["rss_mb"] - after[0]["rss_mb"],
        "rss_growth_per_million_mb": (last["rss_mb"] - after[0]["rss_mb"]) / span if span > 0 else float("nan"),
        "rss_slope_per_million_mb": slope, "rss_slope_second_half_per_million_mb": slope2,
        "fds_min": min(fds), "fds_max": max(fds), "threads_max": max(s["threads"] for s in samples),
        "journal_cap_mb": journal_mb, "journal_max_mb": max(s["journal_mb"] for s in samples),
        "journal_wal_max_mb": max(s.get("journal_wal_mb", 0) for s in samples),
        "journal_db_max_mb": max(s["journal_mb"] - s.get("journal_wal_mb", 0) for s in samples),
        "journal_samples_over_cap": sum(s["journal_mb"] > journal_mb for s in samples),
        "archive_cap_mb": archive_mb, "archive_max_mb": max(s["archive_mb"] for s in samples),
        "samples": len(samples), "wall_s": end["wall_s"], "exit_code": end["exit_code"],
        "pulse_dropped_events": end["pulse_dropped_events"], "service_log_lines": end["log_lines"],
    }


def update_markdown(res: dict) -> None:
    from benchmd import write_section

    ok = lambda c: "✅" if c else "❌"  # noqa: E731
    g = lambda k, f="{:.2f}": f.format(res[k]) if res.get(k) == res.get(k) else "–"  # noqa: E731
    rows = [
        ("journal rows = frames (ids contiguous, daemon count = newest row id)",
         f"{res['frames']:,} frames, {res['daemon_frames']:,} counted by the daemon", ok(res["rows_equal_frames"])),
        ("RSS growth after the first 10k frames, per million frames (target ≤ 2 MB)",
         f"{g('rss_growth_per_million_mb')} MB (end − at 10k: {g('rss_growth_after_10k_mb')} MB; fitted "
         f"slope {g('rss_slope_per_million_mb')} MB, second half alone {g('rss_slope_second_half_per_million_mb')} MB)",
         ok(res["rss_growth_per_million_mb"] <= 2.0)),
        ("journal on disk, max sampled (cap); database file alone; samples over the cap",
         f"{g('journal_max_mb')} MB ({res['journal_cap_mb']:g} MB); {g('journal_db_max_mb')} MB; "
         f"{res.get('journal_samples_over_cap', '–')} of {res['samples']} (WAL at most {g('journal_wal_max_mb')} MB)",
         ok(res["journal_max_mb"] <= res["journal_cap_mb"])),
        ("archive on disk, max sampled (cap)", f"{g('archive_max_mb')} MB ({res['archive_cap_mb']:g} MB)",
         ok(res["archive_max_mb"] <= res["archive_cap_mb"])),
        ("open file descriptors, min–max over the run", f"{res['fds_min']}–{res['fds_max']}",
         ok(res["fds_max"] - res["fds_min"] <= 2)),
        ("frames per second (PNG decode, 96 px int8, k-NN over 1k, journal commit, mock pins)", g("fps", "{:.0f}"), ""),
        ("RSS at the first sample / at 10k frames / at the end / max (MB)",
         f"{g('rss_first_mb', '{:.1f}')} / {g('rss_at_10k_mb', '{:.1f}')} / {g('rss_end_mb', '{:.1f}')} / "
         f"{g('rss_max_mb', '{:.1f}')}", ""),
        ("`pulse_dropped` events; exit code after SIGTERM", f"{res['pulse_dropped_events']}; {res['exit_code']}",
         ok(res["pulse_dropped_events"] == 0 and res["exit_code"] == 0)),
    ]
    lines = [MARK_START, "## Soak: a million frames through `anomaly-device run` (issue 9)", "",
             f"`{res['command']}` on {res['date']}: {res['frames']:,} replayed frames in {res['wall_s'] / 3600:.2f} h "
             f"(this machine, x86-64, 2 cores shared with other jobs, run with `nice`; 1-minute load average at "
             f"start {res['loadavg_1min']}). Looping folder of 200 Fashion-MNIST frames (10 % trousers among sneakers), mock "
             f"pins, image archive capped at {res['archive_cap_mb']:g} MB, journal retention `max_mb = "
             f"{res['journal_cap_mb']:g}`; {res['samples']} samples every {res['sample_s']:g} s of RSS, open fds, "
             f"journal and archive size" + (f"; `MALLOC_ARENA_MAX={res['malloc_arena_max']}` as in the systemd unit"
                                           if res.get("malloc_arena_max") else "") + ".", "",
             "| measure | value | target met |", "| --- | --- | :---: |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "RSS rises in steps while bounded stores fill: the archive's file index until the archive reaches "
              "its cap (about 40k frames here), SQLite's page caches and the retention thread's first deletions "
              "when the journal reaches its cap (about 130k frames); afterwards it is flat (second half: "
              f"{g('rss_slope_second_half_per_million_mb')} MB per million frames). Measured from 10k frames, as "
              "the target reads, those one-off steps exceed 2 MB. A journal sample over its cap is the WAL: "
              "writes go on while a checkpoint waits for the disk (shared with other jobs), and the WAL is "
              "truncated back to its share of the cap once the checkpoint completes; the database file itself "
              f"stayed at or under {g('journal_db_max_mb')} MB."]
    write_section("\n".join(lines + ["", MARK_END]), MARK_START, MARK_END)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--journal-mb", type=float, default=20.0, help="[journal] max_mb of the run")
    ap.add_argument("--archive-mb", type=float, default=20.0, help="[journal] archive_max_mb of the run")
    ap.add_argument("--out", default=str(ROOT / "scripts/bench/results/soak.json"))
    ap.add_argument("--no-md", action="store_true", help="do not update BENCHMARKS.md (short trial runs)")
    ap.add_argument("--md-only", action="store_true", help="rewrite the BENCHMARKS.md section from --out and its samples")
    args = ap.parse_args(argv)
    if args.md_only:
        res = json.loads(Path(args.out).read_text())
        samples = json.loads(Path(args.out).with_suffix(".samples.json").read_text())
        res["journal_db_max_mb"] = round(max(s["journal_mb"] - s.get("journal_wal_mb", 0) for s in samples), 4)
        res["journal_samples_over_cap"] = sum(s["journal_mb"] > res["journal_cap_mb"] for s in samples)
        Path(args.out).write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
        update_markdown(res)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for need in (WEIGHTS, FASHION):
        if not need.exists():
            print(f"bench_soak: {need} not found (set ANOMALY_SHARED)", file=sys.stderr)
            return 2
    res = {"command": "python scripts/bench/bench_soak.py " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sample_s": args.sample_s,
           "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX", ""),
           "loadavg_1min": float(Path("/proc/loadavg").read_text().split()[0])}
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        tmp = Path(tmp)
        res["threshold"] = build_bundle(tmp / "bundle", tmp / "frames")
        cfg = write_config(tmp, tmp / "bundle", tmp / "frames", args.journal_mb, args.archive_mb)
        samples, end = soak(cfg, tmp, args.frames, args.sample_s)
        res.update(summarise(samples, end, args.frames, args.journal_mb, args.archive_mb))
        Path(args.out).with_suffix(".samples.json").write_text(json.dumps(samples) + "\n")
    from benchmd import save_results

    save_results(res, args.out, None if args.no_md else update_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
