#!/usr/bin/env bash
# System packages the tests use when present (they skip cleanly without them):
#   systemd-analyze       -> tests/test_systemd_unit.py, tests/test_panel_unit.py (verify + offline security)
#   mosquitto             -> tests/test_mqtt.py, tests/test_panel_browser.py (a real broker on a free port)
#   chromium + chromedriver -> tests/test_panel_browser.py (the operator page in a real browser)
# Called from .ci/run before `make test`. Idempotent; installs only what is missing; does nothing
# when not root / no apt (then the tests skip with a reason). A mosquitto system service that the
# package starts is stopped again: the tests start their own broker on 127.0.0.1.
set -euo pipefail
missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ci-deps: missing ${missing[*]} and cannot apt-get install them; their tests will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [[ " ${missing[*]} " == *" mosquitto "* ]]; then
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
        systemctl disable --now mosquitto >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
        service mosquitto stop >/dev/null 2>&1 || true
    fi
fi
