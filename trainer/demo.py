"""The embedded-default demo: the whole product path on data that ships in scikit-image.

1. writes the demo data set (texture patches, synthetic scratches/spots/cracks) in MVTec layout;
2. ``fit``: untouched vs DOC-tuned MobileNetV2, int8 TFLite, bank, threshold -> bundle;
3. scores the held-out test images through the device path (LiteRT, no TensorFlow);
4. prints AUROC, threshold, false rejects / misses, latency; writes report.html with PNGs.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)


def run_demo(args) -> int:
    from trainer.options import fit_config
    from trainer.data import make_demo_dataset
    from trainer.evaluate import evaluate
    from trainer.pipeline import fit

    out = Path(args.out)
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    t0 = time.time()
    layout = make_demo_dataset(data, seed=args.seed, product=args.product)
    cfg = fit_config(args)
    res = fit(layout.train, out / "bundle", cfg, calib=layout.val_good)
    metrics = evaluate(out / "bundle", data, out / "report", progress=False)
    s = res.summary
    banner = "=" * 72
    lines = [banner, "DEMO RESULT (embedded texture data set, device path: LiteRT %s)" % s["quant"], banner]
    if s["weights"] == "random":
        lines += ["!! RANDOM BACKBONE WEIGHTS: no ImageNet weights could be had. Figures are far below",
                  "!! what the product reaches. Set ANOMALY_BACKBONE_WEIGHTS=<MobileNetV2 .weights.h5>",
                  "!! or run once with network access to download the ImageNet weights."]
    lines += [f"backbone weights      : {s['weights']}",
              f"configuration         : {s['chosen']} ({s['mode']}): {s['reason']}",
              f"DOC fine-tuning       : {s['doc']}",
              f"validation AUROC      : {s['val_auroc']:.4f} (cross-fitted normals vs synthetic defects)",
              f"test images           : {metrics['n_good']} good, {metrics['n_defective']} defective",
              f"{'test AUROC (' + s['quant'] + ')':<22}: {metrics['auroc']:.4f}"]
    if "float_val_auroc" in s:
        q = next((k[:-len("_measured_val_auroc")] for k in s if k.endswith("_measured_val_auroc")), s["quant"])
        qv = s.get(f"{q}_measured_val_auroc", s.get(f"{q}_val_auroc"))
        lines.append(f"{'float vs ' + q + ' (val)':<22}: AUROC {s['float_val_auroc']:.4f} vs {qv:.4f}, "
                     f"feature cosine {s['feature_cosine_mean']:.4f} (min {s['feature_cosine_min']:.4f})")
    if s.get("quant_choice"):
        lines.append(f"quantisation (auto)   : {s['quant_choice']}")
    lines += [f"threshold             : {metrics['threshold']:.5f} (target false-reject rate {cfg.target_frr:.0%})",
              f"false rejects         : {metrics['false_rejects']} of {metrics['n_good']} good",
              f"missed defects        : {metrics['misses']} of {metrics['n_defective']} defective",
              f"latency per image     : {metrics['latency_ms_median']:.2f} ms median, "
              f"{metrics['latency_ms_p99']:.2f} ms p99 (decode+preprocess+extract+k-NN, 1 thread)",
              f"bundle                : {out / 'bundle'}",
              f"fit report            : {res.report}",
              f"test report           : {out / 'report' / 'report.html'}",
              f"total time            : {time.time() - t0:.0f} s", banner]
    print("\n".join(lines), flush=True)
    return 0
