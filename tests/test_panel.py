"""Operator panel over real HTTP: settings, users, pages against the journal, security.

The journal is written through device.journal.Journal (the daemon's writer); the panel reads it
through its read-only reader, served by uvicorn from a thread. Browser tests: test_panel_browser.py;
with the real daemon: test_panel_daemon.py.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the panel needs the panel extra (pip install -e '.[panel]')")
httpx = pytest.importorskip("httpx", reason="panel tests need httpx (dev extra)")
pytest.importorskip("cv2", reason="panel tests write archive images with OpenCV (device extra)")

from panel_helpers import (add_user, fake_bundle, hidden, login, panel_config, running_panel, wait_until,  # noqa: E402
                           write_rows)

from device.errors import ConfigError  # noqa: E402
from device.journal import Journal  # noqa: E402
from device.panel.panel_config import load_panel_config  # noqa: E402
from device.panel.settings import MqttSettings, PanelSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def station(tmp_path):
    """A journal with 40 decisions (passes, rejects with archived images, errors), a bundle, a config."""
    archive = tmp_path / "archive"
    j = Journal(tmp_path / "journal.sqlite")
    j.event("start", "test")
    j.event("ready", "folder:frames")
    write_rows(j, archive, "PPRPPEPPRP" * 4)
    j.close()
    fake_bundle(tmp_path / "bundle")
    return tmp_path, panel_config(tmp_path, tmp_path / "journal.sqlite", archive, tmp_path / "bundle")


def sql(path: Path, q: str, args=()):
    db = sqlite3.connect(path)
    try:
        return db.execute(q, args).fetchall()
    finally:
        db.close()


# ------------------------------------------------------------------------------------ settings
def test_settings_defaults_bind_loopback():
    p = PanelSettings()
    assert p.bind == "127.0.0.1:8080" and p.host == "127.0.0.1" and p.lan_readonly
    m = MqttSettings(line="L2", station="S7")
    assert m.topic("status") == "anomaly/L2/S7/status" and m.effective_client_id == "anomaly-panel-L2-S7"
    for model in (PanelSettings, MqttSettings):      # one declaration per option, each with its help
        assert all(f.description for f in model.model_fields.values()), model


def test_config_problems_named_in_one_error(tmp_path):
    cfg = panel_config(tmp_path, tmp_path / "j.sqlite", panel='login_attempts = true\nshifts = ["25:00"]\nbnd = 1\n',
                       mqtt='qos = 3\nprefix = "a/b"\nport = nan\npassword = "x"\npassword_file = "p"\n')
    with pytest.raises(ConfigError) as e:
        load_panel_config(cfg)
    msg = str(e.value)
    for key in ("[panel].login_attempts", "[panel].shifts", "[panel].bnd: unknown key", "[mqtt].qos",
                "[mqtt].prefix", "[mqtt].port", "[mqtt]"):
        assert key in msg, (key, msg)
    cfg = panel_config(tmp_path, tmp_path / "j.sqlite", mqtt='password = "x"\npassword_file = "p"\n')
    with pytest.raises(ConfigError, match=r"\[mqtt\]: .*give password or password_file, not both"):
        load_panel_config(cfg)


def test_config_paths_relative_to_the_file(tmp_path):
    cfg = panel_config(tmp_path, tmp_path / "j.sqlite", panel="", mqtt='password_file = "secret"\n')
    cfg.write_text(cfg.read_text().replace(f'store = "{tmp_path / "panel.sqlite"}"', 'store = "state/panel.sqlite"'))
    (tmp_path / "secret").write_text("s3cret\n")
    c = load_panel_config(cfg)
    assert c.panel.store == str(tmp_path / "state" / "panel.sqlite")
    assert c.mqtt.read_password() == "s3cret"


# ------------------------------------------------------------------------------------ users
def test_panel_user_cli_stores_an_argon2_hash(station, monkeypatch, capsys):
    from device.cli import main

    tmp, cfg = station
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse battery\n"))
    assert main(["panel-user", "add", "ana", "--config", str(cfg)]) == 0
    for f in tmp.glob("panel.sqlite*"):
        assert b"correct horse battery" not in f.read_bytes(), f
    (h,), = sql(tmp / "panel.sqlite", "SELECT hash FROM users WHERE name = 'ana'")
    assert h.startswith("$argon2id$")
    monkeypatch.setattr(sys, "stdin", io.StringIO("another password\n"))
    assert main(["panel-user", "add", "ana", "--config", str(cfg)]) == 2          # exists: needs --replace
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["panel-user", "add", "bo", "--config", str(cfg)]) == 2           # too short
    assert "at least 8" in capsys.readouterr().err
    assert main(["panel-user", "list", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out.split() == ["ana"]
    assert main(["panel-user", "remove", "ana", "--config", str(cfg)]) == 0
    assert sql(tmp / "panel.sqlite", "SELECT COUNT(*) FROM users") == [(0,)]


# ------------------------------------------------------------------------------------ pages
def test_live_api_counts_equal_the_journal(station):
    tmp, cfg = station
    jpath = tmp / "journal.sqlite"
    with running_panel(cfg) as (svc, url), httpx.Client(base_url=url) as c:
        def check():
            live = c.get("/api/live").json()
            (n, rej, err), = sql(jpath, "SELECT COUNT(*), SUM(decision='REJECT'), SUM(decision='ERROR') FROM decisions")
            tot = live["counts"]["total"]
            assert (tot["parts"], tot["rejects"], tot["errors"]) == (n, rej, err)
            assert live["counts"]["hour"]["parts"] == n            # all written just now
            (last,), = sql(jpath, "SELECT MAX(id) FROM decisions")
            assert live["last"]["id"] == last
            return live
        live = check()
        assert live["state"]["service"] == "running" and live["state"]["camera"] == "ok"
        assert live["state"]["drift"] == "unknown"                 # no drift event yet
        last = live["last_image"]                                  # a tiled reject: frame and overlay beside it
        assert last["decision"] == "REJECT" and last["overlay"] is True
        html = c.get("/").text
        assert f'src="/image/{last["id"]}/overlay"' in html and 'id="last-overlay-wrap" hidden' not in html
        j = Journal(jpath)                         # the daemon goes on writing
        write_rows(j, tmp / "archive", "RRPE", start_frame=100)
        j.event("camera_fault", "no frame in 2 s")
        j.event("drift", "warning: brightness 120 vs 100 (+20 %, limit 15 %)")
        check()
        live = wait_until(lambda: (lv := c.get("/api/live").json())["state"]["camera"] == "fault" and lv, 5,
                          "the camera fault on the live page (state is cached 0.25 s)")
        assert live["state"]["alarm"] and live["state"]["alarm_reasons"] == ["camera fault"]
        assert (live["state"]["drift"], live["state"]["drift_message"]) == \
            ("warning", "brightness 120 vs 100 (+20 %, limit 15 %)")       # device.drift.journal_state
        assert live["last_image"]["decision"] == "ERROR" and live["last_image"]["overlay"] is False
        j.close()
        html = c.get("/").text
        assert 'id="count-total-parts"' in html and "/static/panel.js" in html
        assert 'id="last-overlay-wrap" hidden' in html


def test_gallery_filters_and_paging(station):
    tmp, cfg = station
    cfg.write_text(cfg.read_text().replace("[panel]\n", "[panel]\ngallery_page = 5\n"))
    jpath = tmp / "journal.sqlite"
    db = sqlite3.connect(jpath)                    # spread the rows over 40 minutes, oldest first
    now = time.time()
    db.execute("UPDATE decisions SET ts = ? - (SELECT MAX(id) FROM decisions) * 60 + id * 60", (now,))
    db.commit()
    db.close()
    tile_ids = lambda html: [int(x) for x in re.findall(r'data-id="(\d+)"', html)]  # noqa: E731

    def walk(c, params):
        """Every page of the gallery, following "Older"."""
        html, ids = c.get("/rejects", params=params).text, []
        while True:
            page = tile_ids(html)
            assert len(page) <= 5
            ids += page
            m = re.search(r'href="([^"]+)" id="older"', html)
            if not m:
                return ids
            html = c.get(m.group(1).replace("&amp;", "&")).text

    with running_panel(cfg) as (svc, url), httpx.Client(base_url=url) as c:
        ids = lambda where, args=(): [r[0] for r in sql(jpath, f"SELECT id FROM decisions WHERE {where} "  # noqa: E731
                                                               "ORDER BY id DESC", args)]
        assert walk(c, {}) == ids("decision != 'PASS'")
        assert walk(c, {"decision": "error"}) == ids("decision = 'ERROR'")
        assert walk(c, {"decision": "all"}) == ids("1")
        since = time.strftime("%Y-%m-%dT%H:%M", time.localtime(now - 15 * 60))
        until = time.strftime("%Y-%m-%dT%H:%M", time.localtime(now - 5 * 60))
        t0, t1 = (time.mktime(time.strptime(v, "%Y-%m-%dT%H:%M")) for v in (since, until))
        want = ids("decision != 'PASS' AND ts >= ? AND ts < ?", (t0, t1))
        assert walk(c, {"since": since, "until": until}) == want and 0 < len(want) < len(ids("decision != 'PASS'"))


def test_detail_and_archived_image(station):
    from device.archive import overlay_path

    tmp, cfg = station
    jpath = tmp / "journal.sqlite"
    (rid, score, thr, img), = sql(jpath, "SELECT id, score, threshold, image FROM decisions WHERE decision = 'REJECT' "
                                         "LIMIT 1")
    with running_panel(cfg) as (svc, url), httpx.Client(base_url=url) as c:
        html = c.get(f"/decision/{rid}").text
        assert f"Decision #{rid}" in html and f"{score:.6g}" in html and "from bundle" in html
        assert 'id="detail-overlay"' in html                   # the tile grid drawn over the image
        r = c.get(f"/image/{rid}")
        assert r.status_code == 200 and r.content == Path(img).read_bytes()      # the clean frame
        assert f'src="/image/{rid}/overlay"' in html            # and the archive's overlay beside it
        r = c.get(f"/image/{rid}/overlay")
        assert r.status_code == 200 and r.content == overlay_path(img).read_bytes() != Path(img).read_bytes()
        overlay_path(img).unlink()                              # untiled, or an older archive: no overlay
        assert c.get(f"/image/{rid}/overlay").status_code == 404
        assert 'id="detail-overlay-image"' not in c.get(f"/decision/{rid}").text
        assert c.get("/decision/99999").status_code == 404
        j = Journal(jpath)                                      # an image path outside the archive
        (bad,) = write_rows(j, None, "R", start_frame=500)
        j.set_image(bad, "/etc/passwd")
        j.close()
        assert c.get(f"/image/{bad}").status_code == 404
        assert c.get(f"/image/{bad}/overlay").status_code == 404


def test_trends_render_svg_charts(station):
    tmp, cfg = station
    with running_panel(cfg) as (svc, url), httpx.Client(base_url=url) as c:
        html = c.get("/trends").text
        assert html.count("<svg") >= 3 and 'class="threshold"' in html
        assert "calibration" in html and "Reject rate per hour" in html


# ------------------------------------------------------------------------------------ security
def test_no_action_without_login(station):
    tmp, cfg = station
    with running_panel(cfg) as (svc, url), httpx.Client(base_url=url) as c:
        assert c.get("/actions").headers["location"].startswith("/login")
        for path, data in (("/actions/rollback", {}), ("/actions/learn", {}), ("/actions/deploy", {"bundle": "x"}),
                           ("/decision/3/mark", {"kind": "good"}),
                           ("/actions/threshold/preview", {"target_frr": "0.1"}), ("/logout", {})):
            r = c.post(path, data=data)
            assert r.status_code == 401, (path, r.status_code)
        assert c.get("/api/actions/1").status_code == 401
        assert svc.store.actions() == [] and svc.store.marks() == {}
        assert not svc.runner.busy()


def test_forms_without_csrf_token_are_refused(station):
    tmp, cfg = station
    user, pw = add_user(cfg)
    with running_panel(cfg) as (svc, url), httpx.Client(base_url=url) as c:
        r = c.post("/login", data={"username": user, "password": pw})        # login form without its token
        assert r.status_code == 403 and "anomaly_panel_session" not in c.cookies
        assert login(c, user, pw).status_code == 303
        for data in ({}, {"csrf": "forged"}):
            assert c.post("/actions/rollback", data=data).status_code == 403
            assert c.post("/decision/3/mark", data={**data, "kind": "good"}).status_code == 403
        assert svc.store.marks() == {}
        assert [a["action"] for a in svc.store.actions()].count("csrf_refused") == 4
        assert not any(a["action"] == "rollback" for a in svc.store.actions())
        token = hidden(c.get("/actions").text)
        assert c.post("/decision/3/mark", data={"csrf": token, "kind": "good"}).status_code == 303
        assert svc.store.marks()[3]["user"] == user


def test_login_session_cookie_and_logout(station):
    tmp, cfg = station
    user, pw = add_user(cfg)
    with running_panel(cfg) as (svc, url), httpx.Client(base_url=url) as c:
        r = login(c, user, pw)
        cookie = r.headers["set-cookie"]
        assert "anomaly_panel_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert r.headers["location"] == "/actions" and c.get("/actions").status_code == 200
        for h in ("content-security-policy", "x-frame-options", "x-content-type-options"):
            assert h in c.get("/").headers
        token = hidden(c.get("/actions").text)
        stolen = c.cookies["anomaly_panel_session"]
        assert c.post("/logout", data={"csrf": token}).status_code == 303
        with httpx.Client(base_url=url, cookies={"anomaly_panel_session": stolen}) as other:
            assert other.get("/actions").status_code == 303        # the session ended on the server
        kinds = [a["action"] for a in svc.store.actions()]
        assert kinds[:2] == ["logout", "login"] and all(a["user"] == user for a in svc.store.actions()[:2])


def test_login_rate_limited(station):
    tmp, cfg = station
    cfg.write_text(cfg.read_text().replace("[panel]\n", "[panel]\nlogin_attempts = 3\n"))
    user, pw = add_user(cfg)
    with running_panel(cfg) as (svc, url), httpx.Client(base_url=url) as c:
        for _ in range(3):
            assert login(c, user, "wrong password").status_code == 401
        r = login(c, user, pw)                                 # even the right password now waits
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        kinds = [a["action"] for a in svc.store.actions()]
        assert kinds.count("login_failed") == 3 and kinds[0] == "login_refused"


def test_action_runs_the_command_and_is_audited(station):
    """An action is the life-cycle command run as a subprocess (argument list), with who, when, the
    command, its exit code and output recorded in the panel store."""
    tmp, cfg = station
    user, pw = add_user(cfg)
    with running_panel(cfg) as (svc, url), httpx.Client(base_url=url) as c:
        login(c, user, pw)
        token = hidden(c.get("/actions").text)
        r = c.post("/actions/rollback", data={"csrf": token})
        aid = int(r.headers["location"].rsplit("/", 1)[1])
        done = wait_until(lambda: c.get(f"/api/actions/{aid}").json()["status"] != "running", 60, "the rollback")
        a = c.get(f"/api/actions/{aid}").json()
        assert done and a["user"] == user and a["action"] == "rollback"
        assert a["argv"][-4:] == ["device.cli", "rollback", "--config", svc.runner.config_path]
        # Nothing was deployed on this station: rollback fails with its clear one-line reason.
        assert a["status"] == "failed" and a["rc"] == 2
        assert "no previous version to roll back to" in a["output"] and "Traceback" not in a["output"]
        assert f"exit code <span id=\"run-rc\">2</span>" in c.get(f"/actions/run/{aid}").text


def test_threshold_preview_counts_changed_decisions(station):
    import numpy as np

    from core.threshold import calibrate_threshold

    tmp, cfg = station
    user, pw = add_user(cfg)
    cal = np.load(tmp / "bundle" / "calibration_scores.npy")
    rows = sql(tmp / "journal.sqlite", "SELECT score, decision FROM decisions ORDER BY id DESC")
    with running_panel(cfg) as (svc, url), httpx.Client(base_url=url) as c:
        login(c, user, pw)
        token = hidden(c.get("/actions").text)
        for frr in (0.0, 0.6, 0.9):
            html = c.post("/actions/threshold/preview", data={"csrf": token, "target_frr": str(frr)}).text
            thr = calibrate_threshold(cal, frr)
            p2r = sum(1 for s, d in rows if d == "PASS" and s > thr)
            r2p = sum(1 for s, d in rows if d == "REJECT" and s <= thr)
            assert re.search(r'id="preview-p2r">(\d+)<', html).group(1) == str(p2r), frr
            assert re.search(r'id="preview-r2p">(\d+)<', html).group(1) == str(r2p), frr
            assert re.search(r'id="preview-n">(\d+)<', html).group(1) == str(len(rows))
        assert c.post("/actions/threshold/preview", data={"csrf": token, "target_frr": "nan"}).status_code == 400
        assert c.post("/actions/threshold/preview", data={"csrf": token, "target_frr": "1.5"}).status_code == 400


def test_lan_clients_get_read_only_pages(station):
    """Bound beyond loopback with lan_readonly: a LAN client reads pages, cannot log in or act
    (in-process ASGI client with a LAN address: tests never listen beyond 127.0.0.1)."""
    import warnings

    from device.panel.service import PanelService

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    tmp, cfg = station
    user, pw = add_user(cfg)
    with PanelService(load_panel_config(cfg), bind="0.0.0.0:8080", publish=False) as svc, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lan = TestClient(svc.app, client=("192.168.7.20", 40000), follow_redirects=False)
        local = TestClient(svc.app, client=("127.0.0.1", 40001), follow_redirects=False)
        assert lan.get("/").status_code == 200 and lan.get("/rejects").status_code == 200
        assert lan.get("/metrics").status_code == 200
        assert 'href="/actions"' not in lan.get("/").text and "from this machine only" in lan.get("/login").text
        assert lan.post("/login", data={"username": user, "password": pw}).status_code == 403
        assert lan.post("/actions/rollback").status_code == 403
        assert 'href="/actions"' in local.get("/").text


def test_panel_cannot_write_the_journal(station):
    """The reader's connection is read-only (mode=ro, query_only): writes fail; using every page,
    the metrics and an action leaves the journal's bytes unchanged."""
    tmp, cfg = station
    jpath = tmp / "journal.sqlite"
    before = hashlib.sha256(jpath.read_bytes()).hexdigest()
    user, pw = add_user(cfg)
    with running_panel(cfg) as (svc, url), httpx.Client(base_url=url) as c:
        for stmt in ("INSERT INTO decisions (ts, t_trigger, frame, decision) VALUES (1, 1, 1, 'PASS')",
                     "DELETE FROM decisions", "UPDATE events SET kind = 'x'", "CREATE TABLE x (a)"):
            with pytest.raises(sqlite3.OperationalError, match="readonly|read-only|query_only"):
                svc.reader.db().execute(stmt)
        login(c, user, pw)
        token = hidden(c.get("/actions").text)
        for path in ("/", "/api/live", "/trends", "/rejects", "/decision/3", "/image/3", "/metrics", "/healthz"):
            assert c.get(path).status_code == 200, path
        c.post("/decision/3/mark", data={"csrf": token, "kind": "good"})
        c.post("/actions/threshold/preview", data={"csrf": token, "target_frr": "0.05"})
    assert hashlib.sha256(jpath.read_bytes()).hexdigest() == before
    assert sql(jpath, "SELECT COUNT(*) FROM decisions") == [(40,)]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the reader as another user")
def test_reader_as_an_unprivileged_group_member(tmp_path):
    """As the hardened unit runs it: another user in the journal's group, files 0640, no right to
    create the -shm. It reads while the writer writes, reads a snapshot once the writer has stopped,
    and cannot write."""
    import grp
    import pwd

    try:
        nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    except KeyError:
        pytest.skip("no nobody/nogroup accounts")
    python = shutil.which("python3", path="/usr/bin:/bin")      # the venv's may sit under /root
    if python is None:
        pytest.skip("no system python3 for the unprivileged reader")
    base = Path(tempfile.mkdtemp(prefix="panel-ro-"))      # outside pytest's 0700 folders
    try:
        os.chmod(base, 0o755)
        d = base / "state"
        d.mkdir()
        j = Journal(d / "journal.sqlite")
        write_rows(j, None, "PRP" * 5)
        for p in [d, *d.iterdir()]:
            os.chown(p, 0, nogroup)
            os.chmod(p, 0o750 if p.is_dir() else 0o640)
        code = ("import sys, sqlite3; sys.path.insert(0, %r)\n"
                "from device.panel.reader import JournalReader\n"
                "r = JournalReader(sys.argv[1]); print(r.counts().parts)\n"
                "try:\n    r.db().execute('DELETE FROM decisions'); print('wrote')\n"
                "except sqlite3.OperationalError as e:\n    print('refused')\n") % str(ROOT)

        def as_nobody():
            out = subprocess.run([python, "-c", code, str(d / "journal.sqlite")], capture_output=True,
                                 text=True, user=nobody, group=nogroup, extra_groups=[nogroup], timeout=60, cwd="/")
            assert out.returncode == 0, out.stderr
            return out.stdout.split()

        assert as_nobody() == ["15", "refused"]           # writer open: WAL with a read-only -shm
        write_rows(j, None, "PP")
        assert as_nobody() == ["17", "refused"]
        j.close()                                          # writer gone: read an immutable snapshot
        assert as_nobody() == ["17", "refused"]
        assert sql(d / "journal.sqlite", "SELECT COUNT(*) FROM decisions") == [(17,)]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_reader_series_cache_equals_sql(station):
    """Trend buckets are cached and extended with new rows and older ranges: always what SQL says."""
    from device.panel.reader import JournalReader

    tmp, cfg = station
    jpath = tmp / "journal.sqlite"
    db = sqlite3.connect(jpath)
    now = time.time()
    db.execute("UPDATE decisions SET ts = ? - (SELECT MAX(id) FROM decisions) * 100 + id * 100", (now,))
    db.commit()
    db.close()

    def sql_series(since, b):
        return [(k * b, n, rj, er, mx) for k, n, rj, er, mx in sql(
            jpath, "SELECT CAST(ts / ? AS INTEGER) k, COUNT(*), SUM(decision = 'REJECT'), SUM(decision = 'ERROR'), "
                   "MAX(score) FROM decisions WHERE ts >= ? GROUP BY k ORDER BY k", (b, since))]

    with JournalReader(jpath) as r:
        got = lambda since, b: [(x["t"], x["n"], x["rejects"], x["errors"], x["max"])  # noqa: E731
                                for x in r.series(since, b)]
        recent, older = now - 1200, now - 3600
        assert got(recent, 300.0) == sql_series(recent, 300.0)
        j = Journal(jpath)
        write_rows(j, None, "RPE")                                 # new rows, newest bucket
        j.close()
        assert got(recent, 300.0) == sql_series(recent, 300.0)
        # an older range than cached: the boundary bucket holds rows read in two queries
        assert got(older - older % 300, 300.0) == sql_series(older - older % 300, 300.0)
