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
import threading
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

# ------------------------------------------------------------------ area downscaling from an integral image
# OpenCV's INTER_AREA at a non-integer ratio (e.g. 315 -> 96 px) is a scalar loop, about 2.5 ns per
# source pixel. The same box averages follow exactly from one integral image: the integral at a
# fractional point is the bilinear interpolation of the integer-point integral, so each output
# pixel is (I(y1, x1) - I(y0, x1) - I(y1, x0) + I(y0, x0)) / box area with the box corners at
# start + j * ratio. This is the definition OpenCV's INTER_AREA implements for downscaling (it
# accumulates in float32, here float64), so the pixels agree with per-box ``cv2.resize``: bit-identical
# for the benchmark's tile grids (315-px tiles of 1024 -> 96, 2x2, 3x3, 3x9; tests/test_preprocess_fast.py);
# where a ratio makes box means land on exact halves (1024 -> 96 is 32/3, 512 -> 96 is 16/3) the two
# round some of those apart, by 1 grey level on 0.1-0.2 % of the pixels. Trainer and device both
# call this code (on the grey frame or its three-channel copy: same values per channel), so they agree.
# Used only where a cost model predicts it cheaper (below), never for an integer ratio on both axes
# (OpenCV's own path is vectorised there) nor for upscaling (INTER_AREA then means bilinear). Work
# buffers are kept per thread and shape (about 15 MB for 4x4 tiles of a 1024x1024 grey frame): fresh
# multi-megabyte arrays every frame cost more in page faults than the arithmetic.

_AREA_BUFFERS_PER_THREAD = 2
_area_local = threading.local()


@functools.lru_cache(maxsize=32)
def _area_plan(shape: tuple, boxes: tuple, out_hw: tuple):
    """Integral-image sample positions for equal-size ``boxes`` (x, y, w, h) of an image of ``shape``
    scaled to ``out_hw``; None when the boxes are not a row-major grid (rows x columns) inside the image."""
    H, W = shape[:2]
    oh, ow = out_hw
    bw, bh = boxes[0][2], boxes[0][3]
    ys = sorted({b[1] for b in boxes})
    xs = sorted({b[0] for b in boxes})
    if (list(boxes) != [(x, y, bw, bh) for y in ys for x in xs] or ys[0] < 0 or xs[0] < 0
            or ys[-1] + bh > H or xs[-1] + bw > W):
        return None

    def axis(starts, length, n_out, limit):
        rel = np.arange(n_out + 1, dtype=np.float64) * (length / n_out)   # as OpenCV: dx * scale
        i = np.floor(rel)
        frac = np.tile(rel - i, len(starts))
        i0 = (np.asarray(starts, np.intp)[:, None] + i.astype(np.intp)[None, :]).ravel()
        return i0, np.minimum(i0 + 1, limit), frac

    r0, r1, fy = axis(ys, bh, oh, H)
    c0, c1, fx = axis(xs, bw, ow, W)
    extra = (1,) * (len(shape) - 2)                                   # channel axis, if any
    return (r0, r1, fy.reshape((-1, 1) + extra), c0, c1, fx.reshape((1, -1) + extra), len(ys), len(xs),
            (oh / bh) * (ow / bw))


def _area_buffers(key: tuple, specs: list) -> list[np.ndarray]:
    cache = getattr(_area_local, "buffers", None)
    if cache is None:
        cache = _area_local.buffers = {}
    bufs = cache.pop(key, None)
    if bufs is None:
        bufs = [np.empty(shape, dtype) for shape, dtype in specs]
    cache[key] = bufs                                                 # most recent last
    while len(cache) > _AREA_BUFFERS_PER_THREAD:
        cache.pop(next(iter(cache)))
    return bufs


# Cost model (ns, measured on the 2-core x86 benchmark machine): OpenCV INTER_AREA ~2.7 per source
# pixel of every box; the integral route ~0.4 per frame pixel + 3.7 per (sampled row x frame width)
# + 5 per (sampled row x sampled column) + 3.4 per output pixel. The route is taken only where it
# is predicted cheaper (4x4 tiles of 1024 px -> 96: 2.9 vs 4.3 ms; 6x6: OpenCV stays).
_AREA_COST_CV2, _AREA_COST_INTEGRAL, _AREA_COST_ROWS, _AREA_COST_GRID, _AREA_COST_OUT = 2.7, 0.4, 3.7, 5.0, 3.4


def area_fast_applies(img_hw: tuple[int, int], box_hw: tuple[int, int], grid: tuple[int, int],
                      out_hw: tuple[int, int]) -> bool:
    """Whether :func:`_area_boxes` takes over from per-box ``cv2.resize`` for a ``grid`` (rows,
    columns) of ``box_hw`` boxes in an ``img_hw`` image, each downscaled to ``out_hw``."""
    (H, W), (bh, bw), (ny, nx), (oh, ow) = img_hw, box_hw, grid, out_hw
    if bh < oh or bw < ow or (bh % oh == 0 and bw % ow == 0):    # upscaling: not area; integer: OpenCV is vectorised
        return False
    n, m = ny * (oh + 1), nx * (ow + 1)
    fast = (_AREA_COST_INTEGRAL * H * W + _AREA_COST_ROWS * n * W + _AREA_COST_GRID * n * m
            + _AREA_COST_OUT * ny * nx * oh * ow)
    return fast < _AREA_COST_CV2 * ny * nx * bh * bw


def _area_boxes(img: np.ndarray, boxes, out_hw: tuple[int, int]) -> np.ndarray | None:
    """Equal-size ``boxes`` (x, y, w, h) of a uint8 (H, W) or (H, W, C) image, each downscaled to
    ``out_hw`` by area averaging: (len(boxes), oh, ow[, C]) uint8; None where it does not apply
    (the caller falls back to ``cv2.resize`` per box)."""
    boxes = tuple(tuple(int(v) for v in b) for b in boxes)
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if (not boxes or img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4)))
            or len({b[2:] for b in boxes}) != 1):
        return None
    ny, nx = len({b[1] for b in boxes}), len({b[0] for b in boxes})
    if not area_fast_applies(img.shape[:2], (boxes[0][3], boxes[0][2]), (ny, nx), (oh, ow)):
        return None
    key = (img.shape, boxes, (oh, ow))
    plan = _area_plan(*key)
    if plan is None:
        return None
    r0, r1, fy, c0, c1, fx, ny, nx, inv_area = plan
    H, W = img.shape[:2]
    ch = img.shape[2:]
    idepth = np.int32 if 255 * H * W < 2 ** 31 else np.float64
    n, m = len(r0), len(c0)
    integ, top, step, rows, a, b, s = _area_buffers(key, [
        ((H + 1, W + 1) + ch, idepth), ((n, W + 1) + ch, idepth), ((n, W + 1) + ch, idepth),
        ((n, W + 1) + ch, np.float64), ((n, m) + ch, np.float64), ((n, m) + ch, np.float64),
        ((ny, oh, nx, ow) + ch, np.float64)])
    cv2 = _cv2()
    integ = cv2.integral(np.ascontiguousarray(img), sum=integ, sdepth=cv2.CV_32S if idepth is np.int32 else cv2.CV_64F)
    # integral at the fractional box rows (linear along y: top + fy * (next row - top), the step
    # being an exact integer row sum), then at the fractional columns
    np.take(integ, r0, axis=0, out=top)
    np.take(integ, r1, axis=0, out=step)
    step -= top
    np.multiply(step, fy, out=rows)
    rows += top
    np.take(rows, c0, axis=1, out=a)
    np.take(rows, c1, axis=1, out=b)
    b -= a
    b *= fx
    a += b
    g = a.reshape((ny, oh + 1, nx, ow + 1) + ch)
    np.subtract(g[:, 1:, :, 1:], g[:, :-1, :, 1:], out=s)
    s -= g[:, 1:, :, :-1]
    s += g[:, :-1, :, :-1]
    s *= inv_area                                                     # box sums -> means in [0, 255]
    s += 0.5                                                          # round half up; >= 0, so the cast floors
    out = np.empty((ny, nx, oh, ow) + ch, np.uint8)
    out[...] = s.transpose((0, 2, 1, 3) + tuple(range(4, 4 + len(ch))))
    return out.reshape((ny * nx, oh, ow) + ch)


def _resize_box(img: np.ndarray, box: tuple[int, int, int, int], out_hw: tuple[int, int], interp: int,
                spec: InputSpec) -> np.ndarray:
    """``img[box]`` resized to ``out_hw`` with the spec's interpolation."""
    x, y, w, h = box
    if spec.interpolation == "area":
        out = _area_boxes(img, [box], out_hw)
        if out is not None:
            return out[0]
    return _cv2().resize(img[y:y + h, x:x + w], (out_hw[1], out_hw[0]), interpolation=interp)


def _resize(img: np.ndarray, out_hw: tuple[int, int], spec: InputSpec) -> np.ndarray:
    cv2 = _cv2()
    oh, ow = out_hw
    h, w = img.shape[:2]
    interp = getattr(cv2, _INTERP[spec.interpolation])
    if (h, w) == (oh, ow):
        return img
    if spec.resize == "stretch":
        return _resize_box(img, (0, 0, w, h), (oh, ow), interp, spec)
    if spec.resize == "center_crop":
        s = max(oh / h, ow / w)
        ch, cw = min(h, round(oh / s)), min(w, round(ow / s))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return _resize_box(img, (x0, y0, cw, ch), (oh, ow), interp, spec)
    # letterbox
    s = min(oh / h, ow / w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = _resize_box(img, (0, 0, w, h), (nh, nw), interp, spec)
    out = np.full((oh, ow) + img.shape[2:], spec.pad_value, np.uint8)
    y0, x0 = (oh - nh) // 2, (ow - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = small
    return out


def to_color_mode(img: np.ndarray, color: str) -> np.ndarray:
    """Return a contiguous uint8 (H, W, 3) RGB array in the declared colour mode."""
    cv2 = _cv2()
    if img.ndim == 2:
        return _grey_to_rgb(img)
    if color == "grey":
        return _grey_to_rgb(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY))
    return np.ascontiguousarray(img)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """(..., H, W) uint8 -> (..., H, W, 3), the grey level in every channel (``np.repeat`` semantics,
    about 20x faster through OpenCV)."""
    g = np.ascontiguousarray(grey)
    flat = g.reshape(-1, g.shape[-1]) if g.ndim != 2 else g
    if flat.shape[0] >= 2 ** 31 or flat.size == 0:   # pragma: no cover - beyond OpenCV's Mat limits
        return np.repeat(g[..., None], 3, axis=-1)
    return _cv2().cvtColor(flat, _cv2().COLOR_GRAY2RGB).reshape(g.shape + (3,))


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
    the network size: (T, H, W, 3).

    Tile ``i`` is ``frame[y:y + h, x:x + w]`` for box ``i`` of ``spec.tile_boxes()``, resized alone
    with the spec's interpolation (so a grey frame and its three-channel copy give the same tiles).
    With ``area`` and tiles several times the network size the box averages come from one
    integral image of the frame (see :func:`_area_boxes`), not from one ``cv2.resize`` per tile:
    same definition, same pixels up to float rounding at exact halves, about 30 % less time for
    4x4 tiles of a 1024-px frame.
    """
    if not spec.tiled:
        return frame[None] if frame.ndim == 3 else to_color_mode(frame, spec.color)[None]
    cv2 = _cv2()
    interp = getattr(cv2, _INTERP[spec.interpolation])
    oh, ow = spec.size
    boxes = spec.tile_boxes()
    out = _area_boxes(frame, boxes, (oh, ow)) if spec.interpolation == "area" else None
    if out is None:
        out = np.empty((len(boxes), oh, ow) + frame.shape[2:], np.uint8)
        for i, (x, y, w, h) in enumerate(boxes):
            t = frame[y:y + h, x:x + w]
            out[i] = t if (h, w) == (oh, ow) else cv2.resize(t, (ow, oh), interpolation=interp)
    return out if frame.ndim == 3 else _grey_to_rgb(out)


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
