# SPDX-License-Identifier: MIT
"""A RAUC 1.8 system without a bootloader, as in the shared RAUC recipe: two raw
slot images, a custom bootloader backend that keeps its state in a file, a private
session-type bus and `rauc service --override-boot-slot`, so that a reboot is a
restart of the service.

    env = RaucEnv(directory)         # PKI, system.conf, backend, slots; nothing runs
    env.start()                      # dbus-daemon + rauc service, booted = primary
    env.bundle("v2", payload)        # -> path of a signed bundle (plain format)
    env.bundle("x", payload, signer=env.make_untrusted_signer(), compatible="other")
    env.hook_env()                   # environment for a client (the hook): the bus
    env.reboot()                     # service restarted, booted = the backend's primary
    env.reboot(slot="A")             # booted = A whatever the primary (a fallback)
    env.boot_state()                 # {"primary": "B", "state_A": "good", ...}
    env.booted                       # the bootname the service was started with
    env.stop()                       # service, then bus; by PID, bounded

The slots are files slotA.img and slotB.img (16 MiB); payloads written by an install
can be compared with env.slot_path("B"). All logs are in the directory
(bus.log, rauc-service.log, backend.log). Needs root (the service mounts bundles
on loop devices), rauc, dbus-daemon, busctl, openssl, mksquashfs."""

import os
import shutil

from envutil import Process, make_pki, run, wait_until

COMPATIBLE = "test-device"

BACKEND = """#!/bin/sh
# A bootloader for RAUC's custom backend: state in {state} (key=value lines).
set -eu
state={state}
echo "$*" >>{log}
get() {{ sed -n "s/^$1=//p" "$state"; }}
put() {{
        tmp="$state.tmp"
        grep -v "^$1=" "$state" >"$tmp" || true
        printf '%s=%s\\n' "$1" "$2" >>"$tmp"
        mv "$tmp" "$state"
}}
case "$1" in
get-primary) get primary ;;
set-primary) put primary "$2" ;;
get-state) get "state_$2" ;;
set-state) put "state_$2" "$3" ;;
*) echo "backend: unknown verb $1" >&2; exit 1 ;;
esac
"""

SYSTEM_CONF = """[system]
compatible={compatible}
bootloader=custom
mountprefix={d}/mnt
statusfile={d}/status.raucs
bundle-formats=plain

[handlers]
bootloader-custom-backend={d}/backend.sh

[keyring]
path={ca}

[slot.rootfs.0]
device={d}/slotA.img
type=raw
bootname=A

[slot.rootfs.1]
device={d}/slotB.img
type=raw
bootname=B
"""


class RaucEnv:
    SLOT_SIZE = 16 * 1024 * 1024

    def __init__(self, directory):
        self.dir = os.path.abspath(directory)
        os.makedirs(os.path.join(self.dir, "mnt"), exist_ok=True)
        self.pki = make_pki(os.path.join(self.dir, "pki"), "dev")
        self.state_file = self.path("boot.state")
        with open(self.state_file, "w") as f:
            f.write("primary=A\nstate_A=good\nstate_B=good\n")
        backend = self.path("backend.sh")
        with open(backend, "w") as f:
            f.write(BACKEND.format(state=self.state_file, log=self.path("backend.log")))
        os.chmod(backend, 0o755)
        self.system_conf = self.path("system.conf")
        with open(self.system_conf, "w") as f:
            f.write(SYSTEM_CONF.format(d=self.dir, ca=self.pki.ca_cert, compatible=COMPATIBLE))
        for s in ("A", "B"):
            with open(self.slot_path(s), "wb") as f:
                f.truncate(self.SLOT_SIZE)
        self.bus_address = "unix:path=" + self.path("bus.sock")
        self.bus = None
        self.service = None
        self.booted = None

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def slot_path(self, bootname):
        return self.path("slot%s.img" % bootname)

    # The bus and the service.

    def env(self):
        """Environment of any RAUC client (rauc install/status, the hook)."""
        e = dict(os.environ)
        e["DBUS_STARTER_BUS_TYPE"] = "session"
        e["DBUS_SESSION_BUS_ADDRESS"] = self.bus_address
        return e

    def hook_env(self):
        """The variables a hook needs to find this RAUC (merge into run_hook's env)."""
        return {"DBUS_STARTER_BUS_TYPE": "session", "DBUS_SESSION_BUS_ADDRESS": self.bus_address}

    def start(self, slot=None):
        if self.bus is None:
            self.bus = Process(["dbus-daemon", "--session", "--address=" + self.bus_address,
                                "--nofork", "--nopidfile"], self.path("bus.log"))
            wait_until(lambda: os.path.exists(self.path("bus.sock")) or not self.bus.alive(),
                       10, "the bus socket")
            assert self.bus.alive(), "dbus-daemon died:\n" + self.bus.output()
        self.booted = slot or self.boot_state()["primary"]
        self.service = Process(["rauc", "-c", self.system_conf, "service",
                                "--override-boot-slot=" + self.booted],
                               self.path("rauc-service.log"), env=self.env())

        def on_bus():
            assert self.service.alive(), "rauc service died:\n" + self.service.output()
            return run(["busctl", "--address=" + self.bus_address, "status",
                        "de.pengutronix.rauc"], timeout=10).returncode == 0

        wait_until(on_bus, 15, "de.pengutronix.rauc on the bus")
        return self

    def stop_service(self):
        if self.service:
            self.service.stop()
            self.service = None

    def reboot(self, slot=None):
        """A simulated reboot: the service stops and starts again booted from SLOT,
        by default what the backend's primary says (a bootloader that follows it)."""
        self.stop_service()
        return self.start(slot)

    def stop(self):
        self.stop_service()
        if self.bus:
            self.bus.stop()
            self.bus = None

    # Bundles and state.

    def make_untrusted_signer(self):
        """A signer under a CA that is not in the keyring."""
        return make_pki(self.path("pki-other"), "other")

    def bundle(self, name, payload, version="2.0", signer=None, compatible=COMPATIBLE):
        """A plain bundle NAME.raucb holding PAYLOAD (bytes) as the rootfs image."""
        signer = signer or self.pki
        content = self.path("bundle-" + name)
        shutil.rmtree(content, ignore_errors=True)
        os.makedirs(content)
        with open(os.path.join(content, "rootfs.img"), "wb") as f:
            f.write(payload)
        with open(os.path.join(content, "manifest.raucm"), "w") as f:
            f.write("[update]\ncompatible=%s\nversion=%s\n\n[image.rootfs]\n"
                    "filename=rootfs.img\n" % (compatible, version))
        out = self.path(name + ".raucb")
        if os.path.exists(out):
            os.unlink(out)
        # Without -c: an untrusted signer must still produce a bundle.
        run(["rauc", "bundle", "--cert=" + signer.cert, "--key=" + signer.key, content, out],
            check=True, timeout=60)
        return out

    def boot_state(self):
        with open(self.state_file) as f:
            return dict(l.strip().split("=", 1) for l in f if "=" in l)

    def status(self):
        """`rauc status --output-format=json` as a dict."""
        import json

        r = run(["rauc", "status", "--output-format=json"], env=self.env(), timeout=30,
                check=True)
        return json.loads(r.stdout)

    def slot_starts_with(self, bootname, payload):
        with open(self.slot_path(bootname), "rb") as f:
            return f.read(len(payload)) == payload
