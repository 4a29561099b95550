"""Evaluate a bundle through the device path on an MVTec-style test folder.

Every test image goes through :meth:`device.detector.Detector.inspect` (the decision the device
would take: PASS, REJECT, or ERROR for an image it cannot score). Writes ``metrics.json``,
``scores.json`` (per image), ``roc.png``, ``histogram.png``, overlays of the false rejects, the
misses and the highest-scoring images (tile or patch maps where the bundle has them), and
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

from core.metrics import auroc
from device.detector import Detector
from device.heatmap import patch_heatmap, tile_heatmap
from device.preprocess import decode_image
from trainer.data import load_layout
from trainer.heatmap import grid_pixel_auroc, overlay_png
from core.report import html_report
from trainer.report import histogram_png, roc_png

log = logging.getLogger(__name__)

SHOWN_PER_KIND = 8     # overlays drawn per kind (false rejects, misses, top scores)


def _mask(path):
    if path is None:
        return None
    m = decode_image(path)
    return m if m.ndim == 2 else m[:, :, 0]


def _score_all(det: Detector, items, progress: bool):
    """Per-image records, tile maps, patch maps (float16) and latencies (ms)."""
    n_tiles = len(det.spec.tile_boxes())
    recs, tiles, patches, lat = [], [], [], []
    for i, (p, label, group) in enumerate(items):
        t0 = time.perf_counter()
        r = det.inspect(p)
        lat.append((time.perf_counter() - t0) * 1e3)
        if r.score is None:
            log.warning("%s: %s", p, r.reason)
        tiles.append(r.tile_scores if r.tile_scores is not None else np.full(n_tiles, np.nan, np.float32))
        if det.patch_grid:
            patches.append(r.patch_scores.astype(np.float16) if r.patch_scores is not None
                           else np.full((n_tiles, *det.patch_grid), np.nan, np.float16))
        rec = {"image": str(p), "label": label, "group": group, "score": r.score, "decision": str(r.decision)}
        if r.reason:
            rec["reason"] = r.reason
        if r.tile_grid is not None:
            rec["tile_grid"] = np.asarray(r.tile_grid).round(5).tolist()
        recs.append(rec)
        if progress and (i + 1) % 50 == 0:
            log.info("evaluated %d/%d images", i + 1, len(items))
    return recs, tiles, patches, lat


def _metrics(det: Detector, bundle, data, recs, lat, num_threads: int) -> dict:
    """Image-level figures. ERROR images count as rejects, and are left out of the AUROC."""
    y_all = np.array([r["label"] for r in recs])
    rejected = np.array([r["decision"] != "PASS" for r in recs])
    scored = [r for r in recs if r["score"] is not None]
    y, s = np.array([r["label"] for r in scored]), np.array([r["score"] for r in scored])
    man = det.bundle.manifest
    m = {"bundle": str(bundle), "bundle_digest": det.bundle.digest, "data": str(data),
         "n_good": int((y_all == 0).sum()), "n_defective": int((y_all == 1).sum()), "auroc": auroc(y, s),
         "threshold": det.threshold.value, "threshold_source": det.threshold.source,
         "false_rejects": int((rejected & (y_all == 0)).sum()), "misses": int((~rejected & (y_all == 1)).sum()),
         "errors": int(sum(r["decision"] == "ERROR" for r in recs)),
         "latency_ms_median": float(np.median(lat)), "latency_ms_p99": float(np.percentile(lat, 99)),
         "threads": num_threads, "weights": man.backbone.get("weights"), "extractor": man.extractor.quantization}
    per = []
    for g in sorted({r["group"] for r in recs} - {"good"}):
        sel = [r for r in scored if r["group"] in ("good", g)]
        per.append({"defect": g, "n": int(sum(r["group"] == g for r in recs)),
                    "auroc_vs_good": auroc([r["label"] for r in sel], [r["score"] for r in sel]),
                    "detected": int(sum(r["group"] == g and r["decision"] != "PASS" for r in recs))})
    m["per_defect"] = per
    return m


def _pixel_metrics(det: Detector, layout, items, recs, tiles, patches) -> dict:
    """Pixel AUROC from the tile grid and from the patch map, where the bundle has them and
    the masks line up with the frames (no ROI, stretch resize)."""
    spec = det.spec
    if not (spec.tiled or det.patch_grid):
        return {}
    m = {"n_tiles": len(spec.tile_boxes())}
    if not layout.masks:
        return m
    if spec.roi is not None or spec.resize != "stretch":
        m["pixel_auroc_note"] = "masks not compared: the bundle crops (roi) or does not stretch the frame"
        return m
    masks = [None if r["label"] == 0 else _mask(layout.masks.get(p)) for r, (p, _, _) in zip(recs, items)]
    keep = [i for i, r in enumerate(recs) if (r["label"] == 0 or masks[i] is not None) and r["score"] is not None]
    if not any(masks[i] is not None for i in keep):
        m["pixel_auroc_note"] = "masks exist but none matches a test image name"
        return m
    if spec.tiled:
        m["pixel_auroc_from_grid"] = grid_pixel_auroc([tile_heatmap(tiles[i], spec) for i in keep],
                                                      [masks[i] for i in keep])
    if det.patch_grid:
        m["pixel_auroc_from_patches"] = grid_pixel_auroc([patch_heatmap(patches[i], spec) for i in keep],
                                                         [masks[i] for i in keep], side=256)
    return m


def _overlays(det: Detector, out: Path, items, recs, tiles, patches) -> list[tuple[str, str]]:
    """The frames people want to see, each with its score map drawn over it: false rejects,
    misses, and the highest-scoring images."""
    scored = [i for i, r in enumerate(recs) if r["score"] is not None]
    by_score = sorted(scored, key=lambda i: -recs[i]["score"])
    kinds = [("false reject", [i for i in by_score if recs[i]["label"] == 0 and recs[i]["decision"] != "PASS"]),
             ("miss", [i for i in by_score[::-1] if recs[i]["label"] == 1 and recs[i]["decision"] == "PASS"]),
             ("top score", by_score)]
    (out / "overlays").mkdir(exist_ok=True)
    shown, done = [], set()
    for kind, idx in kinds:
        for i in [i for i in idx if i not in done][:SHOWN_PER_KIND]:
            done.add(i)
            name = f"overlays/{i:04d}_{recs[i]['group']}.png"
            hm = patch_heatmap(patches[i].astype(np.float32), det.spec) if det.patch_grid else None
            overlay_png(items[i][0], tiles[i], det.spec, det.threshold.value, out / name, hm)
            shown.append((f"{kind}: {Path(recs[i]['image']).name} ({recs[i]['group']}, score "
                          f"{recs[i]['score']:.3f}, {recs[i]['decision']})", name))
    return shown


def evaluate(bundle: str | Path, data: str | Path, out: str | Path, num_threads: int = 1,
             progress: bool = True) -> dict:
    """Score ``data``'s test images with ``bundle`` through the device path; write the report to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layout = load_layout(data, need_train=False)
    items = layout.test_items()
    with Detector.from_bundle(bundle, num_threads=num_threads) as det:
        recs, tiles, patches, lat = _score_all(det, items, progress)
        m = _metrics(det, bundle, data, recs, lat, num_threads)
        m.update(_pixel_metrics(det, layout, items, recs, tiles, patches))
        shown = _overlays(det, out, items, recs, tiles, patches)
    (out / "scores.json").write_text(json.dumps(recs, indent=1))
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    _report(out, m, recs, shown)
    return m


def _report(out: Path, m: dict, recs: list[dict], shown: list[tuple[str, str]]) -> None:
    scored = [r for r in recs if r["score"] is not None]
    labels, scores = np.array([r["label"] for r in scored]), np.array([r["score"] for r in scored])
    imgs = []
    if len(labels) and labels.min() != labels.max():
        roc_png(labels, scores, out / "roc.png", "ROC (device path)")
        imgs.append(("ROC curve", "roc.png"))
    if len(scores):
        histogram_png(scores, [r["group"] for r in scored], m["threshold"], out / "histogram.png")
        imgs.append(("Score histogram by group", "histogram.png"))
    html_report(out / "report.html", "Anomaly detection evaluation",
                {k: v for k, v in m.items() if k != "per_defect"}, imgs + shown,
                [("Per defect type", m["per_defect"]),
                 ("Highest-scoring good images", sorted([r for r in scored if r["label"] == 0],
                                                         key=lambda r: -r["score"])[:10]),
                 ("Lowest-scoring defective images", sorted([r for r in scored if r["label"] == 1],
                                                             key=lambda r: r["score"])[:10]),
                 ("Images that could not be scored (ERROR, rejected)",
                  [r for r in recs if r["score"] is None])])
