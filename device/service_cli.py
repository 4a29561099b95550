"""Service subcommands of ``anomaly-device``: ``run``, ``check-config``, ``selftest``, ``status``,
``project-bundle``.

Top-level imports stay light (argparse only); each command imports what it needs.
Errors in the config or bundle raise :class:`~device.errors.ConfigError` /
:class:`~device.errors.BundleError`, which ``anomaly-device`` prints and exits 2.

Exit codes: 0 OK, 1 selftest failure, 2 bad config or bundle.

Example:
    $ anomaly-device check-config --config /etc/anomaly-device/device.toml
    $ anomaly-device selftest --config device.toml --frames 20
    $ anomaly-device run --config device.toml
    $ anomaly-device status --config device.toml --json
"""
from __future__ import annotations

import json
import logging
import sys
import time

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "/etc/anomaly-device/device.toml"
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def single_thread_blas() -> None:
    """One BLAS thread for the frame path (a 1-row k-NN product is memory-bound; extra BLAS
    threads only add wake-up latency and fight the camera and TFLite for cores).

    Environment variables win when numpy is not imported yet; otherwise threadpoolctl is
    used when installed. An explicit ``OPENBLAS_NUM_THREADS`` etc. is respected.
    """
    if "numpy" not in sys.modules:
        import os

        for k in BLAS_ENV:
            os.environ.setdefault(k, "1")
        return
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
    except ImportError:
        log.debug("numpy already imported and no threadpoolctl: BLAS threads left as they are")


def _run(args) -> int:
    single_thread_blas()
    from device.config import check_environment, load_config
    from device.daemon import Daemon
    from device.errors import ConfigError

    cfg = load_config(args.config)
    found = check_environment(cfg, bundle=False)     # the bundle is checked (and journaled) by the daemon
    if found:
        raise ConfigError(f"{args.config}: {len(found)} problem(s):\n  " + "\n  ".join(found))
    return Daemon(cfg, config_path=args.config).run()


def _check_config(args) -> int:
    """Validate the file, then what the machine must provide (journal and archive folders, pin
    factory, and unless ``--no-bundle`` the bundle: verified, loaded, one test inference). A pass
    means ``run`` will start."""
    from device.config import check_environment, config_summary, environment_warnings, load_config
    from device.errors import ConfigError

    cfg = load_config(args.config)
    found = check_environment(cfg, bundle=not args.no_bundle)
    if found:
        raise ConfigError(f"{args.config}: {len(found)} problem(s):\n  " + "\n  ".join(found))
    for w in environment_warnings(cfg):
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(config_summary(cfg), indent=2))
        return 0
    print(f"{args.config}: config OK")
    if not args.no_bundle:
        from device.bundle import load_bundle

        b = load_bundle(cfg.bundle.path)
        thr = b.threshold_for(cfg.bundle.threshold, cfg.bundle.target_frr, where="config")
        print(f"{cfg.bundle.path}: bundle OK, digest {b.digest[:16]} (bank {b.bank.shape[0]}x{b.bank.shape[1]}, "
              f"threshold {thr.value:.6f} from {thr.source}, test inference passed)")
    return 0


def _config_example(args) -> int:
    from device.config import example_config

    sys.stdout.write(example_config())
    return 0


def _selftest_config(cfg, args):
    """The dry-run variant of ``cfg``: replayed source if given, free-run, no delay, no archive."""
    from pathlib import Path

    changes = {"trigger": {"mode": "free-run", "rate_hz": 0.0}, "service": {"status_every_s": 0.0},
               "journal": {"archive_dir": ""},
               "outputs": {"reject_delay_ms": 0.0,
                           "reject_pin": cfg.outputs.reject_pin if cfg.outputs.reject_pin is not None else
                           _free_pin(cfg)}}
    if args.source:
        changes["camera"] = {"source": "folder" if Path(args.source).is_dir() else "video", "path": args.source,
                             "loop": True}
    return cfg.replace(**changes)


def _free_pin(cfg) -> int:
    used = set(cfg.outputs.pins().values()) | ({cfg.trigger.pin} if cfg.trigger.mode == "gpio" else set())
    return next(p for p in (17, *range(2, 28)) if p not in used)


def _selftest(args) -> int:
    """Load the bundle, grab frames, score, pulse the outputs on mock pins (dry run)."""
    from device.config import load_config
    from device.daemon import Daemon
    from device.gpio import make_pin_factory
    from device.journal import Journal
    from device.notify import Notifier

    single_thread_blas()
    cfg = _selftest_config(load_config(args.config), args)
    # Dry run: mock pins unless told to drive the real ones; no delay so the pulses come at once.
    factory = make_pin_factory(cfg.outputs.pin_factory if args.real_pins else "mock")
    journal = Journal(":memory:")
    t0 = time.monotonic()
    d = Daemon(cfg, pin_factory=factory, notifier=Notifier(env={}), max_frames=args.frames, journal=journal)
    d.run(signals=False)
    elapsed = time.monotonic() - t0
    rows = journal.decisions()
    pin = factory.pin(cfg.outputs.reject_pin) if hasattr(factory, "pin") else None
    rising = sum(1 for s in getattr(pin, "states", [])[1:] if s.state) if pin is not None else None
    n_rej = sum(r["decision"] != "PASS" for r in rows)
    n_err = sum(r["decision"] == "ERROR" for r in rows)
    med = sorted(r["preprocess_ms"] + r["inference_ms"] + r["knn_ms"] for r in rows if r["score"] is not None)
    report = {"ok": False, "frames": len(rows), "rejects": n_rej, "errors": n_err,
              "reject_edges": rising, "seconds": round(elapsed, 3),
              "start_to_ready_s": round(d.t_ready - d.t_start, 3) if d.t_ready else None,
              "median_score_ms": round(med[len(med) // 2], 3) if med else None,
              "threshold": d.detector.threshold.value if d.detector else None,
              "bundle_digest": d.detector.bundle.digest if d.detector else None,
              "pins": "real" if args.real_pins else "mock"}
    problems = []
    if len(rows) < args.frames:
        problems.append(f"only {len(rows)} of {args.frames} frames decided (camera?)")
    if n_err:
        problems.append(f"{n_err} frame(s) could not be scored")
    if rising is not None and n_rej and rising < 1:
        problems.append("reject line never pulsed although parts were rejected")
    report["ok"] = not problems
    report["problems"] = problems
    print(json.dumps(report) if args.json else
          "\n".join([f"selftest {'PASSED' if not problems else 'FAILED'}: {len(rows)} frames in {elapsed:.2f} s, "
                     f"{n_rej} rejects, {rising} reject pulses on {report['pins']} pins, start-to-ready "
                     f"{report['start_to_ready_s']} s, median score path {report['median_score_ms']} ms",
                     *[f"  problem: {p}" for p in problems]]))
    return 0 if not problems else 1


def _fmt_ts(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _status(args) -> int:
    from device.drift import journal_state
    from device.journal import open_readonly

    path = args.journal
    if not path:
        from device.config import load_config

        path = load_config(args.config).journal.path
    with open_readonly(path) as j:    # never writes: another user, a running daemon, a full disk
        s = j.summary(window_s=args.window)
        last = j.decisions(limit=args.last)
        events = j.events(limit=5)
        drift = journal_state(j)
    if args.json:
        print(json.dumps({"summary": s, "drift": drift, "last": last, "events": events,
                          "bundle_digest": last[-1].get("bundle_digest") if last else None}, indent=2))
        return 0
    print(f"journal {path}")
    print(f"  decisions {s['decisions']} (rejects {s['rejects']}, errors {s['errors']}); last "
          f"{s['window_s']:.0f} s: {s['window_decisions']} parts at {s['fps']:.2f}/s, "
          f"reject rate {100 * s['reject_rate']:.1f} %")
    print(f"  camera {s['camera']} since {_fmt_ts(s['camera_since'])}")
    if last and last[-1].get("bundle_digest"):
        r = last[-1]
        print(f"  bundle {r['bundle_digest'][:16]} (last decision; threshold {r['threshold']:.6f} from "
              f"{r.get('threshold_source') or 'bundle'})")
    if drift is not None:
        print(f"  drift {drift['level']} since {_fmt_ts(drift['since'])}: {drift['reason']}")
    for e in events:
        print(f"  event {_fmt_ts(e['ts'])} {e['kind']}: {e['message']}")
    for r in last:
        score = f"{r['score']:.4f}" if r["score"] is not None else "-"
        print(f"  {_fmt_ts(r['ts'])} frame {r['frame']:>7} {r['decision']:<6} score {score} "
              f"threshold {r['threshold']:.4f} {r['name'] or ''}")
    return 0


def _project_bundle(args) -> int:
    from device.projection import project_bundle

    out = project_bundle(args.src, args.dest, args.dims, target_frr=args.target_frr,
                         rerank=not args.no_rerank, shortlist=args.shortlist)
    print(json.dumps(out))
    return 0


def register(sub) -> None:
    """Add the service subcommands to ``anomaly-device``'s subparsers."""
    import logging as _logging

    from device.cli import count, finite

    r = sub.add_parser("run", help="run the inspection service (camera -> decision -> reject line)")
    r.add_argument("--config", default=DEFAULT_CONFIG, help=f"TOML config (default {DEFAULT_CONFIG})")
    r.set_defaults(func=_run, log_level=_logging.INFO)

    c = sub.add_parser("check-config", help="validate a config file, the folders and pins it names, and its bundle "
                                             "(a pass means `run` will start)")
    c.add_argument("--config", default=DEFAULT_CONFIG)
    c.add_argument("--no-bundle", action="store_true", help="do not load and verify the bundle")
    c.add_argument("--json", action="store_true", help="print the effective config as JSON")
    c.set_defaults(func=_check_config)

    e = sub.add_parser("config-example", help="print an example config: every key with its default and help")
    e.set_defaults(func=_config_example)

    s = sub.add_parser("selftest", help="load bundle, grab frames, score, pulse outputs (mock pins by default)")
    s.add_argument("--config", default=DEFAULT_CONFIG)
    s.add_argument("--frames", type=count(1), default=10, help="frames to decide (default 10)")
    s.add_argument("--source", help="replay this folder or video instead of the configured camera")
    s.add_argument("--real-pins", action="store_true", help="drive the configured pins (wiring check)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_selftest, log_level=_logging.INFO)

    t = sub.add_parser("status", help="last decisions, rates, reject counts, camera and drift state (from the journal)")
    t.add_argument("--config", default=DEFAULT_CONFIG)
    t.add_argument("--journal", help="journal file (default: from the config)")
    t.add_argument("--last", type=count(0), default=10, help="decisions listed (default 10)")
    t.add_argument("--window", type=finite, default=3600.0, help="rate window in seconds")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_status)

    p = sub.add_parser("project-bundle", help="copy a bundle with a PCA-projected k-NN bank (faster scoring)")
    p.add_argument("src")
    p.add_argument("dest")
    p.add_argument("--dims", type=count(1), default=128)
    p.add_argument("--shortlist", type=count(1), default=64, help="candidates re-ranked exactly (default 64)")
    p.add_argument("--no-rerank", action="store_true",
                   help="score in the PCA space only (faster, lower AUROC; threshold re-calibrated)")
    p.add_argument("--target-frr", type=finite, help="with --no-rerank: default the source bundle's target_frr")
    p.set_defaults(func=_project_bundle)


if __name__ == "__main__":  # pragma: no cover
    from device.cli import main

    sys.exit(main())
