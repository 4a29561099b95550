"""Actions that change the inspection, run as the same commands an operator types.

The panel never changes a bundle, the config or the journal itself: learning, deploying, rolling
back and re-targeting the threshold (``deploy --target-frr``) run ``anomaly-device learn|deploy|rollback …`` as a
subprocess (an argument list, no shell), one at a time, under the panel's own identity. Each run
is recorded in the panel store with the user, the time, the command, its exit code and its output,
which the page shows while it runs.

The threshold preview is computed here, read-only: the bundle's calibration scores give the
threshold for a target false-reject rate (:meth:`device.bundle.Bundle.threshold_for`) and the
recent journal scores say how many decisions it would have changed (:func:`core.decision.decide`).

Example:
    >>> learn_argv("/etc/anomaly-device/device.toml", [12, 40])
    ['learn', '--config', '/etc/anomaly-device/device.toml', '--from-journal', '12', '40']
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

LIFECYCLE_COMMANDS = ("learn", "deploy", "rollback", "bundles")


class Busy(Exception):
    """Another action is still running."""


# --------------------------------------------------------------------------- the commands
# The life-cycle commands of device/lifecycle_cli.py: `learn --config F --from-journal ROW...`
# (writes a new version, prints its preview, deploys nothing), `deploy VERSION --config F`,
# `deploy --config F --target-frr RATE` (a new version at another threshold, deployed), `rollback --config F`.
def learn_argv(config: str, rows: list[int]) -> list[str]:
    """``learn`` on journal rows an operator confirmed good (their archived images)."""
    return ["learn", "--config", config, "--from-journal", *[str(int(r)) for r in rows]]


def deploy_argv(config: str, bundle: str) -> list[str]:
    """``deploy`` a bundle folder or a stored version (digest prefix, as ``learn`` prints it)."""
    return ["deploy", bundle, "--config", config]


def rollback_argv(config: str) -> list[str]:
    return ["rollback", "--config", config]


def threshold_argv(config: str, target_frr: float) -> list[str]:
    """Re-target the active bundle's threshold at ``target_frr``: ``deploy --target-frr`` writes a
    new version whose threshold is read from the bundle's calibration scores, with its lineage, and
    deploys it like any version (:mod:`device.retarget`).

    Example:
        >>> threshold_argv("device.toml", 0.005)
        ['deploy', '--config', 'device.toml', '--target-frr', '0.005']
    """
    return ["deploy", "--config", config, "--target-frr", repr(float(target_frr))]


def learned_version(output: str) -> str | None:
    """The version ``learn`` wrote, from its output line ``new version <digest> (parent …)``.

    Example:
        >>> learned_version("new version 3f2a9c0d1e4b5a67 (parent 9b1c…): 2 image(s) learned")
        '3f2a9c0d1e4b5a67'
    """
    m = re.search(r"^new version (\S+)", output or "", re.M)
    return m.group(1) if m else None


def available_commands(prefix: list[str] | None = None) -> set[str]:
    """Life-cycle actions the installed ``anomaly-device`` offers: its subcommands, plus
    ``threshold`` when its ``deploy`` takes ``--target-frr``. An external command (``prefix``) is
    trusted to have learn, deploy and rollback."""
    if prefix:
        return {"learn", "deploy", "rollback"}
    from device.cli import build_parser

    try:
        parser = build_parser()
    except Exception as exc:  # pragma: no cover - a broken sibling module must not break the panel
        log.warning("cannot list anomaly-device commands: %s", exc)
        return set()
    subs = next((a.choices for a in parser._actions if isinstance(getattr(a, "choices", None), dict)), {})
    out = set(subs) & set(LIFECYCLE_COMMANDS)
    deploy = subs.get("deploy")
    if deploy is not None and "--target-frr" in deploy._option_string_actions:
        out.add("threshold")
    return out


def run_lifecycle_command(argv: list[str], timeout_s: float,
                          on_output: Callable[[str], None] | None = None) -> tuple[int, str]:
    """Run one command (argument list, no shell) and return ``(exit code, stdout+stderr)``.

    ``on_output`` receives the output so far about twice a second. A command running past
    ``timeout_s`` is terminated (its process group), and the exit code is 124.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("NOTIFY_SOCKET", None)
    try:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             text=True, errors="replace", env=env, start_new_session=True)
    except OSError as exc:
        return 127, f"cannot run {argv[0]}: {exc.strerror or exc}\n"
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(p.stdout.readline, "")), daemon=True)
    reader.start()
    deadline, last = time.monotonic() + timeout_s, 0.0
    while p.poll() is None:
        if time.monotonic() > deadline:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            reader.join(5)
            return 124, "".join(chunks) + f"\n(stopped after {timeout_s:.0f} s)\n"
        if on_output and time.monotonic() - last > 0.5:
            last = time.monotonic()
            on_output("".join(chunks))
        try:
            p.wait(0.1)
        except subprocess.TimeoutExpired:
            pass
    reader.join(5)
    return p.returncode, "".join(chunks)


class ActionRunner:
    """Runs one life-cycle action at a time in a background thread, audited in the store.

    Args:
        store: :class:`~device.panel.store.PanelStore`.
        config_path: the device config file passed to every command.
        prefix: argv prefix of ``anomaly-device`` (default: this Python's ``-m device.cli``).
        timeout_s: a command is stopped after this long.
    """

    def __init__(self, store, config_path: str, prefix: list[str] | None = None, timeout_s: float = 900.0):
        self.store = store
        self.config_path = config_path
        self.prefix = list(prefix) if prefix else [sys.executable, "-m", "device.cli"]
        self._custom = bool(prefix)
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.current: int | None = None

    def available(self) -> set[str]:
        return available_commands(self.prefix if self._custom else None)

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, user: str, action: str, args: list[str], detail: dict[str, Any] | None = None,
              client: str = "") -> int:
        """Record the action as running and start its command; returns the audit id.

        Raises:
            Busy: another action is running (it is recorded as refused).
        """
        with self._lock:
            if self.busy():
                self.store.record(user, action, {**(detail or {}), "refused": "another action is running"},
                                  status="refused", argv=self.prefix + args, client=client)
                raise Busy(f"action {self.current} is still running")
            argv = self.prefix + args
            aid = self.store.record(user, action, detail, status="running", argv=argv, client=client)
            self.current = aid
            self._thread = threading.Thread(target=self._run, args=(aid, argv), name=f"action-{aid}", daemon=True)
            self._thread.start()
            return aid

    def _run(self, aid: int, argv: list[str]) -> None:
        log.info("action %d: %s", aid, " ".join(argv))
        try:
            rc, out = run_lifecycle_command(argv, self.timeout_s, lambda o: self.store.update_output(aid, o))
        except Exception as exc:  # recorded, never lost
            rc, out = 1, f"{type(exc).__name__}: {exc}\n"
        self.store.finish(aid, "ok" if rc == 0 else "failed", rc, out)
        log.info("action %d finished: exit %d", aid, rc)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the running action; True when none is running any more."""
        t = self._thread
        if t is not None:
            t.join(timeout)
        return not self.busy()

    def close(self, timeout: float = 5.0) -> None:
        """Let a running action finish for ``timeout`` seconds (it keeps running detached otherwise)."""
        self.wait(timeout)


def threshold_preview(reader, bundle_path: str, target_frr: float, n: int) -> dict[str, Any]:
    """What a threshold at ``target_frr`` would have decided on the last ``n`` journal decisions.

    Returns the new threshold, the current one, and counts of decisions that would change
    (``pass_to_reject``, ``reject_to_pass``), unchanged ones, and errors (no score: unaffected).
    """
    import numpy as np

    from core.decision import decide
    from device.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    new = bundle.threshold_for(target_frr=target_frr, where="panel")
    rows = reader.recent(n, "score, threshold, decision")
    out = {"target_frr": target_frr, "threshold": new.value, "source": new.source, "decisions": len(rows),
           "current_threshold": rows[0]["threshold"] if rows else bundle.threshold.value,
           "pass_to_reject": 0, "reject_to_pass": 0, "unchanged": 0, "errors": 0}
    for r in rows:
        if r["decision"] == "ERROR" or r["score"] is None:
            out["errors"] += 1
            continue
        now = decide(r["score"], new).decision.value
        key = "unchanged" if now == r["decision"] else ("pass_to_reject" if now == "REJECT" else "reject_to_pass")
        out[key] += 1
    cal = bundle.calibration_scores
    if cal is not None and len(cal):
        out["calibration_frr"] = float(np.mean(np.asarray(cal) > new.value))
    return out
