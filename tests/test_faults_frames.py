"""Bad frames and replay faults at the source: undecodable files, oversized images, kept buffers,
looping videos truncated or overwritten (issue 9: #3, #7, #13)."""
from __future__ import annotations

import resource
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="frame sources need OpenCV (device extra)")

from device import preprocess as pp  # noqa: E402
from device.camera import CameraError, EndOfStream, FolderSource, VideoSource  # noqa: E402
from device.errors import ImageError  # noqa: E402
from device.preprocess import InputSpec, decode_image, preprocess  # noqa: E402


def huge_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A valid grey PNG of zeros, written row by row (compresses to ~400 kB; never held in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)                      # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def png_20k(tmp_path_factory) -> Path:
    return huge_png(tmp_path_factory.mktemp("huge") / "huge.png")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ #7 frame size bound
def test_oversized_png_refused_from_its_header_before_allocation(png_20k):
    peak0 = peak_rss_mb()
    t = time.perf_counter()
    with pytest.raises(ImageError, match=r"huge\.png: .*400,000,000 pixels.*limit of 50,000,000"):
        decode_image(png_20k)
    assert time.perf_counter() - t < 2.0
    assert peak_rss_mb() - peak0 < 100, "decoding allocated the frame before refusing it"


def test_oversized_jpeg_and_bytes_refused_by_the_limit(tmp_path):
    ok, enc = cv2.imencode(".jpg", np.zeros((120, 160, 3), np.uint8))
    (tmp_path / "a.jpg").write_bytes(enc.tobytes())
    assert decode_image(tmp_path / "a.jpg", max_pixels=160 * 120).shape == (120, 160, 3)
    with pytest.raises(ImageError, match=r"a\.jpg: 160x120 .*19,200 pixels.*limit of 19,199"):
        decode_image(tmp_path / "a.jpg", max_pixels=160 * 120 - 1)
    with pytest.raises(ImageError, match="<bytes>: 160x120"):
        decode_image(enc.tobytes(), max_pixels=100)


def test_arrays_above_the_limit_refused_by_preprocess(monkeypatch):
    monkeypatch.setattr(pp, "MAX_PIXELS", 64 * 64)
    spec = InputSpec(size=(32, 32))
    assert preprocess(np.zeros((64, 64, 3), np.uint8), spec).shape == (1, 32, 32, 3)
    with pytest.raises(ImageError, match=r"65x64 .*4,160 pixels.*limit of 4,096"):
        preprocess(np.zeros((64, 65, 3), np.uint8), spec)


def test_area_buffers_bounded_after_large_frames():
    """Per-thread work buffers stay under their budget however large the frames were."""
    spec = InputSpec(size=(96, 96), interpolation="area")
    for side in (2900, 2500, 2800):                     # integral route (int32), three shapes
        preprocess(np.zeros((side, side), np.uint8), spec)
        assert pp.area_cache_bytes() <= pp.AREA_CACHE_BYTES
    preprocess(np.zeros((6000, 6000), np.uint8), spec)   # 36 MP: OpenCV's resize, no whole-frame integral
    assert pp.area_cache_bytes() <= pp.AREA_CACHE_BYTES


# ------------------------------------------------------------------ #3 undecodable files in a replay
def bad_folder(folder: Path) -> list[str]:
    """Good, corrupt JPEG, good, 0-byte, text named .png, good; returns each file's expectation."""
    folder.mkdir(parents=True, exist_ok=True)
    good = np.full((24, 32, 3), 90, np.uint8)
    ok, jpg = cv2.imencode(".jpg", good)
    cv2.imwrite(str(folder / "0.png"), good)
    (folder / "1.jpg").write_bytes(jpg.tobytes()[:40] + b"\x00garbage" * 20)   # header, then garbage
    cv2.imwrite(str(folder / "2.png"), good)
    (folder / "3.png").write_bytes(b"")
    (folder / "4.png").write_text("this is a text file\n")
    cv2.imwrite(str(folder / "5.png"), good)
    return ["ok", "error", "ok", "error", "error", "ok"]


def test_folder_source_returns_error_frames_and_goes_on(tmp_path):
    want = bad_folder(tmp_path / "f")
    with FolderSource(tmp_path / "f", loop=True) as src:
        frames = [src.read() for _ in range(2 * len(want))]        # twice round: no fault loop
    got = ["error" if f.error else "ok" for f in frames]
    assert got == want * 2
    assert [f.index for f in frames] == list(range(12))
    for f in frames:
        assert (f.image is None) == bool(f.error)
    assert "3.png" in frames[3].error and "empty" in frames[3].error
    assert "4.png" in frames[4].error


def test_folder_source_refuses_oversized_files_per_frame(tmp_path, png_20k):
    import shutil

    (tmp_path / "f").mkdir()
    cv2.imwrite(str(tmp_path / "f" / "0.png"), np.zeros((8, 8), np.uint8))
    shutil.copy(png_20k, tmp_path / "f" / "1.png")
    with FolderSource(tmp_path / "f", max_pixels=50_000_000) as src:
        a, b = src.read(), src.read()
        with pytest.raises(EndOfStream):
            src.read()
    assert a.error is None and b.image is None and "limit" in b.error


# ------------------------------------------------------------------ #13 looping video faults
def write_video(path: Path, n: int, value: int = 0) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    assert w.isOpened(), "OpenCV cannot write MJPG here"
    for i in range(n):
        w.write(np.full((24, 32, 3), (value + 10 * i) % 256, np.uint8))
    w.release()
    return path


def test_looping_video_truncated_to_zero_is_a_camera_fault(tmp_path):
    v = write_video(tmp_path / "v.avi", 3)
    src = VideoSource(str(v), loop=True)
    src.open()
    for _ in range(5):                                  # loops
        src.read()
    v.write_bytes(b"")
    with pytest.raises(CameraError, match="v.avi"):
        for _ in range(10):
            src.read()
    src.close()
    with pytest.raises(CameraError):                    # reopening fails too: the fault persists
        src.open()


def test_looping_video_overwritten_is_a_camera_fault_then_reopens(tmp_path):
    v = write_video(tmp_path / "v.avi", 3)
    src = VideoSource(str(v), loop=True)
    src.open()
    src.read()
    tmp = write_video(tmp_path / "new.avi", 5, value=100)
    tmp.replace(v)                                      # overwritten (new file at the same path)
    with pytest.raises(CameraError, match="changed"):
        for _ in range(10):
            src.read()
    src.close()
    src.open()
    assert [int(src.read().image.mean() + 0.5) for _ in range(5)] == pytest.approx([100, 110, 120, 130, 140], abs=3)
    src.close()


def test_non_looping_video_end_is_end_of_stream(tmp_path):
    v = write_video(tmp_path / "v.avi", 3)
    with VideoSource(str(v), loop=False) as src:
        for _ in range(3):
            src.read()
        with pytest.raises(EndOfStream):
            src.read()
