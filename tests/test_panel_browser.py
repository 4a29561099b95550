"""The operator page in a real browser: headless Debian Chromium driven by Selenium.

* the live page follows the journal by itself (counts equal the journal's);
* the gallery opens a detail view; login, marks, the threshold preview, an action, logout;
* against the real daemon replaying frames (needs TensorFlow and ../shared weights to build the
  test bundle): the live page shows the journal's counts, MQTT carries every decision once,
  /metrics equals the journal, and learn + deploy run from the page on a marked reject.

Screenshots go to the test's folder and, when ANOMALY_TEST_ARTIFACTS is set, to
$ANOMALY_TEST_ARTIFACTS/panel/. Every wait has a timeout and watches the page or the journal.
"""
from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

pytest.importorskip("selenium", reason="browser tests need selenium (dev extra)")
pytest.importorskip("starlette", reason="the panel needs the panel extra")
pytest.importorskip("cv2", reason="panel tests write archive images with OpenCV (device extra)")

from daemon_helpers import build_bundle, write_config, write_frames  # noqa: E402
from panel_helpers import (MOSQUITTO, Subscriber, add_user, broker, chrome, fake_bundle, needs_chromium,  # noqa: E402
                           panel_config, quit_chrome, running_panel, screenshot, severe_console_errors, wait_until,
                           write_rows)
from selenium.webdriver.common.by import By  # noqa: E402

from device.journal import Journal  # noqa: E402

pytestmark = needs_chromium


@pytest.fixture(scope="session")
def daemon_bundle(tmp_path_factory) -> Path:
    """The session's test bundle (daemon_helpers.build_bundle): the one test_daemon.py built when it
    ran first in this session (building it costs a TensorFlow import), else built here."""
    for manifest in sorted(tmp_path_factory.getbasetemp().glob("bundle[0-9]*/bundle/manifest.json")):
        return manifest.parent
    return build_bundle(tmp_path_factory.mktemp("bundle") / "bundle")


@pytest.fixture(scope="module")
def driver():
    d = chrome()
    yield d
    quit_chrome(d)


def text(driver, css: str) -> str:
    """The element's text; "" while it is absent or being replaced (the page reloads or navigates).

    ChromeDriver reports some of those replacements not as a stale element but as an inspector
    error ("Node with given id does not belong to the document"): the same race, read as "".
    """
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        els = driver.find_elements(By.CSS_SELECTOR, css)
        return els[0].text if els else ""
    except StaleElementReferenceException:
        return ""
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc.msg or ""):
            return ""
        raise


def wait_text(driver, css: str, want, timeout: float = 15.0) -> str:
    """Wait until the element's text equals ``want`` (a string) or satisfies it (a callable)."""
    ok = want if callable(want) else (lambda t: t == want)
    return wait_until(lambda: (t := text(driver, css)) is not None and ok(t) and (t or " "), timeout,
                      lambda: f"{css} to read {want!r} (reads {text(driver, css)!r} on {driver.current_url})")


def journal_counts(path: Path) -> tuple[int, int, int]:
    db = sqlite3.connect(path)
    try:
        n, rej, err = db.execute("SELECT COUNT(*), COALESCE(SUM(decision = 'REJECT'), 0), "
                                 "COALESCE(SUM(decision = 'ERROR'), 0) FROM decisions").fetchone()
        return n, rej, err
    finally:
        db.close()


def page_counts(driver) -> tuple[int, int, int]:
    return tuple(int(text(driver, f"#count-total-{k}") or -1) for k in ("parts", "rejects", "errors"))


def login(driver, url: str, user: str, password: str, next_path: str = "/actions") -> None:
    driver.get(f"{url}/login?next={next_path}")
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login-submit").click()
    wait_text(driver, "#user-name", user)


def logout(driver, url: str) -> None:
    driver.find_element(By.ID, "logout").click()
    wait_until(lambda: driver.find_elements(By.ID, "login-link"), 10, "the login link after logging out")
    driver.get(f"{url}/actions")
    wait_until(lambda: "/login" in driver.current_url, 10, "/actions to send a logged-out browser to /login")


def run_action(driver, button_id: str, timeout: float = 120.0) -> str:
    """Click an action button, follow its run page until it has finished; returns its status."""
    before = driver.current_url          # may already be a run page (deploy-learned sits on learn's)
    driver.find_element(By.ID, button_id).click()
    wait_until(lambda: "/actions/run/" in driver.current_url and driver.current_url != before, 10,
               f"the run page of {button_id}")
    return wait_text(driver, "#run-status", lambda t: t in ("ok", "failed"), timeout)


# ------------------------------------------------------------------------------------ journal only
def test_live_page_follows_the_journal(driver, tmp_path):
    jpath = tmp_path / "journal.sqlite"
    j = Journal(jpath)
    j.event("ready", "folder:frames")
    write_rows(j, tmp_path / "archive", "PPRPE" * 6)
    fake_bundle(tmp_path / "bundle")
    cfg = panel_config(tmp_path, jpath, tmp_path / "archive", tmp_path / "bundle", panel="refresh_s = 0.3\n")
    with running_panel(cfg) as (svc, url):
        driver.get(url + "/")
        assert page_counts(driver) == journal_counts(jpath)
        write_rows(j, tmp_path / "archive", "ERR", start_frame=100)         # the service goes on
        want = journal_counts(jpath)
        wait_until(lambda: page_counts(driver) == want, 15, lambda: f"the page to show {want}, "
                   f"shows {page_counts(driver)}")
        assert text(driver, "#last-decision") == "REJECT" and text(driver, "#camera-state") == "ok"
        wait_until(lambda: driver.execute_script("return document.getElementById('last-image').naturalWidth") > 0,
                   10, "the last archived image to load")
        assert driver.find_elements(By.CSS_SELECTOR, "#last-overlay rect"), "tile overlay not drawn"
        # the clean frame and, beside it, the score overlay the archive wrote (shown once a tiled reject came)
        wait_until(lambda: driver.execute_script("var w = document.getElementById('last-overlay-wrap'); return "
                                                 "!w.hidden && document.getElementById('last-overlay-image')"
                                                 ".naturalWidth > 0"), 10, "the archived score overlay to load")
        j.event("camera_fault", "no frame in 2 s")
        wait_text(driver, "#camera-state", "fault")
        wait_text(driver, "#alarm-state", "ON")
        screenshot(driver, tmp_path, "live-journal")
        driver.get(url + "/trends")
        assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart")) == 3
        screenshot(driver, tmp_path, "trends")
        assert severe_console_errors(driver) == []
    j.close()


def test_gallery_detail_login_marks_action_logout(driver, tmp_path):
    jpath = tmp_path / "journal.sqlite"
    j = Journal(jpath)
    j.event("ready", "folder:frames")
    write_rows(j, tmp_path / "archive", "PPRPPEPPRP" * 3)
    j.close()
    fake_bundle(tmp_path / "bundle")
    cfg = panel_config(tmp_path, jpath, tmp_path / "archive", tmp_path / "bundle")
    user, pw = add_user(cfg)
    with running_panel(cfg) as (svc, url):
        driver.get(url + "/rejects")
        tiles = driver.find_elements(By.CSS_SELECTOR, "#gallery a.tile")
        db = sqlite3.connect(jpath)
        want = [r[0] for r in db.execute("SELECT id FROM decisions WHERE decision != 'PASS' ORDER BY id DESC")]
        db.close()
        assert [int(t.get_attribute("data-id")) for t in tiles] == want
        screenshot(driver, tmp_path, "gallery")
        rid = want[0]
        tiles[0].click()
        wait_text(driver, "#detail-title", lambda t: t.startswith(f"Decision #{rid}"))
        for img in ("detail-image", "detail-overlay-image"):      # the clean frame and the archive's overlay
            wait_until(lambda: driver.execute_script(f"return document.getElementById('{img}').naturalWidth") > 0,
                       10, f"the detail view's {img} to load")
        assert not driver.find_elements(By.ID, "mark-good")          # marks need a login
        screenshot(driver, tmp_path, "detail")

        login(driver, url, user, pw, next_path=f"/decision/{rid}")
        assert driver.current_url.endswith(f"/decision/{rid}")
        driver.find_element(By.ID, "mark-good").click()
        wait_text(driver, "#detail-mark", "marked good part")
        driver.get(url + "/actions")
        assert f"#{rid}" in text(driver, "#marked-good")
        frr = driver.find_element(By.ID, "target-frr")
        frr.clear()
        frr.send_keys("0.2")
        driver.find_element(By.ID, "threshold-preview").click()
        wait_until(lambda: driver.find_elements(By.ID, "preview"), 10, "the threshold preview")
        assert int(text(driver, "#preview-n")) == 30
        screenshot(driver, tmp_path, "actions-preview")
        driver.get(url + "/actions")
        status = run_action(driver, "run-rollback")
        # This station never deployed a version: the life-cycle command says so, on the page.
        assert status == "failed" and "no previous version to roll back to" in text(driver, "#run-output")
        screenshot(driver, tmp_path, "action-run")
        logout(driver, url)
        audit = [(a["action"], a["user"]) for a in svc.store.actions()]
        for entry in (("login", user), ("mark", user), ("rollback", user), ("logout", user)):
            assert entry in audit, (entry, audit)
        assert severe_console_errors(driver) == []


# ------------------------------------------------------------------------------------ real daemon
PATTERN = "NNDNNDNNNDDNNNNDNNNN"


def test_live_page_mqtt_metrics_and_learn_against_the_daemon(driver, daemon_bundle, tmp_path):
    """The daemon replays frames while the page is open: the page's counts, MQTT's decisions and
    /metrics all equal the journal; then a reject marked good is learned and the new version
    deployed from the page."""
    httpx = pytest.importorskip("httpx")
    from gpiozero.pins.mock import MockFactory
    from prometheus_client.parser import text_string_to_metric_families

    from device.config import load_config
    from device.daemon import Daemon
    from device.notify import Notifier

    bundle = shutil.copytree(daemon_bundle, tmp_path / "bundle")       # deploy adopts it as a version
    expected = write_frames(tmp_path / "frames", PATTERN)
    jpath, archive = tmp_path / "journal.sqlite", tmp_path / "archive"
    dcfg = write_config(tmp_path / "d.toml", bundle, f'source = "folder"\npath = "{tmp_path / "frames"}"', jpath,
                        f'archive_dir = "{archive}"\n\n[trigger]\nrate_hz = 8\n\n[outputs]\nreject_pin = 17\n'
                        'reject_width_ms = 5\n')
    with contextlib_broker(tmp_path) as port:
        mqtt = f'enabled = true\nport = {port}\nline = "L1"\nstation = "S1"\n' if port else ""
        (tmp_path / "p").mkdir()
        pcfg = panel_config(tmp_path / "p", jpath, archive, bundle, panel="refresh_s = 0.3\n", mqtt=mqtt)
        user, pw = add_user(pcfg)
        sub = Subscriber(port, "anomaly/L1/S1/decision") if port else None
        with running_panel(pcfg) as (svc, url):
            driver.get(url + "/")
            d = Daemon(load_config(dcfg), config_path=dcfg, pin_factory=MockFactory(), notifier=Notifier(env={}))
            t = threading.Thread(target=d.run, kwargs={"signals": False}, daemon=True)
            t.start()
            wait_until(lambda: page_counts(driver)[0] >= 3, 30, "the live page to show the first parts")
            screenshot(driver, tmp_path, "live-daemon-running")
            t.join(60)
            assert not t.is_alive()
            n = len(expected)
            want = journal_counts(jpath)
            assert want == (n, expected.count("REJECT"), 0)
            wait_until(lambda: page_counts(driver) == want, 15, lambda: f"the page to show {want}, "
                       f"shows {page_counts(driver)}")
            wait_text(driver, "#service-state", "stopped")
            screenshot(driver, tmp_path, "live-daemon-done")
            with httpx.Client(base_url=url) as c:
                fams = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
            assert fams["anomaly_parts"].samples[0].value == n
            assert fams["anomaly_rejects"].samples[0].value == expected.count("REJECT")
            if sub is not None:
                wait_until(lambda: len(sub.of("decision")) >= n, 20, "every decision on MQTT")
                db = sqlite3.connect(jpath)
                rows = db.execute("SELECT id, decision, bundle_digest FROM decisions ORDER BY id").fetchall()
                db.close()
                assert [(m["id"], m["decision"], m["bundle_digest"]) for m in sub.of("decision")] == \
                    [tuple(r) for r in rows]
                sub.close()

            # A reject an operator confirms as a good part: mark it, learn, deploy the new version.
            driver.get(url + "/rejects")
            driver.find_elements(By.CSS_SELECTOR, "#gallery a.tile")[-1].click()     # the oldest reject
            wait_text(driver, "#detail-title", lambda s: s.startswith("Decision #"))
            login(driver, url, user, pw, next_path=driver.current_url.split(url, 1)[1])
            driver.find_element(By.ID, "mark-good").click()
            wait_text(driver, "#detail-mark", "marked good part")
            driver.get(url + "/actions")
            assert run_action(driver, "run-learn") == "ok", text(driver, "#run-output")
            assert "would now pass" in text(driver, "#run-output")          # learn's preview, shown
            version = driver.find_element(By.ID, "deploy-learned").text.split()[-1]
            screenshot(driver, tmp_path, "learn-preview")
            assert run_action(driver, "deploy-learned") == "ok", text(driver, "#run-output")
            assert Path(bundle).resolve().name.startswith(version) and Path(bundle).is_symlink()
            screenshot(driver, tmp_path, "deployed")
            driver.get(url + "/actions")                 # the marked part is learned: not offered again
            assert version in text(driver, "#marked-good")
            assert driver.find_element(By.ID, "run-learn").get_attribute("disabled") is not None
            logout(driver, url)
            audit = [(a["action"], a["status"]) for a in svc.store.actions()]
            assert ("learn", "ok") in audit and ("deploy", "ok") in audit
            assert severe_console_errors(driver) == []


class contextlib_broker:
    """A Mosquitto broker when installed (yields its port), else nothing (yields None)."""

    def __init__(self, tmp: Path):
        self.tmp, self.cm = tmp, None

    def __enter__(self):
        if MOSQUITTO is None:
            return None
        self.cm = broker(self.tmp / "broker")
        return self.cm.__enter__().port

    def __exit__(self, *exc):
        if self.cm is not None:
            self.cm.__exit__(*exc)
