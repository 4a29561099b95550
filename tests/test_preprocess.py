"""The one preprocessing function: colour modes, ROI, resize modes, errors."""
import cv2
import numpy as np
import pytest

from device.errors import ImageError
from device.preprocess import InputSpec, list_images, preprocess, preprocess_many


def _png(path, img):
    cv2.imwrite(str(path), img)
    return path


def test_grey_file_becomes_three_equal_channels(tmp_path):
    g = np.tile(np.arange(64, dtype=np.uint8), (48, 1))
    out = preprocess(_png(tmp_path / "g.png", g), InputSpec(size=(32, 32)))
    assert out.shape == (1, 32, 32, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_colour_file_is_rgb_order(tmp_path):
    bgr = np.zeros((20, 20, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR
    out = preprocess(_png(tmp_path / "r.png", bgr), InputSpec(size=(10, 10)))
    assert out[0, 5, 5].tolist() == [200, 0, 0]


def test_grey_mode_drops_colour():
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[..., 0] = 200
    out = preprocess(rgb, InputSpec(size=(10, 10), color="grey"))
    assert out[0, 5, 5].tolist() == [int(round(0.299 * 200))] * 3


def test_roi_crops_before_resize():
    img = np.zeros((100, 200), np.uint8)
    img[10:30, 50:90] = 255
    out = preprocess(img, InputSpec(size=(20, 40), roi=(50, 10, 40, 20)))
    assert out.min() == 255


def test_letterbox_pads_and_keeps_aspect():
    img = np.full((50, 100, 3), 200, np.uint8)
    out = preprocess(img, InputSpec(size=(100, 100), resize="letterbox", pad_value=7))[0]
    assert out[0, 50].tolist() == [7, 7, 7] and out[50, 50].tolist() == [200, 200, 200]
    assert (out[:, 50, 0] == 200).sum() == 50


def test_center_crop_fills():
    img = np.zeros((50, 100, 3), np.uint8)
    img[:, 25:75] = 255
    out = preprocess(img, InputSpec(size=(20, 20), resize="center_crop"))
    assert out.min() == 255


def test_any_input_size_works():
    spec = InputSpec(size=(32, 32))
    for shape in [(8, 8), (31, 700), (1000, 9, 3), (64, 64, 4), (40, 40, 1)]:
        assert preprocess(np.full(shape, 9, np.uint8), spec).shape == (1, 32, 32, 3)


def test_spec_round_trip_gives_identical_pixels(tmp_path):
    spec = InputSpec(size=(40, 24), color="grey", roi=(3, 4, 50, 60), resize="letterbox")
    img = np.random.default_rng(0).integers(0, 255, (90, 80, 3), dtype=np.uint8)
    p = _png(tmp_path / "x.png", img)
    a = preprocess(p, spec)
    b = preprocess(p, InputSpec.from_dict(spec.to_dict()))
    c = preprocess_many([p, p], spec)
    assert np.array_equal(a, b) and np.array_equal(np.concatenate([a, a]), c)


@pytest.mark.parametrize("content, match", [(b"", "empty file"), (b"GIF89a not really", "cannot decode")])
def test_bad_files(tmp_path, content, match):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=f"{p.name}: {match}"):
        preprocess(p, InputSpec())


def test_missing_file_and_too_small(tmp_path):
    with pytest.raises(ImageError, match="nope.png: cannot read"):
        preprocess(tmp_path / "nope.png", InputSpec())
    with pytest.raises(ImageError, match="smaller than the minimum side of 8 px"):
        preprocess(np.zeros((4, 100), np.uint8), InputSpec())
    with pytest.raises(ImageError, match="outside"):
        preprocess(np.zeros((10, 10), np.uint8), InputSpec(roi=(20, 0, 5, 5)))


def test_bad_spec_names_the_field():
    with pytest.raises(ValueError, match="resize"):
        InputSpec(resize="squash")
    with pytest.raises(ValueError, match="colour: unknown key; expected one of size, color"):
        InputSpec.from_dict({"size": [8, 8], "colour": "rgb"})
    with pytest.raises(ValueError, match="size.0: expected a valid integer, found boolean True"):
        InputSpec.from_dict({"size": [True, 8]})
    with pytest.raises(ValueError, match="pixel_scale: expected a finite number"):
        InputSpec.from_dict({"size": [8, 8], "pixel_scale": float("inf")})


def test_list_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="holds no images"):
        list_images([tmp_path / "empty"])
    with pytest.raises(ImageError, match="no such file or folder"):
        list_images([tmp_path / "ghost"])
    (tmp_path / "a").mkdir()
    _png(tmp_path / "a" / "1.png", np.zeros((9, 9), np.uint8))
    (tmp_path / "a" / "notes.txt").write_text("x")
    assert [p.name for p in list_images([tmp_path / "a"])] == ["1.png"]


def test_standardize_removes_global_lighting_but_keeps_local_contrast():
    """``normalize = "standardize"``: the same part under another exposure (gain and offset) becomes
    the same network input; a local defect stays visible; a flat frame stays flat (no noise blown
    up to full contrast); the spec refuses an unknown mode naming the key; old specs load as none."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:120, 0:160]
    part = np.clip(120 + 50 * np.sin(xx / 7.0) * np.cos(yy / 9.0) + rng.normal(0, 3, (120, 160)), 0, 255)
    frame = part.astype(np.uint8)
    dim = np.clip(part * 0.45 + 30, 0, 255).astype(np.uint8)         # darker lighting, lower contrast
    spec = InputSpec(size=(96, 96), color="grey", normalize="standardize")
    plain = spec.replace(normalize="none")
    a, b = preprocess(frame, spec)[0].astype(int), preprocess(dim, spec)[0].astype(int)
    assert np.abs(a - b).mean() < 2.0 and np.abs(a - b).max() <= 8
    pa, pb = preprocess(frame, plain)[0].astype(int), preprocess(dim, plain)[0].astype(int)
    assert np.abs(pa - pb).mean() > 30                                  # without it the exposure dominates
    assert abs(a.mean() - 128) < 2 and abs(a.std() - 40) < 2
    spot = frame.copy()
    spot[50:62, 70:82] = 0
    d = np.abs(preprocess(spot, spec)[0].astype(int) - a)[..., 0]
    assert d[40:52, 42:50].mean() > 40 and np.median(d) <= 3              # the spot, and little elsewhere
    flat = np.full((120, 160), 7, np.uint8) + rng.integers(0, 2, (120, 160)).astype(np.uint8)
    assert preprocess(flat, spec)[0].std() < 10
    with pytest.raises(ValueError, match="normalize"):
        InputSpec.from_dict({"size": [96, 96], "normalize": "auto"})
    assert InputSpec.from_dict({"size": [96, 96]}).normalize == "none"
