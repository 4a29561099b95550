"""Run one audit method over a folder of images: model, resumable scoring, report.

The model comes from a bundle (``bundle=``) or is fitted on normal images
(``normal=``; 80 % fit, 20 % held out for the threshold). A model fitted here is cached
in ``OUT/model/`` so a resumed run neither refits nor changes its results. Images are
scored in chunks; every finished image is stored at once (:class:`ResultStore`).

Example:
    >>> res = run_audit(AuditJob("projection", ["rejects/"], "out/", normal=["good/"]))   # doctest: +SKIP
    >>> res.summary["image_auroc"]                                              # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from device.audit import data
from device.audit.errors import AuditModelError
from device.audit.methods import TRAINABLE, fit_and_calibrate, make_detector, model_size, prefix
from core.decision import Threshold, decide
from core.metrics import auroc, pixel_auroc
from device.audit.report import write_html, write_panel, write_scores_csv
from device.audit.store import ResultStore, fingerprint
from device.errors import ConfigError, ImageError

log = logging.getLogger(__name__)

DEFAULT_CHUNK = {"anogan": 64, "projection": 16, "nkn": 1}
IMAGE_KEYS = ("map", "recon", "sigma", "raw_map", "norm_map", "recon_map", "grad_map")


@dataclasses.dataclass
class AuditResult:
    """Outcome of :func:`run_audit`."""

    out: Path
    rows: list
    summary: dict
    computed: int
    reused: int


def _load_batch(paths, size, expect):
    imgs, origs = [], []
    for p in paths:
        im, orig = data.load_grey(p, size=size, expect=expect)
        imgs.append(im)
        origs.append(orig)
    return imgs, origs


def _fit_or_load_model(method, normal, out, size, pattern, options, target_frr, seed):
    """Fit a detector on normal images (cached in ``out/model``); returns (det, threshold entry, model id)."""
    npaths = data.list_audit_images(normal, pattern)
    if size is None:
        size = data.load_grey(npaths[0])[0].shape[:2]
    key = fingerprint({"method": method, "normal": [str(p) for p in npaths],
                       "mtimes": [p.stat().st_mtime_ns for p in npaths], "size": list(size),
                       "options": options, "target_frr": target_frr, "seed": seed})
    mdir = Path(out) / "model"
    meta_path = mdir / f"{method}.json"
    if method in TRAINABLE and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            from device.audit.methods import detector_class

            files = {n: (mdir / n).read_bytes() for n in meta["files"]}
            det = detector_class(method).from_files(meta["params"], files, prefix(method))
            log.info("reusing the %s model fitted earlier in %s", method, mdir)
            return det, meta["threshold"], key
    normal_imgs, _ = _load_batch(npaths, size, tuple(size))
    det, thr = fit_and_calibrate(method, np.stack(normal_imgs), options, target_frr, seed)
    if method in TRAINABLE:
        mdir.mkdir(parents=True, exist_ok=True)
        files = det.to_files(prefix(method))
        for n, b in files.items():
            (mdir / n).write_bytes(b)
        tmp = meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"key": key, "params": det.params(), "files": sorted(files),
                                   "threshold": thr}, indent=2, default=float))
        tmp.replace(meta_path)
    return det, thr, key


def _record(scores, i: int) -> dict:
    rec = {"score": float(scores.scores[i])}
    if scores.maps is not None:
        rec["map"] = scores.maps[i].astype(np.float32)
    for k, v in (scores.extra or {}).items():
        v = np.asarray(v)
        if v.ndim == 1 and len(v) == len(scores):
            rec[f"score_{k}"] = float(v[i])
        elif v.ndim == 3 and len(v) == len(scores):
            name = {"recon_maps": "recon_map", "grad_maps": "grad_map", "raw_maps": "raw_map",
                    "norm_maps": "norm_map"}.get(k, k)
            rec[name] = v[i].astype(np.float32)
    return rec


@dataclasses.dataclass
class AuditJob:
    """One audit run: what to score, against what, and how (the CLI's options, declared once).

    Attributes:
        method: ``anogan``, ``projection`` or ``nkn``.
        images: folders or files to audit.
        out: output folder (report.html, scores.csv, panels/, the resumable results).
        normal: folders of normal images to fit on (trainable methods; NKN: threshold only).
        bundle: a bundle carrying the method's audit model (instead of ``normal``).
        size: resize every image to (H, W); without it every image must have the model's size.
        pattern: glob on file names (e.g. ``"*.jpg"`` when masks share the folder).
        labels: CSV of ``image,label``; masks: folder of same-named PNG masks.
        options: detector keyword arguments.
        target_frr, threshold: the threshold (calibrated at a rate, or fixed).
        chunk: images scored per batch; fresh: discard earlier results; panels: draw PNG panels.
    """

    method: str
    images: Sequence[str | Path]
    out: str | Path
    normal: Sequence[str | Path] | None = None
    bundle: str | Path | None = None
    size: tuple[int, int] | None = None
    pattern: str | None = None
    labels: str | Path | None = None
    masks: str | Path | None = None
    options: dict = dataclasses.field(default_factory=dict)
    target_frr: float = 0.01
    threshold: float | None = None
    chunk: int | None = None
    fresh: bool = False
    panels: bool = True
    seed: int = 0

    @classmethod
    def from_args(cls, args, method: str, options: dict) -> "AuditJob":
        """The job an ``anomaly-device audit`` command line describes."""
        names = {f.name for f in dataclasses.fields(cls)} - {"method", "options"}
        return cls(method=method, options=options, **{n: getattr(args, n) for n in names if hasattr(args, n)})


def _inputs(job: AuditJob):
    """Image paths, their names relative to ``--images``, and the labels; refuses ambiguous names."""
    paths = data.list_audit_images(job.images, job.pattern)
    rels = [data.relative_name(p, job.images) for p in paths]
    seen: dict[str, Path] = {}
    for p, r in zip(paths, rels):
        if ResultStore.key(r) in seen:
            raise ConfigError(f"{p} and {seen[ResultStore.key(r)]} have the same name {r!r} relative to "
                              f"--images; pass their common parent folder instead")
        seen[ResultStore.key(r)] = p
    if job.masks is not None and not Path(job.masks).is_dir():
        raise ConfigError(f"{job.masks}: masks folder not found")
    if job.normal and job.bundle:
        raise ConfigError("give either --normal or --bundle, not both")
    return paths, rels, data.read_labels(job.labels) if job.labels else None


def _model(job: AuditJob):
    """``(detector, threshold entry, model id)`` from the bundle, fitted on normals, or untrained (NKN)."""
    if job.bundle:
        from device.audit.bundled import load_audit_model

        det, entry = load_audit_model(job.bundle, job.method)
        msize = model_size(det)
        if job.size is not None and msize is not None and tuple(job.size) != msize:
            raise AuditModelError(f"{job.bundle}: the {job.method} audit model expects {msize[1]}x{msize[0]} images, "
                                  f"--size asks for {job.size[1]}x{job.size[0]}")
        return det, entry.get("threshold"), entry["model_sha256"]
    if job.normal:
        return _fit_or_load_model(job.method, job.normal, Path(job.out), job.size, job.pattern, job.options,
                                  job.target_frr, job.seed)
    if job.method in TRAINABLE:
        raise ConfigError(f"audit {job.method} needs normal images (--normal DIR) or a bundle with an "
                          f"audit model (--bundle B)")
    return make_detector(job.method, None, job.options), None, None


def _score_chunk(job: AuditJob, det, store, paths, rels, idx, work_size, expect, progress, done: int) -> int:
    """Score images ``idx``, store each result at once; returns the running count."""
    imgs, origs = _load_batch([paths[i] for i in idx], work_size, expect)
    if job.masks is not None:  # a mask that does not fit its image fails before the slow part
        for i, im, orig in zip(idx, imgs, origs):
            mp = data.mask_path_for(paths[i], job.masks, rels[i])
            if mp is not None:
                data.load_mask(mp, paths[i], orig, im.shape[:2])
    t0 = time.perf_counter()
    try:
        if getattr(det, "any_size", False):
            results = [det.anomaly_score(im[None]) for im in imgs]
        else:
            results = [det.anomaly_score(np.stack(imgs))]
    except ValueError as exc:
        names = ", ".join(str(paths[i]) for i in idx[:3]) + (" ..." if len(idx) > 3 else "")
        raise ImageError(f"{names}: {job.method} cannot score this image: {exc}") from exc
    dt = (time.perf_counter() - t0) / len(idx)
    flat = [_record(r, j) for r in results for j in range(len(r))]
    for j, i in enumerate(idx):
        rec = flat[j]
        rec.update(input=imgs[j], orig_shape=np.asarray(origs[j]), seconds=dt)
        store.save(rels[i], rec)
        done += 1
        if progress:
            progress(done, len(rels), rels[i], rec["score"], dt)
    return done


def run_audit(job: AuditJob, progress: Callable | None = None) -> AuditResult:
    """Score every image of ``job`` and write the report into ``job.out``.

    Args:
        progress: ``callback(done, total, name, score, seconds)`` after each image.

    Raises:
        ConfigError, ImageError, AuditModelError: bad arguments or inputs (message names the file).
    """
    out = Path(job.out)
    paths, rels, label_map = _inputs(job)
    out.mkdir(parents=True, exist_ok=True)
    det, thr_entry, model_id = _model(job)
    expect = model_size(det)
    work_size = tuple(job.size) if job.size is not None else None
    thr_value = _threshold(job.threshold, thr_entry)
    settings = {"model": model_id, "options": job.options if not job.bundle else {}, "size": work_size,
                "expect": expect, "params": det.params() if hasattr(det, "params") else {}}
    store = ResultStore(out, job.method, settings, fresh=job.fresh)
    todo = [i for i, r in enumerate(rels) if not store.has(r)]
    reused = len(rels) - len(todo)
    if reused:
        log.info("%d of %d images already scored in %s; resuming", reused, len(rels), out)
    step, done = job.chunk or DEFAULT_CHUNK.get(job.method, 8), reused
    for s in range(0, len(todo), step):
        done = _score_chunk(job, det, store, paths, rels, todo[s:s + step], work_size, expect, progress, done)
    return _report(job.method, out, paths, rels, store, label_map, job.masks, thr_value, thr_entry, job.panels,
                   computed=len(todo), reused=reused)


def _threshold(threshold, thr_entry) -> Threshold | None:
    """The audit's threshold: ``--threshold``, else the calibrated one; validated (finite, >= 0)."""
    try:
        if threshold is not None:
            return Threshold(threshold, "--threshold")
        if thr_entry and thr_entry.get("value") is not None:
            return Threshold(thr_entry["value"], thr_entry.get("method", "calibrated"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return None


def _report(method, out, paths, rels, store, label_map, masks, thr_value, thr_entry, panels, computed, reused):
    rows, maps_by_key, gts = [], {}, []
    pixel_items = []
    for p, rel in zip(paths, rels):
        rec = store.load(rel)
        row = {"image": rel, "score": float(rec["score"])}
        for k in sorted(rec):
            if k.startswith("score_"):
                row[k] = float(rec[k])
        lab = data.label_for(label_map, rel) if label_map is not None else None
        if label_map is not None:
            row["label"] = "" if lab is None else lab
        if thr_value is not None:
            row["decision"] = str(decide(row["score"], thr_value).decision)
        row["seconds"] = float(rec["seconds"])
        mask = None
        if masks is not None:
            mp = data.mask_path_for(p, masks, rel)
            shape = rec["map"].shape if "map" in rec else rec["input"].shape
            if mp is not None:
                mask = data.load_mask(mp, p, tuple(int(v) for v in rec["orig_shape"]), shape)
            elif lab == 0:
                mask = np.zeros(shape, np.uint8)
            if mask is not None:
                pixel_items.append((mask, {k: rec[k] for k in IMAGE_KEYS if k in rec and k != "recon" and k != "sigma"}))
        if panels:
            ppath = out / "panels" / f"{store.key(rel)}.png"
            if not ppath.is_file():
                others = "  ".join(f"{k[6:]}={v:.4g}" for k, v in row.items() if k.startswith("score_"))
                title = (f"{rel}  score={row['score']:.4g}" + (f"  {row['decision']}" if "decision" in row else "")
                         + (f"\n{others}" if others else ""))
                write_panel(ppath, rec["input"], rec.get("projected", rec.get("recon")), rec["map"], title=title, mask=mask,
                            extra=rec.get("sigma"), extra_title="GP sigma" if "sigma" in rec else "")
            row["panel"] = ppath.relative_to(out).as_posix()
        rows.append(row)
    summary = {"method": method, "images": len(rows), "computed_now": computed, "reused": reused,
               "seconds_per_image": float(np.mean([r["seconds"] for r in rows])) if rows else math.nan}
    if thr_value is not None:
        summary["threshold"] = thr_value.value
        summary["threshold_source"] = thr_value.source
        summary["rejected"] = sum(r.get("decision") in ("REJECT", "ERROR") for r in rows)
    if label_map is not None:
        lab_rows = [r for r in rows if r.get("label") in (0, 1)]
        summary["labelled"] = len(lab_rows)
        for k in [k for k in rows[0] if k == "score" or k.startswith("score_")]:
            summary[f"image_auroc[{k}]"] = auroc([r["label"] for r in lab_rows], [r[k] for r in lab_rows])
    if pixel_items:
        summary["masked_images"] = len(pixel_items)
        for k in pixel_items[0][1]:
            summary[f"pixel_auroc[{k}]"] = pixel_auroc([m for m, _ in pixel_items], [d[k] for _, d in pixel_items])
    write_scores_csv(out / "scores.csv", [{k: v for k, v in r.items() if k != "panel"} for r in rows])
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    write_html(out / "report.html", f"Audit: {method}", summary, rows)
    log.info("report written to %s", out / "report.html")
    return AuditResult(out=out, rows=rows, summary=summary, computed=computed, reused=reused)
