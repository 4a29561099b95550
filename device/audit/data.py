"""Image, mask and label loading for the audit commands.

Audit methods work on grey images of one size. Either every image already has the
model's size, or ``size`` is given and every image is resized (stretch, area
interpolation) to it; a mismatch is an :class:`~device.errors.ImageError` naming the file.
Masks are same-named greyscale PNGs, binarised at 128; a mask must match its image's
original size.

Example:
    >>> from device.audit.data import read_labels          # doctest: +SKIP
    >>> read_labels("labels.csv")["MT_Crack/Imgs/a.jpg"]  # doctest: +SKIP
    1
"""
from __future__ import annotations

import csv
import fnmatch
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from device.errors import ConfigError, ImageError
from device.preprocess import decode_image, list_images

log = logging.getLogger(__name__)

POSITIVE = {"1", "anomalous", "anomaly", "bad", "ng", "defect", "reject", "true"}
NEGATIVE = {"0", "normal", "good", "ok", "pass", "false"}


def list_audit_images(folders: Sequence[str | Path], pattern: str | None = None) -> list[Path]:
    """Images under ``folders`` (recursive, sorted), optionally filtered by a glob on the name.

    Raises:
        ImageError: a folder is missing or holds no (matching) image.
    """
    paths = list_images(folders)
    if pattern:
        paths = [p for p in paths if fnmatch.fnmatch(p.name, pattern)]
        if not paths:
            raise ImageError(f"{', '.join(map(str, folders))}: no image matches --glob {pattern!r}")
    return paths


def relative_name(path: Path, roots: Sequence[str | Path]) -> str:
    """``path`` relative to the first root containing it (POSIX separators)."""
    path = Path(path)
    for r in roots:
        r = Path(r)
        try:
            rel = path.relative_to(r if r.is_dir() else r.parent)
            return rel.as_posix()
        except ValueError:
            continue
    return path.name


def _to_grey(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)


def _resize(img: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    import cv2

    if img.shape[:2] == tuple(size):
        return img
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(img, (size[1], size[0]), interpolation=interp)


def load_grey(path: str | Path, size: tuple[int, int] | None = None,
              expect: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode one image as grey uint8.

    Args:
        size: resize to (H, W) when given.
        expect: without ``size``, the (H, W) every image must have.

    Returns:
        ``(image, original (H, W))``.

    Raises:
        ImageError: unreadable, or of another size than ``expect`` (names the file).
    """
    img = _to_grey(decode_image(path))
    orig = tuple(img.shape[:2])
    if size is not None:
        return _resize(img, size), orig
    if expect is not None and orig != tuple(expect):
        raise ImageError(f"{path}: image is {orig[1]}x{orig[0]} px but the audit model expects "
                         f"{expect[1]}x{expect[0]}; pass --size to resize every image")
    return img, orig


def mask_path_for(image: Path, masks_dir: str | Path, rel: str) -> Path | None:
    """The mask of ``image``: ``masks_dir/<rel with .png>``, else ``masks_dir/<stem>.png``."""
    masks_dir = Path(masks_dir)
    for cand in (masks_dir / Path(rel).with_suffix(".png"), masks_dir / (Path(image).stem + ".png")):
        if cand.is_file() and cand.resolve() != Path(image).resolve():
            return cand
    return None


def load_mask(path: Path, image_path: Path, orig_shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Binary (H, W) uint8 mask at the working ``size``.

    Raises:
        ImageError: unreadable, or not the size of its image (names both files).
    """
    m = _to_grey(decode_image(path))
    if m.shape[:2] != tuple(orig_shape):
        raise ImageError(f"{path}: mask is {m.shape[1]}x{m.shape[0]} px but its image {image_path} is "
                         f"{orig_shape[1]}x{orig_shape[0]}")
    return (_resize(m, size, nearest=True) >= 128).astype(np.uint8)


def read_labels(path: str | Path) -> dict[str, int]:
    """Read a CSV of ``image,label`` rows (header optional).

    ``image`` is a path relative to ``--images``, a file name or a stem; ``label`` is
    1/anomalous/bad/ng or 0/normal/good/ok.

    Raises:
        ConfigError: missing file or a bad row (names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: labels file not found")
    out: dict[str, int] = {}
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip() or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise ConfigError(f"{path}:{i}: expected 'image,label', found {row!r}")
            name, lab = row[0].strip(), row[1].strip().lower()
            if lab in POSITIVE:
                out[name] = 1
            elif lab in NEGATIVE:
                out[name] = 0
            elif i == 1:
                continue  # header
            else:
                raise ConfigError(f"{path}:{i}: label {row[1]!r} is not one of 0/1/normal/anomalous")
    if not out:
        raise ConfigError(f"{path}: no labels found")
    return out


def label_for(labels: dict[str, int], rel: str) -> int | None:
    """Look ``rel`` up by relative path, then file name, then stem."""
    p = Path(rel)
    for k in (rel, p.name, p.stem):
        if k in labels:
            return labels[k]
    return None
