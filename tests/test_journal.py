"""The decision journal: life cycle, schema migration, read-only opening, faults, retention."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mount_helpers import IS_ROOT, mount, small_tmpfs

from device.journal import Journal, JournalError, open_readonly
from device.lifecycle import ClosedError

ROOT = Path(__file__).resolve().parents[1]


def _row(j: Journal, i: int = 0, **kw) -> int:
    return j.decision(frame=i, name=f"{i}.png", score=0.1, threshold=0.5, decision="PASS", t_trigger=float(i), **kw)


# ------------------------------------------------------------------ life cycle and schema
def test_context_manager_idempotent_close_and_clear_error(tmp_path):
    with Journal(tmp_path / "j.sqlite") as j:
        assert _row(j) == 1
    j.close()                                             # idempotent
    for call in (lambda: _row(j), lambda: j.event("x"), lambda: j.decisions(), lambda: j.summary()):
        with pytest.raises(ClosedError, match=r"j\.sqlite is closed"):
            call()
    assert issubclass(ClosedError, RuntimeError)


def test_digest_and_reason_columns_and_migration_of_an_old_journal(tmp_path):
    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)
    db.executescript("""CREATE TABLE decisions (id INTEGER PRIMARY KEY, ts REAL NOT NULL, t_trigger REAL NOT NULL,
        frame INTEGER NOT NULL, name TEXT, score REAL, threshold REAL, decision TEXT NOT NULL,
        capture_ms REAL, preprocess_ms REAL, inference_ms REAL, knn_ms REAL, decision_ms REAL,
        reject_at REAL, image TEXT);
        CREATE TABLE events (id INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, message TEXT);
        INSERT INTO decisions (ts, t_trigger, frame, decision) VALUES (1.0, 1.0, 0, 'PASS');""")
    db.commit()
    db.close()
    with Journal(old) as j:
        _row(j, 1, bundle_digest="ab" * 32, reason="score 0.1 <= threshold 0.5")
        rows = j.decisions()
    assert rows[0]["bundle_digest"] is None and rows[0]["reason"] is None        # the old row kept
    assert rows[1]["bundle_digest"] == "ab" * 32 and rows[1]["reason"].startswith("score 0.1")
    assert rows[1]["threshold_source"] is None and rows[1]["tile_grid"] is None


# ------------------------------------------------------------------ read-only opening (status)
def _make_journal(path: Path, n: int = 3) -> None:
    with Journal(path) as j:
        for i in range(n):
            _row(j, i)
        j.event("stop", f"{n} parts")


def test_readonly_open_reads_and_refuses_writes(tmp_path):
    _make_journal(tmp_path / "j.sqlite")
    before = sorted(p.name for p in tmp_path.iterdir())
    with open_readonly(tmp_path / "j.sqlite") as j:
        assert j.summary()["decisions"] == 3 and j.summary()["camera"] == "stopped"
        with pytest.raises(JournalError, match="read-only"):
            j.event("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == before   # nothing created next to it


def test_readonly_open_names_a_non_database_file(tmp_path):
    bad = tmp_path / "notes.sqlite"
    bad.write_text("this is a text file, not a journal\n" * 50)
    with pytest.raises(JournalError, match=r"notes\.sqlite.*not a journal"):
        open_readonly(bad)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(JournalError, match=r"other\.sqlite.*no decisions table"):
        open_readonly(other)
    with pytest.raises(JournalError, match="no journal yet"):
        open_readonly(tmp_path / "missing.sqlite")


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run the reader as an unprivileged user")
def test_readonly_open_as_an_unprivileged_user_while_the_writer_runs(tmp_path):
    """``status`` as another user: read-only folder and files, the daemon's connection still open."""
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user")
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="journal-ro-", dir="/tmp"))   # pytest's tmp_path is root-only
    path = d / "j.sqlite"
    writer = Journal(path)                                # WAL, -wal and -shm present
    for i in range(5):
        _row(writer, i)
    os.chmod(d, 0o755)                                    # the reader cannot create files here
    for p in d.iterdir():
        os.chmod(p, 0o644)

    def read_as_nobody() -> str:
        """Decision count read by a forked child running as ``nobody`` (the venv may not be executable
        by it, so no new interpreter); raises with the child's error."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                      # child: drop privileges, read, report, exit
            os.close(r)
            try:
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                with open_readonly(path) as j:
                    msg = str(j.summary()["decisions"])
            except BaseException as exc:                  # noqa: BLE001 - reported to the parent
                msg = f"{type(exc).__name__}: {exc}"
            os.write(w, msg.encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            out = f.read()
        os.waitpid(pid, 0)
        return out

    try:
        assert read_as_nobody() == "5"
        writer.close()                                    # -wal/-shm gone: still readable
        assert read_as_nobody() == "5"
        assert sorted(p.name for p in d.iterdir()) == ["j.sqlite"]
    finally:
        writer.close()
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------ write faults
def test_disk_full_is_a_journal_error_naming_the_file_and_cause(tmp_path):
    """Injected: SQLite's own page limit gives the genuine SQLITE_FULL of a full disk."""
    j = Journal(tmp_path / "j.sqlite")
    j._db.execute("PRAGMA max_page_count = %d" % j._db.execute("PRAGMA page_count").fetchone()[0])
    with pytest.raises(JournalError) as ei:
        for i in range(100_000):
            _row(j, i, reason="x" * 200)
    msg = str(ei.value)
    assert "j.sqlite" in msg and "disk full" in msg and "Traceback" not in msg
    assert isinstance(ei.value, OSError)
    j.close()


def test_read_only_journal_is_a_journal_error(tmp_path):
    """Injected: a connection that may not write (as a read-only file or mount gives)."""
    j = Journal(tmp_path / "j.sqlite")
    j._db.execute("PRAGMA query_only = 1")
    with pytest.raises(JournalError, match=r"j\.sqlite.*read-only"):
        _row(j)
    j.close()


@pytest.fixture(name="small_tmpfs")
def small_tmpfs_fixture(tmp_path):
    with small_tmpfs(tmp_path / "small") as mnt:
        yield mnt


def test_real_full_filesystem(small_tmpfs):
    j = Journal(small_tmpfs / "j.sqlite")
    with pytest.raises(JournalError, match="disk full"):
        for i in range(100_000):
            _row(j, i, reason="y" * 500)
    j.close()                                             # closing a faulted journal does not raise
    with open_readonly(small_tmpfs / "j.sqlite") as r:    # status still works on the full disk
        assert r.summary()["decisions"] > 0


def test_real_read_onlymount(tmp_path):
    if not IS_ROOT:
        pytest.skip("a read-only bind mount needs root")
    d = tmp_path / "ro"
    d.mkdir()
    _make_journal(d / "j.sqlite")
    if not mount("--bind", str(d), str(d)):
        pytest.skip("cannot bind-mount here")
    try:
        assert mount("-o", "remount,ro,bind", str(d))
        with pytest.raises(JournalError, match=r"j\.sqlite.*read-only"):
            with Journal(d / "j.sqlite") as j:
                _row(j)
        with open_readonly(d / "j.sqlite") as r:
            assert r.summary()["decisions"] == 3
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_unwritable_journal_folder_is_a_journal_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(JournalError, match=r"file/j\.sqlite"):
        Journal(blocker / "j.sqlite")


# ------------------------------------------------------------------ retention
def _age_rows(path: Path, older_than_id: int, days: float) -> None:
    db = sqlite3.connect(path)
    db.execute("UPDATE decisions SET ts = ts - ? WHERE id <= ?", (days * 86400, older_than_id))
    db.execute("UPDATE events SET ts = ts - ? WHERE id <= 1", (days * 86400,))
    db.commit()
    db.close()


def test_keep_days_prunes_old_rows_and_their_images_in_the_background(tmp_path):
    import threading

    path = tmp_path / "j.sqlite"
    img_dir = tmp_path / "archive"
    img_dir.mkdir()
    with Journal(path) as j:
        j.event("start")
        for i in range(40):
            rid = _row(j, i)
            img = img_dir / f"{i}.png"
            img.write_bytes(b"png")
            (img_dir / f"{i}_overlay.png").write_bytes(b"png")       # a tiled bundle's score overlay
            j.set_image(rid, str(img))
    _age_rows(path, 30, days=3)
    pruned = threading.Event()
    seen_threads = []

    def on_prune(stats):
        seen_threads.append(threading.current_thread().name)
        if stats["rows"]:
            pruned.set()

    with Journal(path, keep_days=2, prune_interval_s=0.05, on_prune=on_prune) as j:
        assert pruned.wait(30), "retention never ran"
        rows = j.decisions()
    assert [r["frame"] for r in rows] == list(range(30, 40))
    assert sorted(p.stem for p in img_dir.iterdir()) == sorted(   # images (and overlays) went with rows
        [str(i) for i in range(30, 40)] + [f"{i}_overlay" for i in range(30, 40)])
    assert seen_threads and all(t != threading.current_thread().name for t in seen_threads)
    assert "start" not in [e["kind"] for e in Journal(path).events()]             # old events too


def test_max_mb_keeps_the_journal_under_its_cap(tmp_path):
    import threading

    path = tmp_path / "j.sqlite"
    cap_mb = 1.0
    ran = threading.Event()
    with Journal(path, max_mb=cap_mb, prune_interval_s=3600, prune_every_rows=500,
                 on_prune=lambda s: ran.set()) as j:
        for i in range(30_000):                  # ~4 MB of rows unpruned
            _row(j, i, reason="score above threshold" * 2)
        assert ran.wait(30)
        j.prune_now()
        rows = j.decisions()
        size = sum(p.stat().st_size for p in tmp_path.glob("j.sqlite*"))
    assert size <= cap_mb * 1e6, f"journal files {size} bytes over the {cap_mb} MB cap"
    assert rows[-1]["frame"] == 29_999 and len(rows) < 30_000                 # the newest kept
    assert [r["frame"] for r in rows] == list(range(rows[0]["frame"], 30_000))  # oldest first, no holes


def test_status_command_names_a_non_database_file(tmp_path, capsys):
    from device.cli import main

    bad = tmp_path / "journal.sqlite"
    bad.write_bytes(b"\x00garbage" * 100)
    assert main(["status", "--journal", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "journal.sqlite" in err and "not a journal" in err and "Traceback" not in err
    _make_journal(tmp_path / "ok.sqlite")
    os.chmod(tmp_path / "ok.sqlite", 0o444)
    assert main(["status", "--journal", str(tmp_path / "ok.sqlite"), "--last", "2"]) == 0
    out = capsys.readouterr().out
    assert "decisions 3" in out and "stop: 3 parts" in out


def test_a_lowered_cap_shrinks_an_existing_journal(tmp_path):
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        for i in range(20_000):
            _row(j, i, reason="old row")
    assert path.stat().st_size > 1.5e6                   # well over the new cap
    with Journal(path, max_mb=1.0, prune_interval_s=3600) as j:
        stats = j.prune_now()
        assert stats["rows"] > 0
        size = sum(p.stat().st_size for p in tmp_path.glob("j.sqlite*"))
        newest = j.decisions(limit=1)[0]["frame"]
    assert size <= 1e6 and newest == 19_999
