""".venv/bin/python scripts/bench/explore_patches.py TEXTURE LAYERS GRIDS [N_TRAIN] [SIZE]

Research helper behind bench_tiles.py (not part of the benchmark): *patch-level* features inside
tiles. Each tile goes through the float Keras MobileNetV2 (α0.35, ImageNet); the spatial maps of
LAYERS (comma-separated MobileNetV2 layer names joined with '+', e.g.
``block_3_expand_relu+block_6_expand_relu``) are 3x3 average-pooled, brought to the resolution of
the first layer and concatenated: one descriptor per feature-map position. Scores:

* ``gauss``: Mahalanobis distance to one Gaussian fitted on all training patches (shared: the
  texture is not aligned), tile score = max over positions, image score = max over tiles;
* ``knn``: 1-NN distance to a random 20k subsample of training patches.

Example: ``.venv/bin/python scripts/bench/explore_patches.py brick block_6_expand_relu 4x4,8x8 40``
"""
import os, sys, time
import numpy as np
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "scripts" / "bench"))
import bench_tiles as bt
from device.preprocess import InputSpec, cut_tiles
from sklearn.metrics import roc_auc_score

W = str(Path(os.environ.get("ANOMALY_SHARED") or ROOT.parent / "shared") / "weights" / bt.WEIGHTS_NAME)
tex, layer_sets = sys.argv[1], sys.argv[2].split(",")
grids = [tuple(map(int, g.split("x"))) for g in sys.argv[3].split(",")]
ntr = int(sys.argv[4]) if len(sys.argv) > 4 else 40
size = int(sys.argv[5]) if len(sys.argv) > 5 else 96
ov = float(os.environ.get("EXPLORE_OVERLAP", "0.25"))
rng = np.random.default_rng(0)
q = bt._quadrants(tex)
tr = [bt.make_frame(q["train_a" if i % 2 else "train_b"], rng) for i in range(ntr)]
good = [bt.make_frame(q["test"], rng) for i in range(20)]
bad = []
for k in ("scratch", "spot"):
    for i in range(15):
        b, m = bt.draw_small_defect(bt.make_frame(q["test"], rng), k, rng, bt.POLARITY.get(tex.partition(":")[0], "auto"))
        bad.append(b)

import keras
from keras import layers
bb = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=0.35, include_top=False, weights=None)
bb.load_weights(W)


def build(names):
    outs = []
    for n in names:
        t = bb.get_layer(n).output
        t = layers.AveragePooling2D(3, 1, padding="same")(t)
        outs.append(t)
    h = int(outs[0].shape[1])
    outs = [o if int(o.shape[1]) == h else layers.Resizing(h, h, interpolation="bilinear")(o) for o in outs]
    f = outs[0] if len(outs) == 1 else layers.Concatenate()(outs)
    inp = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inp)
    return keras.Model(inp, keras.Model(bb.input, f)(x))


rgb = lambda f: np.repeat(f[:, :, None], 3, 2)
for ls in layer_sets:
    model = build(ls.split("+"))
    for g in grids:
        spec = InputSpec(size=(size, size), working_size=(1024, 1024), grid=g, overlap=0.0 if g[0] >= 8 else ov)
        T = len(spec.tile_boxes())
        t0 = time.time()
        feat = lambda fs: model.predict(np.concatenate([cut_tiles(rgb(f), spec) for f in fs]).astype(np.float32), batch_size=64, verbose=0)
        fb = feat(tr)
        n, h, w, c = fb.shape
        P = fb.reshape(-1, c).astype(np.float64)
        mu = P.mean(0); cov = np.cov(P, rowvar=False) + 0.01 * np.eye(c)
        icov = np.linalg.inv(cov)
        sub = P[rng.choice(len(P), min(20000, len(P)), replace=False)].astype(np.float32)
        sub2 = (sub ** 2).sum(1)

        def scores(fs):
            F = feat(fs)
            X = F.reshape(-1, c).astype(np.float64) - mu
            md = np.sqrt(np.einsum("ij,jk,ik->i", X, icov, X)).reshape(len(fs), T, h * w)
            Xf = F.reshape(-1, c).astype(np.float32)
            kn = []
            for i in range(0, len(Xf), 8192):
                x = Xf[i:i + 8192]
                d = (x ** 2).sum(1)[:, None] - 2 * x @ sub.T + sub2[None]
                kn.append(np.sqrt(np.maximum(d.min(1), 0)))
            kn = np.concatenate(kn).reshape(len(fs), T, h * w)
            return md, kn
        mg, kg = scores(good)
        md, kd = scores(bad)
        y = np.r_[np.zeros(len(good)), np.ones(len(bad))]
        res = []
        for name, a, b in (("gauss", mg, md), ("knn", kg, kd)):
            auc = roc_auc_score(y, np.r_[a.max((1, 2)), b.max((1, 2))])
            auc_s = roc_auc_score(np.r_[np.zeros(20), np.ones(15)], np.r_[a.max((1, 2)), b[:15].max((1, 2))])
            auc_p = roc_auc_score(np.r_[np.zeros(20), np.ones(15)], np.r_[a.max((1, 2)), b[15:].max((1, 2))])
            res.append(f"{name} {auc:.3f} (scratch {auc_s:.3f} spot {auc_p:.3f})")
        print(tex, ls, g, T, f"map {h}x{w}x{c}", " | ".join(res), f"{time.time() - t0:.0f}s", flush=True)
