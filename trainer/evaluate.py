"""Evaluate a bundle through the device path on an MVTec-style test folder.

Writes ``metrics.json``, ``scores.json`` (per image), ``roc.png``, ``histogram.png`` and
``report.html`` into the output folder.

Example:
    >>> m = evaluate("bundle/", "data/", "eval-out/")   # doctest: +SKIP
    >>> m["auroc"]                                      # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from device.detector import Detector
from trainer.data import load_layout
from trainer.pipeline import auroc
from trainer.report import histogram_png, html_report, roc_png

log = logging.getLogger(__name__)


def evaluate(bundle: str | Path, data: str | Path, out: str | Path, num_threads: int = 1,
             progress: bool = True) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    det = Detector.from_bundle(bundle, num_threads=num_threads)
    items = load_layout(data, need_train=False).test_items()
    recs, lat = [], []
    for i, (p, label, group) in enumerate(items):
        t0 = time.perf_counter()
        s = det.score_one(p)
        lat.append((time.perf_counter() - t0) * 1e3)
        recs.append({"image": str(p), "label": label, "group": group, "score": s,
                     "decision": "REJECT" if det.is_anomalous(s) else "PASS"})
        if progress and (i + 1) % 50 == 0:
            log.info("evaluated %d/%d images", i + 1, len(items))
    labels = np.array([r["label"] for r in recs])
    scores = np.array([r["score"] for r in recs])
    rejected = scores > det.threshold
    m = {"bundle": str(bundle), "data": str(data), "n_good": int((labels == 0).sum()),
         "n_defective": int((labels == 1).sum()), "auroc": auroc(labels, scores),
         "threshold": det.threshold, "threshold_source": det.threshold_source,
         "false_rejects": int((rejected & (labels == 0)).sum()), "misses": int((~rejected & (labels == 1)).sum()),
         "latency_ms_median": float(np.median(lat)), "latency_ms_p99": float(np.percentile(lat, 99)),
         "threads": num_threads, "weights": det.bundle.manifest["backbone"].get("weights"),
         "extractor": det.bundle.manifest["extractor"].get("quantization")}
    groups = sorted({r["group"] for r in recs} - {"good"})
    per_group = []
    for g in groups:
        sel = np.array([r["group"] in ("good", g) for r in recs])
        per_group.append({"defect": g, "n": int(sum(r["group"] == g for r in recs)),
                          "auroc_vs_good": auroc(labels[sel], scores[sel]),
                          "detected": int(sum(r["group"] == g and r["decision"] == "REJECT" for r in recs))})
    m["per_defect"] = per_group
    (out / "scores.json").write_text(json.dumps(recs, indent=1))
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    imgs = []
    if labels.min() != labels.max():
        roc_png(labels, scores, out / "roc.png", "ROC (device path)")
        imgs.append(("ROC curve", "roc.png"))
    histogram_png(scores, [r["group"] for r in recs], det.threshold, out / "histogram.png")
    imgs.append(("Score histogram by group", "histogram.png"))
    html_report(out / "report.html", "Anomaly detection evaluation",
                {k: v for k, v in m.items() if k != "per_defect"}, imgs,
                [("Per defect type", per_group),
                 ("Highest-scoring good images", sorted([r for r in recs if r["label"] == 0],
                                                         key=lambda r: -r["score"])[:10]),
                 ("Lowest-scoring defective images", sorted([r for r in recs if r["label"] == 1],
                                                             key=lambda r: r["score"])[:10])])
    return m
