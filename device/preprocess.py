"""The one preprocessing function, driven by the bundle's input spec.

Trainer and device both call :func:`preprocess`, so a given image becomes the same
network input on both sides. Nothing is guessed from the pixel values: the colour
mode, region of interest, resize mode and size all come from :class:`InputSpec`.

Pixels stay ``uint8`` RGB up to the network boundary; the extractor maps them to
the model's input type (float scaling or int8 quantisation) from the manifest.

Example:
    >>> import numpy as np
    >>> spec = InputSpec(size=(96, 96))
    >>> preprocess(np.zeros((480, 640), np.uint8), spec).shape
    (1, 96, 96, 3)
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from device.errors import ImageError

log = logging.getLogger(__name__)

COLOR_MODES = ("rgb", "grey")
RESIZE_MODES = ("stretch", "letterbox", "center_crop")
INTERPOLATIONS = ("area", "linear", "nearest")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """How a frame becomes network input.

    Attributes:
        size: network input (height, width) in pixels.
        color: ``"rgb"`` keeps colour (grey frames are replicated to 3 channels);
            ``"grey"`` converts to luminance first, then replicates (colour drift is not scored).
        roi: optional crop ``(x, y, width, height)`` in source pixels, applied first.
        resize: ``"stretch"`` (ignore aspect), ``"letterbox"`` (fit, pad with ``pad_value``)
            or ``"center_crop"`` (fill, crop the excess).
        interpolation: OpenCV interpolation used by the resize.
        min_size: smallest accepted source side (after the ROI), in pixels.
        pad_value: grey level of letterbox padding.
        pixel_scale, pixel_offset: float network input = pixel * scale + offset
            (MobileNetV2: 1/127.5 and -1, i.e. [-1, 1]).
        working_size: with a tile grid, the (height, width) the frame (or ROI) is first
            brought to (with ``resize``); tiles are cut from it and each stretched to ``size``.
        grid, overlap: tile grid as (rows, columns), neighbours overlapping by ``overlap``
            (a fraction of the tile, 0 <= overlap < 1).
        tile, stride: alternatively, tile (height, width) and stride in working-size pixels;
            the last row/column is aligned to the far edge so the whole frame is covered.
    """

    size: tuple[int, int] = (96, 96)
    color: str = "rgb"
    roi: tuple[int, int, int, int] | None = None
    resize: str = "stretch"
    interpolation: str = "area"
    min_size: int = 8
    pad_value: int = 0
    pixel_scale: float = 1.0 / 127.5
    pixel_offset: float = -1.0
    working_size: tuple[int, int] | None = None
    grid: tuple[int, int] | None = None
    overlap: float = 0.0
    tile: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None

    def __post_init__(self):
        problems = []
        if len(self.size) != 2 or min(self.size) < 8:
            problems.append(f"size must be (height, width) >= 8 px, found {self.size!r}")
        if self.color not in COLOR_MODES:
            problems.append(f"color must be one of {COLOR_MODES}, found {self.color!r}")
        if self.resize not in RESIZE_MODES:
            problems.append(f"resize must be one of {RESIZE_MODES}, found {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation must be one of {INTERPOLATIONS}, found {self.interpolation!r}")
        if self.roi is not None and (len(self.roi) != 4 or self.roi[2] <= 0 or self.roi[3] <= 0
                                     or self.roi[0] < 0 or self.roi[1] < 0):
            problems.append(f"roi must be (x, y, width, height) with width, height > 0, found {self.roi!r}")
        if self.min_size < 1:
            problems.append(f"min_size must be >= 1, found {self.min_size!r}")
        problems += self._grid_problems()
        if problems:
            raise ValueError("invalid input spec: " + "; ".join(problems))

    def _grid_problems(self) -> list[str]:
        tiled = self.grid is not None or self.tile is not None
        if not tiled:
            return [] if self.working_size is None else ["working_size is set but no grid or tile is declared"]
        p = []
        if self.grid is not None and self.tile is not None:
            p.append("declare either grid (rows, columns) or tile + stride, not both")
        if self.working_size is None or len(self.working_size) != 2 or min(self.working_size) < 8:
            p.append(f"a tile grid needs working_size (height, width) >= 8 px, found {self.working_size!r}")
            return p
        wh, ww = self.working_size
        if self.grid is not None:
            if len(self.grid) != 2 or min(self.grid) < 1:
                p.append(f"grid must be (rows, columns) >= 1, found {self.grid!r}")
            if not 0.0 <= self.overlap < 1.0:
                p.append(f"overlap must be in [0, 1) of a tile, found {self.overlap!r}")
            if not p and min(_grid_axis(wh, self.grid[0], self.overlap)[0], _grid_axis(ww, self.grid[1], self.overlap)[0]) < 8:
                p.append(f"grid {self.grid} with overlap {self.overlap} cuts tiles under 8 px from working size "
                         f"{wh}x{ww}")
        if self.tile is not None:
            if self.stride is None or len(self.stride) != 2 or min(self.stride) < 1:
                p.append(f"stride must be (rows, columns) >= 1 px, found {self.stride!r}")
            if len(self.tile) != 2 or min(self.tile) < 8:
                p.append(f"tile must be (height, width) >= 8 px, found {self.tile!r}")
            elif self.tile[0] > wh or self.tile[1] > ww:
                p.append(f"tile {self.tile[0]}x{self.tile[1]} is larger than the working size {wh}x{ww}")
        return p

    @property
    def tiled(self) -> bool:
        return self.grid is not None or self.tile is not None

    def tile_boxes(self) -> list[tuple[int, int, int, int]]:
        """Tile boxes ``(x, y, width, height)`` in working-size pixels, row-major; one box
        covering the network input when there is no grid."""
        return _tile_boxes(self)

    def _compute_tile_boxes(self) -> list[tuple[int, int, int, int]]:
        if not self.tiled:
            return [(0, 0, self.size[1], self.size[0])]
        wh, ww = self.working_size
        if self.grid is not None:
            th, ys = _grid_axis(wh, self.grid[0], self.overlap)
            tw, xs = _grid_axis(ww, self.grid[1], self.overlap)
        else:
            th, ys = self.tile[0], _stride_axis(wh, self.tile[0], self.stride[0])
            tw, xs = self.tile[1], _stride_axis(ww, self.tile[1], self.stride[1])
        return [(x, y, tw, th) for y in ys for x in xs]

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, columns) of the tile grid; (1, 1) without one."""
        boxes = self.tile_boxes()
        return len({b[1] for b in boxes}), len({b[0] for b in boxes})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("size", "roi", "working_size", "grid", "tile", "stride"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"input spec: unknown keys {unknown}; expected some of {sorted(known)}")
        d = dict(d)
        for key in ("size", "roi", "working_size", "grid", "tile", "stride"):
            if d.get(key) is not None:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)

    def replace(self, **changes) -> "InputSpec":
        return dataclasses.replace(self, **changes)


@functools.lru_cache(maxsize=64)
def _tile_boxes(spec: InputSpec) -> list[tuple[int, int, int, int]]:
    return spec._compute_tile_boxes()


def _grid_axis(length: int, n: int, overlap: float) -> tuple[int, list[int]]:
    """Tile length and start offsets for ``n`` tiles overlapping by ``overlap`` over ``length``."""
    tile = int(round(length / (n - (n - 1) * overlap)))
    tile = min(tile, length)
    if n == 1:
        return tile, [0]
    return tile, [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


def _stride_axis(length: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def _cv2():
    import cv2  # lazy: keeps `import device` light

    return cv2


def decode_image(source: str | Path | bytes | np.ndarray) -> np.ndarray:
    """Decode a file, encoded bytes or an array into a uint8 RGB (H, W, 3) or grey (H, W) array.

    Raises:
        ImageError: unreadable, undecodable or empty input (the message names the file).
    """
    cv2 = _cv2()
    if isinstance(source, np.ndarray):
        img = source
        name = "array"
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[:, :, :3]
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
            raise ImageError(f"array image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); found shape {img.shape}")
        if img.dtype != np.uint8:
            raise ImageError(f"array image must be uint8, found {img.dtype}")
    else:
        if isinstance(source, (bytes, bytearray)):
            buf = np.frombuffer(source, np.uint8)
            name = "<bytes>"
        else:
            name = str(source)
            try:
                buf = np.fromfile(name, np.uint8)
            except OSError as exc:
                raise ImageError(f"{name}: cannot read image file ({exc.strerror or exc})") from exc
        if buf.size == 0:
            raise ImageError(f"{name}: empty file, expected an encoded image")
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ImageError(f"{name}: cannot decode image ({buf.size} bytes; expected PNG/JPEG/BMP/TIFF/WebP)")
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        elif img.dtype != np.uint8:
            raise ImageError(f"{name}: unsupported pixel type {img.dtype}, expected 8- or 16-bit")
        if img.ndim == 3 and img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        elif img.ndim == 3 and img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        elif img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
    if img.size == 0 or min(img.shape[:2]) == 0:
        raise ImageError(f"{name}: empty image (shape {img.shape})")
    return img


_INTERP = {"area": "INTER_AREA", "linear": "INTER_LINEAR", "nearest": "INTER_NEAREST"}


def _resize(img: np.ndarray, out_hw: tuple[int, int], spec: InputSpec) -> np.ndarray:
    cv2 = _cv2()
    oh, ow = out_hw
    h, w = img.shape[:2]
    interp = getattr(cv2, _INTERP[spec.interpolation])
    if (h, w) == (oh, ow):
        return img
    if spec.resize == "stretch":
        return cv2.resize(img, (ow, oh), interpolation=interp)
    if spec.resize == "center_crop":
        s = max(oh / h, ow / w)
        ch, cw = min(h, round(oh / s)), min(w, round(ow / s))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (ow, oh), interpolation=interp)
    # letterbox
    s = min(oh / h, ow / w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = cv2.resize(img, (nw, nh), interpolation=interp)
    out = np.full((oh, ow) + img.shape[2:], spec.pad_value, np.uint8)
    y0, x0 = (oh - nh) // 2, (ow - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = small
    return out


def to_color_mode(img: np.ndarray, color: str) -> np.ndarray:
    """Return a contiguous uint8 (H, W, 3) RGB array in the declared colour mode."""
    cv2 = _cv2()
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if color == "grey":
        g = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
        return np.repeat(g[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img)


def crop_roi(img: np.ndarray, spec: InputSpec, name: str = "image") -> np.ndarray:
    """Apply the ROI and check the minimum size; raises ImageError naming ``name``."""
    if spec.roi is not None:
        x, y, w, h = spec.roi
        H, W = img.shape[:2]
        if x >= W or y >= H:
            raise ImageError(f"{name}: roi {spec.roi} lies outside the {W}x{H} image")
        img = img[y:min(H, y + h), x:min(W, x + w)]
    if min(img.shape[:2]) < spec.min_size:
        raise ImageError(f"{name}: image {img.shape[1]}x{img.shape[0]} is smaller than the "
                         f"minimum side of {spec.min_size} px")
    return img


def _prepare(source, spec: InputSpec) -> np.ndarray:
    """Decoded, cropped, resized frame; grey stays one channel (resizing and cutting one
    channel and replicating last gives the same pixels for a third of the work)."""
    name = str(source) if isinstance(source, (str, Path)) else "image"
    img = crop_roi(decode_image(source), spec, name)
    if img.ndim == 3 and spec.color == "grey":
        img = _cv2().cvtColor(np.ascontiguousarray(img), _cv2().COLOR_RGB2GRAY)
    return _resize(np.ascontiguousarray(img), spec.working_size if spec.tiled else spec.size, spec)


def prepare_frame(source: str | Path | bytes | np.ndarray, spec: InputSpec) -> np.ndarray:
    """Decode, crop the ROI, convert colour and bring to the working size (the network size
    when there is no tile grid). Returns uint8 (H, W, 3) RGB."""
    return to_color_mode(_prepare(source, spec), spec.color)


def cut_tiles(frame: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Cut a prepared frame (H, W, 3), or a grey (H, W) one, into its tiles, each stretched to
    the network size: (T, H, W, 3)."""
    if not spec.tiled:
        return frame[None] if frame.ndim == 3 else to_color_mode(frame, spec.color)[None]
    cv2 = _cv2()
    interp = getattr(cv2, _INTERP[spec.interpolation])
    oh, ow = spec.size
    out = np.empty((len(spec.tile_boxes()), oh, ow) + frame.shape[2:], np.uint8)
    for i, (x, y, w, h) in enumerate(spec.tile_boxes()):
        t = frame[y:y + h, x:x + w]
        out[i] = t if (h, w) == (oh, ow) else cv2.resize(t, (ow, oh), interpolation=interp)
    return out if frame.ndim == 3 else np.repeat(out[..., None], 3, axis=3)


def preprocess(source: str | Path | bytes | np.ndarray, spec: InputSpec) -> np.ndarray:
    """Decode and prepare one image as a batch of network inputs.

    Returns:
        uint8 array (T, H, W, 3), RGB; T = number of tiles (1 without a grid).
    """
    return cut_tiles(_prepare(source, spec), spec)


def to_float_input(batch_u8: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 pixels -> float32 network input, as the manifest declares."""
    return batch_u8.astype(np.float32) * np.float32(spec.pixel_scale) + np.float32(spec.pixel_offset)


def list_images(paths: Iterable[str | Path], recursive: bool = True) -> list[Path]:
    """Expand files and folders into a sorted list of image files.

    Raises:
        ImageError: a path does not exist, or a folder holds no image.
    """
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            found = sorted(f for f in it if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ImageError(f"{p}: folder holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise ImageError(f"{p}: no such file or folder")
    return out


def preprocess_many(sources: Sequence, spec: InputSpec) -> np.ndarray:
    """Preprocess several images into one (N*T, H, W, 3) uint8 batch."""
    if len(sources) == 0:
        return np.zeros((0,) + tuple(spec.size) + (3,), np.uint8)
    return np.concatenate([preprocess(s, spec) for s in sources], axis=0)
