#!/bin/bash
# Installs what lodevd needs to build, test and run its demo on Debian 12,
# and creates group lodev (as systemd-sysusers would from systemd/). Idempotent.
set -euo pipefail

packages=(
        meson ninja-build pkg-config gcc
        libmosquitto-dev libcurl4-openssl-dev libssl-dev libjson-c-dev libsystemd-dev
        libconfig-dev libseccomp-dev scdoc mandoc systemd
        mosquitto mosquitto-clients mosquitto-dev dbus-daemon dbus
        python3-paho-mqtt python3-pytest python3-cryptography python3-dbus
        curl openssl util-linux iproute2 valgrind man-db media-types
        # The lodevctl completion: its install directory (pkg-config) and its test.
        bash-completion
        # The installer hook tests (tests/installers): RAUC and SWUpdate as the
        # shared recipes run them, without a bootloader.
        rauc squashfs-tools swupdate cpio grub-common
        # The Debian packages (with debian/control's Build-Depends above) and their test.
        build-essential debhelper dpkg-dev lintian git
        # The system test (tests/system): those packages booted in a Debian 12 root
        # made with mmdebstrap under systemd-nspawn.
        mmdebstrap systemd-container
        # The fuzz targets (tests/fuzz): Debian's clang with libFuzzer and the sanitizers.
        clang libclang-rt-14-dev llvm
)

missing=()
for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and npm (the emulator's fidelity test) may come from another
# packaging that bundles npm; install Debian's only when the commands are missing.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
        echo "setup: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The packages' build dependencies, from debian/control.
source_dir="$(dirname "$0")/.."
if [ -f "$source_dir/debian/control" ] &&
        ! (cd "$source_dir" && dpkg-checkbuilddeps) >/dev/null 2>&1; then
        echo "setup: installing the build dependencies of debian/control"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        (cd "$source_dir" && apt-get build-dep -y -qq ./ >/dev/null)
fi

getent group lodev >/dev/null || groupadd --system lodev
# The user lodevd.service runs as (systemd/lodevd.sysusers.conf).
getent passwd lodevd >/dev/null ||
        useradd --system --user-group --home-dir /var/lib/lodevd --no-create-home \
                --shell /usr/sbin/nologin --comment "LifeOmic device agent" lodevd
