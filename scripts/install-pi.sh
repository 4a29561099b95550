#!/usr/bin/env bash
# Install the inspection service on Raspberry Pi OS Bookworm 64-bit (run as root from a checkout).
#
#   sudo scripts/install-pi.sh [--prefix /opt/anomaly-device] [--audit] [--panel] [--start] [--force]
#
# What it does (docs/DEVICE.md explains why; it can run again, e.g. after a git pull):
#   1. apt: python3-picamera2, python3-opencv, python3-numpy, python3-gpiozero, python3-lgpio, python3-pil,
#      python3-venv - Bookworm's picamera2/simplejpeg are built against numpy 1.x, so the
#      system numpy 1.24 stays and nothing here may pull numpy 2.
#   2. a venv with --system-site-packages at $PREFIX/venv; this package installed without
#      dependencies, plus the device extra's packages apt does not provide (setup.cfg: the
#      ai-edge-litert aarch64 wheel, pydantic), constrained to numpy<2.
#      --audit also installs tensorflow (aarch64 wheels exist; tensorflow-cpu has none).
#   3. the system user "anomaly" (groups video, gpio), /etc/anomaly-device/device.toml
#      (from systemd/device.example.toml, never overwritten), the unit, daemon-reload, enable.
#   --panel: the operator station too (docs/INTEGRATION.md): the panel extra, polkitd, the user
#      "anomaly-panel" (group anomaly), /var/lib/anomaly-panel, the bundles folder its actions
#      write (/var/lib/anomaly-device/bundles, anomaly:anomaly 2770), the polkit rule that lets it
#      reload the inspection service, and systemd/anomaly-panel.service (enabled).
set -euo pipefail

PREFIX=/opt/anomaly-device
AUDIT=0
PANEL=0
START=0
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        --audit) AUDIT=1; shift ;;
        --panel) PANEL=1; shift ;;
        --start) START=1; shift ;;
        --force) FORCE=1; shift ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
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
OPTIONAL="python3-picamera2 python3-lgpio"
[ "$PANEL" -eq 1 ] && OPTIONAL="$OPTIONAL polkitd"      # lets the panel's user reload the service
# Raspberry Pi OS only (plain Debian lacks them): the camera stack and the lgpio pin factory.
for p in $OPTIONAL; do
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
# An extra's requirements as setup.cfg declares them (declared once), less those given as arguments
# (provided by apt above).
extra_reqs() {
    python3 - "$SRC/setup.cfg" "$@" <<'PY'
import configparser, re, sys
cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
for req in cfg["options.extras_require"][sys.argv[2]].splitlines():
    req = req.strip()
    if req and re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0] not in sys.argv[3:]:
        print(req)
PY
}
mapfile -t DEVICE_REQS < <(extra_reqs device numpy opencv-python-headless gpiozero Pillow)
[ "${#DEVICE_REQS[@]}" -gt 0 ] || { echo "install-pi: no device requirements read from $SRC/setup.cfg" >&2; exit 1; }
"$PIP" install --quiet --upgrade pip
"$PIP" install --quiet --no-deps "$SRC"
"$PIP" install --quiet --constraint "$CONSTRAINTS" "${DEVICE_REQS[@]}"
if [ "$PANEL" -eq 1 ]; then
    mapfile -t PANEL_REQS < <(extra_reqs panel)
    [ "${#PANEL_REQS[@]}" -gt 0 ] || { echo "install-pi: no panel requirements read from $SRC/setup.cfg" >&2; exit 1; }
    "$PIP" install --quiet --constraint "$CONSTRAINTS" "${PANEL_REQS[@]}"
fi
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
cp "$SRC/docs/DEVICE.md" "$SRC/docs/INTEGRATION.md" "$PREFIX/share/" 2>/dev/null || true

echo "== user, config, unit"
getent group gpio >/dev/null || groupadd --system gpio
id anomaly >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/lib/anomaly-device \
    --shell /usr/sbin/nologin --user-group anomaly
usermod -a -G video,gpio anomaly
install -d -m 0755 /etc/anomaly-device
CONFIG=/etc/anomaly-device/device.toml
BUNDLES=/var/lib/anomaly-device/bundles      # the panel's actions write versions here (docs/INTEGRATION.md)
if [ ! -e "$CONFIG" ]; then
    install -m 0644 "$SRC/systemd/device.example.toml" "$CONFIG"
    if [ "$PANEL" -eq 1 ]; then     # bundles in their own folder, the only one the panel may write
        sed -i "s#^path = \"/var/lib/anomaly-device/bundle\"#path = \"$BUNDLES/active\"#" "$CONFIG"
    fi
    echo "install-pi: wrote $CONFIG (edit pins, delay, camera, then check-config)"
fi
sed "s#/opt/anomaly-device#$PREFIX#g" "$SRC/systemd/anomaly-device.service" > /etc/systemd/system/anomaly-device.service
UNITS="anomaly-device.service"
if [ "$PANEL" -eq 1 ]; then
    echo "== operator panel: user anomaly-panel, folders, polkit rule, unit"
    id anomaly-panel >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/lib/anomaly-panel \
        --shell /usr/sbin/nologin --user-group anomaly-panel
    usermod -a -G anomaly anomaly-panel                 # reads the journal and the archive (UMask=0027)
    [ -d /var/lib/anomaly-device ] || install -d -o anomaly -g anomaly -m 0755 /var/lib/anomaly-device
    install -d -o anomaly -g anomaly -m 2770 "$BUNDLES"
    install -d -o anomaly-panel -g anomaly-panel -m 0750 /var/lib/anomaly-panel
    install -d -m 0755 /etc/polkit-1/rules.d
    install -m 0644 "$SRC/systemd/anomaly-panel.polkit.rules" /etc/polkit-1/rules.d/50-anomaly-panel.rules
    sed "s#/opt/anomaly-device#$PREFIX#g" "$SRC/systemd/anomaly-panel.service" > /etc/systemd/system/anomaly-panel.service
    UNITS="$UNITS anomaly-panel.service"
    BUNDLE_PATH="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["bundle"]["path"])' \
                   "$CONFIG" 2>/dev/null || true)"
    case "$BUNDLE_PATH" in
        "$BUNDLES"/*) ;;
        *) echo "install-pi: $CONFIG: [bundle] path = \"$BUNDLE_PATH\"; the panel's actions (learn, deploy," \
                "rollback, threshold) need it inside $BUNDLES, e.g. \"$BUNDLES/active\"" >&2 ;;
    esac
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
else
    echo "install-pi: systemd is not running (chroot?): units installed, not reloaded" >&2
    START=0
fi
# shellcheck disable=SC2086
systemctl enable $UNITS
"$PREFIX/venv/bin/anomaly-device" check-config --config "$CONFIG" --no-bundle
if [ "$START" -eq 1 ]; then
    # shellcheck disable=SC2086
    systemctl restart $UNITS
    # shellcheck disable=SC2086
    systemctl --no-pager status $UNITS || true
fi
echo "install-pi: done. Deploy a bundle, then:"
echo "  sudo -u anomaly $PREFIX/venv/bin/anomaly-device deploy my-bundle/ --config $CONFIG"
echo "  sudo -u anomaly $PREFIX/venv/bin/anomaly-device selftest --config $CONFIG"
echo "  sudo systemctl start anomaly-device; journalctl -u anomaly-device -f"
if [ "$PANEL" -eq 1 ]; then
    echo "  sudo -u anomaly-panel $PREFIX/venv/bin/anomaly-device panel-user add NAME --config $CONFIG"
    echo "  sudo systemctl start anomaly-panel   # http://127.0.0.1:8080/ ([panel] bind opens it to the LAN)"
fi
