"""A threshold change as a versioned action: ``anomaly-device deploy [BUNDLE] --target-frr RATE``.

The threshold is part of a bundle version, so changing it goes the way every version goes: a new
version is derived from the active one (or from ``BUNDLE``: a folder or a stored version's digest
prefix) whose threshold is re-derived at ``RATE`` from the bundle's own calibration scores by
:meth:`device.bundle.Bundle.threshold_for` (:mod:`core.threshold`: at most ``floor(RATE * n)`` of
the ``n`` held-out normal scores above it), with a ``lineage`` record (parent digest, what
changed, when, by which command). Extractor, bank and calibration files are the parent's bytes.
It is then deployed like any version (:func:`device.versions.deploy`: verify, switch, reload,
confirm the new digest in the journal, switch back on failure), and ``rollback`` returns to the
parent.

A config that sets ``[bundle] threshold`` or ``target_frr`` overrides every version's threshold,
so a re-targeted version would change nothing: that is refused, naming the key.

Example:
    >>> out = retarget(load_config("/etc/anomaly-device/device.toml"), 0.005)   # doctest: +SKIP
    >>> out["threshold"]["old"], out["threshold"]["new"], out["deploy"]["status"]  # doctest: +SKIP
    (0.4806, 0.5211, 'confirmed')
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from device.errors import ConfigError

log = logging.getLogger(__name__)


def command(rate: float) -> str:
    """The command line recorded in the lineage and the versions index.

    Example:
        >>> command(0.005)
        'anomaly-device deploy --target-frr 0.005'
    """
    return f"anomaly-device deploy --target-frr {rate:g}"


def retargeted(parent, target_frr: float) -> tuple[dict[str, Any], dict[str, bytes], dict[str, Any]]:
    """Manifest body and files of ``parent`` (a loaded :class:`~device.bundle.Bundle`) with its
    threshold re-derived at ``target_frr``, and what changed. Nothing is written.

    Raises:
        BundleError: the rate is not in [0, 1), or the bundle has no calibration scores.
    """
    from core.threshold import describe_calibration

    new = parent.threshold_for(target_frr=target_frr, where="--target-frr")    # validates rate and scores
    rate = float(target_frr)
    body = parent.manifest.body()
    old = dict(body["threshold"])
    cal = parent.calibration_scores
    how = (f"target FRR {rate:g} on the bundle's {len(cal)} calibration scores, re-targeted on the device "
           f"(was: {str(old.get('method', ''))[:200]})")
    rec = describe_calibration(cal, rate, how)
    rec["value"] = new.value                                 # the same rule; Bundle.threshold_for is the reference
    prev_est = old.get("estimator") or {}      # where the scores came from stays; the estimate is re-done
    rec["estimator"].update({k: prev_est[k] for k in ("kind", "unbiased", "scores", "folds") if k in prev_est})
    rec["previous"] = {"value": old.get("value"), "target_frr": old.get("target_frr"),
                       "method": str(old.get("method", ""))[:200], "digest": parent.digest}
    change = {"old": old.get("value"), "new": new.value, "old_target_frr": old.get("target_frr"),
              "target_frr": rate, "n_calibration": int(len(cal)), "achieved_frr": rec["achieved_frr"]}
    if rec["estimator"].get("warning"):           # n cannot support the rate (core.threshold says how it is set)
        change["note"] = rec["estimator"]["warning"]
    from device.versions import lineage_record

    body.update(threshold=rec, lineage=lineage_record(
        parent.manifest.to_dict(), parent.digest, command(rate),
        f"threshold re-derived at target false-reject rate {rate:g} from the bundle's calibration scores "
        f"(core.threshold.calibrate_threshold); extractor, bank and calibration unchanged",
        changed={"threshold.value": [old.get("value"), new.value],
                 "threshold.target_frr": [old.get("target_frr"), rate]}))
    return body, {n: bytes(b) for n, b in parent.files.items()}, change


def refuse_config_override(cfg) -> None:
    """``[bundle] threshold`` / ``target_frr`` in the config decide instead of any version's threshold.

    Raises:
        ConfigError: naming the key and the file.
    """
    for key in ("threshold", "target_frr"):
        value = getattr(cfg.bundle, key, None)
        if value is not None:
            raise ConfigError(f"{cfg.source_file}: [bundle].{key} = {value} overrides the threshold of every "
                              f"version, so a re-targeted version would decide nothing differently; remove it "
                              f"from the config (the version's threshold then applies), or change it there and "
                              f"reload the service")


def retarget(cfg, target_frr: float, bundle: str | Path | None = None, deploy: bool = True,
             **deploy_kw) -> dict[str, Any]:
    """Derive, store and (``deploy``) activate a version of the active bundle (or ``bundle``) with
    its threshold at ``target_frr`` (module docstring). ``deploy_kw``: ``unit``, ``wait_s``, ``reload``
    of :func:`device.versions.deploy`.

    Returns:
        ``{"parent", "version", "digest", "path", "threshold": {"old", "new", "old_target_frr",
        "target_frr", "n_calibration", "achieved_frr"[, "note"]}, "deploy"}``; ``version`` is the
        parent itself (nothing new written) when its threshold already is at ``target_frr``.

    Raises:
        ConfigError: the config overrides the threshold; BundleError: as :func:`retargeted` and
            :func:`device.versions.deploy` (the previous version is active again).
    """
    from device.bundle import bundle_digest, load_bundle
    from device.versions import DIGEST_CHARS, Store, store_version
    from device.versions import deploy as do_deploy

    refuse_config_override(cfg)
    src = Store.for_config(cfg).locate(bundle) if bundle else Path(cfg.bundle.path)
    parent = load_bundle(src)
    body, files, change = retargeted(parent, target_frr)
    source = f"{command(float(target_frr))} from {parent.digest[:DIGEST_CHARS]}"
    if change["new"] == change["old"] and change["target_frr"] == change["old_target_frr"]:
        path, name = src, parent.digest[:DIGEST_CHARS]
        log.info("%s: threshold already %g at target FRR %g; no new version", src, change["new"], target_frr)
    else:
        path, name = store_version(cfg, body, files, source)
    out = {"parent": parent.digest, "version": name, "digest": bundle_digest(path), "path": str(path),
           "threshold": change, "deploy": None}
    if deploy:
        out["deploy"] = do_deploy(cfg, path, source=source, **deploy_kw)
    return out
