"""`anomaly-device learn`: false rejects of a new condition learned on the device (no TensorFlow),
the threshold re-derived at the target false-reject rate, lineage, the preview from the journal's
archive, --from-journal with a real service run, --deploy, the estimate for bundles without
calibration features, and tiled (per-position) bundles."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2", reason="learn needs OpenCV (device extra)")
pytest.importorskip("gpiozero", reason="the service run needs gpiozero (device extra)")

from daemon_helpers import bundle_dir, write_config  # noqa: F401,E402
from lifecycle_helpers import derived_bundle, features, part, phases, write_pngs  # noqa: E402

from device.bundle import bundle_digest, load_bundle  # noqa: E402
from device.config import load_config  # noqa: E402
from device.detector import Detector  # noqa: E402
from device.errors import ConfigError  # noqa: E402

TARGET_FRR = 0.05


def scores(bundle_path, images) -> np.ndarray:
    """Scores through the device path (Detector.inspect), as the service computes them."""
    with Detector(load_bundle(bundle_path)) as det:
        return np.array([det.inspect(im).score for im in images])


@pytest.fixture(scope="module")
def line(bundle_dir, tmp_path_factory):  # noqa: F811
    """A parent bundle (bank capped at 40 by coreset, 200 held-out normals at 5 % FRR, with their
    features) and parts of a new condition it has never seen (a dark bar: all false rejects)."""
    root = tmp_path_factory.mktemp("learn")
    train = [part(p, seed=i) for i, p in enumerate(phases(60, 1))]
    calib = [part(p, seed=1000 + i) for i, p in enumerate(phases(200, 2))]
    parent = derived_bundle(bundle_dir, root / "parent", train, calib, target_frr=TARGET_FRR, cap=40)
    legacy = derived_bundle(bundle_dir, root / "legacy", train, calib, target_frr=TARGET_FRR, cap=40,
                            with_features=False)
    new = [part(p, seed=3000 + i, bar=True) for i, p in enumerate(phases(60, 3))]
    write_pngs(root / "confirmed", new[:30])
    return {"root": root, "parent": parent, "legacy": legacy, "calib": calib, "new": new,
            "confirmed": root / "confirmed"}


def device_config(tmp_path, bundle: Path, frames: Path | None = None, extra: str = "") -> Path:
    return write_config(tmp_path / "d.toml", bundle, f'source = "folder"\npath = "{frames or tmp_path}"',
                        tmp_path / "state" / "journal.sqlite", extra)


def test_learn_lowers_false_rejects_and_keeps_the_false_reject_rate(line, tmp_path):
    from device.learn import learn

    parent = load_bundle(line["parent"])
    thr0 = parent.threshold.value
    held_new = line["new"][30:]
    before = scores(line["parent"], held_new)
    assert (before > thr0).all()                                   # the new condition: every part rejected
    cfg = load_config(device_config(tmp_path, line["parent"]))
    res = learn(cfg, good=[line["confirmed"]], out=tmp_path / "child")
    child = load_bundle(tmp_path / "child")
    thr1 = child.threshold.value
    # learned images and unseen parts of the same condition now score low and pass
    assert max(res["scores_after"]) < min(res["scores_before"])
    after = scores(tmp_path / "child", held_new)
    assert np.median(after) < 0.5 * np.median(before) and (after <= thr1).mean() >= 0.8
    # bank kept at its cap with the trainer's coreset rule; new rows in it
    assert res["bank"]["before"] == res["bank"]["after"] == 40 and res["bank"]["new_rows_kept"] > 0
    assert child.manifest.scoring.bank_size == 40
    # the threshold is re-derived on the held-out normals re-scored against the NEW bank: the device
    # path reproduces the shipped calibration scores, and rejects target +- 1 of the 200
    cal = scores(tmp_path / "child", line["calib"])
    np.testing.assert_allclose(child.calibration_scores, cal, rtol=1e-5, atol=1e-5)
    assert abs(int((cal > thr1).sum()) - TARGET_FRR * 200) <= 1
    m = child.manifest.to_dict()
    assert m["threshold"]["estimator"]["kind"] == "held-out re-score" and m["threshold"]["target_frr"] == TARGET_FRR
    assert m["threshold"]["previous"]["value"] == pytest.approx(thr0)
    np.testing.assert_array_equal(child.arrays["calibration_features.npy"], parent.arrays["calibration_features.npy"])
    lin = m["lineage"]
    assert lin["parent_digest"] == bundle_digest(line["parent"]) and lin["n_images"] == 30
    assert lin["ancestors"][0] == lin["parent_digest"]
    confirmed = sorted(line["confirmed"].glob("*.png"))
    import hashlib

    assert [i["sha256"] for i in lin["images"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in confirmed]
    assert "coreset" in lin["method"] and lin["when"].endswith("Z")


def test_legacy_bundle_gets_a_declared_estimate(line, tmp_path):
    from device.learn import learn

    cfg = load_config(device_config(tmp_path, line["legacy"]))
    res = learn(cfg, good=[line["confirmed"]], out=tmp_path / "child")
    m = load_bundle(tmp_path / "child").manifest.to_dict()
    est = m["threshold"]["estimator"]
    assert est["kind"] == "conditional leave-one-out ratio" and est["unbiased"] is False
    assert m["threshold"]["method"].startswith("ESTIMATE")
    cal = scores(tmp_path / "child", line["calib"])
    assert 0.5 * TARGET_FRR <= (cal > res["threshold"]["new"]).mean() <= 2 * TARGET_FRR   # an estimate, not exact


def test_from_journal_with_preview_after_a_real_service_run(line, tmp_path, capsys):
    """The service rejects and archives new-condition parts; the operator confirms some as good."""
    from device.cli import main
    from device.daemon import Daemon
    from device.journal import Journal
    from device.notify import Notifier

    frames = [part(p, seed=9000 + i) for i, p in enumerate(phases(12, 5))] + line["new"][:10] + line["new"][30:40]
    write_pngs(tmp_path / "frames", frames)
    cfg_path = device_config(tmp_path, line["parent"], tmp_path / "frames",
                             f'[outputs]\npin_factory = "mock"\n\n')
    cfg_path.write_text(cfg_path.read_text().replace(
        "[journal]\n", f'[journal]\narchive_dir = "{tmp_path / "archive"}"\narchive_pass_every = 1\n', 1))
    cfg = load_config(cfg_path)
    from gpiozero.pins.mock import MockFactory

    assert Daemon(cfg, pin_factory=MockFactory(), notifier=Notifier(env={})).run(signals=False) == 0
    with Journal(cfg.journal.path) as j:
        rows = j.decisions()
    decisions = [r["decision"] for r in rows]
    assert decisions[12:] == ["REJECT"] * 20 and decisions[:12].count("PASS") >= 9   # 5 % false rejects by design
    assert all(r["image"] for r in rows)
    confirmed = [r["id"] for r in rows[12:22]]                 # the operator confirms the first ten rejects
    rc = main(["learn", "--config", str(cfg_path), "--from-journal", *map(str, confirmed), "--json", "--unit", ""])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    pre = res["preview"]
    assert pre["available"] and pre["learned_rows"] == {"n": 10, "now_pass": 10}
    assert pre["archived_rejects"] == 10 + decisions[:12].count("REJECT")
    assert pre["archived_passes"] == decisions[:12].count("PASS")
    assert pre["rejects_now_pass"] >= 7 and pre["passes_now_reject"] <= 1
    assert res["threshold"]["new"] == pytest.approx(load_bundle(res["path"]).threshold.value)
    lin = load_bundle(res["path"]).manifest.to_dict()["lineage"]
    assert [i["row"] for i in lin["images"]] == confirmed
    # stored as a version beside the active path, not yet active
    from device.versions import list_versions

    vs = {v["version"]: v for v in list_versions(cfg)}
    assert res["version"] in vs and not vs[res["version"]]["active"]
    assert vs[res["version"]]["parent"] == bundle_digest(line["parent"])[:16]


def test_learn_runs_with_tensorflow_blocked_and_deploys(line, tmp_path):
    from no_tensorflow import device_cli_without_tensorflow

    from device.versions import deploy

    cfg = device_config(tmp_path, tmp_path / "state" / "bundle")

    deploy(load_config(cfg), line["parent"], unit=None)
    r = device_cli_without_tensorflow(["learn", "--config", str(cfg), "--good", str(line["confirmed"]), "--deploy",
                                       "--unit", ""])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "new version" in r.stdout and "deploy: version" in r.stdout
    active = load_bundle(load_config(cfg).bundle.path)
    assert active.manifest.to_dict()["lineage"]["parent_digest"] == bundle_digest(line["parent"])


def test_errors_name_the_problem(line, tmp_path, capsys):
    from device.cli import main

    cfg = device_config(tmp_path, line["parent"])
    assert main(["learn", "--config", str(cfg), "--good", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
    assert main(["learn", "--config", str(cfg), "--from-journal", "3"]) == 2
    assert "no journal yet" in capsys.readouterr().err
    assert main(["learn", "--config", str(cfg)]) == 2
    assert "nothing to learn" in capsys.readouterr().err


def test_tiled_per_position_bank_grows_per_position(bundle_dir, line, tmp_path):  # noqa: F811
    from device.learn import learn

    train = [part(p, seed=i) for i, p in enumerate(phases(30, 1))]
    calib = [part(p, seed=1000 + i) for i, p in enumerate(phases(60, 2))]
    tiled = derived_bundle(bundle_dir, tmp_path / "tiled", train, calib, target_frr=TARGET_FRR, cap=80, grid=(2, 2))
    parent = load_bundle(tiled)
    assert parent.tile_index is not None and len(parent.bank) == 80
    cfg = load_config(device_config(tmp_path, tiled))
    res = learn(cfg, good=[line["confirmed"]], out=tmp_path / "child")
    child = load_bundle(tmp_path / "child")
    assert np.bincount(child.tile_index).tolist() == np.bincount(parent.tile_index).tolist()   # per-position caps
    held = scores(tmp_path / "child", line["new"][30:40])
    assert np.median(held) < np.median(scores(tiled, line["new"][30:40]))


def test_tiled_bundle_learns_from_its_archived_rejects(bundle_dir, line, tmp_path):  # noqa: F811
    """A tiled bundle's archive keeps the clean frame (the overlay beside it), so its rejects can be
    learned with --from-journal and replayed by the preview; a picture from an older archive (the
    overlay drawn in, no sibling) is refused naming it."""
    from gpiozero.pins.mock import MockFactory

    from device.archive import overlay_path
    from device.daemon import Daemon
    from device.journal import Journal
    from device.learn import learn
    from device.notify import Notifier

    train = [part(p, seed=i) for i, p in enumerate(phases(30, 1))]
    calib = [part(p, seed=1000 + i) for i, p in enumerate(phases(60, 2))]
    tiled = derived_bundle(bundle_dir, tmp_path / "tiled", train, calib, target_frr=TARGET_FRR, cap=80, grid=(2, 2))
    write_pngs(tmp_path / "frames", line["new"][:8])
    cfg_path = device_config(tmp_path, tiled, tmp_path / "frames", '[outputs]\npin_factory = "mock"\n')
    cfg_path.write_text(cfg_path.read_text().replace("[journal]\n", f'[journal]\narchive_dir = "{tmp_path / "a"}"\n'))
    cfg = load_config(cfg_path)
    assert Daemon(cfg, pin_factory=MockFactory(), notifier=Notifier(env={})).run(signals=False) == 0
    with Journal(cfg.journal.path) as j:
        rows = j.decisions()
    assert [r["decision"] for r in rows] == ["REJECT"] * 8 and all(r["tile_grid"] for r in rows)
    assert all(overlay_path(r["image"]).is_file() for r in rows)
    res = learn(cfg, rows=[r["id"] for r in rows[:5]], out=tmp_path / "child")
    pre = res["preview"]
    assert pre["available"] and pre["learned_rows"] == {"n": 5, "now_pass": 5} and pre["overlay_images"] == 0
    assert pre["archived_rejects"] == 3 and pre["rejects_now_pass"] >= 1       # replayed through the new version
    overlay_path(rows[6]["image"]).unlink()            # as an older archive wrote it: the overlay is the image
    with pytest.raises(ConfigError, match=f"--from-journal {rows[6]['id']}: .*carries the score overlay"):
        learn(cfg, rows=[rows[6]["id"]], out=tmp_path / "c2")


def test_bank_max_recorded_by_fit_is_the_cap(line, tmp_path):
    """A bundle recording ``scoring.bank_max`` (the cap fit applied) grows up to it, then is
    compressed to it; without it the subsampled bank keeps its size (the other tests)."""
    from device.bundle import write_bundle
    from device.learn import learn

    parent = load_bundle(line["parent"])
    assert len(parent.bank) == 40
    for cap, want in ((100, 70), (55, 55)):                 # 40 rows + 30 learned images
        body = parent.manifest.body()
        body["scoring"] = {**body["scoring"], "bank_max": cap}
        b = Path(write_bundle(tmp_path / f"p{cap}", body, dict(parent.files)))
        res = learn(load_config(device_config(tmp_path, b)), good=[line["confirmed"]], out=tmp_path / f"c{cap}")
        assert res["bank"]["cap"] == cap and res["bank"]["after"] == want == len(load_bundle(tmp_path / f"c{cap}").bank)


def test_learn_chooses_the_bank_compression_again_for_the_grown_bank(bundle_dir, line, tmp_path):  # noqa: F811
    """A bank grown to thousands of rows ships the PCA shortlist (faster, the same scores as the
    brute-force scan); a projection that no longer pays on a small bank is dropped with its files."""
    from device.learn import learn
    from device.projection import COMPONENTS_FILE, MEAN_FILE, project_bundle
    from device.scoring import KNNScorer

    train = [part(p, seed=20000 + i) for i, p in enumerate(phases(5000, 7))]
    big = derived_bundle(bundle_dir, tmp_path / "big", train, line["calib"][:100], target_frr=TARGET_FRR)
    assert load_bundle(big).manifest.scoring.projection is None
    res = learn(load_config(device_config(tmp_path, big)), good=[line["confirmed"]], out=tmp_path / "big-child")
    child = load_bundle(tmp_path / "big-child")
    comp = res["bank"]["compression"]
    proj = child.manifest.scoring.projection
    assert comp["dims"] and proj is not None and proj.dims == comp["dims"] and proj.rerank, comp
    assert comp["knn_ms"] <= 0.9 * comp["brute_force_knn_ms"]
    assert "shortlist" in child.manifest.to_dict()["lineage"]["method"]
    probe = line["calib"][100:140] + line["new"][30:40]
    brute = KNNScorer(child.bank, child.k).score(features_of(child, probe))
    np.testing.assert_allclose(scores(tmp_path / "big-child", probe), brute, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scores(tmp_path / "big-child", line["calib"][:100]), child.calibration_scores,
                               rtol=1e-4, atol=1e-6)          # the threshold comes from the new version's scoring

    project_bundle(line["parent"], tmp_path / "small-proj", dims=16, shortlist=8)          # 40 rows
    res = learn(load_config(device_config(tmp_path, tmp_path / "small-proj")), good=[line["confirmed"]],
                out=tmp_path / "small-child")
    small = load_bundle(tmp_path / "small-child")
    assert res["bank"]["compression"]["dims"] is None and small.manifest.scoring.projection is None
    assert not {MEAN_FILE, COMPONENTS_FILE} & set(small.files)

    # without re-rank the scores (and the threshold) live in the PCA space: the projection is kept
    project_bundle(line["parent"], tmp_path / "approx", dims=16, rerank=False)
    learn(load_config(device_config(tmp_path, tmp_path / "approx")), good=[line["confirmed"]],
          out=tmp_path / "approx-child")
    approx = load_bundle(tmp_path / "approx-child")
    assert approx.manifest.scoring.projection.dims == 16 and not approx.manifest.scoring.projection.rerank
    np.testing.assert_allclose(scores(tmp_path / "approx-child", line["calib"]), approx.calibration_scores,
                               rtol=1e-4, atol=1e-6)


def features_of(bundle, images) -> np.ndarray:
    with Detector(bundle) as det:
        return features(det, images)
