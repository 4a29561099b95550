"""Benchmark data sets from the shared data folder (``../shared/data``), with seeded splits.

Three one-class problems, each returned as an :class:`AnomalySplit` (normal training
images, test images with labels 0 = normal / 1 = anomalous):

* ``fashion``: Fashion-MNIST, sneaker (7) normal vs ankle boot (9). Training normals
  come from the train file, test images from the t10k file.
* ``mnist``: the MNIST *test* file only (train images are not shared): digit 1 normal
  vs 9; the 1s are split into train and test with a seed.
* ``magnetic_tile``: part of ``MT_Free`` for training/calibration, the rest of
  ``MT_Free`` plus every defect folder (``MT_Blowhole``, ``MT_Break``, ...) for test.
  Images are grey JPGs of varying size, so they are returned as paths.

The data root is the ``root`` argument, else ``$ANOMALY_SHARED``, else ``../shared``
next to the repository; a missing root or file raises :class:`DatasetError` naming it.

Example:
    >>> ds = load_dataset("fashion", seed=0, n_train=1000)        # doctest: +SKIP
    >>> len(ds.train), ds.test_labels.mean()                      # doctest: +SKIP
    (1000, 0.5)
"""
from __future__ import annotations

import dataclasses
import gzip
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SHARED_ENV = "ANOMALY_SHARED"
DATASETS = ("fashion", "mnist", "magnetic_tile")
MT_NORMAL = "MT_Free"
MT_DEFECTS = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")


class DatasetError(FileNotFoundError):
    """The shared data folder or one of its files is missing or malformed."""


@dataclasses.dataclass
class AnomalySplit:
    """One seeded split of a benchmark data set.

    Attributes:
        name: data set name.
        train: normal training images: a uint8 (N, H, W, 3) RGB array or a list of paths.
        test: test images (same kind as ``train``).
        test_labels: (M,) int array, 1 = anomalous.
        test_groups: (M,) group name per test image (``"good"`` or the defect / class name).
        color: suggested colour mode (``"grey"`` for grey sources).
        seed: the seed that made the split.
        info: counts and how the split was made.
    """

    name: str
    train: np.ndarray | list
    test: np.ndarray | list
    test_labels: np.ndarray
    test_groups: list
    color: str = "grey"
    seed: int = 0
    info: dict = dataclasses.field(default_factory=dict)

    def images(self, which: str = "train") -> list:
        """``train`` or ``test`` as a list of single images (arrays or paths), as ``fit`` expects."""
        x = self.train if which == "train" else self.test
        return list(x)


def shared_root(root: str | Path | None = None) -> Path:
    """Resolve the shared folder: ``root``, else ``$ANOMALY_SHARED``, else ``<repo>/../shared``.

    Raises:
        DatasetError: the folder (or its ``data`` sub-folder) does not exist.
    """
    if root is not None:
        p, src = Path(root), "the root argument"
    elif os.environ.get(SHARED_ENV):
        p, src = Path(os.environ[SHARED_ENV]), f"${SHARED_ENV}"
    else:
        p, src = Path(__file__).resolve().parents[1].parent / "shared", "the default <repo>/../shared"
    p = p.expanduser()
    if not (p / "data").is_dir():
        raise DatasetError(f"{p / 'data'}: shared data folder not found (from {src}); expected "
                           f"fashion_mnist/, mnist/ and magnetic_tile/ inside it. Set {SHARED_ENV} "
                           f"to the folder that holds data/ and weights/.")
    return p


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (optionally ``.gz``): uint8 images (N, H, W) or labels (N,).

    Raises:
        DatasetError: missing file or a header that is not idx uint8.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: idx file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an idx uint8 file (header {raw[:4].hex()}, expected 000008xx)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    off = 4 + 4 * ndim
    n = int(np.prod(dims))
    if len(raw) - off != n:
        raise DatasetError(f"{path}: idx header says {dims} ({n} bytes) but {len(raw) - off} bytes follow")
    return np.frombuffer(raw, np.uint8, count=n, offset=off).reshape(dims)


def _rgb(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(x[..., None], 3, axis=-1))


def _pick(rng, idx: np.ndarray, n: int | None) -> np.ndarray:
    if n is None or n >= len(idx):
        return np.sort(idx)
    return np.sort(rng.choice(idx, n, replace=False))


def fashion_mnist(normal: int = 7, anomalous: int = 9, n_train: int | None = 1000,
                  n_test_normal: int | None = None, n_test_anomalous: int | None = None, seed: int = 0,
                  root: str | Path | None = None) -> AnomalySplit:
    """Fashion-MNIST one-class split: train normals from the train file, test from t10k.

    Args:
        normal, anomalous: class labels (7 sneaker, 9 ankle boot by default).
        n_train: seeded subsample of the 6000 training normals (None: all).
        n_test_normal, n_test_anomalous: seeded subsample of the 1000 + 1000 test images (None: all).
    """
    d = shared_root(root) / "data" / "fashion_mnist"
    rng = np.random.default_rng(seed)
    xtr, ytr = read_idx(d / "train-images-idx3-ubyte.gz"), read_idx(d / "train-labels-idx1-ubyte.gz")
    xte, yte = read_idx(d / "t10k-images-idx3-ubyte.gz"), read_idx(d / "t10k-labels-idx1-ubyte.gz")
    tr = _pick(rng, np.flatnonzero(ytr == normal), n_train)
    tn = _pick(rng, np.flatnonzero(yte == normal), n_test_normal)
    ta = _pick(rng, np.flatnonzero(yte == anomalous), n_test_anomalous)
    test = np.concatenate([xte[tn], xte[ta]])
    labels = np.r_[np.zeros(len(tn), int), np.ones(len(ta), int)]
    groups = ["good"] * len(tn) + [f"class_{anomalous}"] * len(ta)
    return AnomalySplit("fashion", _rgb(xtr[tr]), _rgb(test), labels, groups, "grey", seed,
                        {"normal": normal, "anomalous": anomalous, "n_train": len(tr),
                         "n_test_normal": len(tn), "n_test_anomalous": len(ta),
                         "split": f"train normals: seeded subsample of the train file (seed {seed}); test: t10k"})


def mnist_test(normal: int = 1, anomalous: int = 9, train_fraction: float = 0.6,
               n_train: int | None = None, n_test_anomalous: int | None = None, seed: int = 0,
               root: str | Path | None = None) -> AnomalySplit:
    """MNIST test file only: the ``normal`` digits split into train/test with ``seed``.

    Args:
        train_fraction: share of the normal test digits used for training (rest: test).
        n_train: optional cap on the training normals (after the split).
        n_test_anomalous: optional seeded subsample of the anomalous digits.
    """
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), found {train_fraction}")
    d = shared_root(root) / "data" / "mnist"
    x, y = read_idx(d / "t10k-images-idx3-ubyte.gz"), read_idx(d / "t10k-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    ones = rng.permutation(np.flatnonzero(y == normal))
    n_tr = int(round(len(ones) * train_fraction))
    tr, tn = np.sort(ones[:n_tr]), np.sort(ones[n_tr:])
    tr = _pick(rng, tr, n_train)
    ta = _pick(rng, np.flatnonzero(y == anomalous), n_test_anomalous)
    test = np.concatenate([x[tn], x[ta]])
    labels = np.r_[np.zeros(len(tn), int), np.ones(len(ta), int)]
    groups = ["good"] * len(tn) + [f"digit_{anomalous}"] * len(ta)
    return AnomalySplit("mnist", _rgb(x[tr]), _rgb(test), labels, groups, "grey", seed,
                        {"normal": normal, "anomalous": anomalous, "n_train": len(tr),
                         "n_test_normal": len(tn), "n_test_anomalous": len(ta),
                         "split": f"t10k only: {train_fraction:.0%} of the {normal}s for training (seed {seed})"})


def _jpgs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: magnetic tile folder not found")
    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise DatasetError(f"{folder}: holds no .jpg images")
    return files


def magnetic_tile(train_fraction: float = 0.7, n_test_defects: int | None = None, seed: int = 0,
                  root: str | Path | None = None) -> AnomalySplit:
    """Magnetic tile: ``train_fraction`` of ``MT_Free`` for training, the rest + all defects for test.

    Images are paths (grey JPGs of varying size); each has a same-named PNG mask
    (see :func:`tile_mask`).

    Args:
        n_test_defects: optional seeded subsample of the defective test images (None: all 392).
    """
    base = shared_root(root) / "data" / "magnetic_tile"
    free = _jpgs(base / MT_NORMAL / "Imgs")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(free))
    n_tr = int(round(len(free) * train_fraction))
    train = [free[i] for i in np.sort(perm[:n_tr])]
    test_good = [free[i] for i in np.sort(perm[n_tr:])]
    defects = [(p, name) for name in MT_DEFECTS for p in _jpgs(base / name / "Imgs")]
    if n_test_defects is not None and n_test_defects < len(defects):
        keep = np.sort(rng.choice(len(defects), n_test_defects, replace=False))
        defects = [defects[i] for i in keep]
    test = test_good + [p for p, _ in defects]
    labels = np.r_[np.zeros(len(test_good), int), np.ones(len(defects), int)]
    groups = ["good"] * len(test_good) + [g for _, g in defects]
    return AnomalySplit("magnetic_tile", train, test, labels, groups, "grey", seed,
                        {"n_train": len(train), "n_test_normal": len(test_good), "n_test_anomalous": len(defects),
                         "split": f"{train_fraction:.0%} of {MT_NORMAL} for training (seed {seed}); "
                                  f"rest + {', '.join(MT_DEFECTS)} for test"})


def tile_mask(image_path: str | Path) -> np.ndarray:
    """Binary defect mask (H, W) bool of a magnetic-tile JPG (same-named PNG, binarised at 128)."""
    import cv2

    p = Path(image_path).with_suffix(".png")
    m = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise DatasetError(f"{p}: mask not found or not decodable (expected a PNG next to {Path(image_path).name})")
    return m >= 128


def load_dataset(name: str, seed: int = 0, root: str | Path | None = None, **kwargs) -> AnomalySplit:
    """Dispatch by name: ``fashion``, ``mnist`` or ``magnetic_tile``; ``kwargs`` go to the loader."""
    loaders = {"fashion": fashion_mnist, "mnist": mnist_test, "magnetic_tile": magnetic_tile}
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r}; expected one of {DATASETS}")
    return loaders[name](seed=seed, root=root, **kwargs)


def fashion_reference(exclude: tuple[int, ...] = (7, 9), n: int = 2000, size: tuple[int, int] = (96, 96),
                      seed: int = 0, root: str | Path | None = None):
    """DOC reference set from the Fashion-MNIST train file, classes in ``exclude`` left out.

    Returns:
        (uint8 images (n, H, W, 3) resized to ``size``, labels 0..C-1, description).
    """
    return _idx_reference(shared_root(root) / "data" / "fashion_mnist" / "train", exclude, n, size, seed,
                          "Fashion-MNIST train")


def mnist_reference(exclude: tuple[int, ...] = (1, 9), n: int = 2000, size: tuple[int, int] = (96, 96),
                    seed: int = 0, root: str | Path | None = None):
    """DOC reference set from the MNIST test file, digits in ``exclude`` left out."""
    return _idx_reference(shared_root(root) / "data" / "mnist" / "t10k", exclude, n, size, seed, "MNIST t10k")


def _idx_reference(prefix: Path, exclude, n, size, seed, desc):
    import cv2

    x = read_idx(f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx(f"{prefix}-labels-idx1-ubyte.gz")
    classes = [c for c in range(10) if c not in exclude]
    idx = np.flatnonzero(np.isin(y, classes))
    idx = np.random.default_rng(seed).choice(idx, min(n, len(idx)), replace=False)
    remap = {c: i for i, c in enumerate(classes)}
    xs = np.stack([cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for im in x[idx]])
    ys = np.array([remap[int(v)] for v in y[idx]], np.int32)
    return _rgb(xs), ys, f"{desc} classes {classes} ({len(xs)} images)"
