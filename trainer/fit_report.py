"""``fit``'s report: ``report.html`` (and its PNGs) in a folder next to the bundle.

What a person checks before shipping a bundle, as pictures first (:func:`core.report.html_report`):

* why the shipped configuration won (the search's reason with its tie / equivalence wording,
  the DOC and quantisation decisions with their uncertainty, the bank compression measured,
  the latency measured here and estimated for a Pi 4, the threshold estimator and its warning);
* the candidate table: validation AUROC overall and per defect family, latency (x86 estimate,
  Pi 4 estimate), bank size;
* ROC and score histograms of the validation (cross-fitted normals vs synthetic defects, device
  path), example synthetic defects, and the worst-scoring validation images (normals that score
  highest, defects that score lowest) with their score maps.

Example:
    >>> write_fit_report(Path("bundle-report"), summary, figures)     # doctest: +SKIP
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SHOWN = 6          # worst-scoring normals and defects shown


def defects_png(syn, path: Path, per_row: int = 6, side: int = 128) -> Path:
    """One example of each validation defect kind, its mask outlined in red."""
    import cv2

    tiles = []
    for kind in dict.fromkeys(syn.kinds):
        i = syn.kinds.index(kind)
        im = cv2.resize(np.ascontiguousarray(syn.images[i]), (side, side), interpolation=cv2.INTER_AREA)
        m = cv2.resize(np.asarray(syn.masks[i], np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
        cnt, _ = cv2.findContours((m > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        im = cv2.drawContours(im.copy(), cnt, -1, (255, 0, 0), 1)
        tiles.append(cv2.putText(np.pad(im, ((16, 2), (2, 2), (0, 0)), constant_values=255), kind, (4, 12),
                                 cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1))
    while len(tiles) % per_row:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.concatenate(tiles[i:i + per_row], axis=1) for i in range(0, len(tiles), per_row)]
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return path


def _figures(folder: Path, fig: dict) -> list[tuple[str, str]]:
    from trainer.report import histogram_png, roc_png

    out = []
    y, s, groups = fig["labels"], fig["scores"], fig["groups"]
    if len(set(y.tolist())) == 2:
        roc_png(y, s, folder / "validation_roc.png", "Validation ROC (device path, cross-fitted)")
        out.append(("Validation ROC: training images (each scored without its fold) vs synthetic defects",
                    "validation_roc.png"))
    histogram_png(s, groups, fig["threshold"], folder / "validation_histogram.png",
                  "Validation scores by defect family")
    out.append(("Validation score histogram (normal = training images, cross-fitted)", "validation_histogram.png"))
    if fig.get("syn") is not None:
        defects_png(fig["syn"], folder / "synthetic_defects.png")
        out.append(("Example synthetic validation defects (red: where the defect was drawn)", "synthetic_defects.png"))
    return out


def _worst(folder: Path, fig: dict) -> list[tuple[str, str]]:
    """Overlays of the highest-scoring normals and lowest-scoring defects."""
    from trainer.heatmap import overlay_png

    shown = []
    (folder / "worst").mkdir(exist_ok=True)
    for i, item in enumerate(fig.get("worst", [])):
        name = f"worst/{i:02d}_{item['kind']}.png"
        try:
            overlay_png(item["image"], item["tile_scores"], item["spec"], fig["threshold"], folder / name,
                        item.get("heatmap"))
        except Exception as exc:  # noqa: BLE001 - a picture must not fail the fit
            log.warning("report: could not draw %s (%s)", name, exc)
            continue
        shown.append((f"{item['what']}: score {item['score']:.4f} (threshold {fig['threshold']:.4f})", name))
    return shown


def write_fit_report(folder: Path, summary: dict, fig: dict, tables: list[tuple[str, list]]) -> Path:
    """Write ``folder/report.html`` (the folder is replaced).

    Args:
        summary: key -> value shown first (why the shipped candidate won, latency, threshold ...).
        fig: ``labels``, ``scores``, ``groups`` (validation), ``threshold``, ``spec``, ``syn``
            (validation defects) and ``worst`` (records with ``image``, ``tile_scores``,
            ``heatmap``, ``score``, ``kind``, ``what``).
        tables: ``(heading, records)``: the candidate table and the decisions.
    """
    import shutil

    from core.report import html_report

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    images = _figures(folder, fig) + _worst(folder, fig)
    intro = ("How fit chose this bundle. Validation uses synthetic defects drawn on the training images "
             "and cross-fitted scores (each image scored against a bank without its fold), through the "
             "device path; real defects, when given (--select-on-real), are named below.")
    return html_report(folder / "report.html", "Fit report", summary, images, tables, intro)


# ---------------------------------------------------------------------------- assembling the report


def _frame_patch_map(exp, fs, i: int, rows, scorer):
    """Patch heat map of frame ``i`` of ``fs`` under ``scorer`` (patch extractors), else None."""
    from device.extractor import normalize_features
    from device.heatmap import patch_heatmap

    if rows.p == 1:
        return None
    f = exp.ext(fs.tiles(i, i + 1))
    r = normalize_features(f.reshape(f.shape[0] * rows.p, -1), rows.norm)
    ps = scorer.patch_scores(r)[0].reshape(fs.n_tiles, *rows.patches["grid"])
    return patch_heatmap(ps, fs.spec)


def _worst_items(data, val, exp, rows) -> list[dict]:
    """The highest-scoring training images (cross-fitted) and the lowest-scoring defects."""
    items = []
    n_scores, d_scores = val.frame("train"), val.frame("defects")
    for i in np.argsort(-n_scores)[:SHOWN]:
        sc = val.scorers[int(data.fold[i])]
        items.append({"image": data.train.images[i], "spec": data.train.spec, "tile_scores": val.train[i],
                      "heatmap": _frame_patch_map(exp, data.train, int(i), rows, sc), "score": float(n_scores[i]),
                      "kind": "normal", "what": f"highest-scoring normal image #{int(i)} (cross-fitted)"})
    for j in np.argsort(d_scores)[:SHOWN]:
        sc = val.scorers[int(data.fold[data.syn_source[j]])]
        items.append({"image": data.syn.images[j], "spec": data.syn.spec, "tile_scores": val.defects[j],
                      "heatmap": _frame_patch_map(exp, data.syn, int(j), rows, sc), "score": float(d_scores[j]),
                      "kind": data.syn_kinds[j], "what": f"lowest-scoring synthetic defect ({data.syn_kinds[j]})"})
    return items


def candidate_rows(search, shipped: str) -> list[dict]:
    """The search's candidate table: validation AUROC overall, worst family and per family, latency."""
    from trainer.selection import family_aurocs
    from trainer.synth import family_of

    if search is None:
        return []
    fam = np.array([family_of(k) for k in search.kinds])
    sel = search.selection
    out = []
    for r in sorted(search.results, key=lambda r: -sel.aurocs.get(r.candidate.name, -1)):
        fa = family_aurocs(r.normal, r.defect, fam)
        row = {"candidate": r.candidate.name, "shipped": "yes" if r.candidate.name == shipped else "",
               "worst_family_auroc": min(fa.values()), **{f"auroc_{k}": v for k, v in fa.items()},
               "auroc_all_defects": r.row()["val_auroc"], "x86_ms_estimate": r.latency["x86_ms"],
               "pi4_ms_estimate": r.latency["pi4_ms"], "within_budget": r.within_budget,
               "tie_with_best": r.candidate.name in sel.tied}
        if r.real is not None:
            row["real_auroc"] = r.row()["real_auroc"]
        out.append(row)
    return out


def fit_report(folder: Path, summary: dict, plan, data, val, threshold: dict, xt, exp) -> Path:
    """Assemble and write the report of one fit (see :func:`write_fit_report`)."""
    from trainer.synth import family_of

    groups = ["good"] * len(val.train) + [family_of(k) for k in data.syn_kinds]
    fig = {"labels": np.r_[np.zeros(len(val.train)), np.ones(len(val.defects))],
           "scores": np.r_[val.frame("train"), val.frame("defects")], "groups": groups,
           "threshold": threshold["value"], "syn": plan.syn, "worst": _worst_items(data, val, exp, xt.rows)}
    rec = xt.record
    norm = rec.get("normalize") or {"mode": plan.candidate.normalize, "reason": "no search: the default or the option given"}
    decisions = [{"decision": "configuration", "outcome": rec.get("chosen"), "why": rec.get("reason")},
                 {"decision": "input normalisation", "outcome": norm["mode"], "why": norm.get("reason", "") + "".join(
                     f"; probed on {q['pass']} passes ({q['probe']}): {q['mode']}" for q in norm.get("probes", [])
                     if q["pass"] != norm.get("pass"))},
                 {"decision": "DOC fine-tuning", "outcome": rec["doc"]["decision"], "why": rec["doc"]["reason"]},
                 {"decision": "quantisation", "outcome": exp.quant, "why": exp.report.get("auto_choice", "configured")},
                 {"decision": "bank compression", "outcome": rec["bank_compression"].get("dims") or "none",
                  "why": rec["bank_compression"].get("reason")},
                 {"decision": "threshold", "outcome": threshold["value"],
                  "why": f"{threshold['estimator']['method']} estimator on {threshold['method']}"
                         + (f"; {threshold['estimator']['warning']}" if threshold["estimator"].get("warning") else "")
                         + (f"; {threshold['estimator']['shift']['warning']}"
                            if threshold["estimator"].get("shift", {}).get("warning") else "")}]
    if data.real is not None and val.real is not None:
        n = val.frame("train")
        r = val.frame("real")
        from core.metrics import auroc

        summary = {**summary, "real_defects_used": len(r),
                   "real_auroc_validation": auroc(np.r_[np.zeros(len(n)), np.ones(len(r))], np.r_[n, r])}
    shown = dict(summary)
    tables = [("Decisions", decisions), ("Candidates (validation: synthetic defects, cross-fitted)",
                                         candidate_rows(plan.search, plan.candidate.name)),
              ("Search: skipped or pruned", [{"note": s} for s in (plan.record.get("skipped_for_time") or [])
                                              + (plan.record.get("pruned") or [])])]
    return write_fit_report(folder, shown, fig, tables)
