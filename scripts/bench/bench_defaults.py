""".venv/bin/python scripts/bench/bench_defaults.py [--sets demo mnist fashion mt brick] [--seeds 0 1 2] [--small-seeds 0 1 2]

Issue 11's benchmark: ``fit`` with **defaults only** (the local ImageNet weights file is the one
option given), then the test set scored **through the device path** (LiteRT, 1 thread), per data
set and seeded split:

* test AUROC (target per set in ``TARGETS``), the tuned figure it replaces (``TUNED``: the
  hand-tuned configurations of BENCHMARKS.md's e2e and tiles sections), fit wall time (target
  <= 15 min), device latency per frame, the candidate the search chose, its validation AUROC;
* ``--small-seeds``: the small-data row: 30 training images (magnetic tile and the 1024-px brick
  set), the false-reject rate of held-out good images at the shipped threshold (target: within
  2x the 1 % target rate).

Selection regret (best real AUROC among the candidates minus the chosen one's) is measured over
the whole candidate space by ``explore_selection.py`` (``results/selection_research.json``);
this script reports those figures next to its own.

Data: ``../shared`` (Fashion-MNIST, MNIST, magnetic tile; the brick set is generated from
scikit-image's photograph) through ``explore_selection.load_set``; the demo set is generated.
Writes ``scripts/bench/results/defaults.json`` (flat keys, numbers, command, date) and the table
in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import explore_selection as es  # noqa: E402  (first: sets BLAS threads, TF log level, sys.path before numpy)

import numpy as np  # noqa: E402

ROOT, RESULTS = es.ROOT, es.RESULTS
OUT_JSON = RESULTS / "defaults.json"
RUNS_JSON = RESULTS / "defaults.runs.json"     # per-run records: a later invocation re-runs only its --sets
ALL_SETS = ("demo", "mnist", "fashion", "mt", "brick")
TITLES = {"demo": "embedded demo set", "mnist": "MNIST 1 vs 9", "fashion": "Fashion 7 vs 9",
          "mt": "magnetic tile", "brick": "1024-px brick, small defects"}
TARGETS = {"demo": 0.97, "mnist": 0.998, "fashion": 0.975, "mt": 0.95, "brick": 0.97}
TUNED = {"demo": 0.970, "mnist": 0.9993, "fashion": 0.975, "mt": 0.947, "brick": 0.97}   # BENCHMARKS.md, hand-tuned
# (training images, test images): the tuned figures' own training sets (Fashion: every training sneaker)
SIZES = {"demo": (400, 400), "mnist": (300, 400), "fashion": (6000, 400), "mt": (300, 400), "brick": (120, 60)}
FIT_TARGET_S = 15 * 60
SMALL_N, SMALL_SETS, TARGET_FRR = 30, ("mt", "brick"), 0.01
MARK_START, MARK_END = "<!-- bench_defaults:start -->", "<!-- bench_defaults:end -->"

log = logging.getLogger("bench_defaults")


def _weights() -> str:
    w = es.shared() / "weights" / es.W035
    if not w.exists():
        raise SystemExit(f"bench_defaults: weights file {w} not found (this benchmark needs ../shared/weights)")
    return str(w)


def fit_defaults(train: list, out: Path, seed: int, held: list | None = None):
    """``anomaly-train fit --data ... --out ...`` with defaults (weights file and seed only);
    ``held``: the set's ``val/good`` images, which ``fit --data`` uses as separate held-out normals."""
    from trainer.options import FitConfig
    from trainer.pipeline import fit

    return fit(train, out, FitConfig(weights=_weights(), seed=seed), calib=held or None, progress=False, report=False)


def device_scores(bundle: Path, images: list) -> tuple[np.ndarray, float]:
    """Scores through the device path (one frame at a time, LiteRT, 1 thread) and the median ms."""
    from device.detector import Detector

    det = Detector.from_bundle(bundle, num_threads=1)
    scores, ms = [], []
    for im in images:
        r = det.inspect(im)
        scores.append(r.score)
        ms.append(sum(r.timing.values()))
    return np.asarray(scores, np.float64), float(np.median(ms))


def run_one(name: str, seed: int, work: Path) -> dict:
    from core.metrics import auroc

    n_train, n_test = SIZES[name]
    data = es.load_set(name, seed, n_train, n_test, work)
    t0 = time.time()
    res = fit_defaults(data["train"], work / f"b_{name}_{seed}", seed, data.get("held"))
    fit_s = time.time() - t0
    scores, ms = device_scores(res.bundle, data["test"])
    s = res.summary
    return {"auroc": auroc(data["y"], scores), "fit_seconds": round(fit_s, 1), "latency_ms": ms,
            "fit_latency_ms": s["latency_ms"], "val_auroc": s["val_auroc"], "chosen": s["chosen"],
            "doc": s["selected"] == "doc", "quant": s["quant"], "n_train": len(data["train"]),
            "n_test": int(len(data["y"])), "n_defective": int(np.sum(data["y"])), "n_held": len(data.get("held") or [])}


def run_small(name: str, seed: int, work: Path) -> dict:
    """30 training images; false-reject rate of the held-out good images at the shipped threshold,
    and what that threshold costs: the share of real defects it still rejects, the test AUROC."""
    from core.metrics import auroc

    data = es.load_set(name, 100 + seed, SMALL_N, 120 if name == "mt" else 60, work)
    res = fit_defaults(data["train"], work / f"s_{name}_{seed}", seed)
    scores, _ = device_scores(res.bundle, data["test"])
    y = np.asarray(data["y"])
    thr = json.loads((res.bundle / "manifest.json").read_text())["threshold"]
    return {"frr": float(np.mean(scores[y == 0] > thr["value"])), "n_good": int(np.sum(y == 0)),
            "detected": float(np.mean(scores[y == 1] > thr["value"])), "auroc": auroc(y, scores),
            "chosen": res.summary["chosen"], "latency_ms": res.summary["latency_ms"],
            "estimator": thr.get("estimator", {}).get("method", "?"), "supported_frr": thr.get("supported_frr")}


def summarise(runs: dict, small: dict) -> dict:
    flat: dict = {}
    for name, rs in runs.items():
        a = np.array([r["auroc"] for r in rs])
        flat.update({f"{name}.auroc_median": float(np.median(a)), f"{name}.auroc_min": float(a.min()),
                     f"{name}.n_seeds": len(rs), f"{name}.target": TARGETS[name], f"{name}.tuned": TUNED[name],
                     f"{name}.met": int(np.median(a) >= TARGETS[name]),
                     f"{name}.fit_seconds_max": max(r["fit_seconds"] for r in rs),
                     f"{name}.fit_within_15_min": int(max(r["fit_seconds"] for r in rs) <= FIT_TARGET_S),
                     f"{name}.latency_ms_median": float(np.median([r["latency_ms"] for r in rs]))})
        for i, r in enumerate(rs):
            flat.update({f"{name}.seed{i}.{k}": v for k, v in r.items()})
    for name, rs in small.items():
        f = np.array([r["frr"] for r in rs])
        flat.update({f"small.{name}.frr_mean": float(f.mean()), f"small.{name}.frr_max": float(f.max()),
                     f"small.{name}.n_draws": len(rs), f"small.{name}.within_2x": int(f.mean() <= 2 * TARGET_FRR)})
        for key in ("detected", "auroc", "latency_ms"):
            v = [r[key] for r in rs if key in r]
            if len(v) == len(rs):
                flat[f"small.{name}.{key}_mean"] = float(np.mean(v))
    research = RESULTS / "selection_research.json"
    if research.exists():
        rj = json.loads(research.read_text())
        for name in runs:
            k = f"selection.{name}.product.robust_rule_regret"
            if k in rj:
                flat[f"{name}.regret_research"] = rj[k]
    return flat


def render(flat: dict, runs: dict, small: dict) -> str:
    lines = [MARK_START, "", "### `fit` with defaults only (issue 11)", "",
             "`fit` given only the images and the local α 0.35 weights "
             "file (it searches its configuration), then the test set through the device path (LiteRT int8, "
             "1 thread). Median over the seeded splits; the tuned figure is the hand-tuned configuration of "
             "the sections below.", "",
             "| data set | seeds | test AUROC (median, min) | target | tuned | chosen (seed 0) | fit s (max) | "
             "ms / frame | regret (research) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, rs in runs.items():
        ok = "met" if flat[f"{name}.met"] else "missed"
        reg = flat.get(f"{name}.regret_research")
        lines.append(f"| {TITLES[name]} | {len(rs)} | {flat[f'{name}.auroc_median']:.4f}, "
                     f"{flat[f'{name}.auroc_min']:.4f} | ≥ {TARGETS[name]} ({ok}) | {TUNED[name]} | "
                     f"{rs[0]['chosen']}{' + DOC' if rs[0]['doc'] else ''} | {flat[f'{name}.fit_seconds_max']:.0f} | "
                     f"{flat[f'{name}.latency_ms_median']:.2f} | "
                     f"{'—' if reg is None else f'{reg:.3f}'} |")
    if small:
        lines += ["", f"Small data: {SMALL_N} training images, false-reject rate of held-out good images at the "
                  f"shipped threshold (target {TARGET_FRR:.0%}, pass within 2×):", "",
                  "| data set | draws | FRR per draw | FRR mean | FRR max | estimator | rate the images support "
                  "(order statistic) | within 2× | real defects rejected (mean) | test AUROC (mean) | "
                  "ms / frame (mean) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, rs in small.items():
            sup = rs[0].get("supported_frr")
            per = ", ".join(f"{r['frr']:.3f}" for r in rs)
            extra = " | ".join(f"{flat[k]:{f}}" if k in flat else "—" for k, f in
                               ((f"small.{name}.detected_mean", ".3f"), (f"small.{name}.auroc_mean", ".3f"),
                                (f"small.{name}.latency_ms_mean", ".2f")))
            lines.append(f"| {TITLES[name]} | {len(rs)} | {per} | "
                         f"{flat[f'small.{name}.frr_mean']:.3f} | {flat[f'small.{name}.frr_max']:.3f} | "
                         f"{rs[0]['estimator']} | {'—' if sup is None else f'{sup:.3f}'} | "
                         f"{'yes' if flat[f'small.{name}.within_2x'] else 'no'} | {extra} |")
    lines += ["", "Rows come from these invocations (a later one re-runs only its `--sets`):", ""]
    for label, group in (("", runs), ("small data, ", small)):
        for name, rs in group.items():
            made = ", ".join(dict.fromkeys(r.get("run", "an earlier invocation (git history of "
                                                        "results/defaults.runs.json)") for r in rs))
            lines.append(f"* {label}{TITLES[name]}: {made}")
    return "\n".join(lines + ["", MARK_END])


def write(flat: dict, text: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(flat, indent=1, default=str) + "\n")
    from benchmd import write_section

    write_section(text, MARK_START, MARK_END)


def _merge(runs: dict, small: dict) -> tuple[dict, dict]:
    """This invocation's runs over the stored ones of the sets it did not run; stores the union."""
    old = json.loads(RUNS_JSON.read_text()) if RUNS_JSON.exists() else {"runs": {}, "small": {}}
    runs = {**{k: v for k, v in old["runs"].items() if k not in runs}, **runs}
    small = {**{k: v for k, v in old["small"].items() if k not in small}, **small}
    order = {n: i for i, n in enumerate(ALL_SETS)}
    runs, small = (dict(sorted(d.items(), key=lambda kv: order[kv[0]])) for d in (runs, small))
    RESULTS.mkdir(parents=True, exist_ok=True)
    RUNS_JSON.write_text(json.dumps({"runs": runs, "small": small}, indent=1, default=str) + "\n")
    return runs, small


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=list(ALL_SETS), choices=ALL_SETS)
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2], help="seeded splits (none: only --small-seeds)")
    ap.add_argument("--small-seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    command = "python scripts/bench/bench_defaults.py " + " ".join(argv if argv is not None else sys.argv[1:])
    made = f"`{command}` on {_dt.date.today().isoformat()}"
    runs, small = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-defaults-") as tmp:
        for name in args.sets:
            for seed in args.seeds:
                r = {**run_one(name, seed, Path(tmp)), "run": made}
                runs.setdefault(name, []).append(r)
                print(f"{name} seed {seed}: AUROC {r['auroc']:.4f} ({r['chosen']}), fit {r['fit_seconds']:.0f} s, "
                      f"{r['latency_ms']:.2f} ms/frame", flush=True)
        for name in [s for s in SMALL_SETS if s in args.sets]:
            for seed in args.small_seeds:
                r = {**run_small(name, seed, Path(tmp)), "run": made}
                small.setdefault(name, []).append(r)
                print(f"{name} {SMALL_N} images, draw {seed}: FRR {r['frr']:.3f} ({r['estimator']})", flush=True)
    runs, small = _merge(runs, small)
    flat = {"command": command, "date": _dt.date.today().isoformat(), **summarise(runs, small)}
    write(flat, render(flat, runs, small))
    print(render(flat, runs, small))
    return 0


if __name__ == "__main__":
    sys.exit(main())
