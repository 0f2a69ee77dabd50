#!/usr/bin/env bash
# Install the Debian packages that `make test` and `make run` use, when missing:
# Mosquitto (broker + clients), VictoriaMetrics (line-protocol TSDB), sqlite3 (the
# CLI whose .recover salvages a corrupt store, where the library allows), the ARM
# toolchain and QEMU for the Node 2 firmware, libfaketime for the clock tests, and what
# LazyFS (the power-cut tests' FUSE file system, built from source) needs to build and mount.
set -euo pipefail
want=(mosquitto mosquitto-clients sqlite3 victoria-metrics curl gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm chromium faketime shellcheck
      g++ cmake make patch fuse3 libfuse3-dev libspdlog-dev libtoml11-dev)
missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
