"""The fast preprocessing paths give the pixels of the plain ones.

* tiles by area averaging from one integral image (``device.preprocess._area_boxes``) vs one
  ``cv2.resize(INTER_AREA)`` per tile;
* grey -> three channels through OpenCV vs ``np.repeat``;
* the extractor's pixel lookup table vs the float formula it tabulates.
"""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from device import preprocess as pp
from device.extractor import TFLiteExtractor
from device.preprocess import InputSpec, cut_tiles, preprocess, prepare_frame

_CV2_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def reference_tiles(frame: np.ndarray, spec: InputSpec) -> np.ndarray:
    """One ``cv2.resize`` per tile, grey replicated with ``np.repeat``: the definition."""
    oh, ow = spec.size
    tiles = []
    for x, y, w, h in spec.tile_boxes():
        t = frame[y:y + h, x:x + w]
        tiles.append(t if (h, w) == (oh, ow) else cv2.resize(t, (ow, oh), interpolation=_CV2_INTERP[spec.interpolation]))
    out = np.stack(tiles)
    return out if out.ndim == 4 else np.repeat(out[..., None], 3, axis=3)


def texture(shape, seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise, uint8 (a stand-in for a camera frame)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, shape[0] // 16), max(2, shape[1] // 16)) + tuple(shape[2:]), dtype=np.uint8)
    big = cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    big = big.reshape(shape) + rng.normal(0, 12, shape)
    return np.clip(big, 0, 255).astype(np.uint8)


def frames(shape, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [texture(shape, seed), rng.integers(0, 256, shape, dtype=np.uint8), np.full(shape, 255, np.uint8),
            np.zeros(shape, np.uint8)]


GRID_4X4 = InputSpec(size=(96, 96), color="grey", working_size=(1024, 1024), grid=(4, 4), overlap=0.25)


def test_4x4_grid_takes_the_integral_path_and_matches_per_tile_resize_exactly():
    boxes = GRID_4X4.tile_boxes()
    assert boxes[0][2:] == (315, 315)
    assert pp.area_fast_applies((1024, 1024), (315, 315), (4, 4), (96, 96))
    for f in frames((1024, 1024), seed=1):
        assert pp._area_boxes(f, boxes, (96, 96)) is not None
        np.testing.assert_array_equal(cut_tiles(f, GRID_4X4), reference_tiles(f, GRID_4X4))


@pytest.mark.parametrize("kw", [
    dict(working_size=(1024, 1024), grid=(2, 2), overlap=0.25),          # 563 px tiles, ratio 5.9
    dict(working_size=(1024, 1024), grid=(3, 3), overlap=0.25),
    dict(working_size=(1024, 1024), grid=(3, 9), overlap=0.25),          # unequal ratios per axis
    dict(working_size=(1024, 1024), grid=(6, 6), overlap=0.25),          # OpenCV stays (cost model)
    dict(working_size=(600, 800), grid=(2, 3), overlap=0.1, size=(64, 80)),
    dict(working_size=(1000, 1000), tile=(300, 300), stride=(233, 233)),  # last tile aligned to the edge
    dict(working_size=(768, 768), grid=(2, 2), overlap=0.0),             # integer ratio 4: OpenCV's own path
])
def test_tile_grids_agree_with_per_tile_resize(kw):
    kw = {"size": (96, 96), "color": "grey", **kw}
    spec = InputSpec(**kw)
    shape = tuple(spec.working_size)
    for f in frames(shape, seed=2) + [texture(shape + (3,), seed=3)]:
        got, want = cut_tiles(f, spec), reference_tiles(f, spec)
        assert got.shape == want.shape and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - want)
        assert diff.max() <= 1                                   # float rounding at exact .5 only
        assert (diff > 0).mean() < 0.005


def test_ratio_with_frequent_ties_stays_within_one_grey_level():
    """512 -> 96 px (ratio 16/3): box means fall on exact halves now and then; OpenCV (float32)
    and the integral route (float64, half up) may round those apart, by one level."""
    spec = InputSpec(size=(96, 96), color="grey", working_size=(1024, 1024), grid=(2, 2), overlap=0.0)
    assert pp._area_boxes(texture((1024, 1024)), spec.tile_boxes(), (96, 96)) is not None
    for f in frames((1024, 1024), seed=4):
        diff = np.abs(cut_tiles(f, spec).astype(int) - reference_tiles(f, spec))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


@pytest.mark.parametrize("spec", [GRID_4X4, GRID_4X4.replace(grid=(6, 6)), GRID_4X4.replace(grid=(2, 2), overlap=0.0),
                                  GRID_4X4.replace(interpolation="linear")])
def test_grey_frame_and_its_three_channel_copy_give_the_same_tiles(spec):
    """The device cuts the grey (H, W) frame, the trainer the (H, W, 3) prepared one: same pixels."""
    f = texture((1024, 1024), seed=5)
    rgb = prepare_frame(f, spec)
    assert rgb.shape == (1024, 1024, 3)
    np.testing.assert_array_equal(cut_tiles(f, spec), cut_tiles(rgb, spec))
    np.testing.assert_array_equal(preprocess(f, spec), cut_tiles(rgb, spec))


@pytest.mark.parametrize("interp", ["linear", "nearest"])
def test_other_interpolations_are_honoured(interp):
    spec = GRID_4X4.replace(interpolation=interp)
    f = texture((1024, 1024), seed=6)
    got = cut_tiles(f, spec)
    np.testing.assert_array_equal(got, reference_tiles(f, spec))
    assert not np.array_equal(got, cut_tiles(f, GRID_4X4))       # and differ from area


@pytest.mark.parametrize("kw", [dict(size=(96, 96)), dict(size=(224, 224)), dict(size=(96, 128), resize="letterbox"),
                                dict(size=(96, 96), resize="center_crop"), dict(size=(96, 96), color="rgb"),
                                dict(size=(64, 64), roi=(10, 20, 700, 500))])
def test_whole_frame_resize_agrees_with_opencv(kw):
    spec = InputSpec(**{"color": "grey", **kw})
    for img in (texture((720, 960), seed=7), texture((720, 960, 3), seed=8)):
        src = pp.crop_roi(img, spec)
        if src.ndim == 3 and spec.color == "grey":
            src = cv2.cvtColor(np.ascontiguousarray(src), cv2.COLOR_RGB2GRAY)
        h, w = src.shape[:2]
        oh, ow = spec.size
        if spec.resize == "stretch":
            want = cv2.resize(src, (ow, oh), interpolation=cv2.INTER_AREA)
        elif spec.resize == "center_crop":
            s = max(oh / h, ow / w)
            ch, cw = min(h, round(oh / s)), min(w, round(ow / s))
            y0, x0 = (h - ch) // 2, (w - cw) // 2
            want = cv2.resize(src[y0:y0 + ch, x0:x0 + cw], (ow, oh), interpolation=cv2.INTER_AREA)
        else:
            s = min(oh / h, ow / w)
            nh, nw = max(1, round(h * s)), max(1, round(w * s))
            want = np.full((oh, ow) + src.shape[2:], spec.pad_value, np.uint8)
            y0, x0 = (oh - nh) // 2, (ow - nw) // 2
            want[y0:y0 + nh, x0:x0 + nw] = cv2.resize(src, (nw, nh), interpolation=cv2.INTER_AREA)
        want = want if want.ndim == 3 else np.repeat(want[..., None], 3, axis=2)
        got = preprocess(img, spec)[0]
        diff = np.abs(got.astype(int) - want)
        assert got.shape == want.shape and diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_grey_to_rgb_is_repeat():
    rng = np.random.default_rng(9)
    for shape in [(5, 7), (3, 96, 96), (16, 4, 9)]:
        g = rng.integers(0, 256, shape, dtype=np.uint8)
        np.testing.assert_array_equal(pp._grey_to_rgb(g), np.repeat(g[..., None], 3, axis=-1))
    g = rng.integers(0, 256, (40, 60), dtype=np.uint8)[::2, ::3]        # non-contiguous view
    np.testing.assert_array_equal(pp.to_color_mode(g, "grey"), np.repeat(g[..., None], 3, axis=2))


def test_threads_do_not_share_work_buffers():
    imgs = [texture((1024, 1024), seed=s) for s in range(4)]
    want = [cut_tiles(f, GRID_4X4) for f in imgs]
    errors = []

    def work(i):
        for _ in range(5):
            for j in (i, (i + 1) % 4):
                if not np.array_equal(cut_tiles(imgs[j], GRID_4X4), want[j]):
                    errors.append(j)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_returned_tiles_are_not_overwritten_by_the_next_frame():
    a, b = texture((1024, 1024), seed=10), texture((1024, 1024), seed=11)
    ta = preprocess(a, GRID_4X4)
    keep = ta.copy()
    preprocess(b, GRID_4X4)
    np.testing.assert_array_equal(ta, keep)


# ------------------------------------------------------------------ extractor input lookup table

def _bare_extractor(dtype, scale, zero_point, pixel_scale, pixel_offset) -> TFLiteExtractor:
    """The input mapping of a TFLiteExtractor without a model (only what _to_input reads)."""
    ext = object.__new__(TFLiteExtractor)
    ext.input_dtype = np.dtype(dtype)
    ext.input_quant = (float(scale), int(zero_point))
    ext.pixel_scale, ext.pixel_offset = float(pixel_scale), float(pixel_offset)
    ext._identity_u8 = False
    ext._lut = ext._to_input_formula(np.arange(256, dtype=np.uint8))
    return ext


@pytest.mark.parametrize("dtype,scale,zp,ps,po", [
    (np.uint8, 0.8196078538894653, 0, 1.0, 0.0),       # the benchmark bundle: pixels, calibrated range 0-209
    (np.int8, 1 / 127.5, -1, 1 / 127.5, -1.0),
    (np.int8, 0.0078125, 3, 1 / 127.5, -1.0),
    (np.uint8, 1 / 255, 0, 1 / 255, 0.0),
    (np.int16, 1 / 32768, 0, 1 / 127.5, -1.0),
    (np.float32, 0.0, 0, 1 / 127.5, -1.0),
    (np.float32, 0.0, 0, 1.0, 0.0),
])
def test_input_lookup_equals_the_formula(dtype, scale, zp, ps, po):
    ext = _bare_extractor(dtype, scale, zp, ps, po)
    batch = np.random.default_rng(12).integers(0, 256, (16, 96, 96, 3), dtype=np.uint8)
    got, want = ext._to_input(batch), ext._to_input_formula(batch)
    assert got.dtype == want.dtype == np.dtype(dtype) and got.shape == batch.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(ext._to_input(batch[:1, :5, :7]), ext._to_input_formula(batch[:1, :5, :7]))


def test_real_bundle_extractor_lookup_and_runtime_info(tiny_bundle):
    from device.bundle import load_bundle

    b = load_bundle(tiny_bundle)
    spec = b.input_spec
    ext = TFLiteExtractor(b.extractor_bytes, pixel_scale=spec.pixel_scale, pixel_offset=spec.pixel_offset)
    batch = np.random.default_rng(13).integers(0, 256, (4,) + ext.input_shape, dtype=np.uint8)
    if not ext._identity_u8:
        np.testing.assert_array_equal(ext._to_input(batch), ext._to_input_formula(batch))
    info = ext.runtime_info()
    assert info["num_threads"] == 1 and info["runtime"] == ext.runtime
    assert ext(batch).shape == (4, ext.output_dim)
