"""Property-based fuzzing of what enters a decision: device configs and bundle manifests.

Every generated input is either accepted — and then every value that reaches a decision is
usable (finite, in range) so nothing can fail open — or refused with a ConfigError/BundleError
naming a key, never another exception (a traceback). Bounded examples and a fixed seed
(``derandomize``) keep CI time predictable.
"""
from __future__ import annotations

import copy
import json
import math
import os
import stat

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.decision import Decision, decide
from device.bundle import load_bundle, npy_bytes, write_bundle
from device.config import SECTIONS, DeviceConfig, check_environment, load_config, parse_config
from device.errors import BundleError, ConfigError
from device.manifest import InputSpec, Manifest

FUZZ = settings(max_examples=150, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 12, 10 ** 12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), kids, max_size=3)),
                      max_leaves=6)
KNOWN = {sec: list(cls.model_fields) for sec, cls in SECTIONS.items()}


@st.composite
def configs(draw):
    doc = {"bundle": {"path": "bundle"}}
    for sec in draw(st.lists(st.sampled_from([*KNOWN, "extra"]), max_size=4, unique=True)):
        body = doc.setdefault(sec, {})
        for _ in range(draw(st.integers(0, 4))):
            key = draw(st.sampled_from(KNOWN.get(sec, ["x"]) + ["bogus_key"]))
            body[key] = draw(values)
    if draw(st.booleans()):
        doc[draw(st.sampled_from(list(doc)))] = draw(values)       # a section that is not a table
    return doc


def _names_a_key(msg: str) -> bool:
    return any(f"[{sec}]" in msg or f"{sec}:" in msg for sec in [*SECTIONS, "extra"]) or "[" in msg


@FUZZ
@given(configs())
def test_config_is_accepted_usable_or_refused_naming_a_key(doc):
    try:
        cfg = parse_config(doc)
    except ConfigError as exc:
        assert _names_a_key(str(exc)), str(exc)
        return
    assert isinstance(cfg, DeviceConfig)
    b = cfg.bundle
    assert b.threshold is None or (math.isfinite(b.threshold) and b.threshold >= 0)
    assert b.target_frr is None or 0 <= b.target_frr < 1
    assert not (b.threshold is not None and b.target_frr is not None)
    pins = list(cfg.outputs.pins().values()) + ([cfg.trigger.pin] if cfg.trigger.mode == "gpio" else [])
    assert len(pins) == len(set(pins))
    for sec in SECTIONS:
        for v in getattr(cfg, sec).model_dump().values():
            assert not (isinstance(v, float) and not math.isfinite(v))


# ------------------------------------------------------------------------------------------- manifests
def _good_manifest() -> dict:
    return {"input": InputSpec(size=(32, 32), pixel_scale=1.0, pixel_offset=0.0).to_dict(),
            "extractor": {"file": "extractor.tflite", "quantization": "int8", "feature_normalize": "l2",
                          "input_shape": [32, 32, 3], "output_dim": 8},
            "backbone": {"weights": "random"},
            "scoring": {"method": "knn", "k": 1},
            "threshold": {"value": 0.5, "target_frr": 0.01}}


def _paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))


@st.composite
def mutated_manifests(draw):
    m = _good_manifest()
    paths = list(_paths(m))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        parent = m
        for k in path[:-1]:
            parent = parent.get(k) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            parent.pop(path[-1], None)
        else:
            parent[draw(st.text(min_size=1, max_size=6))] = draw(values)
    return m


@FUZZ
@given(mutated_manifests())
def test_manifest_is_accepted_usable_or_refused_naming_a_key(tmp_path, m):
    files = {"extractor.tflite": b"x" * 16, "bank.npy": npy_bytes(np.eye(8, dtype=np.float32)),
             "calibration_scores.npy": npy_bytes(np.linspace(0, 1, 5, dtype=np.float32))}
    dest = tmp_path / "b"
    try:
        write_bundle(dest, copy.deepcopy(m), files)
        b = load_bundle(dest)
    except BundleError as exc:
        assert ("manifest.json" in str(exc) and ": " in str(exc)) or "bank.npy" in str(exc), str(exc)
        return
    except TypeError as exc:                      # only for values JSON cannot hold at all
        assert "not JSON serialisable" in str(exc)
        return
    t = b.threshold
    assert math.isfinite(t.value) and t.value >= 0
    assert decide(float("nan"), t).decision is Decision.ERROR
    assert decide(None, t).decision is Decision.ERROR
    assert 1 <= b.k <= b.bank.shape[0]


@FUZZ
@given(st.binary(max_size=400))
def test_manifest_bytes_never_escape_as_tracebacks(text):
    try:
        Manifest.from_json(text)
    except BundleError:
        pass


def test_manifest_of_nan_written_by_hand_is_refused(tmp_path):
    dest = write_bundle(tmp_path / "b", _good_manifest(), {"extractor.tflite": b"x",
                                                          "bank.npy": npy_bytes(np.eye(8, dtype=np.float32))})
    text = (dest / "manifest.json").read_text()
    for bad in ("NaN", "Infinity", "-Infinity", "-1.0", "true", "[0.5]"):
        (dest / "manifest.json").write_text(text.replace('"value": 0.5', f'"value": {bad}'))
        with pytest.raises(BundleError, match="threshold.value|not a valid JSON number"):
            load_bundle(dest)


# ------------------------------------------------------------------------------------------- files
def test_config_file_faults(tmp_path):
    good = '[bundle]\npath = "b"\n'
    p = tmp_path / "bom.toml"
    p.write_bytes(b"\xef\xbb\xbf" + good.encode())
    assert load_config(p).bundle.path == str(tmp_path / "b")          # a UTF-8 BOM is accepted
    p = tmp_path / "deep.toml"
    p.write_text(good + "x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="deep.toml: TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config("/dev/zero")
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):    # no hang on a FIFO
        load_config(fifo)
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        f.truncate(2 << 20)
    with pytest.raises(ConfigError, match="at most 1048576 bytes"):
        load_config(big)
    (tmp_path / "bin.toml").write_bytes(b"[bundle]\npath = \"\xff\"\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(tmp_path / "bin.toml")


def test_environment_checks_catch_what_run_would_fail_on(tmp_path):
    base = {"bundle": {"path": str(tmp_path / "b")}, "camera": {"source": "folder", "path": str(tmp_path)}}
    ok = parse_config({**base, "journal": {"path": str(tmp_path / "j.sqlite")}})
    assert check_environment(ok, bundle=False) == []
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, stat.S_IRUSR | stat.S_IXUSR)
    cases = {
        "[journal].path: .* is a directory": {"journal": {"path": str(tmp_path / "adir")}},
        "[journal].path: folder .* does not exist": {"journal": {"path": str(tmp_path / "nope" / "j.sqlite")}},
        "[journal].archive_dir: .* exists and is not a folder": {"journal": {"path": str(tmp_path / "j.sqlite"),
                                                                              "archive_dir": str(tmp_path / "afile")}},
        r"\[outputs\].pin_factory: unknown gpiozero pin factory 'bogus'": {
            "journal": {"path": str(tmp_path / "j.sqlite")}, "outputs": {"pin_factory": "bogus"}},
        r"\[bundle\].path: .*bundle directory not found": {"journal": {"path": str(tmp_path / "j.sqlite")}},
    }
    if os.geteuid() != 0:      # root writes anywhere; the read-only folder case needs a normal user
        cases["[journal].path: folder .* is not writable"] = {"journal": {"path": str(ro / "j.sqlite")}}
    for needle, extra in cases.items():
        found = check_environment(parse_config({**base, **extra}), bundle="bundle" in needle)
        assert any(__import__("re").search(needle.replace("[", r"\[").replace("]", r"\]")
                                           if not needle.startswith(r"\[") else needle, f) for f in found), (needle, found)


def test_check_config_json_into_a_closed_pipe(tmp_path):
    import subprocess
    import sys

    p = tmp_path / "d.toml"
    p.write_text(f'[bundle]\npath = "b"\n[camera]\nsource = "folder"\npath = "{tmp_path}"\n'
                 f'[journal]\npath = "{tmp_path / "j.sqlite"}"\n')
    r = subprocess.run(f"{sys.executable} -m device.cli check-config --no-bundle --json --config {p} | head -1",
                       shell=True, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "{" and "BrokenPipeError" not in r.stderr and "Traceback" not in r.stderr
