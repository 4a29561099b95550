"""``fit``: normal images -> (DOC fine-tune | untouched backbone) -> TFLite -> bank -> threshold -> bundle.

Model selection needs no real defects: held-out normal images and synthetic defects
drawn on them form the validation set (real defects are added when given). The
untouched backbone is always scored too, and the bundle ships the better extractor,
recording both figures and why.

Example:
    >>> result = fit(train_paths, "bundle/", FitConfig(size=(96, 96)))   # doctest: +SKIP
    >>> result.summary["int8_val_auroc"]                               # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from device.bundle import npy_bytes, write_bundle
from device.extractor import TFLiteExtractor, normalize_features
from device.preprocess import InputSpec, cut_tiles, prepare_frame
from device.scoring import KNNScorer, make_scorer, subsample_bank
from core.threshold import describe_calibration
from trainer.doc import DocConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FitConfig:
    alpha: float = 0.35
    size: tuple[int, int] = (96, 96)
    weights: str | None = None
    color: str = "rgb"
    resize: str = "stretch"
    interpolation: str = "area"    # resize filter: area (anti-aliased), linear (cheaper), nearest
    roi: tuple[int, int, int, int] | None = None
    taps: str = "out"
    pooling: str = "max"
    k: int = 1
    scoring: str = "knn"
    doc: bool = True
    doc_cfg: DocConfig = dataclasses.field(default_factory=DocConfig)
    reference: str = "samples"
    n_reference: int = 2000
    quant: str = "auto"       # int8 unless it loses > AUTO_QUANT_TOLERANCE validation AUROC vs float; or forced
    compare_float: bool = True
    bank_max: int | None = None
    bank_subsample: str = "coreset"
    bank_mode: str = "auto"   # tiled inputs: "shared", "per_position" or "auto" (measured on validation)
    working_size: tuple[int, int] | None = None
    grid: tuple[int, int] | None = None
    overlap: float = 0.0
    target_frr: float = 0.01
    calib_fraction: float = 0.2
    seed: int = 0

    def input_spec(self) -> InputSpec:
        return InputSpec(size=tuple(self.size), color=self.color, resize=self.resize, roi=self.roi,
                         interpolation=self.interpolation,
                         pixel_scale=1.0, pixel_offset=0.0,
                         working_size=tuple(self.working_size) if self.working_size else None,
                         grid=tuple(self.grid) if self.grid else None, overlap=self.overlap)


@dataclasses.dataclass
class FitResult:
    bundle: Path
    summary: dict
    val_scores: dict  # name -> (labels, scores) for the report


def auroc(labels, scores) -> float:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def _keras_features(model, x_u8: np.ndarray, p: int = 1, norm: str = "l2") -> np.ndarray:
    """Float Keras features as rows: (N, D), or (N * p, C) patch rows for a patch extractor."""
    f = np.asarray(model.predict(x_u8.astype(np.float32), batch_size=64, verbose=0), np.float32)
    return normalize_features(f.reshape(f.shape[0] * p, -1), norm)


def _knn_auroc(bank: np.ndarray, feats: np.ndarray, labels: np.ndarray, k: int, method: str = "knn") -> float:
    return auroc(labels, make_scorer(method, bank, k).score(feats))


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


def _device_features(ext: TFLiteExtractor, tiles: np.ndarray, n_tiles: int, p: int = 1,
                     norm: str = "l2") -> np.ndarray:
    """Features exactly as the device computes them: one interpreter call per frame (its
    tiles together), so batch-dependent kernels (dynamic-range quantisation) agree too.
    Rows as :func:`_keras_features`."""
    f = np.concatenate([ext(tiles[i:i + n_tiles]) for i in range(0, len(tiles), n_tiles)])
    return normalize_features(f.reshape(f.shape[0] * p, -1), norm)


def _row_positions(n_frames: int, n_tiles: int, p: int = 1) -> np.ndarray:
    """Tile position of every feature row of ``n_frames`` frames (frame-major, patch-minor)."""
    return np.tile(np.repeat(np.arange(n_tiles), p), n_frames)


def _tile_scores(bank: np.ndarray, feats: np.ndarray, n_tiles: int, k: int, method: str,
                 bank_pos: np.ndarray | None = None, p: int = 1) -> np.ndarray:
    """(N, T) tile scores: against one shared bank, or each tile against its position's bank;
    with ``p`` patch rows per tile, a tile scores as its worst patch."""
    if bank_pos is None:
        rows = make_scorer(method, bank, k).score(feats)
    else:
        pos = _row_positions(len(feats) // (n_tiles * p), n_tiles, p)
        rows = np.empty(len(feats), np.float32)
        for i in range(n_tiles):
            rows[pos == i] = make_scorer(method, bank[bank_pos == i], k).score(feats[pos == i])
    return rows.reshape(-1, p).max(axis=1).reshape(-1, n_tiles)


def _image_auroc(bank, f_good, f_bad, n_tiles, k, method, bank_pos=None, p: int = 1) -> float:
    s = np.r_[_tile_scores(bank, f_good, n_tiles, k, method, bank_pos, p).max(1),
              _tile_scores(bank, f_bad, n_tiles, k, method, bank_pos, p).max(1)]
    return auroc(np.r_[np.zeros(len(f_good) // (n_tiles * p)), np.ones(len(f_bad) // (n_tiles * p))], s)


AUTO_QUANT_TOLERANCE = 0.01  # quant "auto": validation AUROC int8 may lose against float before float ships
PATCH_BANK_DEFAULT = 20000    # patch rows kept when --bank-max is not given (frames bring millions)
PATCH_CORESET_POOL = 50000    # k-center greedy runs on a random pool of at most this many patch rows


def _bank_rows(feats: np.ndarray, max_size: int | None, method: str, scoring: str, p: int, seed: int) -> np.ndarray:
    """Indices of the bank rows kept. Patch rows: random for ``gauss`` scoring (the Gaussian
    must see the real distribution; a coreset over-weights the rare rows), else k-center
    greedy on a random pool (a coreset of millions of rows is out of reach)."""
    if p == 1:
        return subsample_bank(feats, max_size, method, seed)
    m = max_size or PATCH_BANK_DEFAULT
    if len(feats) <= m:
        return np.arange(len(feats))
    rng = np.random.default_rng(seed)
    if scoring == "gauss" or method == "random":
        return np.sort(rng.choice(len(feats), m, replace=False))
    pool = np.sort(rng.choice(len(feats), min(len(feats), max(m, PATCH_CORESET_POOL)), replace=False))
    return pool[subsample_bank(feats[pool], m, method, seed)]


def fit(train, out: str | Path, cfg: FitConfig = FitConfig(), calib=None, real_defects=None,
        progress: bool = True, extra_manifest: dict | None = None) -> FitResult:
    """Train and write a verified bundle.

    Args:
        train: normal images (paths, arrays, or a preprocessed uint8 batch).
        out: bundle directory (written atomically).
        calib: held-out normal images; default: ``cfg.calib_fraction`` of ``train``, seeded.
        real_defects: optional defective images used in model selection beside the synthetic ones.
    """
    from models.backbone import build_backbone, build_extractor
    from trainer.convert import convert
    from trainer.doc import train_doc
    from trainer.synth import synthetic_defects

    import keras

    keras.utils.set_random_seed(cfg.seed)   # random-init layers and heads are reproducible
    t_start = time.time()
    spec = cfg.input_spec()
    x_all = _as_batch(train, spec)
    if calib is None:
        idx = np.random.default_rng(cfg.seed).permutation(len(x_all))
        n_cal = max(1, int(round(len(x_all) * cfg.calib_fraction)))
        if n_cal >= len(x_all) - 1:
            raise ValueError(f"{len(x_all)} normal images are too few to hold out {n_cal} for calibration")
        x_train, x_cal = x_all[np.sort(idx[n_cal:])], x_all[np.sort(idx[:n_cal])]
        cal_how = f"seeded {cfg.calib_fraction:.0%} split of the training images (seed {cfg.seed})"
    else:
        x_train, x_cal = x_all, _as_batch(calib, spec)
        cal_how = "separate held-out normal images"
    # tiled: defects sized to a tile, not the frame (what the grid is there to find)
    syn_scale = 1.0
    if spec.tiled:
        _, _, tw, th = spec.tile_boxes()[0]
        syn_scale = min(th / spec.working_size[0], tw / spec.working_size[1])
    syn, _, syn_kinds = synthetic_defects(list(x_cal), seed=cfg.seed + 1, scale=syn_scale)
    x_syn = np.stack(syn)
    x_real = _as_batch(real_defects, spec) if real_defects is not None and len(real_defects) else None
    log.info("fit: %d train, %d calibration, %d synthetic defects%s", len(x_train), len(x_cal), len(x_syn),
             f", {len(x_real)} real defects" if x_real is not None else "")

    n_tiles = len(spec.tile_boxes())
    t_train, t_cal, t_syn = _tiles(x_train, spec), _tiles(x_cal, spec), _tiles(x_syn, spec)
    t_real = _tiles(x_real, spec) if x_real is not None else None
    # 1. untouched backbone
    base_model, backbone_info = build_extractor(cfg.alpha, cfg.size, cfg.weights, cfg.taps, cfg.pooling)
    patches = backbone_info.get("patches")
    p = patches["grid"][0] * patches["grid"][1] if patches else 1
    norm = "none" if patches else "l2"    # patch descriptors stay raw (Mahalanobis / PatchCore distances)
    if patches:
        log.info("patch features: %dx%d patches of %d dims per tile, scored with %s", *patches["grid"],
                 patches["dim"], cfg.scoring)

    def val_bank(f: np.ndarray) -> np.ndarray:
        """Bank for validation scores: all training rows, or a seeded random sample of patch rows."""
        return f[_bank_rows(f, cfg.bank_max, "random", cfg.scoring, p, cfg.seed)] if p > 1 else f

    def validate(model) -> dict:
        f_tr = _keras_features(model, t_train, p, norm)
        bank = val_bank(f_tr)
        fc = _keras_features(model, t_cal, p, norm)
        r = {"synthetic_auroc": _image_auroc(bank, fc, _keras_features(model, t_syn, p, norm), n_tiles, cfg.k,
                                             cfg.scoring, p=p)}
        if t_real is not None:
            r["real_auroc"] = _image_auroc(bank, fc, _keras_features(model, t_real, p, norm), n_tiles, cfg.k,
                                           cfg.scoring, p=p)
        return r

    candidates = {"untouched": (base_model, validate(base_model), None)}
    log.info("untouched backbone (%s weights): %s", backbone_info["weights"], candidates["untouched"][1])
    # 2. DOC fine-tuning
    doc_info = None
    if cfg.doc:
        from trainer.data import load_reference

        backbone, _ = build_backbone(cfg.alpha, cfg.size, cfg.weights)
        # patch extractors: DOC's compactness and reference head work on the taps' average pooling
        dc = dataclasses.replace(cfg.doc_cfg, taps=cfg.taps, pooling="avg" if patches else cfg.pooling, seed=cfg.seed)
        ref_x, ref_y, ref_desc = load_reference(cfg.reference, tuple(cfg.size), cfg.n_reference, cfg.seed)
        backbone, hist = train_doc(backbone, t_train, ref_x, ref_y, dc, progress=progress)
        doc_model, _ = build_extractor(cfg.alpha, cfg.size, taps=cfg.taps, pooling=cfg.pooling, backbone=backbone)
        doc_val = validate(doc_model)
        doc_info = {**dataclasses.asdict(dc), "reference": ref_desc, "seconds": round(hist["seconds"], 1),
                    "final_l_d": float(np.mean(hist["l_d"][-10:])), "final_l_c": float(np.mean(hist["l_c"][-10:]))}
        candidates["doc"] = (doc_model, doc_val, doc_info)
        log.info("DOC fine-tuned: %s", doc_val)
    key = "real_auroc" if x_real is not None else "synthetic_auroc"
    chosen = max(candidates, key=lambda n: (candidates[n][1][key], n == "untouched"))
    reason = (f"{chosen} has the higher validation {key.replace('_', ' ')} "
              + ", ".join(f"{n}={c[1][key]:.4f}" for n, c in candidates.items()))
    if len(candidates) == 1:
        reason = "DOC fine-tuning disabled"
    log.info("selected extractor: %s (%s)", chosen, reason)
    model = candidates[chosen][0]

    # 3. conversion, with float comparison
    quant = "int8" if cfg.quant == "auto" else cfg.quant
    rep = t_train[np.random.default_rng(cfg.seed).permutation(len(t_train))[:200]]
    blob = convert(model, rep, quant)
    ext = TFLiteExtractor(blob, num_threads=1)
    quant_report = {}
    if quant == "int8":
        raw = ext(t_cal[:64])
        if not np.isfinite(raw).all() or float(np.ptp(raw)) == 0.0 or (np.abs(raw).sum(axis=1) == 0).any():
            log.warning("!" * 72)
            log.warning("FULL-INT8 EXTRACTOR IS DEGENERATE (constant or all-zero features, typical of random "
                        "weights); falling back to dynamic-range quantisation")
            log.warning("!" * 72)
            quant_report["int8_fallback"] = "int8 features constant or zero on calibration images"
            quant = "dynamic"
            blob = convert(model, rep, quant)
            ext = TFLiteExtractor(blob, num_threads=1)
    t_lat = time.perf_counter()
    f_train, f_cal, f_syn = (_device_features(ext, t, n_tiles, p, norm) for t in (t_train, t_cal, t_syn))
    ms_per_image = (time.perf_counter() - t_lat) * 1e3 / (len(t_train) + len(t_cal) + len(t_syn)) * n_tiles
    val_labels = np.r_[np.zeros(len(x_cal)), np.ones(len(x_syn))]
    if quant != "float" and (cfg.compare_float or cfg.quant == "auto"):
        fblob = convert(model, None, "float")
        fext = TFLiteExtractor(fblob, num_threads=1)
        ff_train, ff_cal, ff_syn = (_device_features(fext, t, n_tiles, p, norm) for t in (t_train, t_cal, t_syn))
        cos = np.sum(normalize_features(np.concatenate([f_cal, f_syn]), "l2")
                     * normalize_features(np.concatenate([ff_cal, ff_syn]), "l2"), axis=1)
        fb = val_bank(ff_train)
        quant_report.update({"float_val_auroc": _image_auroc(fb, ff_cal, ff_syn, n_tiles, cfg.k, cfg.scoring, p=p),
                             "feature_cosine_mean": float(cos.mean()), "feature_cosine_min": float(cos.min())})
        if cfg.quant == "auto":   # measure the quantised extractor the same way, and choose
            q_auc = _image_auroc(val_bank(f_train), f_cal, f_syn, n_tiles, cfg.k, cfg.scoring, p=p)
            loss = quant_report["float_val_auroc"] - q_auc
            quant_report[f"{quant}_measured_val_auroc"] = q_auc
            if loss > AUTO_QUANT_TOLERANCE:
                quant_report["auto_choice"] = (f"float: {quant} lost {loss:.4f} validation AUROC "
                                               f"(> {AUTO_QUANT_TOLERANCE}) against float")
                log.warning("quant auto: %s", quant_report["auto_choice"])
                quant, blob, ext = "float", fblob, fext
                f_train, f_cal, f_syn = ff_train, ff_cal, ff_syn
            else:
                quant_report["auto_choice"] = (f"{quant}: within {AUTO_QUANT_TOLERANCE} validation AUROC of float "
                                               f"(loss {loss:.4f})")
            log.info("quant auto: %s", quant_report["auto_choice"])

    # 4. bank (from the .tflite the device runs): shared or per tile position, measured; calibration
    pos_train = _row_positions(len(x_train), n_tiles, p)
    bank_mode, bank_report = "shared", {}
    if n_tiles > 1:
        for mode in ("shared", "per_position"):
            sel = None   # pooled features: measure on every training tile; patch rows: a seeded sample
            if p > 1 and mode == "shared":
                sel = _bank_rows(f_train, cfg.bank_max, "random", cfg.scoring, p, cfg.seed)
            elif p > 1:
                sel = np.concatenate([np.flatnonzero(pos_train == i)[_bank_rows(
                    f_train[pos_train == i], None if not cfg.bank_max else cfg.bank_max // n_tiles, "random",
                    cfg.scoring, p, cfg.seed)] for i in range(n_tiles)])
            fb = f_train[sel] if sel is not None else f_train
            bank_report[f"{mode}_synthetic_auroc"] = _image_auroc(
                fb, f_cal, f_syn, n_tiles, cfg.k, cfg.scoring,
                (pos_train[sel] if sel is not None else pos_train) if mode == "per_position" else None, p)
        if cfg.bank_mode == "auto":
            bank_mode = max(("shared", "per_position"), key=lambda m: (bank_report[f"{m}_synthetic_auroc"], m == "shared"))
            bank_report["reason"] = ("higher synthetic-defect validation AUROC: shared "
                                     f"{bank_report['shared_synthetic_auroc']:.4f}, per-position "
                                     f"{bank_report['per_position_synthetic_auroc']:.4f}")
        else:
            bank_mode = cfg.bank_mode
            bank_report["reason"] = "configured"
    if bank_mode == "per_position":
        per = None if not cfg.bank_max else max(cfg.k + 1, cfg.bank_max // n_tiles)
        keep = np.concatenate([np.flatnonzero(pos_train == i)[_bank_rows(f_train[pos_train == i], per,
                                                                          cfg.bank_subsample, cfg.scoring, p, cfg.seed)]
                               for i in range(n_tiles)])
    else:
        keep = _bank_rows(f_train, cfg.bank_max, cfg.bank_subsample, cfg.scoring, p, cfg.seed)
    bank = np.ascontiguousarray(f_train[keep], np.float32)
    bank_pos = pos_train[keep].astype(np.int32) if bank_mode == "per_position" else None
    cal_scores = _tile_scores(bank, f_cal, n_tiles, cfg.k, cfg.scoring, bank_pos, p).max(1).astype(np.float32)
    syn_scores = _tile_scores(bank, f_syn, n_tiles, cfg.k, cfg.scoring, bank_pos, p).max(1)
    threshold = describe_calibration(cal_scores, cfg.target_frr, "held-out normal quantile: " + cal_how
                                     + (f", image score = max over {n_tiles} tiles" if n_tiles > 1 else ""))
    val_auroc = auroc(val_labels, np.r_[cal_scores, syn_scores])

    summary = {"weights": backbone_info["weights"], "selected": chosen, "selection_reason": reason,
               "candidates": {n: c[1] for n, c in candidates.items()}, "quant": quant,
               f"{quant}_val_auroc": val_auroc, **quant_report, "threshold": threshold["value"],
               "bank_size": int(bank.shape[0]), "bank_mode": bank_mode, "n_tiles": n_tiles,
               "patches_per_tile": p,
               "n_train": int(len(x_train)), "n_calibration": int(len(x_cal)),
               "tflite_ms_per_image": ms_per_image, "fit_seconds": round(time.time() - t_start, 1)}
    manifest = {
        "input": spec.to_dict(),
        "extractor": {"file": "extractor.tflite", "quantization": quant, "feature_normalize": norm,
                      "runtime_checked": ext.runtime, **ext.describe(), **({"patches": patches} if patches else {})},
        "backbone": {**backbone_info, "fine_tuned": chosen == "doc", "selection": {
            "chosen": chosen, "reason": reason, "metric": key,
            "candidates": {n: c[1] for n, c in candidates.items()}, "doc": doc_info,
            "synthetic_defects": sorted(set(syn_kinds)), "synthetic_defect_scale": round(syn_scale, 4)}},
        "quantization": {"mode": quant, "requested": cfg.quant, "representative_images": int(min(len(x_train), 200)),
                         "val_auroc": val_auroc, **quant_report},
        "scoring": {"method": cfg.scoring, "k": cfg.k,
                    "metric": "mahalanobis" if cfg.scoring == "gauss" else "euclidean",
                    "features": "raw patch descriptors" if patches else "l2-normalised",
                    "image_score": {(False, False): "single tile", (False, True): "max over tiles",
                                    (True, False): "max over patches",
                                    (True, True): "max over patches and tiles"}[(bool(patches), n_tiles > 1)],
                    "bank_mode": bank_mode, "bank_mode_measurement": bank_report or None,
                    "bank_size": int(bank.shape[0]), "bank_source_images": int(len(x_train)),
                    "bank_subsample": cfg.bank_subsample if len(keep) < len(f_train) else "none"},
        "threshold": threshold,
        "training": {"n_train": int(len(x_train)), "n_calibration": int(len(x_cal)),
                     "n_synthetic_defects": int(len(x_syn)),
                     "n_real_defects": int(len(x_real)) if x_real is not None else 0, "seed": cfg.seed,
                     "fit_seconds": summary["fit_seconds"]},
        **(extra_manifest or {}),
    }
    files = {"extractor.tflite": blob, "bank.npy": npy_bytes(bank), "calibration_scores.npy": npy_bytes(cal_scores)}
    if bank_pos is not None:
        files["bank_tile_index.npy"] = npy_bytes(bank_pos)
    path = write_bundle(out, manifest, files)
    return FitResult(bundle=path, summary=summary,
                     val_scores={"validation (held-out normal vs synthetic defects)":
                                 (val_labels, np.r_[cal_scores, syn_scores])})
