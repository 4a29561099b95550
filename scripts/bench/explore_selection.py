""".venv/bin/python scripts/bench/explore_selection.py [--sets mt fashion mnist brick demo] [--part scores|analyse|threshold|latency]

Research behind issue 11 (``fit`` chooses its own configuration): does validation on synthetic
defects rank candidate configurations as real defects do, and does the selection rule pick a
candidate whose real AUROC is within 0.01 of the best (the *regret*)?

For every data set (bounded: <= 300 training images, a few hundred test images):

1. the candidate space :func:`trainer.candidates.derive_space` builds from the frame size (all
   three input sizes, both backbone widths where weights exist, pooled taps x max/avg/grid3,
   patch features with Gaussian scoring, tile grids for large frames); the analysis reports the
   recommended space (size and alignment rules) and the whole one;
2. float Keras features of training, test and synthetic images through
   :class:`trainer.features.FeatureCache` (one forward pass per network and image set);
3. per candidate: **real** AUROC (bank = all training images, test set with real defects),
   **new synthetic validation** (``trainer.synth.validation_defects`` on the source frames,
   cross-fitted scores: every training image is a validation normal, every defect is scored
   against the bank without its source image's fold), and the **old** validation of today's
   ``fit`` (80/20 split, ``synthetic_defects`` drawn on the held-out 20 % at network size);
4. the scores are stored (``--work``; ``--tag`` runs add defect kinds), so ``--part analyse``
   re-reads them and computes Spearman rho (validation vs real AUROC over the candidates) and the
   regret of the choice, before (today's validation) and after (pooled AUROC, and the search's own
   rule: worst family, estimated latency as the cost, the mid-level prior), with the paired
   DeLong SE of the regret on the test set. docs/AUTOCONFIG.md lists the runs behind its figures.

``--part threshold``: the small-data threshold study (30 training images, seeded draws):
false-reject rate on held-out good images of today's held-out quantile vs leave-one-out scores
with order-statistic and tail-extrapolated thresholds. ``--part latency``: int8 LiteRT timing of
the trunks (the latency model's constants).

Writes ``scripts/bench/results/selection_research.json`` (flat keys, numbers, command, date).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import sys
import time
from pathlib import Path

for _k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_k, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

RESULTS = ROOT / "scripts" / "bench" / "results"
OUT_JSON = RESULTS / "selection_research.json"
W035 = "mobilenet_v2_0.35_224_no_top_imagenet.weights.h5"
W100 = "mobilenet_v2_1.0_224_imagenet_from_tf2ptq_dequant.weights.h5"
ALL_SETS = ("mt", "fashion", "mnist", "brick", "demo")
FOLDS = 5
PATCH_BANK_ROWS = {"gauss": 20000, "knn": 5000}   # patch rows kept for the bank (Gaussian fit / k-NN scan)

log = logging.getLogger("explore_selection")


def shared() -> Path:
    from trainer.datasets import shared_root

    return shared_root()


# ---------------------------------------------------------------------------- data sets


def _grey(img) -> np.ndarray:
    import cv2

    if isinstance(img, (str, Path)):
        return cv2.imread(str(img), cv2.IMREAD_GRAYSCALE)
    return img[:, :, 0] if img.ndim == 3 else img


def load_set(name: str, seed: int, n_train: int, n_test: int, work: Path) -> dict:
    """Source images of one data set: ``train`` (normal), ``test`` + ``y`` (real defects = 1)."""
    from trainer import datasets

    rng = np.random.default_rng(seed)
    if name in ("mt", "fashion", "mnist"):
        kw = {"fashion": {"n_train": None}, "mnist": {}, "mt": {}}[name]
        ds = datasets.load_dataset({"mt": "magnetic_tile"}.get(name, name), seed=seed, **kw)
        tr = [ds.train[i] for i in np.sort(rng.choice(len(ds.train), min(n_train, len(ds.train)), replace=False))]
        y = np.asarray(ds.test_labels)
        te = np.r_[np.sort(rng.choice(np.flatnonzero(y == 0), min(n_test // 2, (y == 0).sum()), replace=False)),
                   np.sort(rng.choice(np.flatnonzero(y == 1), min(n_test // 2, (y == 1).sum()), replace=False))]
        return {"train": [_grey(x) for x in tr], "test": [_grey(ds.test[i]) for i in te], "y": y[te],
                "groups": [ds.test_groups[i] for i in te]}
    if name == "brick":
        return _brick(seed, n_train, n_test)
    if name == "demo":
        return _demo(work, seed, n_train, n_test)
    raise ValueError(name)


def _brick(seed: int, n_train: int, n_test: int) -> dict:
    """The generated 1024-px small-defect set of bench_tiles.py (brick halves, scratches and spots)."""
    import bench_tiles as bt

    q = bt._quadrants("brick")
    rng = np.random.default_rng(seed)
    train = [bt.make_frame(q["train_a"] if i % 2 == 0 else q["train_b"], rng) for i in range(n_train)]
    good = [bt.make_frame(q["test"], rng) for _ in range(n_test // 2)]
    bad, groups = [], []
    for i in range(n_test // 2):
        kind = ("scratch", "spot")[i % 2]
        bad.append(bt.draw_small_defect(bt.make_frame(q["test"], rng), kind, rng, bt.POLARITY["brick"])[0])
        groups.append(kind)
    return {"train": train, "test": good + bad, "y": np.r_[np.zeros(len(good), int), np.ones(len(bad), int)],
            "groups": ["good"] * len(good) + groups}


def _demo(work: Path, seed: int, n_train: int, n_test: int) -> dict:
    """The embedded demo set (trainer.data.make_demo_dataset, brick product); ``held``: its
    ``val/good`` images (separate held-out normals; ``fit --data`` calibrates on them)."""
    from trainer.data import make_demo_dataset

    lay = make_demo_dataset(work / "demo_data", seed=seed)
    rng = np.random.default_rng(seed)
    tr = [lay.train[i] for i in np.sort(rng.choice(len(lay.train), min(n_train, len(lay.train)), replace=False))]
    items = lay.test_items()
    if len(items) > n_test:
        items = [items[i] for i in np.sort(rng.choice(len(items), n_test, replace=False))]
    return {"train": [_grey(p) for p in tr], "test": [_grey(p) for p, _, _ in items],
            "y": np.array([lab for _, lab, _ in items]), "groups": [g for _, _, g in items],
            "held": [_grey(p) for p in lay.val_good]}


# ---------------------------------------------------------------------------- per-network features


def old_validation_images(train: list, cand, seed: int) -> tuple[np.ndarray, list]:
    """Today's fit: 20 % held out (seeded), one ``synthetic_defects`` defect each, drawn on the
    prepared frame (network size; working size at tile scale with a grid). Returns (cal index, defects)."""
    from device.preprocess import InputSpec, prepare_frame
    from trainer.synth import synthetic_defects

    idx = np.random.default_rng(seed).permutation(len(train))
    cal = np.sort(idx[:max(1, int(round(0.2 * len(train))))])
    spec = InputSpec(size=(cand.size, cand.size), color="grey", pixel_scale=1.0, pixel_offset=0.0,
                     working_size=tuple(cand.working_size) if cand.grid else None,
                     grid=tuple(cand.grid) if cand.grid else None, overlap=cand.overlap)
    scale = 1.0
    if cand.grid:
        _, _, tw, th = spec.tile_boxes()[0]
        scale = min(th / spec.working_size[0], tw / spec.working_size[1])
    frames = [prepare_frame(train[i], spec) for i in cal]
    syn, _, _ = synthetic_defects(frames, seed=seed + 1, scale=scale)
    return cal, syn


def score_network_group(cands: list, data: dict, syn, cache, net, seed: int) -> dict:
    """Scores of every candidate sharing one forward pass: {name: {normal, syn, real, old_cal, old_syn}
    (+ ``held``: the set's separate held-out normals against the full bank, when it has some)}.

    New validation and real scores come from the product code (``trainer.search``); the old
    validation (today's fit) is rebuilt here."""
    from trainer.search import network_inputs, patch_score_matrix, score_pass
    from trainer.selection import fold_of

    n = len(data["train"])
    fold = fold_of(n, FOLDS, seed)
    cal, old_syn = old_validation_images(data["train"], cands[0], seed)
    srcs = {"train": network_inputs(data["train"], cands[0]), "test": network_inputs(data["test"], cands[0]),
            "syn": network_inputs(syn.images, cands[0]), "old_syn": network_inputs(old_syn, cands[0])}
    extra = ("test",)
    if data.get("held"):
        srcs["held"], extra = network_inputs(data["held"], cands[0]), ("test", "held")
    pooled = [c for c in cands if c.pooling != "patch"]
    new = score_pass(pooled, srcs, cache, net, fold, syn.source, seed, extra=extra) if pooled else {}
    out = {c.name: {"normal": new[c.name]["normal"], "syn": new[c.name]["defect"], "real": new[c.name]["test"],
                    **({"held": new[c.name]["held"]} if "held" in extra else {}),
                    **_old_pooled(c, srcs, cache, net, cal)} for c in pooled}
    nf = fold.max() + 1
    for c in (c for c in cands if c.pooling == "patch"):
        got = patch_score_matrix(c, srcs, cache, net, fold, seed, extra_banks=[~np.isin(np.arange(n), cal)])
        out[c.name] = {"normal": got["train"][np.arange(n), fold],
                       "syn": got["syn"][np.arange(len(syn.source)), fold[syn.source]], "real": got["test"][:, nf],
                       "old_cal": got["train"][cal, nf + 1], "old_syn": got["old_syn"][:, nf + 1],
                       **({"held": got["held"][:, nf]} if "held" in srcs else {})}
    return out


def _scorer(c, bank):
    from trainer.search import make_scorer

    return make_scorer(c, bank)


def _old_pooled(c, srcs: dict, cache, net, cal: np.ndarray) -> dict:
    """Today's validation: bank = the 80 % not held out, held-out normals vs defects drawn on them."""
    from trainer.features import Head, compose

    heads = [Head(c.pooling, (layer,)) for layer in c.layers]
    f = {k: compose(cache.get(srcs[k], net, heads), c.layers, c.pooling) for k in ("train", "old_syn")}
    T = srcs["train"].per_item
    n = len(f["train"]) // T
    item = np.repeat(np.arange(n), T)
    old = _scorer(c, f["train"][~np.isin(item, cal)])
    return {"old_cal": old.score(f["train"].reshape(n, T, -1)[cal].reshape(len(cal) * T, -1)).reshape(-1, T).max(1),
            "old_syn": old.score(f["old_syn"]).reshape(-1, T).max(1)}


# ---------------------------------------------------------------------------- one data set


def _kinds(args) -> tuple:
    """The validation defect kinds of a run: ``--kinds`` or the product's."""
    from trainer.synth import VALIDATION_KINDS

    return tuple(args.kinds) if args.kinds else VALIDATION_KINDS


def _weight_files(alpha1: bool = True) -> dict:
    """{alpha: weights file} in ../shared/weights."""
    w = {0.35: str(shared() / "weights" / W035)}
    if alpha1:
        w[1.0] = str(shared() / "weights" / W100)
    return w


def _draw_defects(name: str, images: list, args, seed: int, min_px: float):
    """Validation defects as the research draws them (one per kind per image; brick: 3 per frame)."""
    from trainer.synth import validation_defects

    return validation_defects(images, kinds=_kinds(args), seed=seed, min_px=min_px, each=name != "brick",
                              per_image=1 if name != "brick" else 3, strength=tuple(args.strength))


def run_set(name: str, args, cache) -> Path:
    """Score every candidate of one data set; store arrays + candidate list under ``--work``."""
    from trainer.candidates import derive_space, group_by_network, log_space
    from trainer.features import Network

    t0 = time.time()
    data = load_set(name, args.seed, args.n_train if name != "brick" else args.n_train_brick,
                    args.n_test, args.work)
    hw = np.median([im.shape[:2] for im in data["train"]], axis=0).astype(int)
    weights = _weight_files(not args.no_alpha1)
    sizes = None if name == "brick" else (96, 160, 224)
    cands = derive_space(tuple(hw), weights, args.min_defect_px, sizes=sizes)
    if name == "brick":   # whole-frame candidates at 1024 px see nothing (bench_tiles): keep a few as controls
        cands = [c for c in cands if c.grid or (c.alpha == 0.35 and c.taps in ("out", "b13+out"))]
    from trainer.candidates import default_min_defect_px

    min_px = args.min_defect_px or default_min_defect_px(tuple(hw))
    syn = _draw_defects(name, data["train"], args, args.seed + 7 + sum(map(ord, args.tag)), min_px)
    log.info("%s: %d train, %d test (%d defective), frame %s, min defect %.1f px, %d synthetic; %s", name,
             len(data["train"]), len(data["test"]), int(data["y"].sum()), tuple(hw), min_px, len(syn.images),
             log_space(cands))
    scores, timing, fwd = {}, {}, {}
    for (alpha, size, *_), group in group_by_network(cands).items():
        tg = time.time()
        net = Network(alpha, size, weights[alpha])
        scores.update(score_network_group(group, data, syn, cache, net, args.seed))
        timing[f"{group[0].name.split('-' + group[0].taps)[0]}"] = time.time() - tg
        fwd[f"{group[0].name.split('-' + group[0].taps)[0]}"] = cache.ms_per_input(net)
        log.info("  %s: %d candidates in %.0f s", group[0].name.split("-" + group[0].taps)[0], len(group),
                 time.time() - tg)
        cache.drop_memory()
    path = args.work / f"scores_{name}{args.tag}.npz"
    arrays = {f"{n}|{k}": v for n, d in scores.items() for k, v in d.items()}
    np.savez_compressed(path, y=data["y"], syn_kinds=np.array(syn.kinds), syn_source=syn.source,
                        syn_sizes=syn.sizes, test_groups=np.array(data["groups"]), **arrays)
    meta = {"set": name, "frame_hw": hw.tolist(), "min_defect_px": min_px, "n_train": len(data["train"]),
            "n_test": len(data["test"]), "n_test_defective": int(data["y"].sum()), "n_synthetic": len(syn.images),
            "n_held": len(data.get("held") or []),
            "candidates": [dict(name=c.name, **{k: (list(v) if isinstance(v, tuple) else v)
                                                for k, v in c.__dict__.items()}) for c in cands],
            "seconds": time.time() - t0, "network_seconds": timing, "forward_ms_per_input": fwd}
    (args.work / f"meta_{name}{args.tag}.json").write_text(json.dumps(meta, indent=1))
    log.info("%s: done in %.0f s -> %s", name, time.time() - t0, path)
    return path


# ---------------------------------------------------------------------------- analysis


def load_scores(work: Path, name: str, held: bool = False) -> tuple[dict, dict]:
    """Scores of one data set; extra synthetic kinds scored later (``--tag``) are appended.
    ``held``: the set's separate held-out normals (``|held``, full bank), where it has some, are
    kept, so :func:`product_rule` treats them as ``fit --data`` treats ``val/good`` (they join the
    validation normals when the first choice scores them higher: docs/AUTOCONFIG.md, "Held-out
    normals"); else they are dropped."""
    z = np.load(work / f"scores_{name}.npz")
    meta = json.loads((work / f"meta_{name}.json").read_text())
    arrays = {k: z[k] for k in z.files}
    for extra in sorted(work.glob(f"scores_{name}_*.npz")):
        e = np.load(extra)
        tag = extra.stem[len(f"scores_{name}"):]
        kinds = np.array([k + tag if k in set(arrays["syn_kinds"]) else k for k in e["syn_kinds"]])
        arrays["syn_kinds"] = np.r_[arrays["syn_kinds"], kinds]
        arrays["syn_source"] = np.r_[arrays["syn_source"], e["syn_source"]]
        arrays["syn_sizes"] = np.r_[arrays["syn_sizes"], e["syn_sizes"]]
        for k in arrays:
            if k.endswith("|syn"):
                arrays[k] = np.r_[arrays[k], e[k]]
            elif k.endswith("|normal") and not np.allclose(arrays[k], e[k], atol=1e-4):
                raise ValueError(f"{extra}: normal scores of {k} differ from the main run")
    if not held:
        for k in [k for k in arrays if k.endswith("|held")]:
            arrays.pop(k)
    return arrays, meta


def candidate_costs(meta: dict) -> dict:
    """{name: estimated x86 ms per frame} from the latency model (bank = all training images)."""
    from trainer.candidates import Candidate, LatencyModel, feature_dim

    model = latency_model()
    out = {}
    for d in meta["candidates"]:
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k != "name"}
        c = Candidate(**kw)
        dim, p = feature_dim(c)
        rows = min(meta["n_train"] * c.n_tiles * p, 20000) if c.pooling == "patch" else meta["n_train"] * c.n_tiles
        out[c.name] = LatencyModel.estimate(model, c, meta["frame_hw"], rows, dim, p)
        out[c.name]["complexity"] = c.complexity()
        out[c.name]["candidate"] = c
    return out


def latency_model():
    """The product's latency model (its constants come from ``--part latency``, see LatencyModel)."""
    from trainer.candidates import LatencyModel

    return LatencyModel()


def per_candidate(arrays: dict, names: list, kinds_keep=None) -> dict:
    """{name: {"real", "syn", "old", "syn_<kind>"...}} AUROCs, and the validation arrays."""
    from core.metrics import auroc

    y = arrays["y"]
    kinds = arrays["syn_kinds"]
    keep = np.ones(len(kinds), bool) if kinds_keep is None else np.isin(kinds, kinds_keep)
    out = {}
    for n in names:
        normal, syn = arrays[f"{n}|normal"], arrays[f"{n}|syn"]
        d = {"real": auroc(y, arrays[f"{n}|real"]),
             "syn": auroc(np.r_[np.zeros(len(normal)), np.ones(int(keep.sum()))], np.r_[normal, syn[keep]]),
             "old": auroc(np.r_[np.zeros(len(arrays[f"{n}|old_cal"])), np.ones(len(arrays[f"{n}|old_syn"]))],
                          np.r_[arrays[f"{n}|old_cal"], arrays[f"{n}|old_syn"]])}
        for k in sorted(set(kinds)):
            m = kinds == k
            d[f"syn_{k}"] = auroc(np.r_[np.zeros(len(normal)), np.ones(int(m.sum()))], np.r_[normal, syn[m]])
        out[n] = d
    return out


def selection_outcome(arrays, names, table, costs, kinds_keep=None) -> dict:
    """Spearman rho and regret of: argmax of the new validation, the selection rule, argmax of the old one.

    ``regret_se``: paired DeLong standard error of (best real - chosen real) on the test set, so a
    regret can be read against the noise of the real measurement itself."""
    from scipy.stats import spearmanr

    from trainer.selection import compare, select

    real = np.array([table[n]["real"] for n in names])
    ib = int(real.argmax())
    out = {"best_real": float(real[ib]), "best_real_name": names[ib], "n_candidates": len(names)}
    for key in ("syn", "old"):
        v = np.array([table[n][key] for n in names])
        pick = int(np.nanargmax(v))
        out[f"{key}_spearman"] = float(spearmanr(v, real).statistic)
        out[f"{key}_argmax"] = names[pick]
        out[f"{key}_argmax_regret"] = float(real[ib] - real[pick])
        out[f"{key}_argmax_regret_se"] = compare(arrays["y"], arrays[f"{names[ib]}|real"],
                                                 arrays[f"{names[pick]}|real"])["se"]
    kinds = arrays["syn_kinds"]
    keep = np.ones(len(kinds), bool) if kinds_keep is None else np.isin(kinds, kinds_keep)
    n0 = len(arrays[f"{names[0]}|normal"])
    labels = np.r_[np.zeros(n0), np.ones(int(keep.sum()))]
    S = np.stack([np.r_[arrays[f"{n}|normal"], arrays[f"{n}|syn"][keep]] for n in names])
    sel = select(names, labels, S, cost=[costs[n]["x86_ms"] for n in names],
                 complexity=[costs[n]["complexity"] for n in names])
    out.update({"rule_chosen": sel.chosen, "rule_tie": sel.tie, "rule_n_tied": len(sel.tied),
                "rule_n_equivalent": len(sel.equivalent), "rule_regret": float(real[ib] - table[sel.chosen]["real"]),
                "rule_reason": sel.reason})
    out.update(robust_outcome(arrays, names, table, costs, keep, real))
    return out


def robust_outcome(arrays, names, table, costs, keep, real) -> dict:
    """The worst-family rule as the search applies it (:func:`product_rule`): rho of the worst-family
    AUROC, its argmax regret and the rule's choice (bootstrap SEs, equivalence test, estimated latency
    as cost, mid-level prior)."""
    from scipy.stats import spearmanr

    from trainer.selection import family_aurocs
    from trainer.synth import family_of

    fam = np.array([family_of(k) for k in arrays["syn_kinds"][keep]])
    stat = np.array([min(family_aurocs(arrays[f"{n}|normal"], arrays[f"{n}|syn"][keep], fam).values()) for n in names])
    pick = int(np.argmax(stat))
    sel = product_rule(arrays, names, costs, keep)
    return {"robust_spearman": float(spearmanr(stat, real).statistic), "robust_argmax": names[pick],
            "robust_argmax_regret": float(real.max() - real[pick]), "robust_rule_chosen": sel.chosen,
            "robust_rule_regret": float(real.max() - table[sel.chosen]["real"]), "robust_rule_tie": sel.tie,
            "robust_rule_reason": sel.reason}


def product_rule(arrays, names, costs, keep):
    """The search's own choice on these scores (``trainer.search._choose`` without a budget: the
    worst-family rule, the mid-level prior for last-layer features and - where ``arrays`` holds
    ``|held`` scores - the held-out normals joining when the first choice scores them higher)."""
    from types import SimpleNamespace

    from trainer.candidates import SearchClock
    from trainer.search import CandidateResult, _choose

    rs = [CandidateResult(costs[n]["candidate"], arrays[f"{n}|normal"], arrays[f"{n}|syn"][keep],
                          {"x86_ms": costs[n]["x86_ms"], "pi4_ms": float("nan")}, True, None,
                          arrays.get(f"{n}|held")) for n in names]
    syn = SimpleNamespace(kinds=list(arrays["syn_kinds"][keep]), source=arrays["syn_source"][keep])
    return _choose(rs, {}, syn, float("inf"), 0.0, SearchClock(float("inf")), time.time()).selection


def product_names(meta: dict) -> list[str]:
    """Candidates of the recommended space (``derive_space``'s rules): input sizes by frame size
    (``input_sizes``), every grid, and for aligned frames (``alignment`` in the meta) pooled
    whole-frame features with grid pooling only."""
    from trainer.candidates import ALIGNED_MIN, input_sizes

    sizes = input_sizes(meta["frame_hw"])
    aligned = meta.get("alignment", 0.0) >= ALIGNED_MIN
    return [c["name"] for c in meta["candidates"] if c.get("grid") or (
        c["size"] in sizes and (not aligned or c["pooling"] in ("grid3", "patch")))]


def set_alignment(work: Path, name: str, meta: dict, args) -> dict:
    """Alignment score of the set's training images (stored in its meta file once)."""
    from trainer.candidates import alignment_score

    if "alignment" not in meta:
        n = args.n_train if name != "brick" else args.n_train_brick
        meta["alignment"] = alignment_score(load_set(name, args.seed, n, 10, args.work)["train"])
        (work / f"meta_{name}.json").write_text(json.dumps(meta, indent=1))
    return meta


def analyse_set(work: Path, name: str, kinds, args) -> dict:
    """Before/after figures of one data set, over the recommended space and over every size."""
    arrays, meta = load_scores(work, name, not args.no_held)
    meta = set_alignment(work, name, meta, args)
    verbose = args.verbose
    costs = candidate_costs(meta)
    flat = {f"selection.{name}.alignment": meta["alignment"], f"selection.{name}.n_train": meta["n_train"], f"selection.{name}.n_test": meta["n_test"],
            f"selection.{name}.n_test_defective": meta["n_test_defective"],
            f"selection.{name}.min_defect_px": meta["min_defect_px"],
            f"selection.{name}.n_synthetic": int(np.isin(arrays["syn_kinds"], kinds).sum()),
            f"selection.{name}.forward_seconds_per_candidate": meta["seconds"] / max(1, len(meta["candidates"]))}
    for space, names in (("product", product_names(meta)), ("all", [c["name"] for c in meta["candidates"]])):
        table = per_candidate(arrays, names, kinds)
        res = selection_outcome(arrays, names, table, costs, kinds)
        flat.update({f"selection.{name}.{space}.{k}": v for k, v in res.items()})
        print(f"{name:8s} {space:9s} n={len(names):3d} | before: rho {res['old_spearman']:+.2f} regret "
              f"{res['old_argmax_regret']:.4f} | pooled: rho {res['syn_spearman']:+.2f} regret "
              f"{res['syn_argmax_regret']:.4f} ± {res['syn_argmax_regret_se']:.4f} (rule {res['rule_regret']:.4f}) | "
              f"worst-family: rho {res['robust_spearman']:+.2f} regret {res['robust_argmax_regret']:.4f} "
              f"(rule {res['robust_rule_regret']:.4f}, {res['robust_rule_chosen']}) | best {res['best_real']:.4f} "
              f"{res['best_real_name']}", flush=True)
        if verbose:
            for n in sorted(names, key=lambda n: -table[n]["real"]):
                t = table[n]
                print(f"   {n:40s} real {t['real']:.4f} syn {t['syn']:.4f} old {t['old']:.4f} "
                      + " ".join(f"{k[4:]}={v:.3f}" for k, v in t.items() if k.startswith("syn_"))
                      + f" est {costs[n]['x86_ms']:.2f} ms")
    return flat


def held_defect_scores(name: str, args, cache) -> Path:
    """For ``--part held``'s in-domain variants: validation defects drawn on the test set's good
    images (as on the training images: same kinds, sizes, seed offset 11), and every product
    candidate's full-bank scores of those good images and defects -> ``heldsyn_<set>.npz``. Run
    with the ``--n-test`` / ``--work`` of the set's scores run (the same test images)."""
    from trainer.candidates import group_by_network
    from trainer.features import Network
    from trainer.search import network_inputs, score_pass
    from trainer.selection import fold_of

    arrays, meta = load_scores(args.work, name)
    meta = set_alignment(args.work, name, meta, args)
    names, costs = product_names(meta), candidate_costs(meta)
    data = load_set(name, args.seed, meta["n_train"], args.n_test, args.work)
    gi = np.flatnonzero(data["y"] == 0)
    if not np.array_equal(data["y"], arrays["y"]):
        raise SystemExit(f"{name}: the test set differs from the scores run's (pass its --n-test / --work)")
    good = [data["test"][i] for i in gi]
    syn = _draw_defects(name, good, args, args.seed + 11, meta["min_defect_px"])
    weights = _weight_files()
    fold = fold_of(len(data["train"]), FOLDS, args.seed)
    out = {}
    for (alpha, size, *_), group in group_by_network([costs[n]["candidate"] for n in names]).items():
        net, c0 = Network(alpha, size, weights[alpha]), group[0]
        srcs = {"train": network_inputs(data["train"], c0), "syn": network_inputs(data["train"][:2], c0),
                "good": network_inputs(good, c0), "gsyn": network_inputs(syn.images, c0)}
        got = score_pass(group, srcs, cache, net, fold, np.zeros(2, int), args.seed, extra=("good", "gsyn"))
        for c in group:
            if not np.allclose(got[c.name]["good"], arrays[f"{c.name}|real"][gi], atol=1e-3):
                raise SystemExit(f"{name}: {c.name}: good-image scores differ from the scores run's")
            out[f"{c.name}|gsyn"] = got[c.name]["gsyn"]
        log.info("%s %s: %d candidates", name, c0.name.split("-" + c0.taps)[0], len(group))
        cache.drop_memory()
    path = args.work / f"heldsyn_{name}.npz"
    np.savez_compressed(path, kinds=np.array(syn.kinds), source=syn.source, **out)
    return path


def _rule(names, costs, normal: dict, syn: dict, source: np.ndarray, kinds: np.ndarray, held: dict | None = None) -> str:
    """The product rule's choice on given normal / defect scores (all defects kept; ``held``: the
    held-out normals' scores, which join as ``fit`` lets them)."""
    a = {**{f"{n}|normal": normal[n] for n in names}, **{f"{n}|syn": syn[n] for n in names}, "syn_source": source,
         "syn_kinds": np.asarray(kinds),
         **({f"{n}|held": held[n] for n in names} if held else {})}
    return product_rule(a, names, costs, np.ones(len(source), bool)).chosen


def held_check(work: Path, name: str, kinds, args, splits: int = 5) -> dict:
    """Would held-out normals in the validation choose better? Half of the test set's good images
    (seeded splits) are the held-out normals (scored against the full bank, as a separate
    ``val/good`` set's would be); regret of the product rule measured on the other half of the
    good images and every real defect. Variants: ``without`` (no held-out normals), ``gated``
    (what ``fit`` does: they join when the first choice scores them higher), ``with`` (they always
    join the normals), and with ``heldsyn_<set>.npz`` (:func:`held_defect_scores`) ``within`` (rated on
    the held-out normals against defects drawn on them only) and ``both`` (training and held-out
    normals, defects drawn on either)."""
    from core.metrics import auroc

    arrays, meta = load_scores(work, name)
    meta = set_alignment(work, name, meta, args)
    names, costs = product_names(meta), candidate_costs(meta)
    keep = np.isin(arrays["syn_kinds"], kinds)
    kept = arrays["syn_kinds"][keep]
    src = arrays["syn_source"][keep]
    y = arrays["y"]
    good = np.flatnonzero(y == 0)
    hs = work / f"heldsyn_{name}.npz"
    hz = dict(np.load(hs)) if hs.exists() else None
    modes = ("without", "gated", "with") + (("within", "both") if hz is not None else ())
    got = {m: [] for m in modes}
    normal = {n: arrays[f"{n}|normal"] for n in names}
    syn = {n: arrays[f"{n}|syn"][keep] for n in names}
    today = _rule(names, costs, normal, syn, src, kept)           # the held-out half does not enter it
    pos = {int(g): i for i, g in enumerate(good)}                 # good image -> its index among the good ones
    for split in range(splits):
        h = np.sort(np.random.default_rng(split).choice(good, len(good) // 2, replace=False))
        ev = np.setdiff1d(np.arange(len(y)), h)
        real = {n: auroc(y[ev], arrays[f"{n}|real"][ev]) for n in names}
        held = {n: arrays[f"{n}|real"][h] for n in names}
        chosen = {"without": today, "gated": _rule(names, costs, normal, syn, src, kept, held),
                  "with": _rule(names, costs, {n: np.r_[normal[n], held[n]] for n in names}, syn, src, kept)}
        if hz is not None:
            hk = np.isin(hz["kinds"], kinds) & np.isin(hz["source"], [pos[int(g)] for g in h])
            remap = {pos[int(g)]: i for i, g in enumerate(h)}
            hsrc = np.array([remap[int(s)] for s in hz["source"][hk]])
            hkinds = hz["kinds"][hk]
            hsyn = {n: hz[f"{n}|gsyn"][hk] for n in names}
            chosen["within"] = _rule(names, costs, held, hsyn, hsrc, hkinds)
            n0 = len(normal[names[0]])
            chosen["both"] = _rule(names, costs, {n: np.r_[normal[n], held[n]] for n in names},
                                   {n: np.r_[syn[n], hsyn[n]] for n in names}, np.r_[src, n0 + hsrc], np.r_[kept, hkinds])
        for m in modes:
            got[m].append(max(real.values()) - real[chosen[m]])
        print(f"{name:8s} split {split} ({len(h)} held-out normals): " +
              ", ".join(f"{m} {got[m][-1]:.4f} {chosen[m]}" for m in modes), flush=True)
    print(f"{name:8s} mean regret: " + ", ".join(f"{m} {np.mean(got[m]):.4f}" for m in modes), flush=True)
    return {f"held_check.{name}.n_held": int(len(good) // 2), f"held_check.{name}.splits": splits,
            **{f"held_check.{name}.regret_{m}": float(np.mean(got[m])) for m in modes}}


# ---------------------------------------------------------------------------- nuisance normals (not shipped)
# Benign acquisition changes drawn on the training images - a slight blur (focus), a global
# brightness / contrast / gamma change (exposure), a small zoom and rotation (distance, pose) - scored
# cross-fitted like validation defects (``--part scores --kinds nblur nlight nzoom --tag _nuis``),
# then pooled with the *normals* (``--part nuisance``): does rewarding invariance to them rank as
# real defects do? docs/AUTOCONFIG.md, "Nuisance normals".


def _n_whole(img) -> np.ndarray:
    return np.full(img.shape[:2], 255, np.uint8)


def n_blur(img, rng, centre, size, strength):
    """Gaussian blur, sigma 0.4-0.9 source px (a camera slightly out of focus)."""
    import cv2
    from trainer.synth import _f32

    return np.clip(cv2.GaussianBlur(_f32(img), (0, 0), rng.uniform(0.4, 0.9)) + 0.5, 0, 255).astype(np.uint8), _n_whole(img)


def n_light(img, rng, centre, size, strength):
    """Contrast x 0.85-1.18 about the mean, offset +-8 grey levels, gamma 0.85-1.18 (exposure)."""
    from trainer.synth import _f32

    x = _f32(img)
    m = x.mean()
    gain, gamma, offset = rng.uniform(0.85, 1.18), rng.uniform(0.85, 1.18), rng.uniform(-8, 8)
    y = 255.0 * ((m + (x - m) * gain + offset).clip(0, 255) / 255.0) ** gamma
    return np.clip(y + 0.5, 0, 255).astype(np.uint8), _n_whole(img)


def n_zoom(img, rng, centre, size, strength):
    """Zoom 0.93-1.07 and rotation +-3 degrees about the centre (distance, pose)."""
    import cv2
    from trainer.synth import _f32

    h, w = img.shape[:2]
    zoom, angle = rng.uniform(0.93, 1.07), rng.uniform(-3, 3)
    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, zoom)
    out = cv2.warpAffine(np.ascontiguousarray(_f32(img)), M, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), _n_whole(img)


NUISANCE_DRAW = {"nblur": n_blur, "nlight": n_light, "nzoom": n_zoom}


def nuisance_check(work: Path, name: str, kinds, args) -> dict:
    """Regret of the product rule when each nuisance kind (then all) joins the normals."""
    from core.metrics import auroc

    arrays, meta = load_scores(work, name)
    meta = set_alignment(work, name, meta, args)
    names, costs = product_names(meta), candidate_costs(meta)
    all_kinds = arrays["syn_kinds"]
    keep = np.isin(all_kinds, kinds)
    real = {n: auroc(arrays["y"], arrays[f"{n}|real"]) for n in names}
    out = {}
    for label, nk in [("without", ())] + [(k, (k,)) for k in NUISANCE_DRAW] + [("all", tuple(NUISANCE_DRAW))]:
        m = np.isin(all_kinds, nk)
        if nk and not m.any():
            continue
        a = {**arrays, **{f"{n}|normal": np.r_[arrays[f"{n}|normal"], arrays[f"{n}|syn"][m]] for n in names}}
        chosen = product_rule(a, names, costs, keep).chosen
        out[f"nuisance.{name}.regret_{label}"] = float(max(real.values()) - real[chosen])
        print(f"{name:8s} nuisance {label:8s} regret {out[f'nuisance.{name}.regret_{label}']:.4f} {chosen}", flush=True)
    return out


def analyse_main(args, command: str) -> int:
    kinds = _kinds(args)
    flat = {"selection.validation_kinds": ",".join(kinds)}
    for name in args.sets:
        if not (args.work / f"scores_{name}.npz").exists():
            log.warning("%s: no scores in %s (run --part scores first)", name, args.work)
            continue
        flat.update(analyse_set(args.work, name, kinds, args))
    if not (args.no_write or args.no_held):
        merge_results(flat, command)
    return 0


# ---------------------------------------------------------------------------- small-data threshold


THRESHOLD_CANDIDATES = {   # the configuration each set's threshold study scores with
    "mt": dict(size=224, taps="b13+out", pooling="grid3"),
    "brick": dict(size=96, taps="b6", pooling="patch", scoring="gauss", grid=(16, 16), working_size=(1024, 1024)),
    "demo": dict(size=96, taps="b13+out", pooling="max"),
}


def _threshold_pool(name: str, seed: int, work: Path) -> dict:
    """Normal pool, a shifted good pool (where the set has one) and real defects for the threshold study."""
    if name == "mt":
        d = load_set("mt", seed, 10 ** 6, 10 ** 6, work)   # every image: 666 train + test (286 good, 392 defective)
        normals = d["train"] + [x for x, y in zip(d["test"], d["y"]) if y == 0]
        return {"normals": normals, "defects": [x for x, y in zip(d["test"], d["y"]) if y == 1]}
    if name == "demo":
        d = _demo(work, seed, 10 ** 6, 10 ** 6)
        return {"normals": d["train"], "defects": [x for x, y in zip(d["test"], d["y"]) if y == 1],
                "shifted": [x for x, y in zip(d["test"], d["y"]) if y == 0]}
    import bench_tiles as bt

    q, rng = bt._quadrants("brick"), np.random.default_rng(seed + 100)
    d = _brick(seed + 100, 0, 100)
    return {"normals": [bt.make_frame(q["train_a"], rng) for _ in range(250)], "shifted": d["test"][:50],
            "defects": d["test"][50:]}


def _draw_scores(c, pool: dict, tr: np.ndarray, ho: np.ndarray, cache, net, seed: int) -> dict:
    """Cross-fitted scores of the n training images (10 folds), today's 80/20 split, and the
    held-out / shifted / defective images against both banks (``*_full``: all n; ``*_old``: the 80 %)."""
    from trainer.features import Head, compose
    from trainer.search import network_inputs, patch_score_matrix
    from trainer.selection import cross_fit, fold_of

    normals = pool["normals"]
    n = len(tr)
    fold = fold_of(n, 10, seed)
    cal = np.sort(np.random.default_rng(seed).permutation(n)[:max(1, int(round(0.2 * n)))])
    sets = {"train": [normals[i] for i in tr], "held": [normals[i] for i in ho], "defects": pool["defects"],
            **({"shifted": pool["shifted"]} if "shifted" in pool else {})}
    srcs = {k: network_inputs(v, c) for k, v in sets.items()}
    T = srcs["train"].per_item
    if c.pooling == "patch":
        got = patch_score_matrix(c, srcs, cache, net, fold, seed, extra_banks=[~np.isin(np.arange(n), cal)])
        nf = fold.max() + 1
        out = {"cv": got["train"][np.arange(n), fold], "old_cal": got["train"][cal, nf + 1]}
        for k in sets:
            if k != "train":
                out[f"{k}_full"], out[f"{k}_old"] = got[k][:, nf], got[k][:, nf + 1]
        return out
    heads = sorted({Head(c.pooling, (layer,)) for layer in c.layers}, key=lambda h: h.key())
    f = {k: compose(cache.get(s, net, heads), c.layers, c.pooling) for k, s in srcs.items()}
    item = np.repeat(np.arange(n), T)
    cv, = cross_fit(f["train"], item, [(f["train"], np.arange(n))], lambda b: _scorer(c, b), fold, rows_per_item=T)
    full, old = _scorer(c, f["train"]), _scorer(c, f["train"][~np.isin(item, cal)])
    out = {"cv": cv, "old_cal": old.score(f["train"].reshape(n, T, -1)[cal].reshape(-1, f["train"].shape[1])
                                          ).reshape(-1, T).max(1)}
    for k in sets:
        if k != "train":
            out[f"{k}_full"] = full.score(f[k]).reshape(-1, T).max(1)
            out[f"{k}_old"] = old.score(f[k]).reshape(-1, T).max(1)
    return out


def threshold_study(name: str, args, cache, n_small: int = 30, target: float = 0.01) -> dict:
    """FRR on held-out good images of today's held-out maximum vs cross-fitted estimators, over draws."""
    from core.threshold import estimate_threshold, frr_and_miss
    from trainer.candidates import Candidate
    from trainer.features import Network

    c = Candidate(**THRESHOLD_CANDIDATES[name])
    net = Network(c.alpha, c.size, str(shared() / "weights" / W035))
    pool = _threshold_pool(name, args.seed, args.work)
    rows = []
    for d in range(args.draws):
        rng = np.random.default_rng(1000 + d)
        perm = rng.permutation(len(pool["normals"]))
        tr, ho = np.sort(perm[:n_small]), np.sort(perm[n_small:n_small + args.n_held])
        sc = _draw_scores(c, pool, tr, ho, cache, net, 1000 + d)
        ests = {"holdout_max (today)": (float(np.max(sc["old_cal"])), "old"),   # the old recipe, as named
                "order": (estimate_threshold(sc["cv"], target, "order")["value"], "full"),
                "gauss": (float(sc["cv"].mean() + 2.326 * sc["cv"].std(ddof=1)), "full"),
                "tail (auto)": (estimate_threshold(sc["cv"], target, "auto")["value"], "full")}
        for est, (t, bank) in ests.items():
            r = {"draw": d, "estimator": est, **frr_and_miss(t, sc[f"held_{bank}"], sc.get(f"defects_{bank}"))}
            if f"shifted_{bank}" in sc:
                r["frr_shifted"] = frr_and_miss(t, sc[f"shifted_{bank}"])["frr"]
            rows.append(r)
        log.info("%s draw %d: %s", name, d, {r["estimator"]: round(r["frr"], 3) for r in rows[-len(ests):]})
        cache.drop_memory()
    return summarise_threshold(name, rows, n_small, target)


def summarise_threshold(name: str, rows: list, n: int, target: float) -> dict:
    out = {}
    for est in dict.fromkeys(r["estimator"] for r in rows):
        rs = [r for r in rows if r["estimator"] == est]
        key = f"threshold.{name}.n{n}.{est.split(' ')[0]}"
        for m in ("frr", "miss", "frr_shifted"):
            v = [r[m] for r in rs if m in r]
            if v:
                out[f"{key}.{m}_mean"] = float(np.mean(v))
                out[f"{key}.{m}_max"] = float(np.max(v))
        out[f"{key}.draws"] = len(rs)
        print(f"{name:6s} n={n} {est:22s} FRR mean {np.mean([r['frr'] for r in rs]):.3f} max "
              f"{np.max([r['frr'] for r in rs]):.3f}  miss {np.mean([r.get('miss', np.nan) for r in rs]):.3f}"
              + (f"  shifted FRR {np.mean([r['frr_shifted'] for r in rs]):.3f}" if "frr_shifted" in rs[0] else ""),
              flush=True)
    out[f"threshold.{name}.target_frr"] = target
    return out


# ---------------------------------------------------------------------------- latency constants

LATENCY_TRUNKS = ((0.35, 96, "out_relu"), (0.35, 160, "out_relu"), (0.35, 224, "out_relu"),
                  (1.0, 96, "out_relu"), (1.0, 224, "out_relu"), (0.35, 96, "block_6_expand_relu"))
PI4_MOBILENETV2_1_224_INT8_4T_MS = (17.0, 20.0)   # GUIDE.md device speeds: Pi 4, MobileNetV2 1.0/224 int8, 4 threads


def _time_call(fn, n: int = 60) -> float:
    for _ in range(5):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def _trunk_ms(alpha: float, size: int, layer: str) -> tuple[float, float]:
    """(int8 LiteRT ms for one image, 1 thread; MACs) of MobileNetV2(alpha) at ``size`` up to ``layer``."""
    from device.extractor import TFLiteExtractor
    from models.backbone import FEATURE_TAPS, build_extractor
    from trainer.candidates import trunk_macs
    from trainer.convert import convert

    w = str(shared() / "weights" / (W035 if alpha == 0.35 else W100))
    taps = next(k for k, v in FEATURE_TAPS.items() if v == [layer])
    model, _ = build_extractor(alpha, (size, size), w, taps, "max")
    rep = np.random.default_rng(0).integers(0, 256, (16, size, size, 3), dtype=np.uint8)
    ext = TFLiteExtractor(convert(model, rep, "int8"), num_threads=1)
    return _time_call(lambda: ext(rep[:1])), trunk_macs(alpha, size, layer)


def latency_constants() -> dict:
    """int8 LiteRT ms (1 thread) of whole trunks -> inference = fixed + ns/MAC x MACs; k-NN and Gaussian
    ns per multiply-add; the Pi 4 inference factor from the documented Pi 4 time of MobileNetV2 1.0/224."""
    from device.scoring import GaussianScorer, KNNScorer

    out, pts = {}, []
    for alpha, size, layer in LATENCY_TRUNKS:
        ms, macs = _trunk_ms(alpha, size, layer)
        pts.append((macs, ms))
        out[f"latency.int8_ms.a{alpha:g}_{size}_{layer}"] = ms
        out[f"latency.mmacs.a{alpha:g}_{size}_{layer}"] = macs / 1e6
        log.info("int8 a%g %d up to %s: %.3f ms (%.0f MMAC)", alpha, size, layer, ms, macs / 1e6)
    fixed, per_mac = np.linalg.lstsq(np.array([[1.0, m] for m, _ in pts]), np.array([t for _, t in pts]), rcond=None)[0]
    rng = np.random.default_rng(0)
    knn = KNNScorer(rng.normal(size=(10000, 1280)).astype(np.float32), 1)
    q = rng.normal(size=(1, 1280)).astype(np.float32)
    knn_ms = _time_call(lambda: knn.score(q), 50)
    g = GaussianScorer(rng.normal(size=(5000, 96)).astype(np.float32))
    rows = rng.normal(size=(36864, 96)).astype(np.float32)
    gms = _time_call(lambda: g.score(rows), 10)
    x86 = out["latency.int8_ms.a1_224_out_relu"]
    out.update({"latency_model.inf_fixed_ms": float(max(fixed, 0.0)), "latency_model.inf_ns_per_mac": float(per_mac * 1e6),
                "latency_model.knn_ns_per_madd": float(knn_ms * 1e6 / (10000 * 1280)),
                "latency_model.gauss_ns_per_madd": float(gms * 1e6 / (36864 * 96 * 96)),
                "latency_model.pi4_inference_factor": float(np.mean(PI4_MOBILENETV2_1_224_INT8_4T_MS) / x86),
                "latency_model.basis": (f"x86: int8 LiteRT, 1 thread, measured here (MobileNetV2 1.0/224 {x86:.2f} ms); "
                                        f"Pi 4: documented MobileNetV2 1.0/224 int8, 4 threads, "
                                        f"{PI4_MOBILENETV2_1_224_INT8_4T_MS[0]:g}-{PI4_MOBILENETV2_1_224_INT8_4T_MS[1]:g} ms "
                                        "(GUIDE.md device speeds) -> inference factor; numpy stages x8 (one A72 core vs "
                                        "one x86 core, the estimate bench_audit.py uses)")})
    return out


def merge_results(update: dict, command: str) -> None:
    """Merge flat keys into selection_research.json (keys of other parts are kept); floats to 4 digits."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    cur = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {}
    cur.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in update.items()})
    done = [c for c in cur.get("command", "").split(" && ") if c and c != command]
    cur["command"] = " && ".join(done + [command])
    cur["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    OUT_JSON.write_text(json.dumps(cur, indent=1, sort_keys=True, default=str) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=list(ALL_SETS), choices=ALL_SETS)
    ap.add_argument("--part", default="scores", choices=("scores", "analyse", "threshold", "latency", "held",
                                                              "heldsyn", "nuisance"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/selection"))
    ap.add_argument("--cache-dir", type=Path, default=None, help="feature cache folder (default: memory only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-train-brick", type=int, default=60)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--min-defect-px", type=float, default=None)
    ap.add_argument("--no-alpha1", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true", help="analyse: print every candidate")
    ap.add_argument("--no-write", action="store_true", help="analyse: print only, do not update the results JSON")
    ap.add_argument("--no-held", action="store_true", help="analyse: without the set's separate held-out normals "
                                                           "(val/good; fit --data consults them; implies --no-write)")
    ap.add_argument("--kinds", nargs="+", default=None, help="scores: synthetic kinds (default all)")
    ap.add_argument("--strength", nargs=2, type=float, default=(0.4, 2.0), help="scores: defect amplitude range (x image std)")
    ap.add_argument("--tag", default="", help="scores: suffix of the output (e.g. _elastic: extra kinds, merged)")
    ap.add_argument("--draws", type=int, default=10, help="threshold: seeded draws of the small training set")
    ap.add_argument("--n-held", type=int, default=150, help="threshold: held-out good images per draw")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("absl", "tensorflow", "trainer.data"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    if set(args.kinds or ()) & set(NUISANCE_DRAW):
        from trainer.synth import VALIDATION_DRAW

        VALIDATION_DRAW.update(NUISANCE_DRAW)   # research only: trainer.synth's kinds are the product's
    if args.part in ("scores", "heldsyn"):
        from trainer.features import FeatureCache

        cache = FeatureCache(args.cache_dir)
        for name in args.sets:
            (run_set if args.part == "scores" else held_defect_scores)(name, args, cache)
        return 0
    command = ".venv/bin/python scripts/bench/explore_selection.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.part == "analyse":
        return analyse_main(args, command.strip())
    if args.part == "latency":
        merge_results(latency_constants(), command.strip())
        return 0
    if args.part in ("held", "nuisance"):
        res = {}
        for name in args.sets:
            res.update((held_check if args.part == "held" else nuisance_check)(args.work, name, _kinds(args), args))
        if not args.no_write:
            merge_results(res, command.strip())
        return 0
    from trainer.features import FeatureCache

    cache = FeatureCache(args.cache_dir)
    res = {}
    for name in args.sets:
        if name in THRESHOLD_CANDIDATES:
            res.update(threshold_study(name, args, cache))
    merge_results(res, command.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
