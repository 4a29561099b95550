"""Daemon configuration: one TOML file, validated in full before anything starts.

Every unknown section or key and every bad value is reported, each with its
``[section].key`` name, what was expected and what was found, in one
:class:`~device.errors.ConfigError` (so an operator fixes the file in one pass).

Example file (``systemd/device.example.toml`` has every key)::

    [bundle]
    path = "/var/lib/anomaly-device/bundle"

    [camera]
    source = "picamera2"

    [outputs]
    reject_pin = 17
    reject_delay_ms = 400
    reject_width_ms = 60

Example:
    >>> cfg = parse_config({"bundle": {"path": "b"}, "camera": {"source": "folder", "path": "frames"}})
    >>> cfg.outputs.reject_width_ms, cfg.trigger.mode
    (50.0, 'free-run')
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, Mapping

from device.errors import ConfigError

log = logging.getLogger(__name__)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11 (the Pi's Bookworm has 3.11)
    import tomli as tomllib

SOURCES = ("folder", "video", "opencv", "picamera2")
TRIGGER_MODES = ("free-run", "gpio", "software")
SAFE_LEVELS = ("inactive", "active")
STREAMS = ("lores", "main")
SYNC_MODES = ("normal", "full")


@dataclasses.dataclass(frozen=True)
class BundleConfig:
    path: str = ""
    threads: int = 1
    threshold: float | None = None
    target_frr: float | None = None


@dataclasses.dataclass(frozen=True)
class CameraConfig:
    source: str = "folder"
    path: str = ""                     # folder or video file (folder, video)
    index: int = 0                     # USB camera index (opencv)
    loop: bool = False                 # replay sources start again at the end
    width: int = 640
    height: int = 480
    stream: str = "lores"              # picamera2 stream scored
    exposure_us: int = 0               # 0 = auto (picamera2); fix it on a line
    analogue_gain: float = 0.0         # 0 = auto
    awb_gains: tuple[float, float] | None = None  # (red, blue) fixes white balance
    roi: tuple[int, int, int, int] | None = None  # (x, y, w, h) crop before preprocessing
    read_timeout_s: float = 2.0        # live sources: a read slower than this is a fault
    retry_initial_s: float = 0.5
    retry_max_s: float = 10.0


@dataclasses.dataclass(frozen=True)
class TriggerConfig:
    mode: str = "free-run"
    rate_hz: float = 0.0               # free-run: 0 = as fast as frames come
    pin: int | None = None             # gpio: photo-eye input
    bounce_ms: float = 5.0
    pull_up: bool = True
    timeout_s: float = 1.0             # wait per trigger before feeding the watchdog again


@dataclasses.dataclass(frozen=True)
class OutputsConfig:
    reject_pin: int | None = None
    reject_active_high: bool = True
    reject_delay_ms: float = 0.0       # trigger -> reject edge (conveyor distance)
    reject_width_ms: float = 50.0
    safe_level: str = "inactive"       # reject line when stopped or faulted
    alarm_pin: int | None = None
    alarm_active_high: bool = True
    alarm_after_rejects: int = 0       # N rejects in a row raise the alarm (0 = never)
    alarm_on_camera_fault: bool = True
    alarm_on_model_error: bool = True
    pin_factory: str = ""              # gpiozero pin factory name ("mock", "lgpio"); "" = gpiozero default


@dataclasses.dataclass(frozen=True)
class JournalConfig:
    path: str = "journal.sqlite"
    synchronous: str = "normal"        # SQLite synchronous in WAL mode
    archive_dir: str = ""              # "" = no image archive
    archive_pass_every: int = 0        # keep 1 of N passes (0 = rejects only)
    archive_max_mb: float = 500.0
    archive_max_age_days: float = 30.0


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    camera_fault_grace_s: float = 30.0  # keep feeding the watchdog this long while retrying the camera
    status_every_s: float = 60.0        # log a status line this often (0 = never)


@dataclasses.dataclass(frozen=True)
class DeviceConfig:
    bundle: BundleConfig
    camera: CameraConfig
    trigger: TriggerConfig
    outputs: OutputsConfig
    journal: JournalConfig
    service: ServiceConfig
    source_file: str = "<dict>"


SECTIONS = {"bundle": BundleConfig, "camera": CameraConfig, "trigger": TriggerConfig,
            "outputs": OutputsConfig, "journal": JournalConfig, "service": ServiceConfig}
REQUIRED = {("bundle", "path")}

# key -> (kind, extra) for typed checks; kinds: int, float, bool, str, choice, pin, pair, roi
_KINDS: dict[tuple[str, str], tuple[str, Any]] = {
    ("bundle", "path"): ("str", None), ("bundle", "threads"): ("int", (1, 64)),
    ("bundle", "threshold"): ("float?", None), ("bundle", "target_frr"): ("float?", (0.0, 0.999999)),
    ("camera", "source"): ("choice", SOURCES), ("camera", "path"): ("str", None),
    ("camera", "index"): ("int", (0, 63)), ("camera", "loop"): ("bool", None),
    ("camera", "width"): ("int", (8, 10000)), ("camera", "height"): ("int", (8, 10000)),
    ("camera", "stream"): ("choice", STREAMS), ("camera", "exposure_us"): ("int", (0, 10_000_000)),
    ("camera", "analogue_gain"): ("float", (0.0, 64.0)), ("camera", "awb_gains"): ("pair", None),
    ("camera", "roi"): ("roi", None), ("camera", "read_timeout_s"): ("float", (0.0, 600.0)),
    ("camera", "retry_initial_s"): ("float", (0.001, 600.0)), ("camera", "retry_max_s"): ("float", (0.001, 3600.0)),
    ("trigger", "mode"): ("choice", TRIGGER_MODES), ("trigger", "rate_hz"): ("float", (0.0, 1000.0)),
    ("trigger", "pin"): ("pin", None), ("trigger", "bounce_ms"): ("float", (0.0, 1000.0)),
    ("trigger", "pull_up"): ("bool", None), ("trigger", "timeout_s"): ("float", (0.01, 60.0)),
    ("outputs", "reject_pin"): ("pin", None), ("outputs", "reject_active_high"): ("bool", None),
    ("outputs", "reject_delay_ms"): ("float", (0.0, 600_000.0)),
    ("outputs", "reject_width_ms"): ("float", (0.1, 60_000.0)),
    ("outputs", "safe_level"): ("choice", SAFE_LEVELS), ("outputs", "alarm_pin"): ("pin", None),
    ("outputs", "alarm_active_high"): ("bool", None), ("outputs", "alarm_after_rejects"): ("int", (0, 1_000_000)),
    ("outputs", "alarm_on_camera_fault"): ("bool", None), ("outputs", "alarm_on_model_error"): ("bool", None),
    ("outputs", "pin_factory"): ("str", None),
    ("journal", "path"): ("str", None), ("journal", "synchronous"): ("choice", SYNC_MODES),
    ("journal", "archive_dir"): ("str", None), ("journal", "archive_pass_every"): ("int", (0, 1_000_000)),
    ("journal", "archive_max_mb"): ("float", (0.0, 1e7)), ("journal", "archive_max_age_days"): ("float", (0.0, 36500.0)),
    ("service", "camera_fault_grace_s"): ("float", (0.0, 86400.0)), ("service", "status_every_s"): ("float", (0.0, 86400.0)),
}


def _tname(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(v), type(v).__name__)


def _check(kind: str, extra: Any, v: Any) -> tuple[Any, str | None]:
    """Return ``(value, problem)``; ``problem`` says expected vs found."""
    if kind in ("int", "pin"):
        if isinstance(v, bool) or not isinstance(v, int):
            return v, f"expected an integer, found {_tname(v)} {v!r}"
        lo, hi = extra if kind == "int" else (0, 53)
        if not lo <= v <= hi:
            return v, f"expected {lo}..{hi}, found {v}"
        return v, None
    if kind in ("float", "float?"):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return v, f"expected a number, found {_tname(v)} {v!r}"
        if extra is not None and not extra[0] <= v <= extra[1]:
            return v, f"expected {extra[0]}..{extra[1]}, found {v}"
        return float(v), None
    if kind == "bool":
        return (v, None) if isinstance(v, bool) else (v, f"expected true or false, found {_tname(v)} {v!r}")
    if kind == "str":
        return (v, None) if isinstance(v, str) else (v, f"expected a string, found {_tname(v)} {v!r}")
    if kind == "choice":
        return (v, None) if v in extra else (v, f"expected one of {', '.join(map(repr, extra))}, found {v!r}")
    if kind == "pair":
        if (not isinstance(v, list) or len(v) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v)):
            return v, f"expected [red_gain, blue_gain] (two positive numbers), found {v!r}"
        return (float(v[0]), float(v[1])), None
    if kind == "roi":
        if (not isinstance(v, list) or len(v) != 4
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)
                or v[0] < 0 or v[1] < 0 or v[2] <= 0 or v[3] <= 0):
            return v, f"expected [x, y, width, height] (integers, width and height > 0), found {v!r}"
        return tuple(v), None
    raise AssertionError(kind)


def parse_config(data: Mapping[str, Any], source_file: str = "<dict>") -> DeviceConfig:
    """Validate a parsed TOML document into a :class:`DeviceConfig`.

    Raises:
        ConfigError: listing every problem, one per line, each naming ``[section].key``.
    """
    problems: list[str] = []
    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for sec, body in data.items():
        if sec not in SECTIONS:
            problems.append(f"[{sec}]: unknown section; expected one of {', '.join(SECTIONS)}")
            continue
        if not isinstance(body, dict):
            problems.append(f"{sec}: expected a table [{sec}], found {_tname(body)}")
            continue
        fields = {f.name for f in dataclasses.fields(SECTIONS[sec])}
        for key, v in body.items():
            if key not in fields:
                problems.append(f"[{sec}].{key}: unknown key; expected one of {', '.join(sorted(fields))}")
                continue
            kind, extra = _KINDS[(sec, key)]
            value, problem = _check(kind, extra, v)
            if problem:
                problems.append(f"[{sec}].{key}: {problem}")
            else:
                values[sec][key] = value
    for sec, key in sorted(REQUIRED):
        if key not in values[sec] and not any(p.startswith(f"[{sec}].{key}:") for p in problems):
            problems.append(f"[{sec}].{key}: required key missing")
    _cross_checks(values, data, problems)
    if problems:
        raise ConfigError(f"{source_file}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    cfg = DeviceConfig(**{s: cls(**values[s]) for s, cls in SECTIONS.items()}, source_file=source_file)
    return _resolve_paths(cfg, source_file)


def _cross_checks(values: dict[str, dict[str, Any]], raw: Mapping[str, Any], problems: list[str]) -> None:
    b, cam, trig, out = values["bundle"], values["camera"], values["trigger"], values["outputs"]
    if b.get("threshold") is not None and b.get("target_frr") is not None:
        problems.append("[bundle].threshold and [bundle].target_frr: give one or the other, not both")
    src = cam.get("source", "folder")
    if src in ("folder", "video") and not cam.get("path") and "path" not in raw.get("camera", {}):
        problems.append(f"[camera].path: required when source = {src!r} (the {src} to replay)")
    if trig.get("mode") == "gpio" and trig.get("pin") is None and "pin" not in raw.get("trigger", {}):
        problems.append("[trigger].pin: required when mode = 'gpio' (the photo-eye input pin)")
    pins = [(f"[trigger].pin", trig.get("pin") if trig.get("mode") == "gpio" else None),
            ("[outputs].reject_pin", out.get("reject_pin")), ("[outputs].alarm_pin", out.get("alarm_pin"))]
    seen: dict[int, str] = {}
    for name, pin in pins:
        if pin is None:
            continue
        if pin in seen:
            problems.append(f"{name}: GPIO{pin} is already used by {seen[pin]}")
        seen[pin] = name
    if cam.get("retry_max_s", 10.0) < cam.get("retry_initial_s", 0.5):
        problems.append(f"[camera].retry_max_s: must be >= retry_initial_s ({cam.get('retry_initial_s', 0.5)}), "
                        f"found {cam.get('retry_max_s')}")


def _resolve_paths(cfg: DeviceConfig, source_file: str) -> DeviceConfig:
    """Relative paths are taken from the config file's folder."""
    if source_file.startswith("<"):
        return cfg
    base = Path(source_file).resolve().parent

    def r(p: str) -> str:
        return str(base / p) if p and not Path(p).is_absolute() else p

    return dataclasses.replace(
        cfg,
        bundle=dataclasses.replace(cfg.bundle, path=r(cfg.bundle.path)),
        camera=dataclasses.replace(cfg.camera, path=r(cfg.camera.path)),
        journal=dataclasses.replace(cfg.journal, path=r(cfg.journal.path), archive_dir=r(cfg.journal.archive_dir)))


def load_config(path: str | Path) -> DeviceConfig:
    """Read and validate a TOML config file.

    Raises:
        ConfigError: missing file, TOML syntax error (with line and column) or invalid content.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from exc
    return parse_config(data, str(path))


def config_summary(cfg: DeviceConfig) -> dict[str, Any]:
    """The configuration as a plain dict (for ``check-config`` and the journal)."""
    return {s: dataclasses.asdict(getattr(cfg, s)) for s in SECTIONS}
