"""``anomaly-train``: the workstation command line.

Example:
    $ anomaly-train fit --data mydata/ --out bundle/
    $ anomaly-train evaluate --bundle bundle/ --data mydata/ --out eval/
    $ anomaly-train demo --out demo-out/
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from device.cli import register_commands
from trainer.options import EXPORT, FIRST, SEARCH, add_fit_options, fit_config, option_groups

log = logging.getLogger(__name__)

COMMAND_MODULES = ("trainer.audit_cli",)
TF_COMMANDS = ("fit", "demo", "audit-models")   # commands that import TensorFlow


def _fit_inputs(args):
    """``(train, calib, real defects, capture record)`` from ``--data`` or ``--train``/``--calib``."""
    from device.preprocess import list_images
    from trainer.data import ImageError, load_layout

    capture = None
    if args.data:
        layout = load_layout(args.data, need_test=False)   # test/ matters only with --select-on-real (below)
        train = layout.train
        if layout.val_good and not args.calib:
            args.calib = [str(layout.root / "val" / "good")]
        real = [p for ps in layout.test_defects.values() for p in ps] if args.select_on_real else None
        if args.select_on_real and not real:
            raise ImageError(f"{layout.root / 'test'}: --select-on-real needs defect images in test/<defect>/ "
                             f"folders; found only {len(layout.test_good)} good test images")
        if (layout.root / "capture.json").is_file():
            from device.capture import capture_record

            capture = capture_record(layout.root)
    else:
        train, real = list_images(args.train), None
    return train, list_images(args.calib) if args.calib else None, real, capture


def _check_out(out: Path, force: bool) -> None:
    from device.errors import ConfigError

    if out.exists() and not force:
        what = "a bundle" if (out / "manifest.json").exists() else "a file" if out.is_file() else "a folder"
        raise ConfigError(f"--out {out}: {what} is already there; pass --force to replace it")


def _fit(args) -> int:
    from trainer.pipeline import fit

    cfg = fit_config(args)
    _check_out(Path(args.out), args.force)
    train, calib, real, capture = _fit_inputs(args)
    res = fit(train, args.out, cfg, calib=calib, real_defects=real, capture=capture)
    if args.json:
        print(json.dumps(res.summary, indent=2, default=str))
        return 0
    print("\n".join(fit_lines(res)))
    return 0


def fit_lines(res) -> list[str]:
    """The few lines ``fit`` prints: what shipped, why, what it costs, where the report is."""
    from device.bundle import bundle_digest

    s = res.summary
    lines = [f"bundle written: {res.bundle} (digest {bundle_digest(res.bundle)[:16]})",
             f"  configuration {s['chosen']} ({s['mode']}): {s['reason']}",
             f"  DOC: {s['doc']}",
             f"  quantisation {s['quant']}" + (f": {s['quant_choice']}" if s.get("quant_choice") else ""),
             f"  latency {s['latency_ms']:.2f} ms per frame measured here (device path, 1 thread); Raspberry Pi 4 "
             f"estimate {s['pi4_ms_estimate']:.1f} ms" + (f"; budget {s['budget_ms']:.2f} ms"
                                                          f"{'' if s['within_budget'] else ' EXCEEDED'}"
                                                          if s.get("budget_ms") else ""),
             f"  validation AUROC {s['val_auroc']:.4f} (cross-fitted normals vs synthetic defects); threshold "
             f"{s['threshold']:.6f} ({s['threshold_estimator']} estimator); bank {s['bank_size']} rows "
             f"({s['bank_mode']}); {s['n_train']} training images; {s['fit_seconds']:.0f} s"]
    if s.get("threshold_warning"):
        lines.append(f"  WARNING: {s['threshold_warning']}")
    if s.get("over_budget_choice"):
        lines.append("  WARNING: the shipped configuration is over the latency budget (see the report)")
    if res.report:
        lines.append(f"report: {res.report}")
    return lines


def _evaluate(args) -> int:
    from trainer.evaluate import evaluate

    m = evaluate(args.bundle, args.data, args.out, num_threads=args.threads)
    print(json.dumps({k: v for k, v in m.items() if k != "per_defect"}, indent=2))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def _demo(args) -> int:
    from trainer.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anomaly-train", description="Train and evaluate anomaly-detection bundles.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="search a configuration, train, convert, build the bank, calibrate, write a bundle",
                       description="With only --data and --out, fit searches a small candidate space (input size, "
                                   "tile grid, taps, pooling, patch features, k, backbone width, DOC) within a "
                                   "latency and a time budget, builds the best, and writes the bundle and "
                                   "<out>-report/report.html. Any option of the search space pins that dimension.")
    groups = option_groups(f)
    first = groups[FIRST]
    src = first.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="MVTec-style folder (train/good used for training; val/good, when present, "
                                    "sets the threshold)")
    src.add_argument("--train", nargs="+", help="normal image files or folders (instead of --data)")
    first.add_argument("--out", required=True, help="bundle directory (the report goes to <out>-report/)")
    first.add_argument("--force", action="store_true", help="replace an existing --out")
    groups[SEARCH].add_argument("--select-on-real", action="store_true",
                                help="with --data: rate candidates on the test/<defect> images instead of synthetic "
                                     "defects (the report says which were used)")
    groups[EXPORT].add_argument("--calib", nargs="+", help="held-out normal images for the threshold (default: "
                                                           "cross-fitted scores of every training image)")
    groups[EXPORT].add_argument("--json", action="store_true", help="print the fit summary as JSON")
    add_fit_options(f, groups=groups)
    f.set_defaults(func=_fit)

    e = sub.add_parser("evaluate", help="AUROC, ROC curve, histogram and per-image scores through the device path")
    e.add_argument("--bundle", required=True)
    e.add_argument("--data", required=True, help="folder with test/good and test/<defect>")
    e.add_argument("--out", required=True)
    e.add_argument("--threads", type=int, default=1)
    e.set_defaults(func=_evaluate)

    d = sub.add_parser("demo", help="the whole path on the embedded default data set")
    d.add_argument("--out", default="demo-out")
    d.add_argument("--product", choices=("brick", "washer"), default="brick", help="embedded product")
    add_fit_options(d)
    d.set_defaults(func=_demo)

    register_commands(sub, COMMAND_MODULES)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command in TF_COMMANDS and not args.verbose:   # TensorFlow's own notices only with -v
        from device.quiet import quiet_tensorflow

        quiet_tensorflow()
    from device.errors import AnomalyError
    from models.backbone import WeightsError

    try:
        return int(args.func(args) or 0)
    except (AnomalyError, WeightsError) as exc:
        print(f"anomaly-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
