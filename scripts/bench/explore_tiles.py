""".venv/bin/python scripts/bench/explore_tiles.py TEXTURE TAPS GRIDS POLARITY N_TRAIN [OVERLAP]

Research helper behind bench_tiles.py (not part of the benchmark): float Keras features of the
generated small-defect frames (bench_tiles.make_frame / draw_small_defect, 20 good and 15+15
defective test frames), shared 1-NN bank of all training tiles, and for each grid:

* image AUROC (max over tiles),
* tile AUROC (tiles that contain defect pixels vs all tiles of good frames),
* the good-tile score distribution (median, p99, max) against the defect-tile median.

Example: ``.venv/bin/python scripts/bench/explore_tiles.py brick out,b6+b13+out 6x6,12x12 dark 60``
(``BENCH_TILES_SCRATCH_LEN=60,200`` for longer scratches; ``EXPLORE_SAME_REGION=1`` draws test frames from
the training region: shares pixels with training, an upper bound that isolates the region shift).
"""
import os, sys, time
import numpy as np
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "scripts" / "bench"))
import bench_tiles as bt
from device.preprocess import InputSpec, cut_tiles
from models.backbone import build_extractor
from device.extractor import normalize_features
from device.scoring import make_scorer
from sklearn.metrics import roc_auc_score
W = str(Path(os.environ.get("ANOMALY_SHARED") or ROOT.parent / "shared") / "weights" / bt.WEIGHTS_NAME)
tex, taps_list, grids, pol, ntr = sys.argv[1], sys.argv[2].split(","), [tuple(map(int, g.split("x"))) for g in sys.argv[3].split(",")], sys.argv[4], int(sys.argv[5])
ov = float(sys.argv[6]) if len(sys.argv) > 6 else 0.25
rng = np.random.default_rng(0)
q = bt._quadrants(tex)
tr = [bt.make_frame(q["train_a" if i % 2 else "train_b"], rng) for i in range(ntr)]
tq = q["train_a"] if os.environ.get("EXPLORE_SAME_REGION") else q["test"]   # diagnostic: test windows from the training region
good = [bt.make_frame(tq, rng) for i in range(20)]
bad, kinds, masks = [], [], []
for k in ("scratch", "spot"):
    for i in range(15):
        b, m = bt.draw_small_defect(bt.make_frame(tq, rng), k, rng, pol); bad.append(b); kinds.append(k); masks.append(m)
rgb = lambda f: np.repeat(f[:, :, None], 3, 2)
for taps in taps_list:
    model, _ = build_extractor(0.35, (96, 96), W, taps, "max")
    for g in grids:
        spec = InputSpec(size=(96, 96), working_size=(1024, 1024), grid=g, overlap=ov)
        boxes = spec.tile_boxes(); T = len(boxes)
        t0 = time.time()
        feat = lambda fs: normalize_features(model.predict(np.concatenate([cut_tiles(rgb(f), spec) for f in fs]).astype(np.float32), batch_size=128, verbose=0), "l2")
        fb, fg, fd = feat(tr), feat(good), feat(bad)
        sc = make_scorer("knn", fb, 1)
        sg, sd = sc.score(fg).reshape(-1, T), sc.score(fd).reshape(-1, T)
        hit = np.array([[m[y:y+h, x:x+w].any() for (x, y, w, h) in boxes] for m in masks])
        dt = sd[hit]; gt = sg.ravel()
        tile_auc = roc_auc_score(np.r_[np.zeros(len(gt)), np.ones(len(dt))], np.r_[gt, dt])
        img_auc = roc_auc_score(np.r_[np.zeros(len(sg)), np.ones(len(sd))], np.r_[sg.max(1), sd.max(1)])
        # oracle: max over defect tiles only
        print(sys.argv[1:], taps, g, T, "img %.3f tile %.3f  good tile p50 %.3f p99 %.3f max %.3f; defect tiles p50 %.3f" % (img_auc, tile_auc, np.median(gt), np.percentile(gt, 99), gt.max(), np.median(dt)), "%.0fs" % (time.time() - t0), flush=True)
