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
from device.preprocess import decode_image
from trainer.heatmap import overlay_png, patch_heatmap, pixel_auroc, tile_heatmap
from trainer.report import histogram_png, html_report, roc_png

log = logging.getLogger(__name__)


def _mask(path):
    if path is None:
        return None
    m = decode_image(path)
    return m if m.ndim == 2 else m[:, :, 0]


def evaluate(bundle: str | Path, data: str | Path, out: str | Path, num_threads: int = 1,
             progress: bool = True) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    det = Detector.from_bundle(bundle, num_threads=num_threads)
    layout = load_layout(data, need_train=False)
    items = layout.test_items()
    spec = det.spec
    recs, lat, tile_scores, patch_scores = [], [], [], []
    pgrid = (det.bundle.manifest["extractor"].get("patches") or {}).get("grid")
    for i, (p, label, group) in enumerate(items):
        t0 = time.perf_counter()
        s = det.score_one(p)
        lat.append((time.perf_counter() - t0) * 1e3)
        tile_scores.append(det.last_tile_scores.copy())
        if pgrid:   # patch extractor: a finer map (float16 keeps memory small for large test sets)
            patch_scores.append(det.last_patch_scores.reshape(-1, *pgrid).astype(np.float16))
        recs.append({"image": str(p), "label": label, "group": group, "score": s,
                     "decision": "REJECT" if det.is_anomalous(s) else "PASS"})
        if spec.tiled:
            recs[-1]["tile_grid"] = det.last_tile_scores.reshape(spec.grid_shape).round(5).tolist()
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
    imgs_tiles = []
    if spec.tiled or pgrid:
        m["n_tiles"] = len(spec.tile_boxes())
        if layout.masks and spec.roi is None and spec.resize == "stretch":
            masks = [None if r["label"] == 0 else _mask(layout.masks.get(p)) for r, (p, _, _) in zip(recs, items)]
            keep = [i for i, r in enumerate(recs) if r["label"] == 0 or masks[i] is not None]
            if spec.tiled:
                m["pixel_auroc_from_grid"] = pixel_auroc([tile_heatmap(tile_scores[i], spec) for i in keep],
                                                         [masks[i] for i in keep])
            if pgrid:
                m["pixel_auroc_from_patches"] = pixel_auroc([patch_heatmap(patch_scores[i], spec) for i in keep],
                                                            [masks[i] for i in keep], side=256)
        (out / "overlays").mkdir(exist_ok=True)
        worst = sorted(range(len(recs)), key=lambda i: -recs[i]["score"])
        shown = worst[:8] + [i for i in worst[::-1] if recs[i]["label"] == 0][:2]
        for i in shown:
            name = f"overlays/{i:04d}_{recs[i]['group']}.png"
            overlay_png(items[i][0], tile_scores[i], spec, det.threshold, out / name,
                        patch_heatmap(patch_scores[i], spec) if pgrid else None)
            imgs_tiles.append((f"{Path(recs[i]['image']).name} ({recs[i]['group']}, score {recs[i]['score']:.3f})",
                               name))
    (out / "scores.json").write_text(json.dumps(recs, indent=1))
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    imgs = []
    if labels.min() != labels.max():
        roc_png(labels, scores, out / "roc.png", "ROC (device path)")
        imgs.append(("ROC curve", "roc.png"))
    histogram_png(scores, [r["group"] for r in recs], det.threshold, out / "histogram.png")
    imgs.append(("Score histogram by group", "histogram.png"))
    html_report(out / "report.html", "Anomaly detection evaluation",
                {k: v for k, v in m.items() if k != "per_defect"}, imgs + imgs_tiles,
                [("Per defect type", per_group),
                 ("Highest-scoring good images", sorted([r for r in recs if r["label"] == 0],
                                                         key=lambda r: -r["score"])[:10]),
                 ("Lowest-scoring defective images", sorted([r for r in recs if r["label"] == 1],
                                                             key=lambda r: r["score"])[:10])])
    return m
