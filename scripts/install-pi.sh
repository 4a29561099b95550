#!/usr/bin/env bash
# Install the inspection service on Raspberry Pi OS Bookworm 64-bit (run as root from a checkout).
#
#   sudo scripts/install-pi.sh [--prefix /opt/anomaly-device] [--audit] [--start] [--force]
#
# What it does (docs/DEVICE.md explains why):
#   1. apt: python3-picamera2, python3-opencv, python3-numpy, python3-gpiozero, python3-lgpio, python3-pil,
#      python3-venv - Bookworm's picamera2/simplejpeg are built against numpy 1.x, so the
#      system numpy 1.24 stays and nothing here may pull numpy 2.
#   2. a venv with --system-site-packages at $PREFIX/venv; this package installed without
#      dependencies, plus the ai-edge-litert aarch64 wheel constrained to numpy<2.
#      --audit also installs tensorflow (aarch64 wheels exist; tensorflow-cpu has none).
#   3. the system user "anomaly" (groups video, gpio), /etc/anomaly-device/device.toml
#      (from systemd/device.example.toml, never overwritten), the unit, daemon-reload, enable.
set -euo pipefail

PREFIX=/opt/anomaly-device
AUDIT=0
START=0
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        --audit) AUDIT=1; shift ;;
        --start) START=1; shift ;;
        --force) FORCE=1; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "install-pi: unknown option $1" >&2; exit 2 ;;
    esac
done

SRC="$(cd "$(dirname "$0")/.." && pwd)"
[ "$(id -u)" -eq 0 ] || { echo "install-pi: run as root (sudo)" >&2; exit 1; }
. /etc/os-release
ARCH="$(uname -m)"
if [ "${VERSION_CODENAME:-}" != "bookworm" ] || [ "$ARCH" != "aarch64" ]; then
    if [ "$FORCE" -ne 1 ]; then
        echo "install-pi: expected Raspberry Pi OS Bookworm 64-bit (aarch64), found ${PRETTY_NAME:-?} on $ARCH;" \
             "use --force to try anyway" >&2
        exit 1
    fi
fi

echo "== apt packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
PKGS="python3-venv python3-pip python3-numpy python3-opencv python3-gpiozero python3-pil"
# Raspberry Pi OS only (plain Debian lacks them): the camera stack and the lgpio pin factory.
for p in python3-picamera2 python3-lgpio; do
    if apt-cache show "$p" >/dev/null 2>&1; then
        PKGS="$PKGS $p"
    else
        echo "install-pi: $p not available from apt (not Raspberry Pi OS?): skipped" >&2
    fi
done
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $PKGS

echo "== venv $PREFIX/venv (system site packages: numpy 1.x, cv2, picamera2, gpiozero, lgpio)"
mkdir -p "$PREFIX/share"
python3 -m venv --system-site-packages "$PREFIX/venv"
PIP="$PREFIX/venv/bin/pip"
CONSTRAINTS="$PREFIX/share/constraints.txt"
echo "numpy<2" > "$CONSTRAINTS"
"$PIP" install --quiet --upgrade pip
"$PIP" install --quiet --no-deps "$SRC"
"$PIP" install --quiet --constraint "$CONSTRAINTS" "ai-edge-litert>=1.2"
if [ "$AUDIT" -eq 1 ]; then
    "$PIP" install --quiet --constraint "$CONSTRAINTS" "tensorflow>=2.16" matplotlib
fi
"$PREFIX/venv/bin/python" - <<'PY'
from importlib.metadata import version
import cv2, gpiozero, numpy  # noqa: F401
from ai_edge_litert.interpreter import Interpreter  # noqa: F401
assert numpy.__version__.startswith("1."), f"numpy {numpy.__version__}: picamera2 needs numpy 1.x on Bookworm"
print(f"numpy {numpy.__version__}, OpenCV {cv2.__version__}, gpiozero {version('gpiozero')}, "
      f"ai-edge-litert {version('ai-edge-litert')}: OK")
PY
cp "$SRC/docs/DEVICE.md" "$PREFIX/share/DEVICE.md" 2>/dev/null || true

echo "== user, config, unit"
getent group gpio >/dev/null || groupadd --system gpio
id anomaly >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/lib/anomaly-device \
    --shell /usr/sbin/nologin --user-group anomaly
usermod -a -G video,gpio anomaly
install -d -m 0755 /etc/anomaly-device
if [ ! -e /etc/anomaly-device/device.toml ]; then
    install -m 0644 "$SRC/systemd/device.example.toml" /etc/anomaly-device/device.toml
    echo "install-pi: wrote /etc/anomaly-device/device.toml (edit pins, delay, camera, then check-config)"
fi
sed "s#/opt/anomaly-device#$PREFIX#g" "$SRC/systemd/anomaly-device.service" > /etc/systemd/system/anomaly-device.service
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
else
    echo "install-pi: systemd is not running (chroot?): unit installed, not reloaded" >&2
    START=0
fi
systemctl enable anomaly-device.service
"$PREFIX/venv/bin/anomaly-device" check-config --config /etc/anomaly-device/device.toml --no-bundle
if [ "$START" -eq 1 ]; then
    systemctl restart anomaly-device.service
    systemctl --no-pager status anomaly-device.service || true
fi
echo "install-pi: done. Copy a bundle to /var/lib/anomaly-device/bundle, then:"
echo "  sudo -u anomaly $PREFIX/venv/bin/anomaly-device selftest --config /etc/anomaly-device/device.toml"
echo "  sudo systemctl start anomaly-device; journalctl -u anomaly-device -f"
