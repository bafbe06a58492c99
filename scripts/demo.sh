#!/bin/bash
# Sets up a fresh Debian 12 machine, builds lodevd and runs it end to end on
# this machine against the local platform emulator: a private system bus with
# lodevd's policy, the emulator's broker (mutual TLS) and service, lodevd
# provisioning itself by claim, going online, delivering observations and a
# file upload that the emulator records, and running a firmware job. Everything runs under a temporary directory and is
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
        [ -f "$work/platform.json" ] && tests/platform/lodev-platform --workdir "$work/platform" stop >/dev/null 2>&1
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
# lodevd starts the transfer helper of this build, not an installed one.
export LODEVD_TRANSFER_PATH="$PWD/build/daemon/lodevd-transfer"
echo "DBUS_SYSTEM_BUS_ADDRESS=$DBUS_SYSTEM_BUS_ADDRESS"

step "platform emulator (mosquitto with mutual TLS + the platform service)"
platform=tests/platform/lodev-platform
$platform --workdir "$work/platform" start >"$work/platform.json"
pids+=($(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$work/platform.json"))
field() { /usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/platform.json" "$1"; }
port=$(field mqtt_port)
echo "broker 127.0.0.1:$port, CA $(field ca_file), claim certificate $(field claim_cert)"

step "lodevd: first boot, provisioning by claim"
echo "GW-0001" >"$work/serial"
cat >"$work/lodevd.conf" <<CONF
platform = { endpoint = "127.0.0.1"; port = $port; ca_file = "$(field ca_file)"; keepalive = 60; };
provisioning = {
  claim_cert = "$(field claim_cert)";
  claim_key = "$(field claim_key)";
  parameters = { SerialNumber = "file:$work/serial"; Manufacturer = "Acme"; Name = "demo"; Model = "GW-1"; };
};
state_dir = "$work/state";
http = { allow_http = true; };
firmware = { installer = "$work/install-firmware"; };
CONF
# The example copy hook, installing into the demo's directory.
cat >"$work/install-firmware" <<HOOK
#!/bin/sh
LODEV_COPY_DEST="$work/installed-firmware.img" exec "$PWD/conf/hooks/copy" "\$@"
HOOK
chmod 0755 "$work/install-firmware"
build/daemon/lodevd --config "$work/lodevd.conf" 2>"$work/lodevd.log" &
pids+=($!)
for _ in $(seq 50); do build/client/lodevctl status >/dev/null 2>&1 && break; sleep 0.1; done
echo "lodevctl provision (waits for the result):"
build/client/lodevctl provision
build/client/lodevctl wait-online --timeout 30

step "lodevctl status"
build/client/lodevctl status

step "observations: lodevctl observe, then 200 through liblodev"
build/client/lodevctl observe --code 9750d5e5-d766-4793-a97d-16179578cc4d \
        --code-system http://lifeomic.com/fhir/devices --code-display "Battery Percentage" \
        --value 87 --unit %
build/lib/lodev-example-observe 200 | tail -n 1 | sed 's/^/200 submitted, the last with id /'
for _ in $(seq 100); do
        [ "$(build/client/lodevctl --json status | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["queued_observations"])')" = 0 ] && break
        sleep 0.2
done
build/client/lodevctl status | grep Observations

step "what the platform received"
$platform --workdir "$work/platform" observations | /usr/bin/python3 -c '
import json, sys
obs = json.load(sys.stdin)
print("%d observations recorded; the first:" % len(obs))
print(json.dumps(obs[0]["payload"], indent=2))
print("sent by", obs[0]["thing"])'

step "file upload: lodevctl upload --wait (5 MiB, content type from /etc/mime.types)"
head -c 5242880 /dev/urandom >"$work/ecg-strip.pdf"
build/client/lodevctl upload "$work/ecg-strip.pdf" --wait
$platform --workdir "$work/platform" uploads | /usr/bin/python3 -c '
import json, sys
ups = json.load(sys.stdin)
u = ups[-1]
print("%d upload(s) received; the last: %s" % (len(ups), ", ".join(
    "%s=%s" % (k, u[k]) for k in sorted(u) if k in ("file_name", "fileName", "content_type", "contentType", "size", "sha256"))))'
echo "sha256 of the file sent: $(sha256sum "$work/ecg-strip.pdf" | cut -d" " -f1)"

step "firmware job: the platform queues firmware_update, lodevd downloads and runs the copy hook"
head -c 2097152 /dev/urandom >"$work/firmware.img"
$platform --workdir "$work/platform" firmware add fw-demo "$work/firmware.img" >/dev/null
thing=$(build/client/lodevctl --json status | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["thing_name"])')
job=$($platform --workdir "$work/platform" jobs add "$thing" --firmware-id fw-demo |
        /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("jobId") or d.get("job_id") or d)')
echo "job $job queued for $thing"
build/client/lodevctl jobs --check
status=""
for _ in $(seq 150); do
        status=$($platform --workdir "$work/platform" jobs show "$thing" "$job" |
                /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin).get("status", ""))')
        [ "$status" = SUCCEEDED ] || [ "$status" = FAILED ] && break
        sleep 0.2
done
echo "status history: $($platform --workdir "$work/platform" jobs history "$thing" "$job" |
        /usr/bin/python3 -c 'import json,sys; print(" -> ".join(h.get("status", "?") for h in json.load(sys.stdin)))')"
cmp "$work/firmware.img" "$work/installed-firmware.img" && echo "installed file is byte-identical to the firmware"
[ "$status" = SUCCEEDED ]

step "restart: the stored identity is reused"
kill "${pids[-1]}"
wait "${pids[-1]}" 2>/dev/null || true
build/daemon/lodevd --config "$work/lodevd.conf" 2>>"$work/lodevd.log" &
pids+=($!)
for _ in $(seq 50); do build/client/lodevctl status >/dev/null 2>&1 && break; sleep 0.1; done
build/client/lodevctl wait-online --timeout 30
build/client/lodevctl status | head -n 3

step "lodevd log"
cat "$work/lodevd.log"
