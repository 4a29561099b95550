"""``anomaly-device``: the Raspberry Pi command line.

Subcommands are registered by modules that expose ``register(subparsers)``; each
sets ``func(args) -> int`` on its parser. Heavy imports happen inside ``func``.

Example:
    $ anomaly-device score --bundle bundle/ parts/*.png
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time

from device import __version__
from device.errors import AnomalyError

log = logging.getLogger(__name__)

# Modules adding subcommands (each optional: a missing one is skipped).
COMMAND_MODULES = ("device.service_cli", "device.audit.cli")


def _score(args) -> int:
    from device.detector import Detector
    from device.errors import ImageError
    from device.preprocess import list_images

    det = Detector.from_bundle(args.bundle, num_threads=args.threads, threshold=args.threshold,
                               target_frr=args.target_frr)
    paths = list_images(args.images)
    n_bad = n_reject = 0
    for p in paths:
        try:
            s = det.score_one(p)
        except ImageError as exc:
            n_bad += 1
            print(f"{p}\tERROR\t{exc}", flush=True)
            continue
        decision = "REJECT" if det.is_anomalous(s) else "PASS"
        n_reject += decision == "REJECT"
        if args.json:
            print(json.dumps({"image": str(p), "score": s, "threshold": det.threshold,
                              "threshold_source": det.threshold_source, "decision": decision,
                              **{k: round(v, 3) for k, v in det.last_timing.items()}}), flush=True)
        else:
            print(f"{p}\t{s:.6f}\t{decision}\tthreshold={det.threshold:.6f}", flush=True)
    print(f"# {len(paths)} images, {n_reject} rejected, {n_bad} unreadable", file=sys.stderr)
    return 1 if n_bad else 0


def _verify(args) -> int:
    from device.bundle import load_bundle

    b = load_bundle(args.bundle)
    m = b.manifest
    print(f"{b.path}: OK (schema {m['schema_version']}, {len(m['files'])} files verified, "
          f"bank {b.bank.shape[0]}x{b.bank.shape[1]}, threshold {b.threshold:.6f}, "
          f"extractor {m['extractor'].get('quantization')})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anomaly-device", description="Visual anomaly detection on the device.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="score images or folders; one line per image")
    s.add_argument("--bundle", required=True, help="model bundle directory")
    s.add_argument("images", nargs="+", help="image files or folders")
    s.add_argument("--threads", type=int, default=1)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, help="override the bundle threshold")
    g.add_argument("--target-frr", type=float, help="threshold from the bundle's calibration scores")
    s.add_argument("--json", action="store_true", help="JSON lines with per-stage timing")
    s.set_defaults(func=_score)

    v = sub.add_parser("verify", help="verify a bundle's hashes, schema and consistency")
    v.add_argument("bundle")
    v.set_defaults(func=_verify)

    register_commands(sub, COMMAND_MODULES)
    return p


def register_commands(sub, modules) -> None:
    """Let each module in ``modules`` add its subcommands (``register(sub)``); a module
    that is not installed is skipped, any other import error propagates."""
    for mod in modules:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name and mod.startswith(exc.name):
                continue
            raise
        m.register(sub)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except AnomalyError as exc:
        print(f"anomaly-device: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
