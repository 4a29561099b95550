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


def _sizes(root) -> dict[str, int]:
    """Size of every PNG (temporary ones included) under ``root``; files deleted meanwhile skipped."""
    out = {}
    for p in root.rglob("*.png"):
        try:
            out[str(p)] = p.stat().st_size
        except FileNotFoundError:
            pass
    return out


def test_archive_stays_under_its_cap_after_every_write_and_prunes_by_age(tmp_path):
    a = ImageArchive(tmp_path / "a", max_mb=0.05, max_age_days=1.0)
    rng = np.random.default_rng(0)
    paths = []
    peak = []

    def watch():                                           # the cap holds while files are being written too
        while not done.is_set():
            peak.append(sum(_sizes(tmp_path / "a").values()))

    import threading

    done = threading.Event()
    th = threading.Thread(target=watch)
    th.start()
    for i in range(12):                                    # ~12 kB each: the cap holds 3
        paths.append(a.submit(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), i, "REJECT"))
        assert a.flush(10.0)
        assert sum(_sizes(tmp_path / "a").values()) <= 0.05e6
    done.set()
    th.join(10)
    assert max(peak) <= 0.05e6
    kept = set(_sizes(tmp_path / "a"))
    assert 2 <= len(kept) < 12 and kept == set(paths[len(paths) - len(kept):])   # the newest kept
    oldest = paths[len(paths) - len(kept)]
    os.utime(oldest, (time.time() - 3 * 86400,) * 2)
    assert a.prune() == 1 and not os.path.exists(oldest)
    a.close()


def test_a_restart_applies_the_limits_to_what_earlier_runs_left(tmp_path):
    with ImageArchive(tmp_path / "a", max_mb=10) as a:
        for i in range(8):
            a.submit(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8), i, "REJECT")
    assert len(_sizes(tmp_path / "a")) == 8
    with ImageArchive(tmp_path / "a", max_mb=0.03) as b:
        assert b.flush(10.0)
        b.submit(_img(1), 0, "PASS")
        assert b.flush(10.0)
    assert sum(_sizes(tmp_path / "a").values()) <= 0.03e6
