"""Versioned bundles: first deploy, adoption of a plain directory, bad bundles, rollback, pruning,
the listing, and deploy/rollback against a running service confirmed from its journal; a threshold
change (``deploy --target-frr``) as a deployed version."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gpiozero", reason="the service needs gpiozero (device extra)")
pytest.importorskip("cv2", reason="the service needs OpenCV (device extra)")

from daemon_helpers import (bundle_dir, env_no_notify, journal_rows, service_process, write_config,  # noqa: F401,E402
                            write_frames)
from lifecycle_helpers import wait_until  # noqa: E402

from device.bundle import bundle_digest, load_bundle, write_bundle  # noqa: E402
from device.config import load_config  # noqa: E402
from device.errors import BundleError  # noqa: E402
from device.servicelock import ServiceBusyError, ServiceLock, holder  # noqa: E402
from device.versions import Store, deploy, list_versions, rollback  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def variant(src: Path, dest: Path, threshold: float) -> Path:
    """A copy of ``src`` with another threshold (another digest)."""
    b = load_bundle(src)
    body = b.manifest.body()
    body["threshold"] = {**body["threshold"], "value": threshold}
    return Path(write_bundle(dest, body, dict(b.files)))


@pytest.fixture
def device_cfg(bundle_dir, tmp_path):  # noqa: F811
    write_frames(tmp_path / "frames", "NNNN")
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "d.toml", state / "bundle", f'source = "folder"\npath = "{tmp_path / "frames"}"\n'
                       "loop = true", state / "journal.sqlite",
                       '[trigger]\nrate_hz = 40.0\n\n[outputs]\npin_factory = "mock"\n')
    return cfg


def test_first_deploy_onto_a_fresh_device(bundle_dir, device_cfg):  # noqa: F811
    cfg = load_config(device_cfg)
    active = Path(cfg.bundle.path)
    active.mkdir(parents=True)                                   # an installer's empty placeholder
    (active / "notes.txt").write_text("x")
    with pytest.raises(BundleError, match="not a bundle"):
        deploy(cfg, bundle_dir, unit=None)
    (active / "notes.txt").unlink()
    out = deploy(cfg, bundle_dir, unit=None)
    assert out["status"] == "switched" and out["from"] is None
    assert active.is_symlink() and os.readlink(active) == f"bundle.versions/{out['version']}"
    assert bundle_digest(active) == bundle_digest(bundle_dir) == out["digest"]
    vdir = Store(active).version_dir(out["version"])
    assert stat.S_IMODE(vdir.stat().st_mode) == 0o755
    assert {stat.S_IMODE(f.stat().st_mode) for f in vdir.iterdir()} == {0o644}
    load_bundle(active)                                          # the service can load it through the link
    (v,) = list_versions(cfg)
    assert v["active"] and v["digest"] == out["digest"] and v["bank_size"] == load_bundle(active).bank.shape[0]
    assert v["threshold"] == pytest.approx(load_bundle(active).threshold.value) and v["parent"] is None


def test_plain_directory_adopted_then_rollback(bundle_dir, device_cfg, tmp_path):  # noqa: F811
    cfg = load_config(device_cfg)
    shutil.copytree(bundle_dir, cfg.bundle.path)                 # installed by hand, as docs/DEVICE.md said
    b2 = variant(bundle_dir, tmp_path / "b2", 0.5)
    out = deploy(cfg, b2, unit=None)
    old = bundle_digest(bundle_dir)[:16]
    assert out["from"] == old and out["version"] == bundle_digest(b2)[:16]
    vs = {v["version"]: v for v in list_versions(cfg)}
    assert vs[out["version"]]["active"] and vs[old]["previous"] and vs[old]["source"].startswith("adopted")
    back = rollback(cfg, unit=None)
    assert back["version"] == old and bundle_digest(cfg.bundle.path)[:16] == old
    with pytest.raises(BundleError, match="no previous version"):
        rollback(cfg, unit=None)
    hist = json.loads((Store(Path(cfg.bundle.path)).root / "versions.json").read_text())["history"]
    assert [h["action"] for h in hist] == ["adopt", "deploy", "rollback"]


def test_bad_bundle_leaves_the_old_one_active(bundle_dir, device_cfg, tmp_path, capsys):  # noqa: F811
    from device.cli import main

    cfg = load_config(device_cfg)
    deploy(cfg, bundle_dir, unit=None)
    bad = tmp_path / "bad"
    shutil.copytree(variant(bundle_dir, tmp_path / "b2", 0.5), bad)
    with open(bad / "bank.npy", "r+b") as f:
        f.seek(200)
        f.write(b"\x01\x02")
    with pytest.raises(BundleError, match="bank.npy"):
        deploy(cfg, bad, unit=None)
    assert bundle_digest(cfg.bundle.path) == bundle_digest(bundle_dir)
    assert [v["version"] for v in list_versions(cfg)] == [bundle_digest(bundle_dir)[:16]]
    assert main(["deploy", str(bad), "--config", str(device_cfg), "--unit", ""]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bank.npy" in err[0] and err[0].startswith("anomaly-device: error:")
    assert main(["deploy", str(tmp_path / "nowhere"), "--config", str(device_cfg), "--unit", ""]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_keep_versions_never_drops_active_or_previous(bundle_dir, device_cfg, tmp_path, capsys):  # noqa: F811
    from device.cli import main

    cfg = load_config(device_cfg)
    names = []
    for i in range(7):
        b = variant(bundle_dir, tmp_path / f"v{i}", 0.1 + i / 100)
        names.append(deploy(cfg, b, unit=None)["version"])
    kept = [v["version"] for v in list_versions(cfg)]
    assert len(kept) == 5 and set(kept) == set(names[2:])        # default keep_versions = 5, newest first
    assert rollback(cfg, unit=None)["version"] == names[5]
    # re-deploy an old one by digest prefix; the version rolled back from stays as "previous"
    out = deploy(cfg, names[3][:8], unit=None)
    assert out["version"] == names[3] and deploy(cfg, names[3], unit=None)["status"] == "unchanged"
    assert main(["bundles", "--config", str(device_cfg), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {v["version"] for v in listed if v["active"]} == {names[3]}
    assert {v["version"] for v in listed if v["previous"]} == {names[5]}
    assert all(set(v) >= {"digest", "created", "source", "bank_size", "threshold", "parent"} for v in listed)
    assert main(["bundles", "--config", str(device_cfg), "--history", "3"]) == 0
    text = capsys.readouterr().out
    assert "* " + names[3] in text and "- " + names[5] in text


def test_service_lock_and_holder(tmp_path):
    pid = tmp_path / "anomaly-device.pid"
    assert holder(pid) is None
    with ServiceLock(pid, "run"):
        assert holder(pid) == {"pid": os.getpid(), "command": "run"}
        with pytest.raises(ServiceBusyError, match=r"held by `anomaly-device run` \(pid"):
            ServiceLock(pid, "capture").acquire()
    assert pid.exists() and holder(pid) is None                 # a stale file is not a running service


def _digests_since(journal: Path, row: int) -> set[str]:
    return {d for d, in journal_rows(journal, "SELECT bundle_digest FROM decisions WHERE id > ?", (row,))}


def _last_row(journal: Path) -> int:
    return journal_rows(journal, "SELECT COALESCE(MAX(id), 0) FROM decisions")[0][0]


def _first_decisions(journal: Path, p, digest: str) -> None:
    wait_until(lambda: digest in _digests_since(journal, 0) or p.poll() is not None, 60, "the service's first decisions")
    assert p.poll() is None, p.stderr.read()[-2000:]


def test_deploy_and_rollback_with_a_running_service(bundle_dir, device_cfg, tmp_path):  # noqa: F811
    """`anomaly-device run` as a subprocess: a second service and a capture are refused while it
    runs; deploy -> the journal shows the new digest; a bad bundle is refused and the old version
    keeps deciding; rollback; a reload that fails in the service switches the link back."""
    cfg = load_config(device_cfg)
    journal = Path(cfg.journal.path)
    b1 = bundle_digest(bundle_dir)
    deploy(cfg, bundle_dir, unit=None)
    with service_process(device_cfg) as p:
        _first_decisions(journal, p, b1)
        assert holder(Path(cfg.journal.path).parent / "anomaly-device.pid") == {"pid": p.pid, "command": "run"}
        _refused_while_running(device_cfg, tmp_path, p.pid)
        b2 = variant(bundle_dir, tmp_path / "b2", 0.5)
        mark = _last_row(journal)
        out = deploy(cfg, b2, unit=None, wait_s=30)
        assert out["status"] == "confirmed" and out["reload"] == f"SIGHUP pid {p.pid}"
        assert bundle_digest(b2) in _digests_since(journal, mark)
        bad = Path(shutil.copytree(variant(bundle_dir, tmp_path / "b3", 0.7), tmp_path / "bad"))
        with open(bad / "bank.npy", "r+b") as f:
            f.seek(200)
            f.write(b"\x01\x02")
        mark = _last_row(journal)
        with pytest.raises(BundleError, match="bank.npy"):
            deploy(cfg, bad, unit=None, wait_s=30)
        wait_until(lambda: _last_row(journal) > mark + 3, 30, "decisions after the refused deploy")
        assert _digests_since(journal, mark) == {bundle_digest(b2)} and bundle_digest(cfg.bundle.path) == bundle_digest(b2)
        mark = _last_row(journal)
        back = rollback(cfg, unit=None, wait_s=30)
        assert back["status"] == "confirmed" and back["digest"] == b1
        wait_until(lambda: _last_row(journal) > mark + 3, 30, "decisions after the rollback")
        assert b1 in _digests_since(journal, mark)
        # a reload that fails in the service (its config file broke meanwhile) switches the link back
        device_cfg.write_text(device_cfg.read_text() + "\n[bundle2]\n")
        b3 = variant(bundle_dir, tmp_path / "b4", 0.6)
        with pytest.raises(BundleError, match=f"reload failed.*switched back to {b1[:16]}"):
            deploy(cfg, b3, unit=None, wait_s=30)
        assert bundle_digest(cfg.bundle.path) == b1 and p.poll() is None
        hist = Store(Path(cfg.bundle.path)).read_index()["history"]
        assert hist[-1]["result"] == "reload_failed" and hist[-1]["reverted_to"] == b1[:16]
    assert p.returncode == 0, p.stderr.read()[-2000:]
    assert holder(Path(cfg.journal.path).parent / "anomaly-device.pid") is None


def _refused_while_running(device_cfg: Path, tmp_path: Path, pid: int) -> None:
    """A second `run` and a `capture` with the same config: one line each, exit 2, nothing started."""
    for argv in (["run"], ["capture", "--out", str(tmp_path / "cap"), "--count", "1"]):
        r = subprocess.run([sys.executable, "-m", "device.cli", *argv, "--config", str(device_cfg)], cwd=ROOT,
                           env=env_no_notify(), capture_output=True, text=True, timeout=120)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1, r.stderr
        assert f"held by `anomaly-device run` (pid {pid})" in err[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "cap").exists()
    kinds = [k for k, in journal_rows(Path(load_config(device_cfg).journal.path), "SELECT kind FROM events ORDER BY id")]
    assert kinds.count("start_refused") == 1 and "stop" not in kinds and kinds.count("start") == 1


def test_deploy_warns_when_the_camera_differs_from_the_capture_record(bundle_dir, device_cfg, tmp_path):  # noqa: F811
    b = load_bundle(bundle_dir)
    body = b.manifest.body()
    body["capture"] = {"source": "picamera2", "resolution": [640, 480], "stream": "lores", "exposure_us": 8000,
                       "analogue_gain": 2.0, "awb_gains": [1.6, 1.4], "roi": None, "count": 200}
    captured = Path(write_bundle(tmp_path / "captured", body, dict(b.files)))
    out = deploy(load_config(device_cfg), captured, unit=None)
    assert out["status"] == "switched"
    assert any("[camera].source is 'folder'" in w and "'picamera2'" in w for w in out["warnings"])


def test_threshold_change_is_a_deployed_version(bundle_dir, device_cfg, capsys):  # noqa: F811
    """`deploy --target-frr` against a running service: a new version of the active one whose threshold is
    the bundle's calibration quantile, with its lineage; the journal's decisions carry its digest and
    threshold; rollback returns to the parent. Refused: a config that overrides the threshold, a bad rate."""
    from core.threshold import calibrate_threshold
    from device.cli import main

    cfg = load_config(device_cfg)
    journal = Path(cfg.journal.path)
    b1 = bundle_digest(bundle_dir)
    deploy(cfg, bundle_dir, unit=None)
    cal = load_bundle(bundle_dir).calibration_scores
    want = calibrate_threshold(cal, 0.25)
    assert want < load_bundle(bundle_dir).threshold.value
    with service_process(device_cfg) as p:
        _first_decisions(journal, p, b1)
        mark = _last_row(journal)
        assert main(["deploy", "--config", str(device_cfg), "--target-frr", "0.25", "--json", "--unit", ""]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["deploy"]["status"] == "confirmed" and res["deploy"]["reload"] == f"SIGHUP pid {p.pid}"
        assert res["parent"] == b1 and res["threshold"]["new"] == pytest.approx(want)
        new = res["digest"]
        assert bundle_digest(cfg.bundle.path) == new != b1
        rows = journal_rows(journal, "SELECT bundle_digest, threshold, threshold_source FROM decisions WHERE id > ? "
                            "AND bundle_digest = ?", (mark, new))
        assert rows and all(thr == pytest.approx(want) and src == "bundle" for _, thr, src in rows)
        m = load_bundle(cfg.bundle.path).manifest
        assert m.threshold.value == pytest.approx(want) and m.threshold.target_frr == 0.25
        assert m.threshold.previous["digest"] == b1
        lin = m.lineage
        assert lin["parent_digest"] == b1 and lin["created_by"] == "anomaly-device deploy --target-frr 0.25"
        assert lin["changed"]["threshold.target_frr"] == [0.0, 0.25] and lin["when"].endswith("Z")
        assert load_bundle(cfg.bundle.path).files["bank.npy"] == load_bundle(bundle_dir).files["bank.npy"]
        (v,) = [v for v in list_versions(cfg) if v["active"]]
        assert v["parent"] == b1[:16] and v["threshold"] == pytest.approx(want) and "--target-frr" in v["source"]
        mark = _last_row(journal)
        assert main(["rollback", "--config", str(device_cfg), "--unit", ""]) == 0
        assert "confirmed" in capsys.readouterr().out
        wait_until(lambda: _last_row(journal) > mark + 2, 30, "decisions after the rollback")
        assert b1 in _digests_since(journal, mark)
    assert p.returncode == 0, p.stderr.read()[-2000:]
    for argv, says in ((["--target-frr", "1.5"], "--target-frr"), ([], "--target-frr RATE")):
        assert main(["deploy", "--config", str(device_cfg), "--unit", "", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    device_cfg.write_text(device_cfg.read_text().replace("[bundle]\n", "[bundle]\ntarget_frr = 0.1\n", 1))
    assert main(["deploy", "--config", str(device_cfg), "--target-frr", "0.25", "--unit", ""]) == 2
    err = capsys.readouterr().err
    assert "[bundle].target_frr = 0.1 overrides the threshold of every version" in err
    assert bundle_digest(cfg.bundle.path) == b1


def test_a_group_shared_bundles_folder_stays_writable_for_the_group(bundle_dir, tmp_path):  # noqa: F811
    """The panel's set-up (docs/INTEGRATION.md): bundles in a setgid folder that the service's user and
    the panel's user (UMask=0077) share through their group. Whoever deploys first, folders and the
    lock stay group-writable; as root, a second user of the group then deploys a threshold change."""
    import grp
    import pwd
    import tempfile

    from device.retarget import retarget

    base = Path(tempfile.mkdtemp(prefix="versions-shared-"))     # outside pytest's 0700 folders
    try:
        os.chmod(base, 0o755)
        shared = base / "bundles"
        shared.mkdir()
        os.chmod(shared, 0o2770)
        cfg_path = write_config(base / "d.toml", shared / "active", f'source = "folder"\npath = "{base}"',
                                base / "journal.sqlite")
        cfg = load_config(cfg_path)
        old = os.umask(0o077)
        try:
            first = deploy(cfg, bundle_dir, unit=None)
        finally:
            os.umask(old)
        store = Store(shared / "active")
        assert store.shared and stat.S_IMODE(store.root.stat().st_mode) == 0o2775
        assert stat.S_IMODE((store.root / ".lock").stat().st_mode) == 0o664
        assert stat.S_IMODE(store.version_dir(first["version"]).stat().st_mode) == 0o2775
        if os.geteuid() != 0:
            return
        try:
            nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        except KeyError:
            return
        for f in [shared, *shared.rglob("*")]:
            os.lchown(f, -1, nogroup)
        assert as_user(nobody, nogroup, lambda: retarget(cfg, 0.25, unit=None)) == 0       # as the panel would
        assert load_bundle(cfg.bundle.path).manifest.lineage["parent_digest"] == bundle_digest(bundle_dir)
        assert rollback(cfg, unit=None)["version"] == first["version"]      # and back, as the first user
    finally:
        shutil.rmtree(base, ignore_errors=True)


def as_user(uid: int, gid: int, fn) -> int:
    """Run ``fn`` in a forked child as ``uid`` with the one group ``gid`` (modules it needs imported
    first: the child may not read the checkout's interpreter); returns its exit status (1: it raised)."""
    import traceback

    from device import detector, retarget  # noqa: F401  (imported before dropping privileges)

    pid = os.fork()
    if pid == 0:                                   # pragma: no cover - the child
        code = 1
        try:
            os.setgroups([gid])
            os.setgid(gid)
            os.setuid(uid)
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
