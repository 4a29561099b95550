"""``anomaly-device audit {anogan,projection,nkn}``: offline audit over SSH.

Registered by :mod:`device.cli` through :func:`register`. Only argparse is imported
here; the runner (and TensorFlow) are imported when an audit command runs.

Example:
    $ anomaly-device audit projection --images rejects/ --normal good/ --size 128 --out audit/
    $ anomaly-device audit nkn --images new-product/ --size 128 --out audit-nkn/
"""
from __future__ import annotations

import argparse
import logging
import sys

from device.cli import count, finite, size

log = logging.getLogger(__name__)


def _common(p: argparse.ArgumentParser, model: bool) -> None:
    p.add_argument("--images", nargs="+", required=True, metavar="DIR", help="folders or files to audit")
    p.add_argument("--out", required=True, help="output folder (report.html, scores.csv, panels/)")
    if model:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--normal", nargs="+", metavar="DIR", help="normal images to fit the audit model on")
        g.add_argument("--bundle", help="bundle carrying this audit model (anomaly-train audit-models)")
    else:
        p.add_argument("--normal", nargs="+", metavar="DIR",
                       help="optional normal images, scored to calibrate a threshold")
    p.add_argument("--size", type=size, help="resize every image to N or HxW (default: no resizing; all "
                                              "images must have the model's size)")
    p.add_argument("--glob", dest="pattern", help="only images whose file name matches, e.g. '*.jpg'")
    p.add_argument("--labels", help="CSV of image,label (1/anomalous or 0/normal) for image AUROC")
    p.add_argument("--masks", help="folder of same-named PNG ground-truth masks (binarised at 128)")
    t = p.add_mutually_exclusive_group()
    t.add_argument("--target-frr", type=finite, default=0.01, help="false-reject rate for the threshold")
    t.add_argument("--threshold", type=finite, help="fixed threshold for PASS/REJECT")
    p.add_argument("--chunk", type=count(1), help="images scored per batch (saved after each)")
    p.add_argument("--fresh", action="store_true", help="discard results of an earlier run in --out")
    p.add_argument("--no-panels", dest="panels", action="store_false", help="skip the PNG panels")
    p.add_argument("--seed", type=int, default=0)


def _progress(done: int, total: int, name: str, score: float, seconds: float) -> None:
    print(f"[{done}/{total}] {name}\tscore={score:.6g}\t{seconds:.2f} s/image", file=sys.stderr, flush=True)


def _run(args, method: str, options: dict) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from device.audit.runner import AuditJob, run_audit

    res = run_audit(AuditJob.from_args(args, method, options), progress=_progress)
    for k, v in res.summary.items():
        print(f"{k}\t{v:.4f}" if isinstance(v, float) else f"{k}\t{v}")
    print(f"report\t{res.out / 'report.html'}")
    return 0


def _anogan(args) -> int:
    return _run(args, "anogan", {"latent": args.latent, "epochs": args.epochs, "steps": args.steps,
                                 "lam": args.lam, "encoder": args.encoder, "seed": args.seed})


def _projection(args) -> int:
    return _run(args, "projection", {"kind": args.kind, "arch": args.arch, "epochs": args.epochs,
                                     "latent": args.latent, "steps": args.steps, "alpha": args.alpha,
                                     "lam": args.lam, "map_mode": args.map, "seed": args.seed})


def _nkn(args) -> int:
    return _run(args, "nkn", {"mask": args.mask, "context": args.context, "stride": args.stride,
                              "fit_steps": args.fit_steps, "fit_windows": args.fit_windows,
                              "fit_points": args.fit_points, "seed": args.seed,
                              "score_map": args.score_map})


def register(subparsers) -> None:
    """Add ``audit`` with ``anogan``, ``projection`` and ``nkn`` to ``anomaly-device``."""
    a = subparsers.add_parser("audit", help="offline audit: AnoGAN, energy projection, NKN (slow, explainable)",
                              description="Heavy, explainable anomaly audits with heatmaps and an HTML report. "
                                          "Resumable: rerun the same command to continue.")
    sub = a.add_subparsers(dest="audit_method", required=True)

    g = sub.add_parser("anogan", help="AnoGAN: DCGAN latent search (Schlegl et al. 2017)")
    _common(g, model=True)
    g.add_argument("--latent", type=int, help="latent dimension when fitting (default 64)")
    g.add_argument("--epochs", type=int, help="GAN training epochs when fitting")
    g.add_argument("--steps", type=int, help="latent-search steps per image (default 200)")
    g.add_argument("--lam", type=float, help="weight of the discriminator-feature loss (default 0.1)")
    g.add_argument("--encoder", action="store_true", default=None,
                   help="fast variant: train an encoder and start the search from E(x)")
    g.set_defaults(func=_anogan)

    p = sub.add_parser("projection", help="AE/VAE with energy-based gradient projection (Dehaene et al. 2020)")
    _common(p, model=True)
    p.add_argument("--kind", choices=("ae", "vae"), help="autoencoder when fitting (default ae)")
    p.add_argument("--arch", choices=("conv", "dense"), help="architecture when fitting (default conv)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--latent", type=int)
    p.add_argument("--steps", type=int, help="projection iterations (default 50)")
    p.add_argument("--alpha", type=float, help="projection step size")
    p.add_argument("--lam", type=float, help="weight of ||x - x0||_1 in the energy")
    p.add_argument("--map", choices=("grad", "recon"), help="map scored: |x0 - xT| (grad) or |x0 - f(x0)|")
    p.set_defaults(func=_projection)

    n = sub.add_parser("nkn", help="NKN Gaussian-process inpainting from the test image alone")
    _common(n, model=False)
    n.add_argument("--mask", type=int, help="side of the moving mask in px (default 8)")
    n.add_argument("--context", type=int, help="context border around the mask in px (default 8)")
    n.add_argument("--stride", type=int, help="mask stride in px (default: mask side)")
    n.add_argument("--fit-steps", type=int, help="kernel hyper-parameter steps per image (default 40)")
    n.add_argument("--fit-windows", type=int, help="context windows per hyper-parameter step (default 8)")
    n.add_argument("--fit-points", type=int, help="visible pixels used to fit the hyper-parameters (default 256)")
    n.add_argument("--score-map", choices=("norm", "raw"), help="map scored: |x-x̂|/σ (norm) or |x-x̂| (raw)")
    n.set_defaults(func=_nkn)
