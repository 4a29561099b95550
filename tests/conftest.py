"""Shared fixtures: generated images and one tiny real bundle built by the trainer."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANOMALY_SHARED", REPO.parent / "shared"))
WEIGHTS_035 = SHARED / "weights" / "mobilenet_v2_0.35_224_no_top_imagenet.weights.h5"
HAVE_TF = importlib.util.find_spec("tensorflow") is not None

needs_tf = pytest.mark.skipif(not HAVE_TF, reason="TensorFlow (trainer extra) not installed")


def stripes(n: int, size: int = 48, seed: int = 0) -> list[np.ndarray]:
    """Normal 'product': diagonal stripes with a small phase jitter and sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        phase = rng.uniform(0, 2 * np.pi)
        g = 128 + 60 * np.sin((xx + yy) / 3.0 + phase) + rng.normal(0, 4, (size, size))
        out.append(np.repeat(np.clip(g, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2))
    return out


def with_blob(img: np.ndarray, seed: int = 0) -> np.ndarray:
    """A gross defect: a large dark blob."""
    import cv2

    rng = np.random.default_rng(seed)
    out = img.copy()
    h, w = img.shape[:2]
    cv2.circle(out, (int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 4, 3 * h // 4))), h // 4,
               (10, 10, 10), -1)
    return out


def write_pngs(folder: Path, images, prefix: str = "img") -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        p = folder / f"{prefix}_{i:03d}.png"
        cv2.imwrite(str(p), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
        paths.append(p)
    return paths


@pytest.fixture(scope="session")
def tiny_layout(tmp_path_factory) -> Path:
    """An MVTec-style folder of generated images: train/good, val/good, test/good, test/blob."""
    root = tmp_path_factory.mktemp("tiny_data")
    write_pngs(root / "train" / "good", stripes(40, seed=1))
    write_pngs(root / "val" / "good", stripes(12, seed=2))
    write_pngs(root / "test" / "good", stripes(8, seed=3))
    write_pngs(root / "test" / "blob", [with_blob(im, i) for i, im in enumerate(stripes(8, seed=4))])
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tiny_layout, tmp_path_factory) -> Path:
    """A real bundle from ``anomaly-train fit`` (DOC forced, a few steps, random weights, 32 px; every
    searched dimension pinned, so no search runs)."""
    if not HAVE_TF:
        pytest.skip("TensorFlow (trainer extra) not installed")
    from trainer.cli import main

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    rc = main(["fit", "--data", str(tiny_layout), "--out", str(out), "--size", "32", "--weights", "random",
               "--doc", "--doc-steps", "3", "--doc-batch", "8", "--taps", "out", "--pooling", "max", "--k", "1",
               "--scoring", "knn", "--grid", "none"])
    assert rc == 0
    return out
