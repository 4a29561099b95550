"""``anomaly-train audit-models``: train audit models on the workstation, ship them in a bundle.

Fits the AnoGAN and/or energy-projection autoencoder on normal images, calibrates each
threshold on held-out normal images with the shared calibration, and adds the weights
as optional, hashed bundle entries plus ``manifest["audit"]`` (see
:mod:`device.audit.bundled`). The device then runs
``anomaly-device audit METHOD --bundle B --images DIR --out DIR`` without fitting.

Example:
    $ anomaly-train audit-models --bundle bundle/ --normal good/ --size 128 --methods projection anogan
"""
from __future__ import annotations

import logging
import time

from device.cli import size

log = logging.getLogger(__name__)


def _audit_models(args) -> int:
    import numpy as np

    from device.audit import data
    from device.audit.bundled import add_audit_models
    from device.audit.methods import fit_and_calibrate, prefix
    from device.bundle import load_bundle

    load_bundle(args.bundle)  # fail fast on a bad bundle, before any training
    paths = data.list_audit_images(args.normal, args.pattern)
    size = tuple(args.size) if args.size else None
    imgs, expect = [], None
    for p in paths:
        im, _ = data.load_grey(p, size=size, expect=expect)
        expect = expect or im.shape[:2]
        imgs.append(im)
    x = np.stack(imgs)
    options = {
        "projection": {"kind": args.kind, "arch": args.arch, "epochs": args.epochs, "latent": args.latent,
                       "seed": args.seed},
        "anogan": {"epochs": args.epochs, "latent": args.latent, "encoder": args.encoder or None,
                   "seed": args.seed},
    }
    models = {}
    for method in args.methods:
        t0 = time.perf_counter()
        det, thr = fit_and_calibrate(method, x, options[method], args.target_frr, args.seed)
        models[method] = {"params": det.params(), "files": det.to_files(prefix(method)), "threshold": thr,
                          "trained": {"normal_images": len(x), "size": list(x.shape[1:3]),
                                      "seconds": round(time.perf_counter() - t0, 1),
                                      "sources": [str(p) for p in args.normal]}}
        print(f"{method}\tthreshold={thr['value'] if thr else 'none'}\t{time.perf_counter() - t0:.1f} s", flush=True)
    dest = add_audit_models(args.bundle, models, dest=args.out)
    print(f"wrote audit models {sorted(models)} into {dest}")
    return 0


def register(subparsers) -> None:
    """Add ``audit-models`` to ``anomaly-train``."""
    a = subparsers.add_parser("audit-models", help="train AnoGAN / projection audit models into a bundle")
    a.add_argument("--bundle", required=True, help="existing bundle to add the audit models to")
    a.add_argument("--normal", nargs="+", required=True, metavar="DIR", help="normal images")
    a.add_argument("--out", help="write a new bundle here instead of replacing --bundle")
    a.add_argument("--methods", nargs="+", choices=("projection", "anogan"), default=["projection"])
    a.add_argument("--size", type=size, help="resize to N or HxW (the device audit then uses the same --size)")
    a.add_argument("--glob", dest="pattern", help="only images whose file name matches, e.g. '*.jpg'")
    a.add_argument("--kind", choices=("ae", "vae"), help="projection autoencoder (default ae)")
    a.add_argument("--arch", choices=("conv", "dense"), help="projection architecture (default conv)")
    a.add_argument("--epochs", type=int)
    a.add_argument("--latent", type=int)
    a.add_argument("--encoder", action="store_true", help="AnoGAN: also train the fast encoder")
    a.add_argument("--target-frr", type=float, default=0.01)
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(func=_audit_models)
