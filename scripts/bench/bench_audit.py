#!/usr/bin/env python3
"""Benchmark of the audit methods on named, seeded subsets of ../shared/data.

Writes ``scripts/bench/results/audit.json`` (flat keys) and the table between
``<!-- audit:start -->`` and ``<!-- audit:end -->`` in ``BENCHMARKS.md``.

* AnoGAN: ``mnist-anogan-v1`` (MNIST test 1 normal vs other digits; the seed's
  experiment), latent search and the encoder variant; plus the seed's dense AE baseline.
* Projection: ``mt-split-v1`` (magnetic tile, 128x128), image and pixel AUROC of AE,
  AE-grad, VAE, VAE-grad.
* NKN: ``brick-scribble-v1`` and ``mt-nkn-v1`` (20 + 20 magnetic tiles), pixel AUROC of
  the raw and sigma-normalised maps.

Needs ../shared (or ``$ANOMALY_SHARED``); exits with a clear message without it.

Example:
    $ nohup .venv/bin/python scripts/bench/bench_audit.py > /tmp/bench_audit.log 2>&1 &
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
import audit_data as ad  # noqa: E402

log = logging.getLogger("bench_audit")
PI4_FACTOR = (6, 10)  # Pi 4 (Cortex-A72, 1.5 GHz) vs one core of this x86 machine: an estimate, not measured


def _timed(fn, *a, **k):
    t0 = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t0


def bench_anogan(root: Path, quick: bool) -> dict:
    from core.metrics import auroc
    from models.anogan import AnoGANDetector
    from models.autoencoders import ProjectionDetector

    train, test, lab = ad.mnist_anogan(root)
    if quick:
        train, test, lab = train[:200], np.r_[test[:40], test[-40:]], np.r_[lab[:40], lab[-40:]]
    r = {"anogan_n_train": len(train), "anogan_n_normal": int((lab == 0).sum()), "anogan_n_anomalous": int(lab.sum())}
    epochs = 5 if quick else 30
    det, t = _timed(AnoGANDetector(size=(28, 28), epochs=epochs, encoder=True, encoder_epochs=epochs // 2 or 1).fit,
                    train)
    r["anogan_fit_s"] = t
    enc = det.encoder
    det.encoder, det.steps = None, 200
    s, t = _timed(det.anomaly_score, test)
    r.update(anogan_image_auroc=auroc(lab, s.scores), anogan_residual_image_auroc=auroc(lab, s.extra["residual_scores"]),
             anogan_s_per_image=t / len(test), anogan_search_steps=200)
    det.encoder, det.steps, det._search = enc, 0, None
    s, t = _timed(det.anomaly_score, test)
    r.update(anogan_enc_image_auroc=auroc(lab, s.scores), anogan_enc_s_per_image=t / len(test))
    det.steps, det._search = 20, None
    s, t = _timed(det.anomaly_score, test)
    r.update(anogan_enc20_image_auroc=auroc(lab, s.scores), anogan_enc20_s_per_image=t / len(test))
    # the seed's dense 784-392-64-392-784 L2 autoencoder, score = sum |x - f(x)|
    ae, t = _timed(ProjectionDetector(kind="ae", arch="dense", size=(28, 28), latent=64, hidden=392,
                                      epochs=epochs * 2, steps=0, smooth=0).fit, train)
    x = test.astype(np.float32) / 255
    r["dense_ae_image_auroc"] = auroc(lab, np.abs(x - ae.reconstruct(x)).sum(axis=(1, 2)))
    r["dense_ae_fit_s"] = t
    return r


def bench_projection(root: Path, quick: bool) -> dict:
    from core.metrics import auroc, pixel_auroc
    from models.autoencoders import ProjectionDetector

    mt = ad.magnetic_tile(root, 128)
    tr, te, masks, lab = mt["train"], mt["test"], mt["masks"], mt["labels"]
    if quick:
        sub = np.random.default_rng(0).permutation(len(te))[:60]
        tr, te, masks, lab = tr[:100], te[sub], masks[sub], lab[sub]
    r = {"proj_n_train": len(tr), "proj_n_test": len(te), "proj_n_anomalous": int(lab.sum()), "proj_size": 128}
    x = te.astype(np.float32) / 255
    for kind in ("ae", "vae"):
        det = ProjectionDetector(kind=kind, size=(128, 128), epochs=3 if quick else 25, latent=64)
        _, t = _timed(det.fit, tr)
        r[f"proj_{kind}_fit_s"] = t
        s, t = _timed(det.anomaly_score, x)
        r[f"proj_{kind}_image_auroc"] = auroc(lab, s.extra["recon_scores"])
        r[f"proj_{kind}_pixel_auroc"] = pixel_auroc(list(masks), list(s.extra["recon_maps"]))
        r[f"proj_{kind}_grad_image_auroc"] = auroc(lab, s.extra["grad_scores"])
        r[f"proj_{kind}_grad_pixel_auroc"] = pixel_auroc(list(masks), list(s.extra["grad_maps"]))
        r[f"proj_{kind}_grad_s_per_image"] = t / len(x)
        r["proj_steps"], r["proj_alpha"], r["proj_lam"] = det.steps, det.alpha, det.lam
        log.info("projection %s: %s", kind, {k: round(v, 3) for k, v in r.items() if kind in k})
    return r


def bench_nkn(root: Path, quick: bool) -> dict:
    from core.metrics import auroc, pixel_auroc
    from models.nkn import NKNDetector

    r = {}
    det = NKNDetector(fit_steps=5 if quick else 40)
    clean, bad, mask = ad.brick_scribble(128)
    det.anomaly_score([clean[:32, :32]])  # warm-up: TensorFlow traces the fit loop once per process
    s, t = _timed(det.anomaly_score, [clean, bad])
    r.update(nkn_brick_pixel_auroc_raw=pixel_auroc([mask], [s.extra["raw_maps"][1]]),
             nkn_brick_pixel_auroc_norm=pixel_auroc([mask], [s.extra["norm_maps"][1]]),
             nkn_brick_score_ratio_raw=float(s.extra["raw_scores"][1] / s.extra["raw_scores"][0]),
             nkn_brick_score_ratio_norm=float(s.extra["norm_scores"][1] / s.extra["norm_scores"][0]),
             nkn_brick_s_per_image=t / 2)
    loc = NKNDetector(fit_steps=5 if quick else 40, local_amplitude=True).anomaly_score([bad])
    r["nkn_brick_pixel_auroc_norm_local"] = pixel_auroc([mask], [loc.extra["norm_maps"][0]])
    mt = ad.magnetic_tile(root, 128)
    idx = ad.mt_nkn_subset(mt, 4 if quick else 20, 1 if quick else 4)
    imgs, masks, lab = mt["test"][idx], mt["masks"][idx], mt["labels"][idx]
    s, t = _timed(det.anomaly_score, list(imgs))
    r.update(nkn_mt_n_normal=int((lab == 0).sum()), nkn_mt_n_anomalous=int(lab.sum()),
             nkn_mt_pixel_auroc_raw=pixel_auroc(list(masks), list(s.extra["raw_maps"])),
             nkn_mt_pixel_auroc_norm=pixel_auroc(list(masks), list(s.extra["norm_maps"])),
             nkn_mt_image_auroc_raw=auroc(lab, s.extra["raw_scores"]),
             nkn_mt_image_auroc_norm=auroc(lab, s.extra["norm_scores"]),
             nkn_mt_s_per_image=t / len(imgs), nkn_fit_steps=det.fit_steps, nkn_fit_points=det.fit_points,
             nkn_mask=det.mask,
             nkn_context=det.context)
    return r


def fmt(v, digits=3):
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def table(r: dict) -> str:
    lo, hi = PI4_FACTOR
    g = r.get

    def pi(v):
        return "n/a" if v is None else f"{v * lo:.2f}-{v * hi:.2f}"

    rows = ["| method | data (named subset) | image AUROC | pixel AUROC | s/image here | Pi 4 s/image (estimate ×%d-%d) | budget |" % PI4_FACTOR,
            "| --- | --- | --- | --- | --- | --- | --- |"]
    if "anogan_image_auroc" in r:
        d = f"mnist-anogan-v1: {g('anogan_n_normal')} ones vs {g('anogan_n_anomalous')} other digits, 28 px"
        rows += [f"| AnoGAN, latent search {g('anogan_search_steps')} steps | {d} | {fmt(g('anogan_image_auroc'))} | – | {fmt(g('anogan_s_per_image'))} | {pi(g('anogan_s_per_image'))} | ≤ 5 |",
                 f"| AnoGAN, encoder only (single pass) | same | {fmt(g('anogan_enc_image_auroc'))} | – | {fmt(g('anogan_enc_s_per_image'), 4)} | {pi(g('anogan_enc_s_per_image'))} | ≤ 5 |",
                 f"| AnoGAN, encoder + 20 search steps | same | {fmt(g('anogan_enc20_image_auroc'))} | – | {fmt(g('anogan_enc20_s_per_image'), 4)} | {pi(g('anogan_enc20_s_per_image'))} | ≤ 5 |",
                 f"| dense AE 784-392-64-392-784 (seed 004), Σ abs diff | same | {fmt(g('dense_ae_image_auroc'))} | – | – | – | – |"]
    if "proj_ae_image_auroc" in r:
        d = f"mt-split-v1: {g('proj_n_test')} tiles ({g('proj_n_anomalous')} defective), 128 px"
        for kind, name in (("ae", "L2 AE"), ("vae", "VAE")):
            rows += [f"| {name} (reconstruction error) | {d} | {fmt(g(f'proj_{kind}_image_auroc'))} | {fmt(g(f'proj_{kind}_pixel_auroc'))} | – | – | – |",
                     f"| {name}-grad ({g('proj_steps')} projection steps) | same | {fmt(g(f'proj_{kind}_grad_image_auroc'))} | {fmt(g(f'proj_{kind}_grad_pixel_auroc'))} | {fmt(g(f'proj_{kind}_grad_s_per_image'))} | {pi(g(f'proj_{kind}_grad_s_per_image'))} | ≤ 2 |"]
    if "nkn_brick_pixel_auroc_raw" in r:
        rows += [f"| NKN, raw max\\|x-x̂\\| | brick-scribble-v1, 128 px | score ratio {fmt(g('nkn_brick_score_ratio_raw'), 2)} | {fmt(g('nkn_brick_pixel_auroc_raw'))} | {fmt(g('nkn_brick_s_per_image'), 1)} | {pi(g('nkn_brick_s_per_image'))} | ≤ 60 |",
                 f"| NKN, σ-normalised max\\|(x-x̂)/σ\\| | same | score ratio {fmt(g('nkn_brick_score_ratio_norm'), 2)} | {fmt(g('nkn_brick_pixel_auroc_norm'))} (local amplitude: {fmt(g('nkn_brick_pixel_auroc_norm_local'))}) | same run | – | ≤ 60 |",
                 f"| NKN, raw | mt-nkn-v1: {g('nkn_mt_n_normal')} + {g('nkn_mt_n_anomalous')} tiles, 128 px | {fmt(g('nkn_mt_image_auroc_raw'))} | {fmt(g('nkn_mt_pixel_auroc_raw'))} | {fmt(g('nkn_mt_s_per_image'), 1)} | {pi(g('nkn_mt_s_per_image'))} | ≤ 60 |",
                 f"| NKN, σ-normalised | same | {fmt(g('nkn_mt_image_auroc_norm'))} | {fmt(g('nkn_mt_pixel_auroc_norm'))} | same run | – | ≤ 60 |"]
    runs = sorted({(r.get(f"{n}_command", r.get("command")), r.get(f"{n}_date", r.get("date")))
                   for n in ("anogan", "projection", "nkn") if f"{n}_section_s" in r}, key=lambda c: c[1])
    notes = ["", "Runs: " + "; ".join(f"`{c.strip()}` on {d}" for c, d in runs) + f" ({r.get('machine')}). "
             f"Times are wall-clock on a 2-core x86 machine shared with other jobs (TensorFlow CPU, batched). "
             f"The Pi 4 column is an estimate (×{lo}-{hi} of this machine, not measured). "
             f"NKN: mask {g('nkn_mask')} px, context {g('nkn_context')} px, {g('nkn_fit_steps')} hyper-parameter steps "
             f"per image on {g('nkn_fit_points') or 'all'} visible pixels. "
             f"Fit times: AnoGAN {fmt(g('anogan_fit_s'), 0)} s, AE {fmt(g('proj_ae_fit_s'), 0)} s, VAE {fmt(g('proj_vae_fit_s'), 0)} s."]
    return "\n".join(rows + notes)


def update_markdown(path: Path, body: str) -> None:
    start, end = "<!-- audit:start -->", "<!-- audit:end -->"
    block = f"{start}\n## Audit methods (AnoGAN, energy projection, NKN)\n\n{body}\n{end}"
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=("anogan", "projection", "nkn"), default=["anogan", "projection", "nkn"])
    p.add_argument("--quick", action="store_true", help="tiny subsets, for checking the script")
    p.add_argument("--json", default=str(HERE / "results" / "audit.json"))
    p.add_argument("--markdown", default=str(REPO / "BENCHMARKS.md"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = ad.shared_root()
    r = {"command": "python scripts/bench/bench_audit.py " + " ".join(argv if argv is not None else sys.argv[1:]),
         "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
         "machine": f"{platform.machine()}, {os.cpu_count()} cores", "quick": args.quick,
         "pi4_factor_low": PI4_FACTOR[0], "pi4_factor_high": PI4_FACTOR[1]}
    jpath = Path(args.json)
    if jpath.is_file() and set(args.only) != {"anogan", "projection", "nkn"}:
        old = json.loads(jpath.read_text())
        for n in ("anogan", "projection", "nkn"):   # keep each earlier section's own command and date
            if f"{n}_section_s" in old and f"{n}_command" not in old:
                old[f"{n}_command"], old[f"{n}_date"] = old.get("command"), old.get("date")
        r = {**old, **r}
    fns = {"anogan": bench_anogan, "projection": bench_projection, "nkn": bench_nkn}
    for name in args.only:
        t0 = time.perf_counter()
        res = fns[name](root, args.quick)
        res[f"{name}_section_s"] = time.perf_counter() - t0
        res[f"{name}_command"], res[f"{name}_date"] = r["command"], r["date"]
        r.update(res)
        log.info("%s done in %.0f s", name, res[f"{name}_section_s"])
        jpath.parent.mkdir(parents=True, exist_ok=True)
        jpath.write_text(json.dumps(r, indent=2, default=float) + "\n")
    update_markdown(Path(args.markdown), table(r))
    print(table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
