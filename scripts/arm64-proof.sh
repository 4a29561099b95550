#!/usr/bin/env bash
# Proof on the Pi's CPU architecture: Debian Bookworm arm64 root (debootstrap + qemu-user-static),
# the device package installed by scripts/install-pi.sh (apt numpy 1.x + OpenCV, venv with
# --system-site-packages, ai-edge-litert aarch64 wheel under numpy<2), then
# `anomaly-device selftest` on a replayed folder with the mock pin factory.
#
#   sudo scripts/arm64-proof.sh [ROOTFS_DIR]        (default /var/tmp/arm64-bookworm; reused when present)
#
# Needs root, network, and binfmt_misc (the script registers qemu-aarch64 via binfmt-support).
# The test bundle and frames are built on the host with the project's .venv (TensorFlow).
# Prints "ARM64 PROOF PASSED in N s" and the selftest JSON; exit 0 on success.
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
ROOTFS="${1:-/var/tmp/arm64-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
T0=$(date +%s)
[ "$(id -u)" -eq 0 ] || { echo "arm64-proof: run as root" >&2; exit 1; }

if ! command -v debootstrap >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap qemu-user-static binfmt-support
fi
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64

if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
    echo "== debootstrap arm64 bookworm -> $ROOTFS"
    debootstrap --arch=arm64 --variant=minbase --include=python3,ca-certificates,systemd,passwd,sed \
        bookworm "$ROOTFS" "$MIRROR"
fi
T_ROOT=$(date +%s)

echo "== test bundle and frames (host, TensorFlow)"
mkdir -p "$ROOTFS/proof"
WEIGHTS="${ANOMALY_SHARED:-$SRC/../shared}/weights/mobilenet_v2_0.35_224_no_top_imagenet.weights.h5"
"$SRC/.venv/bin/python" - "$ROOTFS/proof" <<'PY'
# Frames: smooth gradient "parts" (the normal product) and noise "parts" (far from every normal one).
import sys
from pathlib import Path

import cv2
import numpy as np

out = Path(sys.argv[1])
for d in ("train", "frames"):
    (out / d).mkdir(parents=True, exist_ok=True)
y, x = np.mgrid[0:48, 0:64].astype(np.float32)


def normal(i):
    ph = i * 0.37
    rgb = [128 + 100 * np.sin(x / 9 + ph), 128 + 100 * np.cos(y / 7 - ph), 128 + 60 * np.sin((x + y) / 11 + 2 * ph)]
    return np.clip(np.stack(rgb, -1), 0, 255).astype(np.uint8)


for i in range(24):
    cv2.imwrite(str(out / "train" / f"{i:03d}.png"), normal(i))
exp = []
for i, c in enumerate("NNDNDDNNNDDDN"):
    img = normal(i % 24) if c == "N" else np.random.default_rng(1000 + i).integers(0, 256, (48, 64, 3), np.uint8)
    cv2.imwrite(str(out / "frames" / f"{i:04d}.png"), img)
    exp.append("PASS" if c == "N" else "REJECT")
(out / "expected.txt").write_text(" ".join(exp))
(out / "device.toml").write_text(
    '[bundle]\npath = "/proof/bundle"\n[camera]\nsource = "folder"\npath = "/proof/frames"\nloop = true\n'
    '[outputs]\nreject_pin = 17\nreject_width_ms = 5\npin_factory = "mock"\n[journal]\npath = "/proof/journal.sqlite"\n')
PY
[ -f "$ROOTFS/proof/bundle/manifest.json" ] || "$SRC/.venv/bin/anomaly-train" fit --train "$ROOTFS/proof/train" \
    --out "$ROOTFS/proof/bundle" --size 32 --no-doc --weights "$WEIGHTS" --quant int8

echo "== install into the arm64 root with scripts/install-pi.sh"
rm -rf "$ROOTFS/proof/src"
mkdir -p "$ROOTFS/proof/src"
(cd "$SRC" && git ls-files -z | xargs -0 -I{} cp --parents {} "$ROOTFS/proof/src/")
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# Behind a TLS-intercepting proxy the host trusts extra CAs: trust them in the root too.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1 || true
fi
mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
trap 'umount "$ROOTFS/proc" 2>/dev/null || true' EXIT
# A clean environment: the host's pip settings (find-links, constraints) do not exist in the root.
CHROOT_ENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
            PIP_DEFAULT_TIMEOUT=180 PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
chroot "$ROOTFS" "${CHROOT_ENV[@]}" /bin/bash -c "cd /proof/src && bash scripts/install-pi.sh --force"
T_INSTALL=$(date +%s)

echo "== selftest (arm64 under qemu, mock pins)"
chroot "$ROOTFS" "${CHROOT_ENV[@]}" uname -m
chroot "$ROOTFS" "${CHROOT_ENV[@]}" /opt/anomaly-device/venv/bin/python -c \
    "import platform, numpy, cv2; print(platform.machine(), 'numpy', numpy.__version__, 'cv2', cv2.__version__)"
chroot "$ROOTFS" "${CHROOT_ENV[@]}" /opt/anomaly-device/venv/bin/anomaly-device selftest --config /proof/device.toml --frames 13 --json \
    | tee "$ROOTFS/proof/selftest.json"
T_END=$(date +%s)
python3 - "$ROOTFS/proof" <<'PY'
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
r = json.loads((d / "selftest.json").read_text().strip().splitlines()[-1])
exp = (d / "expected.txt").read_text().split()
assert r["ok"] and r["frames"] == 13, r
assert r["rejects"] == exp.count("REJECT"), (r["rejects"], exp)
print(f"selftest on arm64: {r['frames']} frames, {r['rejects']} rejects (expected {exp.count('REJECT')}), "
      f"{r['reject_edges']} mock reject pulses")
PY
echo "ARM64 PROOF PASSED in $((T_END - T0)) s (root $((T_ROOT - T0)) s, install $((T_INSTALL - T_ROOT)) s, selftest $((T_END - T_INSTALL)) s)"
