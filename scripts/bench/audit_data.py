"""Named, seeded benchmark subsets for the audit methods (needs ../shared/data).

* ``mnist-anogan-v1``: MNIST test digit 1 shuffled with seed 0; the last 200 are test
  normals, the rest (935) train; anomalies: the first 20 of every other digit (180) in
  a seed-0 shuffle.
* ``mt-split-v1``: magnetic tile ``MT_Free`` shuffled with seed 0, 70 % train (666),
  30 % test normal (286), every defect image (392) in test; grey, stretched to 128x128
  (area), masks binarised at 128 and resized nearest.
* ``mt-nkn-v1``: the first 20 test normals and 20 defects (4 per defect class) of
  ``mt-split-v1`` in a seed-1 shuffle.
* ``brick-scribble-v1``: scikit-image ``brick`` resized to 128x128 with a 2-px polyline
  scribble (value 255) and its mask.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DEFECTS = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")


def shared_root() -> Path:
    """``$ANOMALY_SHARED`` or ``<repo>/../shared``; exits with a clear message when absent."""
    root = Path(os.environ.get("ANOMALY_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    if not (root / "data").is_dir():
        raise SystemExit(f"bench_audit: shared data not found at {root}/data (set ANOMALY_SHARED); "
                         f"this benchmark needs MNIST and magnetic tile from ../shared/data")
    return root


def _idx(path: Path) -> np.ndarray:
    b = gzip.open(path).read()
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(b, np.uint8, offset=4 + 4 * nd).reshape(dims)


def mnist_anogan(root: Path):
    """Returns ``(train_ones, test_images, test_labels)`` (labels: 1 = anomalous)."""
    x = _idx(root / "data/mnist/t10k-images-idx3-ubyte.gz")
    y = _idx(root / "data/mnist/t10k-labels-idx1-ubyte.gz")
    ones = x[y == 1][np.random.default_rng(0).permutation(int((y == 1).sum()))]
    train, test_n = ones[:-200], ones[-200:]
    rng = np.random.default_rng(0)
    anom = np.concatenate([x[y == d][rng.permutation(int((y == d).sum()))[:20]] for d in range(10) if d != 1])
    test = np.concatenate([test_n, anom])
    return train, test, np.r_[np.zeros(len(test_n), int), np.ones(len(anom), int)]


def _load(path: Path, size: int):
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    m = cv2.imread(str(path.with_suffix(".png")), cv2.IMREAD_GRAYSCALE)
    if img is None or m is None or m.shape != img.shape:
        raise SystemExit(f"bench_audit: cannot read {path} or its mask")
    return (cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA),
            (cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) >= 128).astype(np.uint8))


def magnetic_tile(root: Path, size: int = 128):
    """``mt-split-v1``: dict with train, test, labels, masks, kinds, names."""
    base = root / "data/magnetic_tile"
    free = sorted((base / "MT_Free/Imgs").glob("*.jpg"))
    free = [free[i] for i in np.random.default_rng(0).permutation(len(free))]
    n_tr = int(round(0.7 * len(free)))
    train = np.stack([_load(p, size)[0] for p in free[:n_tr]])
    paths = free[n_tr:] + [p for d in DEFECTS for p in sorted((base / d / "Imgs").glob("*.jpg"))]
    imgs, masks = zip(*[_load(p, size) for p in paths])
    kinds = [p.parent.parent.name for p in paths]
    return {"train": train, "test": np.stack(imgs), "masks": np.stack(masks),
            "labels": np.array([k != "MT_Free" for k in kinds], int), "kinds": kinds,
            "names": [f"{p.parent.parent.name}/{p.name}" for p in paths]}


def mt_nkn_subset(mt: dict, n_normal: int = 20, per_defect: int = 4):
    """``mt-nkn-v1`` indices into ``mt['test']``."""
    rng = np.random.default_rng(1)
    kinds = np.array(mt["kinds"])
    idx = list(rng.permutation(np.flatnonzero(kinds == "MT_Free"))[:n_normal])
    for d in DEFECTS:
        idx += list(rng.permutation(np.flatnonzero(kinds == d))[:per_defect])
    return np.array(idx)


def brick_scribble(size: int = 128):
    """``brick-scribble-v1``: ``(clean, scribbled, mask)`` uint8 images."""
    import cv2
    from skimage import data

    clean = cv2.resize(data.brick(), (size, size), interpolation=cv2.INTER_AREA)
    pts = (np.array([[0.25, 0.3], [0.45, 0.55], [0.6, 0.4], [0.75, 0.65]]) * size).astype(np.int32)
    bad, mask = clean.copy(), np.zeros_like(clean)
    cv2.polylines(bad, [pts], False, 255, 2)
    cv2.polylines(mask, [pts], False, 1, 2)
    return clean, bad, mask
