"""``anomaly-train``: the workstation command line.

Example:
    $ anomaly-train fit --data mydata/ --out bundle/
    $ anomaly-train evaluate --bundle bundle/ --data mydata/ --out eval/
    $ anomaly-train demo --out demo-out/
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from device.cli import register_commands
from device.scoring import SCORING_METHODS
from models.backbone import FEATURE_TAPS, POOLINGS

log = logging.getLogger(__name__)

COMMAND_MODULES = ("trainer.audit_cli",)


def _roi(s: str | None):
    if not s:
        return None
    parts = [int(v) for v in s.split(",")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--roi expects x,y,width,height; found {s!r}")
    return tuple(parts)


def _size(s: str):
    v = [int(x) for x in s.lower().split("x")]
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def add_fit_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--alpha", type=float, default=0.35, help="MobileNetV2 width (default 0.35)")
    g.add_argument("--size", type=_size, default=(96, 96), help="network input, e.g. 96 or 160x160")
    g.add_argument("--weights", default=None,
                   help="'imagenet' (default; downloads), a local .weights.h5, or 'random'; "
                        "env ANOMALY_BACKBONE_WEIGHTS")
    g.add_argument("--color", choices=("rgb", "grey"), default="rgb")
    g.add_argument("--resize", choices=("stretch", "letterbox", "center_crop"), default="stretch")
    g.add_argument("--roi", type=_roi, default=None, help="x,y,width,height crop in source pixels")
    g.add_argument("--interpolation", choices=("area", "linear", "nearest"), default="area",
                   help="resize filter (area: anti-aliased, keeps thin defects; linear: cheaper)")
    g.add_argument("--working-size", type=_size, default=None,
                   help="tile grid: bring the frame (or ROI) to this size first, e.g. 1024x1024")
    g.add_argument("--grid", type=_size, default=None, help="tile grid rows x columns, e.g. 4x4")
    g.add_argument("--overlap", type=float, default=0.0, help="tile overlap, fraction of a tile")
    g.add_argument("--bank-mode", choices=("auto", "shared", "per_position"), default="auto",
                   help="tiled inputs: one shared bank or one per tile position (auto: measured)")
    g.add_argument("--taps", default="out", choices=sorted(FEATURE_TAPS),
                   help="feature layers (MobileNetV2 block expansions and out_relu)")
    g.add_argument("--pooling", choices=POOLINGS, default="max",
                   help="global max/avg; gridG: average over G x G cells (keeps layout: aligned parts); "
                        "patch: one descriptor per feature-map position, tile score = worst patch "
                        "(small defects; use an early tap such as b6 and --scoring gauss)")
    g.add_argument("--k", type=int, default=1, help="neighbours averaged in the score")
    g.add_argument("--scoring", choices=SCORING_METHODS, default="knn",
                   help="knn: distance to the nearest bank features; lof: local outlier factor; "
                        "gauss: Mahalanobis distance to a Gaussian of the bank (cheap per query: patches)")
    d = p.add_argument_group("DOC fine-tuning")
    d.add_argument("--no-doc", action="store_true", help="ship the untouched backbone")
    d.add_argument("--doc-steps", type=int, default=200)
    d.add_argument("--doc-lr", type=float, default=5e-5)
    d.add_argument("--doc-lambda", type=float, default=0.1)
    d.add_argument("--doc-batch", type=int, default=32)
    d.add_argument("--train-from", default="block_13_expand", help="first trainable layer")
    d.add_argument("--reference", default="samples",
                   help="DOC reference set: 'samples' (scikit-image photos), a folder, or keras:cifar10")
    q = p.add_argument_group("export")
    q.add_argument("--quant", choices=("auto", "int8", "float", "float16", "dynamic"), default="auto",
                   help="auto (default): full int8 unless it loses more than 0.01 validation AUROC against "
                        "float, then float (measured and recorded in the manifest; patch features often need "
                        "it); int8 forces full integer")
    q.add_argument("--bank-max", type=int, default=None, help="subsample the bank to this many features")
    q.add_argument("--bank-subsample", choices=("coreset", "random"), default="coreset")
    q.add_argument("--target-frr", type=float, default=0.01, help="false-reject rate of the threshold")
    q.add_argument("--calib-fraction", type=float, default=0.2)
    q.add_argument("--seed", type=int, default=0)


def fit_config(args):
    from device.errors import ConfigError
    from trainer.doc import DocConfig
    from trainer.pipeline import FitConfig

    cfg = FitConfig(alpha=args.alpha, size=tuple(args.size), weights=args.weights, color=args.color,
                     resize=args.resize, interpolation=args.interpolation, roi=args.roi, taps=args.taps, pooling=args.pooling, k=args.k,
                     scoring=args.scoring, doc=not args.no_doc,
                     doc_cfg=DocConfig(steps=args.doc_steps, lr=args.doc_lr, lam=args.doc_lambda,
                                       batch=args.doc_batch, train_from=args.train_from),
                     reference=args.reference, quant=args.quant, bank_max=args.bank_max,
                     bank_subsample=args.bank_subsample, target_frr=args.target_frr,
                     working_size=args.working_size, grid=args.grid, overlap=args.overlap, bank_mode=args.bank_mode,
                     calib_fraction=args.calib_fraction, seed=args.seed)
    try:
        cfg.input_spec()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if cfg.doc:
        from trainer.doc import check_trainable_reaches_taps

        check_trainable_reaches_taps(cfg.taps, cfg.doc_cfg.train_from)
    return cfg


def _fit(args) -> int:
    from device.preprocess import list_images
    from trainer.data import load_layout
    from trainer.pipeline import fit

    cfg = fit_config(args)
    if args.data:
        layout = load_layout(args.data)
        train = layout.train
        if layout.val_good and not args.calib:
            args.calib = [str(layout.root / "val" / "good")]
        real = [p for ps in layout.test_defects.values() for p in ps] if args.select_on_real else None
    else:
        train, real = list_images(args.train), None
    calib = list_images(args.calib) if args.calib else None
    res = fit(train, args.out, cfg, calib=calib, real_defects=real)
    print(json.dumps(res.summary, indent=2, default=str))
    print(f"bundle written: {res.bundle}")
    return 0


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

    f = sub.add_parser("fit", help="train, convert, build the bank, calibrate, write a bundle")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="MVTec-style folder (train/good used for training)")
    src.add_argument("--train", nargs="+", help="normal image files or folders")
    f.add_argument("--calib", nargs="+", help="held-out normal images for the threshold")
    f.add_argument("--select-on-real", action="store_true",
                   help="with --data: also use test/<defect> images in model selection")
    f.add_argument("--out", required=True, help="bundle directory")
    add_fit_options(f)
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
    d.set_defaults(size=(160, 160), taps="b6+b13+out")
    d.set_defaults(func=_demo)

    register_commands(sub, COMMAND_MODULES)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
