"""Image archive: names unique across restarts, life cycle, retention."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

pytest.importorskip("cv2", reason="the archive writes PNG with OpenCV (device extra)")
from device.archive import ImageArchive  # noqa: E402
from device.lifecycle import ClosedError  # noqa: E402


def _img(v: int) -> np.ndarray:
    return np.full((16, 16, 3), v, np.uint8)


def test_names_unique_across_restarts_old_rows_keep_their_pictures(tmp_path):
    """Two runs of the service both start at frame 0: the second must not overwrite the first's images."""
    import cv2

    with ImageArchive(tmp_path) as first:
        p1 = first.submit(_img(10), frame=0, decision="REJECT")
    with ImageArchive(tmp_path) as second:
        p2 = second.submit(_img(200), frame=0, decision="REJECT")
    assert p1 != p2 and os.path.isfile(p1) and os.path.isfile(p2)
    assert cv2.imread(p1)[0, 0, 0] == 10 and cv2.imread(p2)[0, 0, 0] == 200   # the old row's picture is intact
    assert len(list(tmp_path.rglob("*.png"))) == 2


def test_context_manager_flush_and_closed_error(tmp_path):
    with ImageArchive(tmp_path) as a:
        paths = [a.submit(_img(i), frame=i, decision="PASS") for i in range(5)]
        assert a.flush(10.0)
        assert all(os.path.isfile(p) for p in paths)
        assert a.submit(None, frame=9, decision="ERROR") is None        # an undecodable frame: nothing to save
    a.close()                                                           # idempotent
    with pytest.raises(ClosedError, match="archive .* is closed"):
        a.submit(_img(1), frame=6, decision="PASS")


def test_archive_prunes_by_size_and_age(tmp_path):
    a = ImageArchive(tmp_path / "a", max_mb=0.02, max_age_days=1.0, prune_every=1000)
    rng = np.random.default_rng(0)
    paths = [a.submit(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), i, "REJECT") for i in range(6)]
    assert all(paths) and a.flush(10.0)
    files = sorted((tmp_path / "a").rglob("*.png"))
    assert len(files) == 6
    os.utime(paths[0], (time.time() - 3 * 86400,) * 2)
    removed = a.prune()
    a.close()
    kept = {str(p) for p in (tmp_path / "a").rglob("*.png")}
    assert removed >= 1 and paths[0] not in kept
    assert sum(os.path.getsize(p) for p in kept) <= 0.02e6
    assert kept == set(paths[len(paths) - len(kept):])                  # the newest kept
