"""``anomaly-device panel`` (the operator station service) and ``anomaly-device panel-user``.

Exit codes: 0 OK, 2 bad config or input.

Example:
    $ anomaly-device panel --config /etc/anomaly-device/device.toml --bind 127.0.0.1:8080
    $ anomaly-device panel-user add ana --config /etc/anomaly-device/device.toml      # asks twice
    $ printf '%s\\n' "$PASSWORD" | anomaly-device panel-user add ana --config device.toml
"""
from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "/etc/anomaly-device/device.toml"


def _panel(args) -> int:
    from device.errors import ConfigError
    from device.panel.service import PanelService
    from device.panel.panel_config import load_panel_config
    from device.panel.settings import split_bind

    cfg = load_panel_config(args.config)
    if args.bind:
        try:
            split_bind(args.bind)
        except ValueError as exc:
            raise ConfigError(f"--bind: {exc}") from None
    if not args.verbose:   # library noise only with -v
        for name in ("paho", "uvicorn", "uvicorn.error", "multipart"):
            logging.getLogger(name).setLevel(logging.WARNING)
    with PanelService(cfg, bind=args.bind, publish=not args.no_mqtt) as svc:
        return svc.serve()


def read_new_password(stream=None, prompt=None) -> str:
    """The new password: the first line of standard input when it is not a terminal, else typed
    twice at a prompt (not echoed).

    Raises:
        ValueError: empty input, or the two typed passwords differ.
    """
    stream = stream or sys.stdin
    if not stream.isatty():
        line = stream.readline().rstrip("\r\n")
        if not line:
            raise ValueError("no password on standard input")
        return line
    import getpass

    prompt = prompt or getpass.getpass
    a = prompt("New password: ")
    if a != prompt("Again: "):
        raise ValueError("the two passwords differ")
    return a


def _user(args) -> int:
    from device.panel.panel_config import load_panel_config
    from device.panel.store import PanelStore

    cfg = load_panel_config(args.config)
    with PanelStore(cfg.panel.store) as store:
        if args.action == "list":
            for u in store.users():
                print(u["name"])
            return 0
        if not args.name:
            print(f"anomaly-device: error: panel-user {args.action} needs a NAME", file=sys.stderr)
            return 2
        if args.action == "remove":
            if not store.remove_user(args.name):
                print(f"anomaly-device: error: no user {args.name!r} in {cfg.panel.store}", file=sys.stderr)
                return 2
            store.record(None, "user_removed", {"user": args.name}, client="cli")
            print(f"user {args.name} removed")
            return 0
        try:
            store.add_user(args.name, read_new_password(), replace=args.replace)
        except ValueError as exc:
            print(f"anomaly-device: error: {exc}", file=sys.stderr)
            return 2
        store.record(None, "user_replaced" if args.replace else "user_added", {"user": args.name}, client="cli")
        print(f"user {args.name} {'updated' if args.replace else 'added'} in {cfg.panel.store}")
        return 0


def register(sub) -> None:
    """Add ``panel`` and ``panel-user`` to ``anomaly-device``'s subparsers."""
    p = sub.add_parser("panel", help="operator web page, MQTT publisher and Prometheus metrics "
                                     "(reads the journal read-only)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"TOML config (default {DEFAULT_CONFIG})")
    p.add_argument("--bind", help="HOST:PORT to listen on (default [panel] bind, 127.0.0.1:8080)")
    p.add_argument("--no-mqtt", action="store_true", help="do not publish to MQTT even if [mqtt] enabled")
    p.set_defaults(func=_panel, log_level=logging.INFO)     # a service: its few lines go to the journal

    u = sub.add_parser("panel-user", help="add, remove or list the panel's users (password from stdin or a prompt)")
    u.add_argument("action", choices=("add", "remove", "list"))
    u.add_argument("name", nargs="?", help="user name")
    u.add_argument("--config", default=DEFAULT_CONFIG)
    u.add_argument("--replace", action="store_true", help="add: set a new password for an existing user")
    u.set_defaults(func=_user)
