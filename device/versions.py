"""Versioned bundles: deploy, roll back and list, with the active one switched atomically.

Layout beside the config's ``[bundle] path`` (here ``/var/lib/anomaly-device/bundle``)::

    bundle -> bundle.versions/3f2a9c0d1e4b5a67      the active version: a symlink
    bundle.versions/
      3f2a9c0d1e4b5a67/        one verified bundle per version, named by its digest (16 hex)
      9b1c.../
      versions.json            index: versions (source, added), activation stack, history log
      .lock                    serialises deploy / rollback / learn

* **Switching** writes a temporary symlink and ``rename(2)``\\ s it over ``bundle``: a reader
  sees the old or the new version, never a half state. The service re-reads the path on
  ``SIGHUP``, so it picks up the new version at its next reload.
* **deploy** verifies the bundle (hashes, schema, a test inference on zeros of the declared
  input shape with the config's threshold settings), copies it in (temporary directory +
  rename; files 0644, directories 0755), switches, asks a running service to reload
  (``SIGHUP`` to the pid in the service's lock file, else ``systemctl reload``), and confirms
  from the journal that decisions carry the new digest. A ``reload_failed`` event switches
  the link back and fails the deploy. With no service running it just switches: the first
  deploy onto a fresh device included (no ``bundle`` yet, or a plain directory, which is
  adopted as a version first).
* **rollback** re-activates the version that was active before the current one was deployed
  (a stack: deploys push, rollbacks pop), the same way.
* The last ``[bundle] keep_versions`` versions are kept; the active and previous ones never go.
* In a group-shared folder (setgid: the operator panel's set-up, docs/INTEGRATION.md) the versions
  folder and each version are 02775 and the lock 0664, so the service's user, the panel's user and
  an operator in the group can each deploy, learn and roll back, whatever their umask.

Example:
    >>> cfg = load_config("/etc/anomaly-device/device.toml")      # doctest: +SKIP
    >>> deploy(cfg, "new-bundle/")["status"]                       # doctest: +SKIP
    'confirmed'
    >>> [v["active"] for v in list_versions(cfg)]                  # doctest: +SKIP
    [True, False]
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import getpass
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from device.bundle import MANIFEST, bundle_digest, load_bundle
from device.errors import BundleError, ConfigError

log = logging.getLogger(__name__)

VERSIONS_SUFFIX = ".versions"
INDEX = "versions.json"
DIGEST_CHARS = 16
DEFAULT_KEEP = 5
DEFAULT_UNIT = "anomaly-device"


def _now() -> str:
    """UTC time with microseconds: the index orders versions by it (several deploys a second)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chmod_own(path: Path, mode: int) -> None:
    """``chmod`` a file this user owns (another user's file keeps the mode its owner gave it)."""
    if os.stat(path).st_uid == os.geteuid():
        os.chmod(path, mode)


def read_manifest(path: Path) -> dict[str, Any]:
    """A bundle's manifest as a dict, schema-checked (:class:`device.manifest.Manifest`), files not hashed."""
    from device.manifest import Manifest

    mpath = Path(path) / MANIFEST
    try:
        text = mpath.read_bytes()
    except OSError as exc:
        raise BundleError(f"{mpath}: cannot read ({exc.strerror or exc})") from None
    return Manifest.from_json(text, str(mpath)).to_dict()


def keep_versions(cfg) -> int:
    """How many versions to keep (``[bundle] keep_versions``, default 5; at least 2)."""
    return max(2, int(cfg.bundle.keep_versions))


@dataclasses.dataclass
class Store:
    """The versions directory beside an active path.

    Args:
        active: the config's ``[bundle] path`` (a symlink to the active version once managed).
    """

    active: Path

    @property
    def root(self) -> Path:
        return self.active.parent / (self.active.name + VERSIONS_SUFFIX)

    @property
    def shared(self) -> bool:
        """The active path's folder is group-shared (setgid, as docs/INTEGRATION.md sets up
        ``bundles/`` for the operator panel): the service's user, the panel's user and an operator,
        each in the group, all write versions, so folders and the lock stay group-writable (and a
        user never changes the mode of a file another one owns)."""
        try:
            return bool(self.active.parent.stat().st_mode & stat.S_ISGID)
        except OSError:
            return False

    @property
    def dir_mode(self) -> int:
        """Mode of the versions folder and of each version: 0755, or 02775 in a shared folder."""
        return 0o2775 if self.shared else 0o755

    @classmethod
    def for_config(cls, cfg) -> "Store":
        if not cfg.bundle.path:
            raise ConfigError(f"{cfg.source_file}: [bundle].path is empty")
        return cls(Path(cfg.bundle.path))

    # ------------------------------------------------------------ index and lock
    @contextlib.contextmanager
    def locked(self, timeout_s: float = 30.0):
        """Exclusive lock on the store (one deploy / rollback / learn at a time)."""
        self.root.mkdir(parents=True, exist_ok=True)
        _chmod_own(self.root, self.dir_mode)
        fd = os.open(str(self.root / ".lock"), os.O_RDWR | os.O_CREAT, 0o664)
        end = time.monotonic() + timeout_s
        try:
            _chmod_own(self.root / ".lock", 0o664 if self.shared else 0o644)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() > end:
                        raise BundleError(f"{self.root}: another deploy, rollback or learn holds the "
                                          f"versions lock (waited {timeout_s:g} s)") from None
                    time.sleep(0.05)
            yield self
        finally:
            os.close(fd)

    def read_index(self) -> dict[str, Any]:
        path = self.root / INDEX
        if not path.is_file():
            return {"versions": {}, "stack": [], "history": []}
        try:
            ix = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path}: unreadable versions index ({exc}); fix or remove it") from exc
        if not isinstance(ix, dict):
            raise BundleError(f"{path}: expected a JSON object, found {type(ix).__name__}")
        for key, empty in (("versions", {}), ("stack", []), ("history", [])):
            ix.setdefault(key, empty)
        return ix

    def write_index(self, ix: dict[str, Any]) -> None:
        path = self.root / INDEX
        tmp = path.with_name(f".{INDEX}.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(ix, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        _fsync_dir(self.root)

    # ------------------------------------------------------------ versions
    def version_dir(self, name: str) -> Path:
        return self.root / name

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
                      and (p / MANIFEST).is_file())

    def active_name(self) -> str | None:
        """Version the active path links to; ``None`` when absent or not a managed link."""
        if not self.active.is_symlink():
            return None
        target = Path(os.path.realpath(self.active))
        return target.name if target.parent == Path(os.path.realpath(self.root)) else None

    def resolve(self, ref: str) -> str:
        """A stored version from a digest prefix (at least 6 hex characters)."""
        names = [n for n in self.names() if len(ref) >= 6 and n.startswith(ref[:DIGEST_CHARS])]
        if len(names) != 1:
            raise BundleError(f"{ref}: {'no' if not names else 'more than one'} stored version matches "
                              f"in {self.root} (have {', '.join(self.names()) or 'none'})")
        return names[0]

    def locate(self, ref: str | Path) -> Path:
        """A bundle directory, or a stored version named by a digest prefix (see :meth:`resolve`)."""
        path = Path(ref)
        if not path.exists() and os.sep not in str(ref):
            path = self.version_dir(self.resolve(str(ref)))
        return path

    def add(self, src: Path) -> str:
        """Copy bundle ``src`` in as a version (atomic; files 0644, dirs 0755); returns its name.
        A version with the same digest is reused."""
        name = bundle_digest(src)[:DIGEST_CHARS]
        dest = self.version_dir(name)
        if dest.is_dir() and (dest / MANIFEST).is_file() and bundle_digest(dest)[:DIGEST_CHARS] == name:
            return name
        manifest = read_manifest(src)
        tmp = self.root / f".incoming-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for entry in [MANIFEST, *manifest["files"]]:
                if "/" in entry or entry.startswith("."):
                    raise BundleError(f"{src / MANIFEST}: bad entry name {entry!r}")
                shutil.copyfile(src / entry, tmp / entry)
                os.chmod(tmp / entry, 0o644)
                with open(tmp / entry, "rb") as f:
                    os.fsync(f.fileno())
            os.chmod(tmp, self.dir_mode)
            _fsync_dir(tmp)
            if dest.exists():               # a broken leftover with this name
                shutil.rmtree(dest)
            os.rename(tmp, dest)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return name

    def add_written(self, path: Path) -> str:
        """Move a bundle just written inside the store (``write_bundle`` into a dot-directory of
        :attr:`root`) into place as a version; returns its name."""
        name = bundle_digest(path)[:DIGEST_CHARS]
        os.chmod(path, self.dir_mode)
        for f in path.iterdir():
            os.chmod(f, 0o644)
        dest = self.version_dir(name)
        if dest.is_dir():
            shutil.rmtree(path)
        else:
            os.rename(path, dest)
            _fsync_dir(self.root)
        return name

    def adopt(self) -> str | None:
        """Turn a plain directory at the active path into a version + link; returns its name."""
        if self.active.is_symlink() or not self.active.is_dir():
            return None
        if not (self.active / MANIFEST).exists():
            if any(self.active.iterdir()):
                raise BundleError(f"{self.active}: a directory that is not a bundle (no {MANIFEST}); move it away "
                                  f"so deploy can put the active-version link there")
            self.active.rmdir()          # an empty placeholder (e.g. made by an installer)
            return None
        name = bundle_digest(self.active)[:DIGEST_CHARS]
        self.root.mkdir(parents=True, exist_ok=True)
        dest = self.version_dir(name)
        if dest.exists():
            trash = self.root / f".adopted-{name}-{os.getpid()}"
            os.rename(self.active, trash)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(self.active, dest)      # same folder: atomic move
        self.switch(name)
        log.info("adopted %s as version %s", self.active, name)
        return name

    def switch(self, name: str) -> None:
        """Point the active path at version ``name``: ``rename(2)`` of a temporary symlink."""
        if not (self.version_dir(name) / MANIFEST).is_file():
            raise BundleError(f"{self.version_dir(name)}: no such version")
        self.active.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.active.with_name(f".{self.active.name}.link-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.path.join(self.root.name, name), tmp)
        try:
            os.rename(tmp, self.active)
        except OSError as exc:
            os.unlink(tmp)
            raise BundleError(f"{self.active}: cannot switch the active version ({exc.strerror or exc})") from exc
        _fsync_dir(self.active.parent)

    def prune(self, ix: dict[str, Any], keep: int) -> list[str]:
        """Delete all but the ``keep`` most recently used versions; never the active or previous."""
        stack = [n for n in ix["stack"] if (self.version_dir(n) / MANIFEST).is_file()]
        ix["stack"] = [n for i, n in enumerate(stack) if i == 0 or stack[i - 1] != n]
        last_used = {n: "" for n in self.names()}
        for n, meta in ix["versions"].items():
            if n in last_used:
                last_used[n] = meta.get("added", "")
        for h in ix["history"]:
            if h.get("to") in last_used:
                last_used[h["to"]] = max(last_used[h["to"]], h.get("time", ""))
        protect = set(ix["stack"][-2:]) | {self.active_name()}
        order = sorted(last_used, key=lambda n: last_used[n], reverse=True)
        removed = [n for n in order[keep:] if n not in protect]
        for n in removed:
            shutil.rmtree(self.version_dir(n), ignore_errors=True)
            ix["versions"].pop(n, None)
        ix["stack"] = [n for n in ix["stack"] if n not in removed]
        if removed:
            log.info("pruned versions %s (keeping %d)", ", ".join(removed), keep)
        return removed


# ---------------------------------------------------------------- verification
def _with_bundle_path(cfg, path: Path):
    """``cfg`` with ``[bundle] path`` replaced."""
    return cfg.model_copy(update={"bundle": cfg.bundle.model_copy(update={"path": str(path)})})


def verify_bundle(path: Path, cfg):
    """What the service does on reload, on ``path``: load and verify the bundle, apply the config's
    threshold settings, run one inference on zeros of the declared input shape.

    Returns:
        the loaded :class:`~device.bundle.Bundle`.

    Raises:
        BundleError: naming the file and the problem.
    """
    from device.detector import build_detector

    det = build_detector(_with_bundle_path(cfg, Path(path)))
    try:
        return det.bundle
    finally:
        det.close()


# ---------------------------------------------------------------- the running service
def service_pid(cfg) -> int | None:
    """pid of a running ``anomaly-device run`` for this config (from its lock file)."""
    from device.servicelock import holder, pid_file_for

    info = holder(pid_file_for(cfg))
    return info["pid"] if info and info.get("command") == "run" and info.get("pid") else None


def _systemd_active(unit: str | None) -> bool:
    if not unit or not shutil.which("systemctl"):
        return False
    try:
        return subprocess.run(["systemctl", "is-active", "--quiet", unit], timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def request_reload(cfg, unit: str | None = DEFAULT_UNIT) -> str | None:
    """Ask a running service to reload; returns how (``"SIGHUP pid N"``, ``"systemctl reload U"``)
    or ``None`` when no service runs.

    Raises:
        BundleError: a service runs but cannot be asked.
    """
    pid = service_pid(cfg)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGHUP)
            return f"SIGHUP pid {pid}"
        except ProcessLookupError:
            return None
        except PermissionError:
            if not _systemd_active(unit):
                raise BundleError(f"service pid {pid}: not allowed to signal it (run as root or as the "
                                  f"service user)") from None
    elif not _systemd_active(unit):
        return None
    r = subprocess.run(["systemctl", "reload", unit], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise BundleError(f"systemctl reload {unit} failed: {(r.stderr or r.stdout).strip()[:300]}")
    return f"systemctl reload {unit}"


def _journal(journal_path: str):
    """The journal opened read-only, or ``None`` when there is none yet."""
    from device.errors import AnomalyError
    from device.journal import open_readonly

    if not journal_path or journal_path == ":memory:" or not Path(journal_path).is_file():
        return None
    try:
        return open_readonly(journal_path)
    except AnomalyError as exc:
        log.debug("journal %s not readable yet: %s", journal_path, exc)
        return None


def journal_marks(journal_path: str) -> tuple[int, int]:
    """Last decision id and last event id (0 when there is no journal yet)."""
    j = _journal(journal_path)
    if j is None:
        return 0, 0
    with j:
        return j.last_ids()


RELOAD_EVENTS = ("reload", "reload_failed", "stop")


def _check_journal(j, digest: str, marks: tuple[int, int]) -> tuple[str, str] | None:
    """What the journal says since ``marks``: the service's reload failed or it stopped, or a
    decision carries ``digest`` (confirmed); ``None``: nothing yet."""
    for ev in j.events_since(marks[1], RELOAD_EVENTS):
        if ev["kind"] == "reload_failed":
            return "reload_failed", ev["message"] or ""
        if ev["kind"] == "stop":
            return "reload_failed", f"the service stopped while reloading ({ev['message'] or 'no message'})"
    if j.last_with_digest(digest[:DIGEST_CHARS], marks[0]) is not None:
        return "confirmed", "decisions carry the new digest"
    return None


def wait_for_reload(journal_path: str, digest: str, marks: tuple[int, int], timeout_s: float,
                    poll_s: float = 0.1) -> tuple[str, str]:
    """Watch the journal (read-only) after a reload request.

    Returns:
        ``("confirmed", ...)`` a decision carries ``digest``; ``("reload_failed", message)``;
        ``("reloaded", ...)`` the service journaled its reload but no part came to confirm the
        digest within ``timeout_s``; ``("timeout", ...)`` nothing was journaled.
    """
    end = time.monotonic() + timeout_s
    reloaded = False
    while True:
        j = _journal(journal_path)
        if j is not None:
            with j:
                got = _check_journal(j, digest, marks)
                reloaded = reloaded or bool(j.events_since(marks[1], ("reload",)))
            if got is not None:
                return got
        if time.monotonic() > end:
            if reloaded:
                return "reloaded", f"service reloaded, but no part was inspected within {timeout_s:g} s to confirm"
            return "timeout", f"no reload journaled within {timeout_s:g} s"
        time.sleep(poll_s)


# ---------------------------------------------------------------- deploy / rollback / list
def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in a container
        return str(os.getuid())


def _open_store(cfg) -> tuple[Store, dict]:
    """The store with a plain-directory active path adopted and the stack reconciled with the link."""
    store = Store.for_config(cfg)
    ix = store.read_index()
    adopted = store.adopt()
    if adopted:
        ix["versions"].setdefault(adopted, {"source": f"adopted {store.active}", "added": _now()})
        ix["history"].append({"time": _now(), "action": "adopt", "from": None, "to": adopted,
                              "source": str(store.active), "result": "switched", "user": _user()})
    active = store.active_name()
    if active and (not ix["stack"] or ix["stack"][-1] != active):
        ix["stack"].append(active)
    return store, ix


def _activate(cfg, store: Store, ix: dict, name: str, action: str, source: str, unit: str | None,
              wait_s: float, reload: bool) -> dict:
    """Switch to ``name``, have a running service reload, confirm or switch back."""
    old = store.active_name()
    digest = bundle_digest(store.version_dir(name))
    marks = journal_marks(cfg.journal.path)
    store.switch(name)
    entry = {"time": _now(), "action": action, "from": old, "to": name, "source": source, "user": _user()}
    out = {"action": action, "version": name, "digest": digest, "from": old, "reload": None}
    try:
        how = request_reload(cfg, unit) if reload else None
    except BundleError as exc:
        how, status, detail = "failed", "reload_failed", str(exc)
    else:
        status, detail = ("switched", "no service running: the next start loads it") if how is None else \
            wait_for_reload(cfg.journal.path, digest, marks, wait_s)
    out.update(reload=how, status=status, detail=detail)
    if status in ("reload_failed", "timeout"):
        if old:
            store.switch(old)
        entry.update(result=status, detail=detail[:500], reverted_to=old)
        ix["history"].append(entry)
        store.write_index(ix)
        raise BundleError(f"{action} of version {name}: {'reload failed' if status == 'reload_failed' else 'no answer'}"
                          f" ({detail.splitlines()[0] if detail else status}); "
                          + (f"switched back to {old}" if old else "no previous version to switch back to"))
    entry.update(result=status, detail=detail)
    ix["history"].append(entry)
    return out


def deploy(cfg, bundle: str | Path, unit: str | None = DEFAULT_UNIT, wait_s: float = 30.0,
           reload: bool = True, source: str | None = None) -> dict:
    """Verify ``bundle`` (a directory, or a stored version's digest prefix), store it as a
    version, make it active and have a running service load it.

    Returns:
        ``{"status": "confirmed" | "reloaded" | "switched" | "unchanged", "version", "digest",
        "from", "reload", "detail", "pruned", "warnings"}``.

    Raises:
        BundleError: the bundle fails verification, or the service reported ``reload_failed``
            (the previous version is active again).
    """
    with Store.for_config(cfg).locked():
        store, ix = _open_store(cfg)
        path = store.locate(bundle)
        loaded = verify_bundle(path, cfg)
        name = store.add(path)
        load_bundle(store.version_dir(name))          # the copy's hashes
        ix["versions"].setdefault(name, {"source": source or str(path.resolve()), "added": _now()})
        warnings = capture_warnings(cfg, loaded.manifest)
        if store.active_name() == name:
            store.write_index(ix)
            return {"action": "deploy", "status": "unchanged", "version": name, "digest": bundle_digest(path),
                    "from": name, "reload": None, "detail": "already the active version", "pruned": [],
                    "warnings": warnings}
        out = _activate(cfg, store, ix, name, "deploy", source or str(path.resolve()), unit, wait_s, reload)
        ix["stack"].append(name)
        out["pruned"] = store.prune(ix, keep_versions(cfg))
        out["warnings"] = warnings
        store.write_index(ix)
        return out


def rollback(cfg, unit: str | None = DEFAULT_UNIT, wait_s: float = 30.0, reload: bool = True) -> dict:
    """Re-activate the version that was active before the current one (see :func:`deploy`)."""
    with Store.for_config(cfg).locked():
        store, ix = _open_store(cfg)
        stack = [n for n in ix["stack"] if (store.version_dir(n) / MANIFEST).is_file()]
        if len(stack) < 2:
            raise BundleError(f"{store.root}: no previous version to roll back to "
                              f"(active: {store.active_name() or 'none'})")
        prev = stack[-2]
        loaded = verify_bundle(store.version_dir(prev), cfg)
        out = _activate(cfg, store, ix, prev, "rollback", f"rollback from {stack[-1]}", unit, wait_s, reload)
        ix["stack"] = stack[:-1]
        out["pruned"] = []
        out["warnings"] = capture_warnings(cfg, loaded.manifest)
        store.write_index(ix)
        return out


# ---------------------------------------------------------------- versions derived on the device
def lineage_record(parent_manifest: dict, parent_digest: str, created_by: str, method: str,
                   **extra) -> dict[str, Any]:
    """The ``lineage`` record of a version derived on the device (``learn``, ``deploy --target-frr``)
    from a parent: its digest and creation time, the command, when (UTC), how, what else the
    command records (``extra``), and the ancestors (newest first, at most 51).

    Example:
        >>> rec = lineage_record({"created": "2026-01-01T00:00:00Z"}, "ab" * 32, "anomaly-device learn", "bank += 2")
        >>> rec["parent_digest"] == rec["ancestors"][0], rec["created_by"]
        (True, 'anomaly-device learn')
    """
    ancestors = [parent_digest] + list((parent_manifest.get("lineage") or {}).get("ancestors", []))[:50]
    return {"parent_digest": parent_digest, "parent_created": parent_manifest.get("created"),
            "created_by": created_by, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "method": method, **extra, "ancestors": ancestors}


def store_version(cfg, body: dict, files: dict, source: str, out: str | Path | None = None) -> tuple[Path, str]:
    """Write a derived version (manifest body and files, :func:`device.bundle.write_bundle`) into the
    versions store beside ``[bundle] path`` (or to ``out``), recorded with ``source``; nothing is
    activated.

    Returns:
        ``(path, version name)``.
    """
    from device.bundle import write_bundle

    if out is not None:
        dest = Path(write_bundle(out, body, files))
        return dest, dest.name
    store = Store.for_config(cfg)
    with store.locked():
        tmp = store.root / f".new-{os.getpid()}-{time.monotonic_ns()}"
        write_bundle(tmp, body, files)
        name = store.add_written(tmp)
        ix = store.read_index()
        ix["versions"].setdefault(name, {"source": source, "added": _now()})
        store.write_index(ix)
    return store.version_dir(name), name


def _bank_rows(path: Path, manifest: dict) -> int | None:
    n = manifest.get("scoring", {}).get("bank_size")
    if isinstance(n, int):
        return n
    try:
        return int(np.load(path / "bank.npy", mmap_mode="r").shape[0])
    except (OSError, ValueError):
        return None


def list_versions(cfg) -> list[dict]:
    """Stored versions, newest first: version, digest, created, source, bank size, threshold,
    parent (``lineage.parent_digest``), active and previous markers. Reads only."""
    store = Store.for_config(cfg)
    ix = store.read_index()
    active = store.active_name()
    stack = [n for n in ix["stack"] if n in store.names()]
    if active and (not stack or stack[-1] != active):
        stack.append(active)
    previous = stack[-2] if len(stack) >= 2 else None
    out = []
    for name in store.names():
        d = store.version_dir(name)
        try:
            m = read_manifest(d)
        except BundleError as exc:
            out.append({"version": name, "error": str(exc), "active": name == active})
            continue
        meta = ix["versions"].get(name, {})
        parent = (m.get("lineage") or {}).get("parent_digest")
        out.append({"version": name, "digest": bundle_digest(d), "created": m.get("created"),
                    "added": meta.get("added"), "source": meta.get("source", "?"),
                    "bank_size": _bank_rows(d, m), "threshold": (m.get("threshold") or {}).get("value"),
                    "parent": parent[:DIGEST_CHARS] if isinstance(parent, str) else None,
                    "active": name == active, "previous": name == previous})
    out.sort(key=lambda v: (v.get("added") or v.get("created") or ""), reverse=True)
    if store.active.exists() and not store.active.is_symlink():
        log.info("%s is a plain directory; the next deploy adopts it as a version", store.active)
    return out


def history(cfg, limit: int = 20) -> list[dict]:
    """The last ``limit`` deploy / rollback / adopt entries (oldest first)."""
    return Store.for_config(cfg).read_index()["history"][-limit:]


def capture_warnings(cfg, manifest: dict) -> list[str]:
    """Differences between the configured camera and the bundle's capture record."""
    from device.capture import capture_mismatches

    return capture_mismatches(cfg.camera, manifest)
