"""A tiled bundle in the daemon: per-tile grid and worst tile journaled, grid drawn on archived rejects."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("gpiozero", reason="daemon tests need gpiozero (device extra)")
pytest.importorskip("cv2", reason="daemon tests need OpenCV (device extra)")

from daemon_helpers import normal_image, write_config, write_frames  # noqa: E402
from gpiozero.pins.mock import MockFactory  # noqa: E402

from device.config import load_config  # noqa: E402
from device.daemon import Daemon  # noqa: E402
from device.journal import Journal  # noqa: E402
from device.notify import Notifier  # noqa: E402
from tests.conftest import needs_tf, write_pngs  # noqa: E402


@pytest.fixture(scope="module", params=["pooled", "patch"])
def tiled_bundle(tmp_path_factory, request):
    from trainer.cli import main

    root = tmp_path_factory.mktemp(f"tiled_daemon_{request.param}")
    write_pngs(root / "train", [normal_image(i) for i in range(24)])
    write_pngs(root / "val", [normal_image(i) for i in range(24, 32)])
    out = root / "bundle"
    assert main(["fit", "--train", str(root / "train"), "--calib", str(root / "val"), "--out", str(out),
                 "--size", "32", "--weights", "random", "--no-doc", "--working-size", "48x64", "--grid", "2x2",
                 "--bank-mode", "shared"]
                + (["--taps", "out"] if request.param == "pooled"
                   else ["--taps", "b6", "--pooling", "patch", "--scoring", "gauss"])) == 0
    return out


@needs_tf
def test_tiled_decisions_record_grid_and_archive_overlay(tiled_bundle, tmp_path):
    import cv2

    expected = write_frames(tmp_path / "frames", "NNDND")
    cfg = write_config(tmp_path / "d.toml", tiled_bundle, f'source = "folder"\npath = "{tmp_path / "frames"}"',
                       tmp_path / "j.sqlite",
                       '[trigger]\nrate_hz = 50\n\n[outputs]\nreject_pin = 17\nreject_delay_ms = 10\n'
                       'reject_width_ms = 5\n')
    cfg.write_text(cfg.read_text().replace("[journal]\n", f'[journal]\narchive_dir = "{tmp_path / "arch"}"\n'))
    d = Daemon(load_config(cfg), config_path=cfg, pin_factory=MockFactory(), notifier=Notifier(env={}))
    assert d.run(signals=False) == 0
    rows = Journal(tmp_path / "j.sqlite").decisions()
    assert [r["decision"] for r in rows] == expected
    boxes = [list(b) for b in d.detector.spec.tile_boxes()]
    for r in rows:
        grid = np.array(json.loads(r["tile_grid"]))
        assert grid.shape == (2, 2)
        assert r["score"] == pytest.approx(grid.max(), abs=1e-5)
        assert json.loads(r["worst_tile"]) == boxes[int(grid.argmax())]
        assert r["threshold_source"] == "bundle"
    saved = sorted((tmp_path / "arch").rglob("*_reject.png"))
    assert len(saved) == expected.count("REJECT")
    raw = cv2.imread(str(tmp_path / "frames" / "0002.png"))
    assert (cv2.imread(str(saved[0])) == raw).all()          # the row's image: the clean frame (learn uses it)
    from device.archive import overlay_path

    img = cv2.imread(str(overlay_path(saved[0])))              # beside it: the frame at working size, grid drawn over it
    assert img.shape[:2] == (48, 64)
    raw = cv2.resize(raw, (64, 48), interpolation=cv2.INTER_AREA)
    assert np.abs(img.astype(int) - raw.astype(int)).mean() > 5
    assert [str(p) for p in saved] == [r["image"] for r in rows if r["decision"] == "REJECT"]


def test_old_journal_gains_new_columns(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY, ts REAL NOT NULL, t_trigger REAL NOT NULL, "
               "frame INTEGER NOT NULL, name TEXT, score REAL, threshold REAL, decision TEXT NOT NULL, "
               "capture_ms REAL, preprocess_ms REAL, inference_ms REAL, knn_ms REAL, decision_ms REAL, "
               "reject_at REAL, image TEXT)")
    db.commit()
    db.close()
    j = Journal(tmp_path / "old.sqlite")
    j.decision(1, "f", 0.5, 0.4, "REJECT", 0.0, tiles={"tile_grid": [[0.5]], "worst_tile": [0, 0, 8, 8]},
               threshold_source="config:threshold")
    r = j.decisions()[-1]
    assert json.loads(r["tile_grid"]) == [[0.5]] and r["threshold_source"] == "config:threshold"
