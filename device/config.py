"""Device configuration: one TOML file, validated in full before anything starts.

Each option is declared once, below, with its type, default, range and help text; the example
file ``systemd/device.example.toml`` is generated from these declarations
(``anomaly-device config-example``) and a test keeps it equal. Every unknown section or key and
every bad value is reported with its ``[section].key`` name, what was expected and what was
found, all in one :class:`~device.errors.ConfigError` (an operator fixes the file in one pass).
Types are strict: ``true`` is not a number, ``"2"`` is not an integer, NaN and infinities are
refused, a list is not a table.

:func:`check_environment` adds what only the machine can tell (the journal folder is writable, the
archive folder is not a file, the pin factory exists, the bundle loads and runs):
``anomaly-device check-config`` runs it, and ``run`` fails on nothing that check-config passed.

Example file::

    [bundle]
    path = "/var/lib/anomaly-device/bundle"

    [camera]
    source = "picamera2"

    [outputs]
    reject_pin = 17
    reject_delay_ms = 400

Example:
    >>> cfg = parse_config({"bundle": {"path": "b"}, "camera": {"source": "folder", "path": "frames"}})
    >>> cfg.outputs.reject_width_ms, cfg.trigger.mode
    (50.0, 'free-run')
    >>> parse_config({"bundle": {"path": "b", "threshold": float("nan")}})
    Traceback (most recent call last):
    ...
    device.errors.ConfigError: <dict>: 1 problem(s):
      [bundle].threshold: expected a finite number, found float nan
"""
from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from pydantic import field_validator, model_validator

from device.errors import ConfigError
from device.panel.settings import MqttSettings, PanelSettings
from device.schema import Field, FloatPair, IntQuad, Spec, ValidationError, problems, type_name

log = logging.getLogger(__name__)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11 (the Pi's Bookworm has 3.11)
    import tomli as tomllib

MAX_CONFIG_BYTES = 1 << 20
STATE_DIR = "/var/lib/anomaly-device"
SOURCES = ("folder", "video", "opencv", "picamera2")
TRIGGER_MODES = ("free-run", "gpio", "software")

Pin = Optional[int]


def _pin(description: str, example: int):
    return Field(None, ge=0, le=53, description=description + " (BCM number; omit: not used)",
                 json_schema_extra={"example": example})


class BundleConfig(Spec):
    path: str = Field(min_length=1, description="model bundle directory (the active version; anomaly-train output "
                                                "or anomaly-device deploy)",
                      json_schema_extra={"example": f"{STATE_DIR}/bundle"})
    threads: int = Field(1, ge=1, le=64, description="LiteRT threads (1 leaves cores for the camera)")
    threshold: Optional[float] = Field(None, ge=0.0, description="override the bundle's threshold",
                                       json_schema_extra={"example": 0.42})
    target_frr: Optional[float] = Field(None, ge=0.0, lt=1.0, description="or: threshold from the bundle's "
                                        "calibration scores at this false-reject rate",
                                        json_schema_extra={"example": 0.01})
    keep_versions: int = Field(5, ge=2, le=1000, description="bundle versions kept by deploy / learn / rollback")


class CameraConfig(Spec):
    source: Literal["folder", "video", "opencv", "picamera2"] = Field(
        "picamera2", description='"picamera2" | "opencv" (USB index) | "video" (file) | "folder" (replay)')
    path: str = Field("", description="folder or video file to replay (source = folder / video)",
                      json_schema_extra={"example": "/srv/replay"})
    index: int = Field(0, ge=0, le=63, description="USB camera index (source = opencv)")
    loop: bool = Field(False, description="replay sources start again at the end")
    width: int = Field(640, ge=8, le=10000, description="capture width (live cameras)")
    height: int = Field(480, ge=8, le=10000, description="capture height (live cameras)")
    stream: Literal["lores", "main"] = Field("lores", description='picamera2: "lores" (YUV, luminance) or "main" (RGB)')
    exposure_us: int = Field(0, ge=0, le=10_000_000, description="0 = auto; fix it on a line so lighting drift is "
                                                                 "not scored")
    analogue_gain: float = Field(0.0, ge=0.0, le=64.0, description="0 = auto")
    awb_gains: Optional[FloatPair] = Field(None, description="fixed white balance [red, blue] (two positive numbers)",
                                           json_schema_extra={"example": [1.6, 1.4]})
    roi: Optional[IntQuad] = Field(None, description="crop [x, y, width, height] before the bundle's preprocessing",
                                   json_schema_extra={"example": [80, 40, 480, 400]})
    read_timeout_s: float = Field(2.0, ge=0.0, le=600.0, description="live cameras: a read slower than this is a "
                                                                     "fault (0 = no limit)")
    retry_initial_s: float = Field(0.5, ge=0.001, le=600.0, description="camera fault back-off: initial, doubling")
    retry_max_s: float = Field(10.0, ge=0.001, le=3600.0, description="camera fault back-off: longest wait")
    max_pixels: int = Field(50_000_000, ge=64, le=1_000_000_000, description="frames with more pixels are ERROR "
                                                                            "decisions (refused before decoding)")

    @field_validator("awb_gains")
    @classmethod
    def _awb(cls, v):
        if v is not None and min(v) <= 0:
            raise ValueError(f"expected two positive numbers [red, blue], found {list(v)}")
        return v

    @field_validator("roi")
    @classmethod
    def _roi(cls, v):
        if v is not None and (min(v[:2]) < 0 or min(v[2:]) <= 0):
            raise ValueError(f"expected [x, y, width, height] with x, y >= 0 and width, height > 0, found {list(v)}")
        return v


class TriggerConfig(Spec):
    mode: Literal["free-run", "gpio", "software"] = Field(
        "free-run", description='"free-run" | "gpio" (photo-eye) | "software" (SIGUSR1)')
    rate_hz: float = Field(0.0, ge=0.0, le=1000.0, description="free-run: 0 = as fast as frames come")
    pin: Pin = Field(None, ge=0, le=53, description="gpio: photo-eye input (BCM number)", json_schema_extra={"example": 4})
    bounce_ms: float = Field(5.0, ge=0.0, le=1000.0, description="photo-eye debounce")
    pull_up: bool = Field(True, description="photo-eye input pull-up")
    timeout_s: float = Field(1.0, ge=0.01, le=60.0, description="wait per trigger before feeding the watchdog again")


class OutputsConfig(Spec):
    reject_pin: Pin = Field(None, ge=0, le=53, description="reject actuator (BCM; omit: decisions journaled only)",
                            json_schema_extra={"example": 17})
    reject_active_high: bool = Field(True, description="reject line level when rejecting")
    reject_delay_ms: float = Field(0.0, ge=0.0, le=600_000.0, description="trigger/capture -> reject edge "
                                                                          "(conveyor distance / speed)")
    reject_width_ms: float = Field(50.0, ge=0.1, le=60_000.0, description="reject pulse width")
    safe_level: Literal["inactive", "active"] = Field(
        "inactive", description='reject line while faulted or stopped: "inactive" | "active" (reject all)')
    alarm_pin: Pin = _pin("alarm output", 27)
    alarm_active_high: bool = Field(True, description="alarm line level when raised")
    alarm_after_rejects: int = Field(0, ge=0, le=1_000_000, description="N rejects in a row raise the alarm (0 = never)")
    alarm_on_camera_fault: bool = Field(True, description="raise the alarm while the camera is down")
    alarm_on_model_error: bool = Field(True, description="raise the alarm while frames cannot be scored")
    pin_factory: str = Field("", description='gpiozero pin factory: "" = default (lgpio on Bookworm); "mock" for '
                                             'dry runs')
    ready_pin: Pin = _pin("PLC handshake READY: high while the service can score", 5)
    busy_pin: Pin = _pin("PLC handshake BUSY: from trigger to decision", 6)
    result_pin: Pin = _pin("PLC handshake RESULT strobe: after each decision is journaled", 13)
    pass_pin: Pin = _pin("PLC handshake PASS line, set with the strobe", 19)
    fail_pin: Pin = _pin("PLC handshake FAIL line (REJECT or ERROR), set with the strobe", 26)
    trigger_ack_pin: Pin = _pin("PLC handshake TRIGGER_ACK pulse", 12)
    handshake_active_high: bool = Field(True, description="level of an active handshake line")
    result_mode: Literal["pulse", "toggle"] = Field("pulse", description='RESULT: "pulse" (of result_width_ms) or '
                                                                         '"toggle" (each result flips it)')
    result_width_ms: float = Field(50.0, ge=1.0, le=10_000.0, description="RESULT / TRIGGER_ACK pulse width "
                                                                          "(longer than the PLC scan)")
    pass_fail_hold_ms: float = Field(0.0, ge=0.0, le=600_000.0, description="PASS/FAIL held this long "
                                                                            "(0 = until the next trigger)")

    def pins(self) -> dict[str, int]:
        """Every output pin in use, by key."""
        keys = ("reject_pin", "alarm_pin", "ready_pin", "busy_pin", "result_pin", "pass_pin", "fail_pin",
                "trigger_ack_pin")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


class JournalConfig(Spec):
    path: str = Field(f"{STATE_DIR}/journal.sqlite", min_length=1,
                      description="SQLite decision journal (a writable folder: the service's state directory)")
    synchronous: Literal["normal", "full"] = Field(
        "normal", description='"normal" (WAL, crash-safe) | "full" (also power-loss-safe, slower)')
    archive_dir: str = Field("", description='reject-image archive folder ("" = no archive)',
                             json_schema_extra={"example": f"{STATE_DIR}/archive"})
    archive_pass_every: int = Field(0, ge=0, le=1_000_000, description="also keep 1 of N passes (0 = rejects only)")
    archive_max_mb: float = Field(500.0, ge=0.0, le=1e7, description="archive size cap")
    archive_max_age_days: float = Field(30.0, ge=0.0, le=36500.0, description="archive age cap")
    keep_days: float = Field(0.0, ge=0.0, le=36500.0, description="journal rows older than this are pruned "
                                                                  "(0 = kept)")
    max_mb: float = Field(0.0, ge=0.0, le=1e7, description="journal size cap; oldest rows pruned first (0 = none)")


class ServiceConfig(Spec):
    camera_fault_grace_s: float = Field(30.0, ge=0.0, le=86400.0, description="keep feeding the watchdog this long "
                                                                              "while the camera is down")
    status_every_s: float = Field(60.0, ge=0.0, le=86400.0, description="log a status line this often (0 = never)")


class DriftConfig(Spec):
    enabled: bool = Field(True, description="watch PASS scores and image statistics for drift")
    window: int = Field(500, ge=20, le=1_000_000, description="rolling window of recent frames compared")
    warn_p: float = Field(1e-4, gt=0.0, lt=1.0, description="KS p-value of recent PASS scores vs calibration below "
                          "which the state is 'warning' (1e-4: no false warning in 100k stable frames, 0.01 "
                          "gave some: BENCHMARKS.md)")
    drift_p: float = Field(1e-7, gt=0.0, lt=1.0, description="KS p-value below which the state is 'drift' (1e-7: no "
                           "false drift in 100k stable frames: BENCHMARKS.md)")
    brightness_tolerance: float = Field(0.15, gt=0.0, le=10.0, description="relative change of mean brightness "
                                                                          "that counts as drift")
    sharpness_tolerance: float = Field(0.5, gt=0.0, le=100.0, description="relative change of sharpness (variance "
                                                                          "of the Laplacian) that counts as drift")
    alarm: bool = Field(False, description="raise the alarm in the 'drift' state")
    image_every: int = Field(10, ge=1, le=10_000, description="parts are handed to the watch in batches of N: "
                                                              "every score, and the image statistics of the Nth frame "
                                                              "(each costs ~0.1 ms of CPU shared with the frame path)")

    @model_validator(mode="after")
    def _order(self) -> "DriftConfig":
        if self.drift_p > self.warn_p:
            raise ValueError(f"drift_p ({self.drift_p}) must be <= warn_p ({self.warn_p})")
        return self


SECTIONS: dict[str, type] = {"bundle": BundleConfig, "camera": CameraConfig, "trigger": TriggerConfig,
                             "outputs": OutputsConfig, "journal": JournalConfig, "service": ServiceConfig,
                             "drift": DriftConfig, "panel": PanelSettings, "mqtt": MqttSettings}


class DeviceConfig(Spec):
    bundle: BundleConfig
    camera: CameraConfig = CameraConfig()
    trigger: TriggerConfig = TriggerConfig()
    outputs: OutputsConfig = OutputsConfig()
    journal: JournalConfig = JournalConfig()
    service: ServiceConfig = ServiceConfig()
    drift: DriftConfig = DriftConfig()
    panel: PanelSettings = PanelSettings()      # the operator station (a second service reads these two)
    mqtt: MqttSettings = MqttSettings()
    source_file: str = "<dict>"

    @model_validator(mode="after")
    def _cross_checks(self) -> "DeviceConfig":
        problems_ = cross_problems(self)
        if problems_:
            raise ValueError("\n".join(problems_))
        return self

    def replace(self, **sections) -> "DeviceConfig":
        """A validated copy with whole sections or ``section={key: value}`` changes."""
        doc = {k: getattr(self, k).model_dump() if k in SECTIONS else getattr(self, k) for k in type(self).model_fields}
        for sec, change in sections.items():
            doc[sec] = change if isinstance(change, Spec) or sec not in SECTIONS else {**doc[sec], **change}
        return type(self).model_validate(doc)


def cross_problems(cfg: DeviceConfig) -> list[str]:
    """What no single key can tell: options that exclude or need each other, pin collisions."""
    p = []
    b, cam, trig, out = cfg.bundle, cfg.camera, cfg.trigger, cfg.outputs
    if b.threshold is not None and b.target_frr is not None:
        p.append("[bundle].threshold and [bundle].target_frr: give one or the other, not both")
    if cam.source in ("folder", "video") and not cam.path:
        p.append(f"[camera].path: required when source = {cam.source!r} (the {cam.source} to replay)")
    if trig.mode == "gpio" and trig.pin is None:
        p.append("[trigger].pin: required when mode = 'gpio' (the photo-eye input pin)")
    seen: dict[int, str] = {}
    pins = ([("[trigger].pin", trig.pin)] if trig.mode == "gpio" else []) + \
        [(f"[outputs].{k}", v) for k, v in out.pins().items()]
    for name, pin in pins:
        if pin in seen:
            p.append(f"{name}: GPIO{pin} is already used by {seen[pin]}")
        seen.setdefault(pin, name)
    if cam.retry_max_s < cam.retry_initial_s:
        p.append(f"[camera].retry_max_s: must be >= retry_initial_s ({cam.retry_initial_s}), found {cam.retry_max_s}")
    return p


def parse_config(data: Mapping[str, Any], source_file: str = "<dict>") -> DeviceConfig:
    """Validate a parsed TOML document into a :class:`DeviceConfig` (relative paths taken from the
    config file's folder).

    Raises:
        ConfigError: listing every problem, one per line, each naming ``[section].key``.
    """
    lines = [f"[{sec}]: unknown section; expected one of {', '.join(SECTIONS)}"
             for sec in data if sec not in SECTIONS]
    lines += [f"{sec}: expected a table [{sec}], found {type_name(body)}"
              for sec, body in data.items() if sec in SECTIONS and not isinstance(body, dict)]
    doc = {sec: body for sec, body in data.items() if sec in SECTIONS and isinstance(body, dict)}
    sections = {}
    for sec, cls in SECTIONS.items():
        if sec not in doc and (sec != "bundle" or "bundle" in data):
            continue
        try:
            sections[sec] = cls.model_validate(doc.get(sec, {}))
        except ValidationError as exc:
            lines += problems(exc, cls, f"[{sec}].")
    if not lines:
        try:
            return _resolve_paths(DeviceConfig.model_validate({**sections, "source_file": source_file}), source_file)
        except ValidationError as exc:
            lines += [ln for e in exc.errors(include_url=False) for ln in e["msg"].removeprefix("Value error, ").split("\n")]
    raise ConfigError(f"{source_file}: {len(lines)} problem(s):\n  " + "\n  ".join(lines))


def _resolve_paths(cfg: DeviceConfig, source_file: str) -> DeviceConfig:
    """Relative paths are taken from the config file's folder."""
    if source_file.startswith("<"):
        return cfg
    base = Path(source_file).resolve().parent

    def r(p: str) -> str:
        return str(base / p) if p and not Path(p).is_absolute() else p

    return cfg.model_copy(update={
        "bundle": cfg.bundle.model_copy(update={"path": r(cfg.bundle.path)}),
        "camera": cfg.camera.model_copy(update={"path": r(cfg.camera.path)}),
        "journal": cfg.journal.model_copy(update={"path": r(cfg.journal.path),
                                                  "archive_dir": r(cfg.journal.archive_dir)}),
        "panel": cfg.panel.model_copy(update={"store": r(cfg.panel.store)}),
        "mqtt": cfg.mqtt.model_copy(update={k: r(getattr(cfg.mqtt, k)) for k in
                                            ("ca_file", "cert_file", "key_file", "password_file")})})


def read_config_text(path: str | Path) -> str:
    """The config file's text: a regular file of at most 1 MiB, UTF-8 (a byte-order mark is accepted)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: not a regular file (a config is a TOML text file)")
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {st.st_size} bytes; a config file is at most {MAX_CONFIG_BYTES} bytes")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from None


def load_config(path: str | Path) -> DeviceConfig:
    """Read and validate a TOML config file.

    Raises:
        ConfigError: missing or unreadable file, TOML syntax error (with line and column) or
            invalid content.
    """
    text = read_config_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: TOML nesting too deep") from None
    return parse_config(data, str(path))


def config_summary(cfg: DeviceConfig) -> dict[str, Any]:
    """The configuration as a plain dict (for ``check-config --json`` and the journal)."""
    return {s: getattr(cfg, s).model_dump(mode="json") for s in SECTIONS}


# ------------------------------------------------------------------------------------ environment
def check_environment(cfg: DeviceConfig, bundle: bool = True) -> list[str]:
    """What ``run`` needs from the machine, as problems (empty: ``run`` will start). Checks the
    journal folder, the archive folder, the pin factory and (``bundle``) that the bundle loads
    and runs with the configured threshold."""
    p = []
    j = Path(cfg.journal.path)
    if j.is_dir():
        p.append(f"[journal].path: {j} is a directory; expected a database file path")
    elif not _writable_dir(j.parent):
        p.append(f"[journal].path: folder {j.parent} does not exist or is not writable by this user")
    elif j.exists() and not os.access(j, os.R_OK | os.W_OK):
        p.append(f"[journal].path: {j} is not readable and writable by this user")
    if cfg.journal.archive_dir:
        a = Path(cfg.journal.archive_dir)
        if a.exists() and not a.is_dir():
            p.append(f"[journal].archive_dir: {a} exists and is not a folder")
        elif not _writable_dir(a if a.exists() else _existing_parent(a)):
            p.append(f"[journal].archive_dir: {a} cannot be created or written by this user")
    if cfg.outputs.pin_factory and not pin_factory_known(cfg.outputs.pin_factory):
        p.append(f"[outputs].pin_factory: unknown gpiozero pin factory {cfg.outputs.pin_factory!r}; expected "
                 f"'mock' or one of {', '.join(installed_pin_factories()) or 'the installed factories (none found)'}")
    if bundle:
        p += _bundle_problems(cfg)
    return p


def environment_warnings(cfg: DeviceConfig) -> list[str]:
    """What ``run`` survives but an operator should know (it would wait for it as a camera fault)."""
    w = []
    if cfg.camera.source == "folder" and not Path(cfg.camera.path).is_dir():
        w.append(f"[camera].path: folder {cfg.camera.path} not found (the service waits for it as a camera fault)")
    if cfg.camera.source == "video" and not Path(cfg.camera.path).is_file():
        w.append(f"[camera].path: video {cfg.camera.path} not found (the service waits for it as a camera fault)")
    return w


def _bundle_problems(cfg: DeviceConfig) -> list[str]:
    from device.errors import AnomalyError

    try:
        from device.detector import build_detector

        build_detector(cfg).close()
    except AnomalyError as exc:
        return [f"[bundle].path: {exc}"]
    return []


def _writable_dir(d: Path) -> bool:
    return d.is_dir() and os.access(d, os.W_OK | os.X_OK)


def _existing_parent(p: Path) -> Path:
    for parent in p.parents:
        if parent.exists():
            return parent
    return Path("/")


def installed_pin_factories() -> list[str]:
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group="gpiozero_pin_factories")})


def pin_factory_known(name: str) -> bool:
    return name.lower() == "mock" or name in installed_pin_factories() or name.lower() in installed_pin_factories()


# ------------------------------------------------------------------------------------ example file
def example_config() -> str:
    """``systemd/device.example.toml``: every key with its default (or an example, commented out)
    and its help, generated from the declarations above."""
    out = ["# /etc/anomaly-device/device.toml - every key with its default; commented keys are optional.",
           "# Generated by `anomaly-device config-example` from device/config.py (a test keeps it equal).",
           "# Check it with: anomaly-device check-config --config /etc/anomaly-device/device.toml",
           "# Relative paths are taken from this file's folder."]
    for sec, cls in SECTIONS.items():
        out += ["", f"[{sec}]"]
        for name, f in cls.model_fields.items():
            example = (f.json_schema_extra or {}).get("example")
            if f.is_required():
                line = f"{name} = {_toml(example)}"
            elif f.default in (None, "") and example is not None:
                line = f"# {name} = {_toml(example)}"
            else:
                line = f"{name} = {_toml(f.default)}"
            out.append(f"{line:<43} # {f.description}")
    return "\n".join(out) + "\n"


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)
