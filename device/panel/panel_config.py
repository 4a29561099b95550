"""What the panel service reads: the device's whole validated config and the file it came from.

Kept apart from :mod:`device.panel.settings` (the section declarations, which
:mod:`device.config` imports) so that the config never imports itself back.

Example:
    >>> cfg = load_panel_config("/etc/anomaly-device/device.toml")     # doctest: +SKIP
    >>> cfg.panel.bind, cfg.mqtt.enabled                                # doctest: +SKIP
    ('127.0.0.1:8080', False)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from device.config import load_config
from device.panel.settings import MqttSettings, PanelSettings


@dataclasses.dataclass(frozen=True)
class PanelConfig:
    """What the panel reads from the device's config file: the whole validated config (its
    ``[panel]`` and ``[mqtt]`` sections included) and the file it came from."""

    device: Any                    # device.config.DeviceConfig
    source_file: str
    panel: PanelSettings           # device.panel
    mqtt: MqttSettings             # device.mqtt


def load_panel_config(path: str | Path) -> PanelConfig:
    """Read and validate the device config file, ``[panel]`` and ``[mqtt]`` included.

    Raises:
        ConfigError: unreadable file, TOML syntax error, or every problem of every section.
    """
    cfg = load_config(path)
    return PanelConfig(device=cfg, source_file=str(path), panel=cfg.panel, mqtt=cfg.mqtt)
