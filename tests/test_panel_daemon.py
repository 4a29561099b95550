"""The panel against the real inspection service (``anomaly-device run`` as a process) over HTTP:
a threshold chosen on the Actions page by target false-reject rate is applied as a new bundle
version (``deploy --target-frr``), audited in the panel store, and the service's decisions then
carry the new digest and threshold — on the journal, the live page and the detail view."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the panel needs the panel extra (pip install -e '.[panel]')")
httpx = pytest.importorskip("httpx", reason="panel tests need httpx (dev extra)")
pytest.importorskip("gpiozero", reason="the service needs gpiozero (device extra)")
pytest.importorskip("cv2", reason="the service needs OpenCV (device extra)")

from daemon_helpers import bundle_dir, journal_rows, service_process, write_config, write_frames  # noqa: F401,E402
from panel_helpers import add_user, hidden, login, running_panel, wait_until  # noqa: E402

from device.bundle import bundle_digest, load_bundle  # noqa: E402
from device.config import load_config  # noqa: E402
from device.versions import deploy  # noqa: E402


@pytest.fixture
def station(bundle_dir, tmp_path):  # noqa: F811
    """One config for the service and the panel: a looping replay, the active bundle a managed
    version, the panel's store and a free port."""
    write_frames(tmp_path / "frames", "NNNN")
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "device.toml", state / "bundle",
                       f'source = "folder"\npath = "{tmp_path / "frames"}"\nloop = true', state / "journal.sqlite",
                       f'archive_dir = "{state / "archive"}"\n\n[trigger]\nrate_hz = 20.0\n\n[outputs]\n'
                       f'pin_factory = "mock"\n\n[panel]\nstore = "{tmp_path / "panel.sqlite"}"\nbind = "127.0.0.1:0"\n')
    deploy(load_config(cfg), bundle_dir, unit=None)
    return cfg


def test_threshold_applied_from_the_page_is_a_deployed_version(bundle_dir, station):  # noqa: F811
    from core.threshold import calibrate_threshold

    cfg = load_config(station)
    journal = Path(cfg.journal.path)
    b1 = bundle_digest(bundle_dir)
    want = calibrate_threshold(load_bundle(bundle_dir).calibration_scores, 0.25)
    user, pw = add_user(station)
    with service_process(station) as p, running_panel(station, publish=False) as (svc, url), \
            httpx.Client(base_url=url, timeout=30) as c:
        wait_until(lambda: journal_rows(journal, "SELECT 1 FROM decisions WHERE bundle_digest = ?", (b1,))
                   or p.poll() is not None, 60, "the service's first decisions")
        assert p.poll() is None, p.stderr.read()[-2000:]
        assert login(c, user, pw).status_code == 303
        token = hidden(c.get("/actions").text)
        page = c.post("/actions/threshold/preview", data={"csrf": token, "target_frr": "0.25"}).text
        assert re.search(r'id="preview-threshold">([^<]+)<', page).group(1) == f"{want:.6g}"
        apply = re.search(r'<button type="submit" id="threshold-apply"([^>]*)>', page)
        assert apply and "disabled" not in apply.group(1) and 'id="threshold-unavailable"' not in page
        mark = journal_rows(journal, "SELECT MAX(id) FROM decisions")[0][0]
        r = c.post("/actions/threshold", data={"csrf": token, "target_frr": hidden(page, "target_frr")})
        assert r.status_code == 303
        aid = int(r.headers["location"].rsplit("/", 1)[1])
        a = wait_until(lambda: (x := c.get(f"/api/actions/{aid}").json())["status"] != "running" and x, 120,
                       "the threshold action")
        assert a["status"] == "ok" and a["rc"] == 0, a["output"]
        assert a["user"] == user and a["action"] == "threshold" and a["detail"]["target_frr"] == 0.25
        assert a["argv"][-5:] == ["deploy", "--config", str(station), "--target-frr", "0.25"]
        assert "re-targeted version" in a["output"] and "confirmed" in a["output"]
        new = bundle_digest(cfg.bundle.path)
        assert new != b1 and load_bundle(cfg.bundle.path).manifest.lineage["parent_digest"] == b1
        rows = journal_rows(journal, "SELECT id, threshold FROM decisions WHERE id > ? AND bundle_digest = ?",
                            (mark, new))
        assert rows and all(thr == pytest.approx(want) for _, thr in rows)
        live = wait_until(lambda: (lv := c.get("/api/live").json())["state"]["bundle"]["digest"] == new and lv, 10,
                          "the live page to show the new digest")
        assert live["last"]["threshold"] == pytest.approx(want)
        detail = c.get(f"/decision/{rows[0][0]}").text
        assert new in detail and f"{want:.6g}" in detail
        audit = c.get("/actions").text
        assert re.search(rf"<td>{user}</td><td>threshold</td>\s*<td>ok \(0\)</td>", audit)
    assert p.returncode == 0, p.stderr.read()[-2000:]
