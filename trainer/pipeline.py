"""``fit``: normal images -> (DOC fine-tune | untouched backbone) -> TFLite -> bank -> threshold -> bundle.

``fit`` runs stages with small interfaces, each testable alone on tiny inputs:

1. :func:`prepare` - prepared frames: the train / calibration split, synthetic validation
   defects drawn on held-out normals (real defects join when given), and their tiles;
2. :func:`extractor_candidates` + :func:`select` - the untouched backbone and (unless disabled)
   DOC fine-tuning, each validated on float Keras features (:func:`validate`), the better one
   kept with the figures behind the choice;
3. :func:`export` - TFLite conversion (full int8, or what ``--quant`` asks; ``auto`` measures
   int8 against float) and the device features of every image, computed with that ``.tflite``;
4. :func:`choose_bank` - shared or per-tile-position bank (measured on validation when tiled),
   subsampled to the cap;
5. :func:`calibrate` - the threshold from the calibration images' device scores;
6. :func:`manifest_body` + :func:`device.bundle.write_bundle`.

Every score in stages 2-5 comes from :class:`device.scoring.TileScorer`, the class the device
scores with, so the threshold fits the device's scores by construction.

Example:
    >>> result = fit(train_paths, "bundle/", FitConfig(size=(96, 96)))   # doctest: +SKIP
    >>> result.summary["int8_val_auroc"]                               # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.metrics import auroc
from core.threshold import describe_calibration
from device.bundle import npy_bytes, write_bundle
from device.extractor import TFLiteExtractor, normalize_features
from device.manifest import InputSpec
from device.preprocess import cut_tiles, prepare_frame
from device.scoring import PATCH_BANK_DEFAULT, TileScorer, bank_rows
from trainer.options import FitConfig

log = logging.getLogger(__name__)

AUTO_QUANT_TOLERANCE = 0.01  # quant "auto": validation AUROC int8 may lose against float before float ships
CALIBRATION_FEATURES_MAX_BYTES = 16 << 20   # calibration features ship when at most this large (device learn)

__all__ = ["FitConfig", "FitResult", "fit", "prepare", "validate", "extractor_candidates", "select", "export",
           "choose_bank", "calibrate", "manifest_body", "auroc"]


@dataclasses.dataclass
class FitResult:
    bundle: Path
    summary: dict
    val_scores: dict  # name -> (labels, scores) for the report


@dataclasses.dataclass
class FitData:
    """Stage 1's output: prepared frames and their tiles (frame-major)."""

    spec: InputSpec
    x_train: np.ndarray
    x_cal: np.ndarray
    x_syn: np.ndarray
    x_real: np.ndarray | None
    syn_kinds: list[str]
    syn_scale: float
    cal_how: str
    tiles: dict[str, np.ndarray]    # "train", "cal", "syn" (and "real")

    @property
    def n_tiles(self) -> int:
        return len(self.spec.tile_boxes())


@dataclasses.dataclass(frozen=True)
class Rows:
    """How a network's output becomes feature rows: ``p`` rows per tile, normalisation."""

    p: int
    norm: str
    patches: dict | None

    @classmethod
    def of(cls, info: dict) -> "Rows":
        patches = info.get("patches")
        return cls(patches["grid"][0] * patches["grid"][1] if patches else 1, "none" if patches else "l2", patches)


# ------------------------------------------------------------------------------------ 1. data
def _as_batch(images, spec: InputSpec) -> np.ndarray:
    """Prepared frames (N, H, W, 3): working size with a tile grid, else the network input."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return images
    return np.stack([prepare_frame(im, spec) for im in images])


def _tiles(frames: np.ndarray, spec: InputSpec) -> np.ndarray:
    """All tiles of all frames, frame-major: (N * T, h, w, 3)."""
    if not spec.tiled:
        return frames
    return np.concatenate([cut_tiles(f, spec) for f in frames])


def prepare(train, cfg: FitConfig, calib=None, real_defects=None) -> FitData:
    """Split, synthetic validation defects on the held-out normals, tiles."""
    from trainer.synth import synthetic_defects

    spec = cfg.input_spec()
    x_all = _as_batch(train, spec)
    if calib is None:
        idx = np.random.default_rng(cfg.seed).permutation(len(x_all))
        n_cal = max(1, int(round(len(x_all) * cfg.calib_fraction)))
        if n_cal >= len(x_all) - 1:
            from device.errors import ConfigError

            raise ConfigError(f"{len(x_all)} normal images are too few to hold out {n_cal} for calibration")
        x_train, x_cal = x_all[np.sort(idx[n_cal:])], x_all[np.sort(idx[:n_cal])]
        cal_how = f"seeded {cfg.calib_fraction:.0%} split of the training images (seed {cfg.seed})"
    else:
        x_train, x_cal = x_all, _as_batch(calib, spec)
        cal_how = "separate held-out normal images"
    syn_scale = 1.0     # tiled: defects sized to a tile, not the frame (what the grid is there to find)
    if spec.tiled:
        _, _, tw, th = spec.tile_boxes()[0]
        syn_scale = min(th / spec.working_size[0], tw / spec.working_size[1])
    syn, _, kinds = synthetic_defects(list(x_cal), seed=cfg.seed + 1, scale=syn_scale)
    x_syn = np.stack(syn)
    x_real = _as_batch(real_defects, spec) if real_defects is not None and len(real_defects) else None
    log.info("fit: %d train, %d calibration, %d synthetic defects%s", len(x_train), len(x_cal), len(x_syn),
             f", {len(x_real)} real defects" if x_real is not None else "")
    tiles = {"train": _tiles(x_train, spec), "cal": _tiles(x_cal, spec), "syn": _tiles(x_syn, spec)}
    if x_real is not None:
        tiles["real"] = _tiles(x_real, spec)
    return FitData(spec, x_train, x_cal, x_syn, x_real, list(kinds), syn_scale, cal_how, tiles)


# ------------------------------------------------------------------------------------ scoring helpers
def keras_rows(model, tiles: np.ndarray, rows: Rows) -> np.ndarray:
    """Float Keras features as rows: (N, D), or (N * p, C) patch rows for a patch extractor."""
    f = np.asarray(model.predict(tiles.astype(np.float32), batch_size=64, verbose=0), np.float32)
    return normalize_features(f.reshape(f.shape[0] * rows.p, -1), rows.norm)


def device_rows(ext: TFLiteExtractor, tiles: np.ndarray, n_tiles: int, rows: Rows) -> np.ndarray:
    """Features exactly as the device computes them: one interpreter call per frame (its tiles
    together), so batch-dependent kernels (dynamic-range quantisation) agree too."""
    f = np.concatenate([ext(tiles[i:i + n_tiles]) for i in range(0, len(tiles), n_tiles)])
    return normalize_features(f.reshape(f.shape[0] * rows.p, -1), rows.norm)


def row_positions(n_frames: int, n_tiles: int, p: int = 1) -> np.ndarray:
    """Tile position of every feature row of ``n_frames`` frames (frame-major, patch-minor)."""
    return np.tile(np.repeat(np.arange(n_tiles), p), n_frames)


def image_auroc(scorer: TileScorer, good: np.ndarray, bad: np.ndarray) -> float:
    """AUROC of frame scores: feature rows of good frames against those of defective ones."""
    s_good, s_bad = scorer.frame_scores(good), scorer.frame_scores(bad)
    return auroc(np.r_[np.zeros(len(s_good)), np.ones(len(s_bad))], np.r_[s_good, s_bad])


def _scorer(bank: np.ndarray, cfg: FitConfig, n_tiles: int, rows: Rows, tile_index=None, projection=None):
    return TileScorer(bank, cfg.k, cfg.scoring, n_tiles=n_tiles, patches=rows.p, tile_index=tile_index,
                      projection=projection)


def val_bank(f: np.ndarray, cfg: FitConfig, rows: Rows) -> np.ndarray:
    """Bank for validation scores: all training rows, or a seeded random sample of patch rows."""
    return f[bank_rows(f, cfg.bank_max, "random", cfg.scoring, rows.p, cfg.seed)] if rows.p > 1 else f


# ------------------------------------------------------------------------------------ 2. extractors
def validate(model, data: FitData, rows: Rows, cfg: FitConfig) -> dict:
    """Validation AUROCs of a Keras extractor: held-out normals against synthetic (and real) defects."""
    t = data.tiles
    sc = _scorer(val_bank(keras_rows(model, t["train"], rows), cfg, rows), cfg, data.n_tiles, rows)
    fc = keras_rows(model, t["cal"], rows)
    r = {"synthetic_auroc": image_auroc(sc, fc, keras_rows(model, t["syn"], rows))}
    if "real" in t:
        r["real_auroc"] = image_auroc(sc, fc, keras_rows(model, t["real"], rows))
    return r


def extractor_candidates(data: FitData, cfg: FitConfig, progress: bool = True):
    """``(candidates, backbone_info, rows)``; candidates: name -> (Keras extractor, validation, DOC record)."""
    from models.backbone import build_backbone, build_extractor

    base, info = build_extractor(cfg.alpha, tuple(cfg.size), cfg.weights, cfg.taps, cfg.pooling)
    rows = Rows.of(info)
    if rows.patches:
        log.info("patch features: %dx%d patches of %d dims per tile, scored with %s", *rows.patches["grid"],
                 rows.patches["dim"], cfg.scoring)
    cands = {"untouched": (base, validate(base, data, rows, cfg), None)}
    log.info("untouched backbone (%s weights): %s", info["weights"], cands["untouched"][1])
    if cfg.doc:
        from trainer.data import load_reference
        from trainer.doc import train_doc

        backbone, _ = build_backbone(cfg.alpha, tuple(cfg.size), cfg.weights)
        # patch extractors: DOC's compactness and reference head work on the taps' average pooling
        dc = cfg.doc_cfg.model_copy(update={"taps": cfg.taps, "pooling": "avg" if rows.patches else cfg.pooling,
                                            "seed": cfg.seed})
        ref_x, ref_y, ref_desc = load_reference(cfg.reference, tuple(cfg.size), cfg.n_reference, cfg.seed)
        backbone, hist = train_doc(backbone, data.tiles["train"], ref_x, ref_y, dc, progress=progress)
        doc_model, _ = build_extractor(cfg.alpha, tuple(cfg.size), taps=cfg.taps, pooling=cfg.pooling,
                                       backbone=backbone)
        doc_info = {**dc.model_dump(), "reference": ref_desc, "seconds": round(hist["seconds"], 1),
                    "final_l_d": float(np.mean(hist["l_d"][-10:])), "final_l_c": float(np.mean(hist["l_c"][-10:]))}
        cands["doc"] = (doc_model, validate(doc_model, data, rows, cfg), doc_info)
        log.info("DOC fine-tuned: %s", cands["doc"][1])
    return cands, info, rows


def select(cands: dict, metric: str) -> tuple[str, str]:
    """The candidate with the higher validation ``metric`` (the untouched one on a tie), and why."""
    chosen = max(cands, key=lambda n: (cands[n][1][metric], n == "untouched"))
    if len(cands) == 1:
        return chosen, "DOC fine-tuning disabled"
    reason = (f"{chosen} has the higher validation {metric.replace('_', ' ')} "
              + ", ".join(f"{n}={c[1][metric]:.4f}" for n, c in cands.items()))
    return chosen, reason


# ------------------------------------------------------------------------------------ 3. export
@dataclasses.dataclass
class Export:
    blob: bytes
    ext: TFLiteExtractor
    quant: str
    report: dict
    feats: dict[str, np.ndarray]      # device feature rows of "train", "cal", "syn"
    ms_per_image: float


def _convert(model, data: FitData, quant: str, report: dict, seed: int):
    """``(blob, extractor, quant)``; a degenerate full-int8 model falls back to dynamic range, loudly."""
    from trainer.convert import convert

    t = data.tiles["train"]
    rep = t[np.random.default_rng(seed).permutation(len(t))[:200]]   # representative images for int8
    blob = convert(model, rep, quant)
    ext = TFLiteExtractor(blob, num_threads=1)
    if quant == "int8":
        raw = ext(data.tiles["cal"][:64])
        if not np.isfinite(raw).all() or float(np.ptp(raw)) == 0.0 or (np.abs(raw).sum(axis=1) == 0).any():
            log.warning("!" * 72)
            log.warning("FULL-INT8 EXTRACTOR IS DEGENERATE (constant or all-zero features, typical of random "
                        "weights); falling back to dynamic-range quantisation")
            log.warning("!" * 72)
            report["int8_fallback"] = "int8 features constant or zero on calibration images"
            quant = "dynamic"
            blob = convert(model, rep, quant)
            ext = TFLiteExtractor(blob, num_threads=1)
    return blob, ext, quant


def export(model, data: FitData, rows: Rows, cfg: FitConfig) -> Export:
    """Convert, compute the device features of every image with the ``.tflite``, and (``auto``)
    measure the quantised extractor against float and keep the better one within tolerance."""
    from trainer.convert import convert

    report: dict[str, Any] = {}
    blob, ext, quant = _convert(model, data, "int8" if cfg.quant == "auto" else cfg.quant, report, cfg.seed)
    t0 = time.perf_counter()
    feats = {k: device_rows(ext, data.tiles[k], data.n_tiles, rows) for k in ("train", "cal", "syn")}
    n_img = sum(len(data.tiles[k]) for k in ("train", "cal", "syn"))
    ms = (time.perf_counter() - t0) * 1e3 / n_img * data.n_tiles
    if quant == "float" or not (cfg.compare_float or cfg.quant == "auto"):
        return Export(blob, ext, quant, report, feats, ms)
    fblob = convert(model, None, "float")
    fext = TFLiteExtractor(fblob, num_threads=1)
    ff = {k: device_rows(fext, data.tiles[k], data.n_tiles, rows) for k in ("train", "cal", "syn")}
    cos = np.sum(normalize_features(np.concatenate([feats["cal"], feats["syn"]]), "l2")
                 * normalize_features(np.concatenate([ff["cal"], ff["syn"]]), "l2"), axis=1)
    f_auc = image_auroc(_scorer(val_bank(ff["train"], cfg, rows), cfg, data.n_tiles, rows), ff["cal"], ff["syn"])
    report.update({"float_val_auroc": f_auc, "feature_cosine_mean": float(cos.mean()),
                   "feature_cosine_min": float(cos.min())})
    if cfg.quant != "auto":
        return Export(blob, ext, quant, report, feats, ms)
    q_auc = image_auroc(_scorer(val_bank(feats["train"], cfg, rows), cfg, data.n_tiles, rows), feats["cal"],
                        feats["syn"])
    loss = f_auc - q_auc
    report[f"{quant}_measured_val_auroc"] = q_auc
    if loss > AUTO_QUANT_TOLERANCE:
        report["auto_choice"] = f"float: {quant} lost {loss:.4f} validation AUROC (> {AUTO_QUANT_TOLERANCE}) against float"
        log.warning("quant auto: %s", report["auto_choice"])
        return Export(fblob, fext, "float", report, ff, ms)
    report["auto_choice"] = f"{quant}: within {AUTO_QUANT_TOLERANCE} validation AUROC of float (loss {loss:.4f})"
    log.info("quant auto: %s", report["auto_choice"])
    return Export(blob, ext, quant, report, feats, ms)


# ------------------------------------------------------------------------------------ 4. bank
@dataclasses.dataclass
class Bank:
    rows: np.ndarray
    tile_index: np.ndarray | None
    mode: str
    report: dict
    subsampled: bool


def _measure_bank_modes(f_train, f_cal, f_syn, pos, cfg: FitConfig, n_tiles: int, rows: Rows) -> dict:
    """Validation AUROC of a shared bank and of per-position banks (pooled features: every
    training tile; patch rows: a seeded sample)."""
    report = {}
    for mode in ("shared", "per_position"):
        sel = None
        if rows.p > 1 and mode == "shared":
            sel = bank_rows(f_train, cfg.bank_max, "random", cfg.scoring, rows.p, cfg.seed)
        elif rows.p > 1:
            sel = np.concatenate([np.flatnonzero(pos == i)[bank_rows(
                f_train[pos == i], None if not cfg.bank_max else cfg.bank_max // n_tiles, "random",
                cfg.scoring, rows.p, cfg.seed)] for i in range(n_tiles)])
        fb = f_train[sel] if sel is not None else f_train
        tidx = (pos[sel] if sel is not None else pos) if mode == "per_position" else None
        report[f"{mode}_synthetic_auroc"] = image_auroc(_scorer(fb, cfg, n_tiles, rows, tidx), f_cal, f_syn)
    return report


def choose_bank(exp: Export, data: FitData, rows: Rows, cfg: FitConfig) -> Bank:
    """Shared or per-position bank (``auto``: measured on validation when tiled), subsampled to ``bank_max``."""
    n_tiles, f_train = data.n_tiles, exp.feats["train"]
    pos = row_positions(len(data.x_train), n_tiles, rows.p)
    mode, report = "shared", {}
    if n_tiles > 1:
        report = _measure_bank_modes(f_train, exp.feats["cal"], exp.feats["syn"], pos, cfg, n_tiles, rows)
        if cfg.bank_mode == "auto":
            mode = max(("shared", "per_position"), key=lambda m: (report[f"{m}_synthetic_auroc"], m == "shared"))
            report["reason"] = ("higher synthetic-defect validation AUROC: shared "
                                f"{report['shared_synthetic_auroc']:.4f}, per-position "
                                f"{report['per_position_synthetic_auroc']:.4f}")
        else:
            mode, report["reason"] = cfg.bank_mode, "configured"
    if mode == "per_position":
        per = None if not cfg.bank_max else max(cfg.k + 1, cfg.bank_max // n_tiles)
        keep = np.concatenate([np.flatnonzero(pos == i)[bank_rows(f_train[pos == i], per, cfg.bank_subsample,
                                                                  cfg.scoring, rows.p, cfg.seed)]
                               for i in range(n_tiles)])
    else:
        keep = bank_rows(f_train, cfg.bank_max, cfg.bank_subsample, cfg.scoring, rows.p, cfg.seed)
    return Bank(np.ascontiguousarray(f_train[keep], np.float32),
                pos[keep].astype(np.int32) if mode == "per_position" else None, mode, report,
                len(keep) < len(f_train))


# ------------------------------------------------------------------------------------ 5. calibration
def calibrate(bank: Bank, exp: Export, data: FitData, rows: Rows, cfg: FitConfig, projection=None):
    """``(threshold record, calibration scores, synthetic-defect scores)``, scored as the device will."""
    sc = _scorer(bank.rows, cfg, data.n_tiles, rows, bank.tile_index, projection)
    cal = sc.frame_scores(exp.feats["cal"]).astype(np.float32)
    syn = sc.frame_scores(exp.feats["syn"])
    how = "held-out normal quantile: " + data.cal_how + (
        f", image score = max over {data.n_tiles} tiles" if data.n_tiles > 1 else "")
    return describe_calibration(cal, cfg.target_frr, how), cal, syn


# ------------------------------------------------------------------------------------ 6. manifest
def manifest_body(cfg: FitConfig, data: FitData, rows: Rows, info: dict, selection: dict, exp: Export, bank: Bank,
                  threshold: dict, val_auroc: float, projection_frag: dict | None, fit_seconds: float) -> dict:
    """The manifest (without schema, files) that :func:`device.bundle.write_bundle` validates and writes."""
    n_tiles = data.n_tiles
    scoring = {"method": cfg.scoring, "k": cfg.k, "metric": "mahalanobis" if cfg.scoring == "gauss" else "euclidean",
               "features": "raw patch descriptors" if rows.patches else "l2-normalised",
               "image_score": {(False, False): "single tile", (False, True): "max over tiles",
                               (True, False): "max over patches",
                               (True, True): "max over patches and tiles"}[(bool(rows.patches), n_tiles > 1)],
               "bank_mode": bank.mode, "bank_mode_measurement": bank.report or None,
               "bank_size": int(bank.rows.shape[0]), "bank_source_images": int(len(data.x_train)),
               "bank_max": cfg.bank_max or (PATCH_BANK_DEFAULT if rows.p > 1 else None),
               "bank_subsample": cfg.bank_subsample if bank.subsampled else "none"}
    if projection_frag:
        scoring["projection"] = projection_frag
    return {
        "input": data.spec.to_dict(),
        "extractor": {"file": "extractor.tflite", "quantization": exp.quant, "feature_normalize": rows.norm,
                      "runtime_checked": exp.ext.runtime, **exp.ext.describe(),
                      **({"patches": rows.patches} if rows.patches else {})},
        "backbone": {**info, "fine_tuned": selection["chosen"] == "doc", "selection": selection},
        "quantization": {"mode": exp.quant, "requested": cfg.quant,
                         "representative_images": int(min(len(data.x_train), 200)), "val_auroc": val_auroc,
                         **exp.report},
        "scoring": scoring,
        "threshold": threshold,
        "training": {"n_train": int(len(data.x_train)), "n_calibration": int(len(data.x_cal)),
                     "n_synthetic_defects": int(len(data.x_syn)),
                     "n_real_defects": int(len(data.x_real)) if data.x_real is not None else 0, "seed": cfg.seed,
                     "fit_seconds": fit_seconds},
    }


def _bundle_files(exp: Export, bank: Bank, cal_scores: np.ndarray, proj_files: dict) -> dict[str, bytes]:
    files = {"extractor.tflite": exp.blob, "bank.npy": npy_bytes(bank.rows),
             "calibration_scores.npy": npy_bytes(cal_scores), **proj_files}
    if bank.tile_index is not None:
        files["bank_tile_index.npy"] = npy_bytes(bank.tile_index)
    if exp.feats["cal"].nbytes <= CALIBRATION_FEATURES_MAX_BYTES:   # lets the device re-derive the threshold
        files["calibration_features.npy"] = npy_bytes(np.ascontiguousarray(exp.feats["cal"], np.float32))
    return files


def _records(train, capture: dict | None) -> dict:
    """Manifest records the device watches with: the training images' brightness and sharpness
    (drift), and the capture conditions when the images came from ``anomaly-device capture``."""
    from device.drift import image_stats

    frames = list(train) if isinstance(train, np.ndarray) else train
    out = {"image_stats": image_stats(frames)}
    if capture:
        out["capture"] = capture
    return out


def fit(train, out: str | Path, cfg: FitConfig = FitConfig(), calib=None, real_defects=None,
        progress: bool = True, capture: dict | None = None) -> FitResult:
    """Train and write a verified bundle.

    Args:
        train: normal images (paths, arrays, or a preprocessed uint8 batch).
        out: bundle directory (written atomically).
        calib: held-out normal images; default: ``cfg.calib_fraction`` of ``train``, seeded.
        real_defects: optional defective images used in model selection beside the synthetic ones.
        capture: the ``capture`` record of the images (:func:`device.capture.capture_record`).
    """
    import keras

    keras.utils.set_random_seed(cfg.seed)   # random-init layers and heads are reproducible
    t_start = time.time()
    data = prepare(train, cfg, calib, real_defects)
    cands, info, rows = extractor_candidates(data, cfg, progress)
    metric = "real_auroc" if data.x_real is not None else "synthetic_auroc"
    chosen, reason = select(cands, metric)
    log.info("selected extractor: %s (%s)", chosen, reason)
    selection = {"chosen": chosen, "reason": reason, "metric": metric,
                 "candidates": {n: c[1] for n, c in cands.items()}, "doc": (cands.get("doc") or (None,) * 3)[2],
                 "synthetic_defects": sorted(set(data.syn_kinds)), "synthetic_defect_scale": round(data.syn_scale, 4)}
    exp = export(cands[chosen][0], data, rows, cfg)
    bank = choose_bank(exp, data, rows, cfg)
    frag, proj_files, proj = None, {}, None
    if cfg.projection:
        from device.projection import projection_entries
        from device.scoring import fit_pca

        frag, proj_files = projection_entries(bank.rows, cfg.projection)
        mean, comps, _ = fit_pca(bank.rows, cfg.projection)
        proj = (mean, comps, frag["rerank"], frag["shortlist"], False)
    threshold, cal_scores, syn_scores = calibrate(bank, exp, data, rows, cfg, proj)
    val_labels = np.r_[np.zeros(len(data.x_cal)), np.ones(len(data.x_syn))]
    val_auroc = auroc(val_labels, np.r_[cal_scores, syn_scores])
    fit_s = round(time.time() - t_start, 1)
    body = manifest_body(cfg, data, rows, info, selection, exp, bank, threshold, val_auroc, frag, fit_s)
    body.update(_records(train, capture))
    path = write_bundle(out, body, _bundle_files(exp, bank, cal_scores, proj_files))
    summary = {"weights": info["weights"], "selected": chosen, "selection_reason": reason,
               "candidates": selection["candidates"], "quant": exp.quant, f"{exp.quant}_val_auroc": val_auroc,
               **exp.report, "threshold": threshold["value"], "bank_size": int(bank.rows.shape[0]),
               "bank_mode": bank.mode, "n_tiles": data.n_tiles, "patches_per_tile": rows.p,
               "n_train": int(len(data.x_train)), "n_calibration": int(len(data.x_cal)),
               "tflite_ms_per_image": exp.ms_per_image, "fit_seconds": fit_s}
    return FitResult(bundle=path, summary=summary,
                     val_scores={"validation (held-out normal vs synthetic defects)":
                                 (val_labels, np.r_[cal_scores, syn_scores])})
