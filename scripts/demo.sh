#!/bin/bash
# Sets up a fresh Debian 12 machine, builds lodevd and runs it end to end on
# this machine: a private system bus with lodevd's policy, the daemon, and
# lodevctl talking to it. Everything runs under a temporary directory and is
# stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
if [ ! -f build/build.ninja ]; then
        meson setup build --prefix=/usr >/dev/null
fi
ninja -C build >/dev/null

work=$(mktemp -d /tmp/lodev-demo-XXXXXX)
chmod 0755 "$work"
pids=()
cleanup() {
        for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
        wait 2>/dev/null || true
        rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "private system bus with lodevd's policy"
sed -e "s|@SOCKET@|$work/bus|" -e "s|@POLICY@|$PWD/systemd/com.lifeomic.Device1.conf|" \
        >"$work/bus.conf" <<'XML'
<busconfig>
  <type>system</type>
  <listen>unix:path=@SOCKET@</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <include>@POLICY@</include>
</busconfig>
XML
dbus-daemon --config-file "$work/bus.conf" --nofork --print-address=3 3>"$work/bus.address" 2>/dev/null &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/bus.address" ] && break; sleep 0.1; done
export DBUS_SYSTEM_BUS_ADDRESS=$(head -n1 "$work/bus.address")
echo "DBUS_SYSTEM_BUS_ADDRESS=$DBUS_SYSTEM_BUS_ADDRESS"

step "lodevd"
printf -- '-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n' >"$work/ca.pem"
cat >"$work/lodevd.conf" <<CONF
platform = { endpoint = "127.0.0.1"; port = 8883; ca_file = "$work/ca.pem"; };
state_dir = "$work/state";
CONF
build/daemon/lodevd --config "$work/lodevd.conf" 2>"$work/lodevd.log" &
pids+=($!)
for _ in $(seq 50); do build/client/lodevctl status >/dev/null 2>&1 && break; sleep 0.1; done

step "lodevctl status"
build/client/lodevctl status
step "lodevctl --json status"
build/client/lodevctl --json status

step "lodevd log"
cat "$work/lodevd.log"
