"""Data for the trainer: MVTec-style folders, the embedded demo set, reference sets.

Folder layout (MVTec AD's)::

    root/train/good/*.png          normal training images
    root/val/good/*.png            optional held-out normal images for the threshold
    root/test/good/*.png           held-out normal images
    root/test/<defect>/*.png       defective images (any number of defect folders)
    root/ground_truth/<defect>/<name>_mask.png   optional masks

Example:
    >>> ds = load_layout("data/")                     # doctest: +SKIP
    >>> len(ds.train), len(ds.test_good), sorted(ds.test_defects)   # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from device.errors import ImageError
from device.preprocess import IMAGE_SUFFIXES, list_images

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Layout:
    root: Path
    train: list[Path]
    val_good: list[Path]
    test_good: list[Path]
    test_defects: dict[str, list[Path]]
    masks: dict[Path, Path]

    def test_items(self) -> list[tuple[Path, int, str]]:
        """(path, label, group) for every test image; label 1 = defective."""
        items = [(p, 0, "good") for p in self.test_good]
        for name, paths in sorted(self.test_defects.items()):
            items += [(p, 1, name) for p in paths]
        return items


def _images_in(d: Path) -> list[Path]:
    return sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def load_layout(root: str | Path, need_train: bool = True, need_test: bool = True) -> Layout:
    """Discover an MVTec-style layout; errors name the folder that is missing or empty.

    ``need_test=False`` (``fit`` without ``--select-on-real``): ``test/`` may be absent, as in the
    folder ``anomaly-device capture`` writes (``train/good`` and ``capture.json`` only)."""
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"{root}: data folder not found")
    train_dir, test_dir = root / "train" / "good", root / "test"
    train = []
    if need_train:
        if not train_dir.is_dir():
            raise ImageError(f"{train_dir}: missing; expected the layout train/good (test/good, test/<defect> "
                             f"optional); a plain folder of good images: --train {root}")
        train = _images_in(train_dir)
        if not train:
            raise ImageError(f"{train_dir}: holds no images")
    if not test_dir.is_dir() and need_test:
        raise ImageError(f"{test_dir}: missing; expected test/good and test/<defect> folders")
    test_good = _images_in(test_dir / "good") if (test_dir / "good").is_dir() else []
    defects = ({d.name: _images_in(d) for d in sorted(test_dir.iterdir()) if d.is_dir() and d.name != "good"}
               if test_dir.is_dir() else {})
    defects = {k: v for k, v in defects.items() if v}
    if not test_good and not defects and need_test:
        raise ImageError(f"{test_dir}: no test images in good/ or any defect folder")
    val_good = _images_in(root / "val" / "good") if (root / "val" / "good").is_dir() else []
    masks = {}
    gt = root / "ground_truth"
    for name, paths in defects.items():
        for p in paths:
            for cand in (gt / name / f"{p.stem}_mask.png", gt / name / f"{p.stem}.png"):
                if cand.is_file():
                    masks[p] = cand
                    break
    return Layout(root, train, val_good, test_good, defects, masks)


def split_paths(paths: list[Path], fraction: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Seeded split into (first, second) with ``fraction`` of the items in the second."""
    idx = np.random.default_rng(seed).permutation(len(paths))
    n2 = max(1, int(round(len(paths) * fraction)))
    if n2 >= len(paths):
        raise ImageError(f"cannot hold out {n2} of {len(paths)} images for calibration; add more normal images")
    second = sorted(paths[i] for i in idx[:n2])
    first = sorted(paths[i] for i in idx[n2:])
    return first, second


# ---------------------------------------------------------------- embedded demo data

DEMO_DEFECTS = ("scratch", "spot", "crack")


def _texture(name: str) -> np.ndarray:
    from skimage import data as skd

    img = getattr(skd, name)()
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def render_washer(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A machined washer on a belt, as a line camera sees it: small pose, lighting and noise changes."""
    import cv2

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    belt = 60 + 8 * np.sin(xx / rng.uniform(3, 5)) + rng.normal(0, 3, (size, size))
    cx, cy = size / 2 + rng.normal(0, 1.5), size / 2 + rng.normal(0, 1.5)
    r = np.hypot(xx - cx, yy - cy)
    ro, ri = size * rng.uniform(0.37, 0.39), size * rng.uniform(0.15, 0.17)
    light = rng.uniform(0, 2 * np.pi)
    shade = 170 + 35 * np.cos(np.arctan2(yy - cy, xx - cx) - light) * (r / ro) + rng.uniform(-12, 12)
    ring = (r <= ro) & (r >= ri)
    img = np.where(ring, shade + rng.normal(0, 2.5, (size, size)), belt)
    edge = np.abs(r - ro) < 1.2
    img = np.where(edge, img * 0.8, img)
    img = cv2.GaussianBlur(np.clip(img, 0, 255).astype(np.float32), (3, 3), 0.7)
    g = np.clip(img, 0, 255).astype(np.uint8)
    tint = np.array([1.0, 0.98, 0.93], np.float32)
    return np.clip(g[:, :, None] * tint, 0, 255).astype(np.uint8)


DEMO_PRODUCTS = ("brick", "washer")


def _demo_normals(rng, patch: int, stride: int, product: str):
    """(train, validation, test) images of one product; no two share a pixel."""
    if product not in DEMO_PRODUCTS:
        raise ValueError(f"unknown demo product {product!r}; expected one of {DEMO_PRODUCTS}")
    img = _texture("brick")
    h, w = img.shape[:2]

    def rows(y0, y1):
        return [img[y:y + patch, x:x + patch] for y in range(int(h * y0), int(h * y1) - patch + 1, stride)
                for x in range(0, w - patch + 1, stride)]

    brick = rows(0.0, 0.5), rows(0.52, 0.68), rows(0.70, 1.0)
    if product == "brick":
        return brick
    n = [len(b) for b in brick]
    washers = [render_washer(rng, patch) for _ in range(sum(n))]
    return washers[:n[0]], washers[n[0]:n[0] + n[1]], washers[n[0] + n[1]:]


def make_demo_dataset(root: str | Path, patch: int = 64, stride: int = 16, seed: int = 0,
                      n_defect_per_kind: int = 40, defect_scale: float = 1.5, product: str = "brick") -> Layout:
    """Write the embedded default data set (no network, no ../shared) in MVTec layout.

    One product per data set (one bundle per product, as on a line): ``brick``, patches of
    scikit-image's brick photo (train from the top half of the image, validation from a band
    below it, test from the bottom 30 %, with gaps, so no pixel is shared), or ``washer``,
    rendered washers on a belt (each drawn anew). Defects (scratches, spots, cracks) are drawn on test
    images that are not in test/good.
    """
    import cv2

    from trainer.synth import add_defect

    root = Path(root)
    rng = np.random.default_rng(seed)
    dirs = {"train": root / "train" / "good", "val": root / "val" / "good", "good": root / "test" / "good"}
    for d in DEMO_DEFECTS:
        dirs[d] = root / "test" / d
        (root / "ground_truth" / d).mkdir(parents=True, exist_ok=True)
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)

    def save(path, rgb):
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    train, val, test = _demo_normals(rng, patch, stride, product)
    for i, p in enumerate(val):
        save(dirs["val"] / f"{product}_{i:03d}.png", p)
    order = rng.permutation(len(test))
    n_good = min(len(order) // 2, 80)
    for i, p in enumerate(train):
        save(dirs["train"] / f"{product}_{i:03d}.png", p)
    for i in order[:n_good]:
        save(dirs["good"] / f"{product}_{i:03d}.png", test[i])
    rest = order[n_good:]
    per_kind = max(1, min(n_defect_per_kind, len(rest) // len(DEMO_DEFECTS)))
    for j, kind in enumerate(DEMO_DEFECTS):
        for i in rest[j * per_kind:(j + 1) * per_kind]:
            bad, mask = add_defect(test[i], kind, rng, defect_scale)
            save(dirs[kind] / f"{product}_{i:03d}.png", bad)
            cv2.imwrite(str(root / "ground_truth" / kind / f"{product}_{i:03d}_mask.png"), mask)
    layout = load_layout(root)
    log.info("demo data set in %s: %d train, %d validation, %d test good, %d defective", root,
             len(layout.train), len(layout.val_good), len(layout.test_good), sum(len(v) for v in layout.test_defects.values()))
    return layout


# ---------------------------------------------------------------- reference sets (DOC)

SAMPLE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field",
                 "immunohistochemistry", "retina", "colorwheel", "moon", "page", "coins", "horse",
                 "text", "clock", "motorcycle_left", "logo")


def sample_photos() -> list[tuple[str, np.ndarray]]:
    """scikit-image's bundled sample photos (shipped in its wheel: no network)."""
    from skimage import data as skd

    out = []
    for name in SAMPLE_PHOTOS:
        fn = getattr(skd, name, None)
        if fn is None:
            continue
        try:
            img = fn()
        except Exception as exc:  # some samples are fetched on demand (pooch); skip those offline
            log.debug("sample photo %s unavailable: %s", name, exc)
            continue
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.dtype != np.uint8:
            img = (255 * (img - img.min()) / max(1e-9, float(img.max() - img.min()))).astype(np.uint8)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        out.append((name, np.ascontiguousarray(img[:, :, :3])))
    return out


def random_crops(images: list[np.ndarray], size: tuple[int, int], n: int, seed: int = 0,
                 min_frac: float = 0.15, max_frac: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random crops resized to ``size``; label = index of the source image."""
    import cv2

    rng = np.random.default_rng(seed)
    xs = np.empty((n, size[0], size[1], 3), np.uint8)
    ys = np.empty(n, np.int32)
    for i in range(n):
        c = int(rng.integers(len(images)))
        img = images[c]
        h, w = img.shape[:2]
        s = int(min(h, w) * rng.uniform(min_frac, max_frac))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        xs[i] = cv2.resize(img[y:y + s, x:x + s], (size[1], size[0]), interpolation=cv2.INTER_AREA)
        ys[i] = c
    return xs, ys


def load_reference(spec: str, size: tuple[int, int], n: int = 2000, seed: int = 0):
    """DOC reference set -> (uint8 images (N, H, W, 3), int labels, description).

    ``spec``: ``samples`` (scikit-image photos, class per photo), a folder (class per
    sub-folder, or per image when flat), or ``keras:<name>`` (cifar10, cifar100, mnist,
    fashion_mnist; downloaded by Keras on a connected workstation).
    """
    import cv2

    if spec == "samples":
        photos = sample_photos()
        xs, ys = random_crops([p for _, p in photos], size, n, seed)
        return xs, ys, f"scikit-image sample photos ({len(photos)} classes, {n} random crops)"
    if spec.startswith("keras:"):
        import keras

        name = spec.split(":", 1)[1]
        if not hasattr(keras.datasets, name):
            raise ValueError(f"unknown Keras data set {name!r}; expected cifar10, cifar100, mnist or fashion_mnist")
        try:
            (x, y), _ = getattr(keras.datasets, name).load_data()
        except Exception as exc:
            raise ImageError(f"keras:{name}: could not load the data set ({exc}); use a folder or 'samples'") from exc
        idx = np.random.default_rng(seed).choice(len(x), min(n, len(x)), replace=False)
        x, y = x[idx], np.asarray(y).reshape(-1)[idx].astype(np.int32)
        if x.ndim == 3:
            x = np.repeat(x[..., None], 3, axis=3)
        xs = np.stack([cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for im in x])
        return xs, y, f"Keras {name} ({len(np.unique(y))} classes, {len(xs)} images)"
    root = Path(spec)
    if not root.is_dir():
        raise ImageError(f"{root}: reference set folder not found (or use 'samples' / 'keras:cifar10')")
    from device.preprocess import InputSpec, preprocess

    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    rspec = InputSpec(size=tuple(size), resize="center_crop")
    if subdirs:
        files = [(p, c) for c, d in enumerate(subdirs) for p in list_images([d])]
    else:
        files = [(p, c) for c, p in enumerate(list_images([root]))]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(files), min(n, len(files)), replace=False)
    xs = np.concatenate([preprocess(files[i][0], rspec) for i in pick])
    ys = np.array([files[i][1] for i in pick], np.int32)
    return xs, ys, f"folder {root} ({len(np.unique(ys))} classes, {len(xs)} images)"
