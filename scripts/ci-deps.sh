#!/usr/bin/env bash
# System packages the device tests use when present (they skip cleanly without them):
#   systemd-analyze  -> tests/test_systemd_unit.py (verify + offline security exposure)
# Called from .ci/run before `make test`. Idempotent; does nothing when already installed
# or when not root / no apt (then the tests skip with a reason).
set -euo pipefail
if command -v systemd-analyze >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ci-deps: systemd-analyze missing and cannot apt-get install it; unit tests will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends systemd >/dev/null
