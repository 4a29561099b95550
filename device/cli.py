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
COMMAND_MODULES = ("device.service_cli", "device.audit.cli", "device.panel.cli", "device.lifecycle_cli")


def _score(args) -> int:
    from device.detector import Detector
    from device.preprocess import list_images

    paths = list_images(args.images)
    counts = {"PASS": 0, "REJECT": 0, "ERROR": 0}
    with Detector.from_bundle(args.bundle, threshold=args.threshold, target_frr=args.target_frr,
                              num_threads=args.threads) as det:
        for p in paths:
            r = det.inspect(p)
            counts[str(r.decision)] += 1
            if args.json:
                print(json.dumps({"image": str(p), "bundle_digest": det.bundle.digest, **r.record()}), flush=True)
            elif r.score is None:
                print(f"{p}\tERROR\t{r.reason}", flush=True)
            else:
                print(f"{p}\t{r.score:.6f}\t{r.decision}\tthreshold={r.threshold.value:.6f}", flush=True)
    print(f"# {len(paths)} images: {counts['PASS']} passed, {counts['REJECT']} rejected, {counts['ERROR']} errors "
          f"(threshold {det.threshold.value:.6f} from {det.threshold.source}; bundle {det.bundle.short_digest})",
          file=sys.stderr)
    return 1 if counts["ERROR"] else 0


def _verify(args) -> int:
    from device.bundle import load_bundle
    from device.detector import verify_runnable

    b = load_bundle(args.bundle)
    run = verify_runnable(b)
    m = b.manifest
    info = {"bundle": str(b.path), "ok": True, "digest": b.digest, "schema_version": m.schema_version,
            "migrated_from": m.migrated_from, "files": len(m.files), "bank": list(b.bank.shape),
            "threshold": m.threshold.value, "target_frr": m.threshold.target_frr,
            "quantization": m.extractor.quantization, "scoring": m.scoring.method, "k": m.scoring.k, **run}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{b.path}: OK, digest {b.digest[:16]} (schema {m.schema_version}"
          f"{', migrated from 1' if m.migrated_from else ''}, {len(m.files)} files verified, "
          f"bank {b.bank.shape[0]}x{b.bank.shape[1]}, {m.scoring.method} k={m.scoring.k}, "
          f"threshold {m.threshold.value:.6f}, extractor {m.extractor.quantization}; test inference on "
          f"{run['runtime']} {run['test_inference_ms']:.1f} ms)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anomaly-device", description="Visual anomaly detection on the device.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="score images or folders; one line per image")
    s.add_argument("--bundle", required=True, help="model bundle directory")
    s.add_argument("images", nargs="+", help="image files or folders")
    s.add_argument("--threads", type=count(1), default=1)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=finite, help="override the bundle threshold (a number >= 0)")
    g.add_argument("--target-frr", type=finite, help="threshold from the bundle's calibration scores (0 <= rate < 1)")
    s.add_argument("--json", action="store_true", help="JSON lines with per-stage timing")
    s.set_defaults(func=_score)

    v = sub.add_parser("verify", help="verify a bundle: hashes, schema, consistency, and one test inference")
    v.add_argument("bundle")
    v.add_argument("--json", action="store_true", help="print what was checked as JSON")
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


def count(minimum: int = 1):
    """argparse type: an integer >= ``minimum`` (``--frames``, ``--last``, ``--threads``)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, found {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, found {v}")
        return v
    return parse


def size(text: str) -> tuple[int, int]:
    """argparse type: ``N`` or ``HxW`` pixels (each >= 8), as (height, width)."""
    try:
        parts = [int(v) for v in text.lower().replace("x", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW (e.g. 96 or 160x120), found {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 8:
        raise argparse.ArgumentTypeError(f"expected N or HxW with sides >= 8 px, found {text!r}")
    return parts[0], parts[1]


def finite(text: str) -> float:
    """argparse type: a finite number (NaN and infinities are refused here, ranges by the command)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, found {text!r}")
    return v


def main(argv=None) -> int:
    """Run one subcommand. Exit codes: 0 OK, 1 the command's own failure (e.g. unscorable images),
    2 bad input (config, bundle, arguments), 130 interrupted, 141 output pipe closed."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else getattr(args, "log_level", logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except AnomalyError as exc:
        print(f"anomaly-device: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:     # `anomaly-device ... | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
