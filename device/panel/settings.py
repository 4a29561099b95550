"""The operator panel's config sections, ``[panel]`` and ``[mqtt]``, as typed frozen specs.

Both sections live in the device's TOML file beside ``[bundle]``, ``[journal]`` …, and are part
of :class:`device.config.DeviceConfig`. Every key is declared once here with its type, default and
help text (the field description); unknown keys, wrong types (a TOML ``true`` is not a port), NaN
and infinities are refused with the key, what was expected and what was found.

Example:
    >>> PanelSettings().bind
    '127.0.0.1:8080'
    >>> MqttSettings.model_validate({"enabled": True, "line": "L1", "station": "S2"}).topic("decision")
    'anomaly/L1/S2/decision'
    >>> from device.schema import problems
    >>> try:
    ...     MqttSettings.model_validate({"qos": 3})
    ... except ValidationError as exc:
    ...     print(problems(exc, MqttSettings, "[mqtt].")[0])
    [mqtt].qos: expected <= 2, found integer 3
"""
from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from device.errors import ConfigError

_TOPIC_PART = re.compile(r"^[^/+#\s]+$")
_SHIFT = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
DEFAULT_STORE = "/var/lib/anomaly-panel/panel.sqlite"


class _Section(BaseModel):
    """Frozen, strict, closed (the same rules as every device spec)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


def split_bind(bind: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (IPv6 as ``[::1]:8080``) -> ``(host, port)``; raises ValueError.

    Example:
        >>> split_bind("[::1]:9000")
        ('::1', 9000)
    """
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port in 0..65535 (0: any free port), found {bind!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PanelSettings(_Section):
    """``[panel]``: the operator web page, its logins and its own store."""

    bind: str = Field(default="127.0.0.1:8080",
                      description="HOST:PORT the page listens on; loopback by default (open it to the LAN with "
                                  "e.g. 0.0.0.0:8080)")
    lan_readonly: bool = Field(default=True,
                               description="when bound beyond loopback, clients other than this machine get the "
                                           "read-only pages only (no login, no actions); false allows login from "
                                           "the LAN")
    store: str = Field(default=DEFAULT_STORE,
                       description="the panel's own SQLite file (users, sessions, marks, audit of actions, MQTT "
                                   "cursor); relative paths are read from the config file's folder")
    session_hours: float = Field(default=8.0, gt=0, le=24 * 30, description="a login lasts this long")
    login_attempts: int = Field(default=5, ge=1, le=1000,
                                description="failed logins allowed per client address and per user name within "
                                            "login_window_s before further attempts are refused")
    login_window_s: float = Field(default=300.0, gt=0, le=86400.0, description="window of the login rate limit")
    cookie_secure: bool = Field(default=False,
                                description="mark the session cookie Secure (set true behind an HTTPS proxy)")
    shifts: list[str] = Field(default=["06:00", "14:00", "22:00"], min_length=1,
                              description="local start times (HH:MM) of the shifts the live counters use")
    refresh_s: float = Field(default=1.0, ge=0.2, le=60.0, description="the live page refreshes this often")
    gallery_page: int = Field(default=48, ge=1, le=500, description="decisions per gallery page")
    preview_decisions: int = Field(default=2000, ge=10, le=1_000_000,
                                   description="recent decisions replayed by the threshold preview")
    command: list[str] = Field(default=[],
                               description="argv prefix of the anomaly-device command that actions run "
                                           "(default: this Python's `-m device.cli`)")
    action_timeout_s: float = Field(default=900.0, gt=0, le=86400.0,
                                    description="an action (learn, deploy, rollback) is stopped after this long")

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        split_bind(v)
        return v

    @field_validator("shifts")
    @classmethod
    def _shifts(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not _SHIFT.match(s)]
        if bad:
            raise ValueError(f"expected HH:MM start times (00:00..23:59), found {bad}")
        return sorted(set(v))

    @property
    def host(self) -> str:
        return split_bind(self.bind)[0]

    @property
    def port(self) -> int:
        return split_bind(self.bind)[1]


class MqttSettings(_Section):
    """``[mqtt]``: decisions, events and a retained status to an MQTT broker."""

    enabled: bool = Field(default=False, description="publish to the broker")
    host: str = Field(default="127.0.0.1", min_length=1, description="broker host name or address")
    port: int = Field(default=1883, ge=1, le=65535, description="broker port (8883 is usual with TLS)")
    tls: bool = Field(default=False, description="connect with TLS")
    ca_file: str = Field(default="", description="CA certificate file to verify the broker (TLS; '' = system CAs)")
    cert_file: str = Field(default="", description="client certificate file (TLS client authentication)")
    key_file: str = Field(default="", description="client key file (with cert_file)")
    username: str = Field(default="", description="broker user name ('' = anonymous)")
    password: str = Field(default="", description="broker password (prefer password_file)")
    password_file: str = Field(default="", description="file holding the broker password (first line)")
    qos: int = Field(default=2, ge=0, le=2,
                     description="QoS of decisions and events: 2 = exactly once to the broker across broker "
                                 "restarts, 1 = at least once (consumers deduplicate by id), 0 = may lose")
    prefix: str = Field(default="anomaly", description="first topic level")
    line: str = Field(default="line1", description="second topic level: the production line")
    station: str = Field(default="station1", description="third topic level: this inspection station")
    client_id: str = Field(default="", description="MQTT client id ('' = anomaly-panel-<line>-<station>)")
    keepalive: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive (s)")
    status_every_s: float = Field(default=10.0, ge=0.5, le=3600.0,
                                  description="the retained status is refreshed this often (and on every change)")
    backfill: bool = Field(default=True,
                           description="first start (no stored cursor): publish rows already in the journal "
                                       "(true) or start after the last one (false)")
    max_inflight: int = Field(default=20, ge=1, le=65535,
                              description="messages awaiting the broker's acknowledgement; keep it <= the broker's "
                                          "own limit (Mosquitto max_inflight_messages, 20), which silently drops "
                                          "QoS 2 messages beyond it after a broker restart")
    poll_s: float = Field(default=0.1, ge=0.01, le=10.0, description="the journal is polled this often for new rows")

    @field_validator("prefix", "line", "station")
    @classmethod
    def _topic_level(cls, v: str) -> str:
        if not _TOPIC_PART.match(v):
            raise ValueError(f"expected one topic level (no '/', '+', '#' or spaces), found {v!r}")
        return v

    @model_validator(mode="after")
    def _exclusive(self) -> "MqttSettings":
        if self.password and self.password_file:
            raise ValueError("give password or password_file, not both")
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file")
        return self

    def topic(self, kind: Literal["decision", "event", "status"]) -> str:
        """``<prefix>/<line>/<station>/<kind>``."""
        return f"{self.prefix}/{self.line}/{self.station}/{kind}"

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"anomaly-panel-{self.line}-{self.station}"

    def read_password(self) -> str | None:
        """The password (from ``password_file`` when given); None when there is none.

        Raises:
            ConfigError: the password file cannot be read.
        """
        if self.password_file:
            try:
                lines = Path(self.password_file).read_text().splitlines()
            except OSError as exc:
                raise ConfigError(f"[mqtt].password_file: cannot read {self.password_file} "
                                  f"({exc.strerror or exc})") from exc
            return lines[0] if lines else ""
        return self.password or None
