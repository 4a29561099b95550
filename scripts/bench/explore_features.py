"""Quick float exploration of untouched-backbone features (no DOC, no TFLite).

Invocation: ``.venv/bin/python scripts/bench/explore_features.py DATASET SIZE COLOR [--resize MODE] [--doc-model PATH]``

One forward pass per (data set, size, colour) caches max- and average-pooled features of
several MobileNetV2 layers; every tap combination / pooling / k is then scored in numpy,
both on the real test split and on synthetic defects drawn on held-out normal images, so
the synthetic-vs-real agreement can be read off the same table.
"""
from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

LAYERS = ["block_3_expand_relu", "block_6_expand_relu", "block_10_expand_relu", "block_13_expand_relu", "out_relu"]
SHORT = {"block_3_expand_relu": "b3", "block_6_expand_relu": "b6", "block_10_expand_relu": "b10",
         "block_13_expand_relu": "b13", "out_relu": "out"}
WEIGHTS = str(ROOT.parent / "shared" / "weights" / "mobilenet_v2_0.35_224_no_top_imagenet.weights.h5")


def pooled_model(size, backbone=None):
    import keras
    from keras import layers

    from models.backbone import build_backbone

    if backbone is None:
        backbone, _ = build_backbone(0.35, size, WEIGHTS)
    inp = keras.Input((size[0], size[1], 3))
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0)(inp)
    inner = keras.Model(backbone.input, [backbone.get_layer(n).output for n in LAYERS])
    outs = inner(x, training=False)
    from models.backbone import _grid_pool

    pooled = []
    for t in outs:
        pooled += [layers.GlobalMaxPooling2D()(t), layers.GlobalAveragePooling2D()(t), _grid_pool(t, 2),
                   _grid_pool(t, 3)]
    return keras.Model(inp, pooled)


POOLS = ("max", "avg", "grid2", "grid3")


def features(model, x):
    outs = model.predict(x.astype(np.float32), batch_size=32, verbose=0)
    return {f"{SHORT[n]}:{p}": outs[len(POOLS) * i + j] for i, n in enumerate(LAYERS) for j, p in enumerate(POOLS)}


def l2(f):
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def combine(fd, taps, pool):
    parts = []
    for t in taps:
        if pool == "maxavg":
            parts += [l2(np.concatenate([fd[f"{t}:max"], fd[f"{t}:avg"]], 1))]
        else:
            parts.append(l2(fd[f"{t}:{pool}"]))
    return l2(np.concatenate(parts, 1))


def prepare(name, size, color, seed=0, resize="stretch"):
    from device.preprocess import InputSpec, preprocess_many
    from trainer.datasets import load_dataset
    from trainer.synth import synthetic_defects

    suffix = "" if resize == "stretch" else f"_{resize}"
    cache = Path(f"/tmp/explore/{name}_{size[0]}_{color}_{seed}{suffix}.npz")
    if cache.exists():
        z = np.load(cache)
        return {k: z[k] for k in z.files}
    ds = load_dataset(name, seed=seed)
    spec = InputSpec(size=size, color=color, resize=resize, pixel_scale=1.0, pixel_offset=0.0)
    xtr = preprocess_many(ds.images("train"), spec)
    xte = preprocess_many(ds.images("test"), spec)
    idx = np.random.default_rng(seed).permutation(len(xtr))
    n_cal = int(round(0.2 * len(xtr)))
    bank_i, cal_i = np.sort(idx[n_cal:]), np.sort(idx[:n_cal])
    # synthetic defects at the source resolution would be more faithful; at network size is what fit() does
    syn, _, kinds = synthetic_defects(list(xtr[cal_i]), seed=seed + 1)
    d = {"x_bank": xtr[bank_i], "x_cal": xtr[cal_i], "x_syn": np.stack(syn), "x_test": xte,
         "y_test": ds.test_labels}
    np.savez(cache, **d)
    return d


POOLING_CHOICES = ("max", "avg", "maxavg", "grid2", "grid3")
K_CHOICES = (1, 5, 10)


def main():
    from device.scoring import KNNScorer
    from trainer.pipeline import auroc

    name, s, color = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    size = (s, s)
    t0 = time.time()
    resize = sys.argv[sys.argv.index("--resize") + 1] if "--resize" in sys.argv else "stretch"
    d = prepare(name, size, color, resize=resize)
    t1 = time.time()
    backbone = None
    tag = "untouched"
    if "--doc-model" in sys.argv:
        import keras
        backbone = keras.models.load_model(sys.argv[sys.argv.index("--doc-model") + 1], compile=False)
        tag = Path(sys.argv[sys.argv.index("--doc-model") + 1]).stem
    tag += "" if resize == "stretch" else f"_{resize}"
    m = pooled_model(size, backbone)
    F = {k: features(m, d[k]) for k in ("x_bank", "x_cal", "x_syn", "x_test")}
    t2 = time.time()
    print(f"# {name} {s}px {color} {tag}: prep {t1 - t0:.0f}s, features {t2 - t1:.0f}s "
          f"({sum(len(d[k]) for k in F)} images)", flush=True)
    combos = [["out"], ["b13"], ["b10"], ["b6"], ["b13", "out"], ["b6", "b13", "out"], ["b10", "b13", "out"],
              ["b3", "b6", "b10", "b13", "out"], ["b6", "b10", "b13"], ["b6", "b10"]]
    rows = []
    for taps, pool, k in itertools.product(combos, POOLING_CHOICES, K_CHOICES):
        f = {kk: combine(F[kk], taps, pool) for kk in F}
        sc = KNNScorer(f["x_bank"], k)
        cal, syn, te = sc.score(f["x_cal"]), sc.score(f["x_syn"]), sc.score(f["x_test"])
        syn_auc = auroc(np.r_[np.zeros(len(cal)), np.ones(len(syn))], np.r_[cal, syn])
        real_auc = auroc(d["y_test"], te)
        rows.append({"data": name, "size": s, "color": color, "model": tag, "taps": "+".join(taps),
                     "pool": pool, "k": k, "syn": round(syn_auc, 4), "real": round(real_auc, 4)})
        print(f"{'+'.join(taps):22s} {pool:6s} k={k}  syn {syn_auc:.4f}  real {real_auc:.4f}", flush=True)
    out = Path(f"/tmp/explore/rows_{name}_{s}_{color}_{tag}.json")
    out.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
