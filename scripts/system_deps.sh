#!/usr/bin/env bash
# Installs the Debian/Ubuntu libraries tether needs (offscreen GL for MuJoCo, libusb for RealSense).
# Fast when they are present; uses sudo when not root; otherwise prints the exact command.
set -euo pipefail
packages=("$@")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "tether: install these system libraries with your package manager: ${missing[*]}" >&2; exit 1
fi
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "tether: missing system packages. As root run: apt-get install -y ${missing[*]}" >&2; exit 1
fi
echo "tether: installing system packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
