#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Start-up and idle benchmark for lodevd against the platform emulator.

Prints, as medians over a few starts of an already provisioned device: the
time from process start to READY=1 and to online (both from the
NOTIFY_SOCKET messages lodevd sends), lodevd's RSS once idle online, and
its wakeups while idle, counted with strace -c over a minute (each return
of epoll_wait is one wakeup; the keep-alive timer is part of them and is
printed apart). The baseline for the times is mosquitto_sub connecting with
the same identity to the same broker and getting its CONNACK, in the same
run.

    tests/bench/startup.py [--starts N] [--idle-seconds S]
"""

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "platform"))
os.environ.setdefault("LODEV_BUILD_DIR", os.path.join(HERE, "..", "..", "build"))
os.environ.setdefault("LODEV_SOURCE_DIR", os.path.join(HERE, "..", ".."))

import lodevtest  # noqa: E402
from lodev_platform import Platform  # noqa: E402


def start_timed(bus, workdir, config):
    """Starts lodevd; returns (process, seconds to READY=1, seconds to online)."""
    path = os.path.join(workdir, "bench-notify")
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    env = bus.env()
    env["NOTIFY_SOCKET"] = path
    t0 = time.monotonic()
    proc = subprocess.Popen([lodevtest.LODEVD, "--config", config], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = online = None
    try:
        while online is None:
            msg = sock.recv(4096).decode()
            now = time.monotonic() - t0
            if "READY=1" in msg and ready is None:
                ready = now
            if re.search(r"^STATUS=online", msg, re.M):
                online = now
    finally:
        # Keep draining in the background is not needed once online: lodevd
        # sends STATUS only on changes, and an idle device has none.
        sock.close()
    return proc, ready, online


def mosquitto_sub_connack(platform, ident, thing):
    t0 = time.monotonic()
    r = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(platform.mqtt_port),
                        "--cafile", platform.ca_file, "--cert", os.path.join(ident, "device.pem"),
                        "--key", os.path.join(ident, "device.key"), "-i", thing,
                        "-t", thing, "-E"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("mosquitto_sub: %s" % r.stderr)
    return time.monotonic() - t0


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def idle_wakeups(pid, seconds):
    out = tempfile.mktemp(prefix="lodev-strace-")
    st = subprocess.Popen(["strace", "-f", "-c", "-o", out, "-p", str(pid)],
                          stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    st.terminate()
    st.wait()
    calls = {}
    with open(out) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and fields[-1].isidentifier() and fields[3].isdigit():
                calls[fields[-1]] = int(fields[3])
    os.unlink(out)
    return calls


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--idle-seconds", type=int, default=60)
    args = ap.parse_args()

    pdir = tempfile.mkdtemp(prefix="lodev-bench-platform-")
    workdir = tempfile.mkdtemp(prefix="lodev-bench-")
    platform = Platform.start(pdir)
    bus = lodevtest.Bus()
    config = os.path.join(workdir, "lodevd.conf")
    lodevtest.write_device_config(config, workdir, platform, log_level="notice",
                                  platform={"keepalive": 1200})
    proc = None
    try:
        # First boot provisions; the measured starts reuse the identity.
        proc, ready, online = start_timed(bus, workdir, config)
        print("first boot (provisioning included): READY=1 %.1f ms, online %.1f ms"
              % (ready * 1000, online * 1000))
        ident = os.path.join(workdir, "state", "identity")
        with open(os.path.join(ident, "thing-name")) as f:
            thing = f.read().strip()
        readies, onlines, subs = [], [], []
        for _ in range(args.starts):
            proc.terminate()
            proc.wait(timeout=15)
            time.sleep(1.1)  # one CONNECT per second per client id
            subs.append(mosquitto_sub_connack(platform, ident, thing))
            time.sleep(1.1)
            proc, ready, online = start_timed(bus, workdir, config)
            readies.append(ready)
            onlines.append(online)
        print("starts of a provisioned device: %d" % args.starts)
        print("  to READY=1:  median %.1f ms" % (statistics.median(readies) * 1000))
        print("  to online:   median %.1f ms" % (statistics.median(onlines) * 1000))
        print("  mosquitto_sub to CONNACK (baseline): median %.1f ms; ratio online/baseline %.2f"
              % (statistics.median(subs) * 1000, statistics.median(onlines) / statistics.median(subs)))
        time.sleep(2)
        print("idle RSS online: %d KiB" % rss_kb(proc.pid))
        calls = idle_wakeups(proc.pid, args.idle_seconds)
        per_min = 60.0 / args.idle_seconds
        print("idle over %d s (keepalive 1200 s, no watchdog):" % args.idle_seconds)
        print("  wakeups (epoll_wait returns): %.1f per minute"
              % (calls.get("epoll_wait", 0) * per_min))
        print("  of them keep-alive timer checks (timerfd_settime): %.1f per minute"
              % (calls.get("timerfd_settime", 0) * per_min))
        print("  all syscalls: %s" % ", ".join("%s %d" % kv for kv in sorted(calls.items())))
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=15)
        bus.stop()
        platform.stop()


if __name__ == "__main__":
    main()
