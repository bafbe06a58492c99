#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Observation throughput benchmark.

N observations are submitted through liblodev by a few concurrent clients
(tests/tools/lodev-submit) with publish_rate = 0, end to end until the
emulator has them all; the baseline is mosquitto_pub -l sending the same
N payloads at QoS 1 over the same TLS broker with the same device identity,
in the same run. Prints the throughput ratio (lodevd / mosquitto_pub),
submit-to-PUBACK latency p50/p99, and lodevd's peak RSS. Durability is on:
every submission is on disk (fsync) before its reply.

    tests/bench/observations.py [--count N] [--clients C] [--runs R]
"""

import argparse
import os
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

SUBMIT = os.path.join(lodevtest.BUILD_DIR, "tests", "lodev-submit")
PAYLOAD = ('{"value":%d,"unit":"/min","coding":[{"code":"8867-4",'
           '"system":"http://loinc.org","display":"Heart rate"}]}')


def wait_total(platform, thing, total, timeout=600):
    deadline = time.monotonic() + timeout
    while platform.publish_stats(thing)["total"] < total:
        if time.monotonic() > deadline:
            raise RuntimeError("the emulator did not get %d messages" % total)
        time.sleep(0.02)
    return time.monotonic()


def vm_hwm_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def run_lodevd(bus, platform, d, thing, count, clients, start_value):
    before = platform.publish_stats(thing)["total"]
    per = count // clients
    t0 = time.monotonic()
    # One client follows ObservationDelivered for the latency figures; the
    # others do not subscribe, as a plain application would not.
    procs = [subprocess.Popen([SUBMIT, "--count", str(per), "--start", str(start_value + i * per),
                               "--window", "64"] + (["--wait-delivered"] if i == 0 else []),
                              env=bus.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(clients)]
    outs = [p.communicate(timeout=900) for p in procs]
    t1 = wait_total(platform, thing, before + per * clients)
    for p, (_, err) in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError("lodev-submit failed: %s" % err[-500:])
    # Submit-to-PUBACK: the call's start to the ObservationDelivered signal.
    latencies = []
    for out, _ in outs:
        start = {}
        for line in out.splitlines():
            f = line.split()
            if f[0] == "DELIVERED":
                if f[1] in start:
                    latencies.append((int(f[2]) - start[f[1]]) / 1000.0)
            elif len(f) == 4:
                start[f[0]] = int(f[3])
    return per * clients / (t1 - t0), latencies


def run_baseline(platform, workdir, thing, count, start_value):
    ident = os.path.join(workdir, "state", "identity")
    before = platform.publish_stats(thing)["total"]
    data = "".join(PAYLOAD % (start_value + i) + "\n" for i in range(count))
    t0 = time.monotonic()
    r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(platform.mqtt_port),
                        "--cafile", platform.ca_file, "--cert", os.path.join(ident, "device.pem"),
                        "--key", os.path.join(ident, "device.key"), "-i", thing, "-q", "1",
                        "-M", "100", "-t", "$aws/rules/FHIRIngest", "-l"],
                       input=data, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError("mosquitto_pub failed: %s" % r.stderr)
    t1 = wait_total(platform, thing, before + count)
    return count / (t1 - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    pdir = tempfile.mkdtemp(prefix="lodev-bench-platform-")
    workdir = tempfile.mkdtemp(prefix="lodev-bench-")
    platform = Platform.start(pdir, throttle=False)
    bus = lodevtest.Bus()
    config = os.path.join(workdir, "lodevd.conf")
    lodevtest.write_device_config(config, workdir, platform, platform={"publish_rate": 0},
                                  log_level="notice")
    # Without --verbose: logging is not what is measured.
    d = lodevtest.Daemon(bus, workdir, config, verbose=False)
    try:
        d.start()
        d.wait_online()
        thing = d.status()["thing_name"]
        ours, base, lat = [], [], []
        value = 0
        for run in range(args.runs):
            # Baseline with lodevd stopped: the platform allows one
            # connection per client id, and both use the device's.
            d.stop()
            base.append(run_baseline(platform, workdir, thing, args.count, value))
            value += args.count
            d.start()
            d.wait_online()
            rate, latencies = run_lodevd(bus, platform, d, thing, args.count, args.clients, value)
            value += args.count
            ours.append(rate)
            lat += latencies
            print("run %d: lodevd %.0f obs/s, mosquitto_pub %.0f msg/s, ratio %.2f"
                  % (run + 1, rate, base[-1], rate / base[-1]), flush=True)
        lat.sort()
        peak = vm_hwm_kb(d.proc.pid)
        print()
        print("observations per run: %d (%d clients through liblodev, publish_rate = 0, fsync on)"
              % (args.count, args.clients))
        print("lodevd median:        %.0f observations/s" % statistics.median(ours))
        print("mosquitto_pub median: %.0f messages/s (QoS 1, same broker, same TLS identity)"
              % statistics.median(base))
        print("throughput ratio (lodevd / mosquitto_pub): %.2f (median of per-run ratios %.2f)"
              % (statistics.median(ours) / statistics.median(base),
                 statistics.median([a / b for a, b in zip(ours, base)])))
        if lat:
            print("submit-to-PUBACK latency: p50 %.1f ms, p99 %.1f ms (%d samples)"
                  % (lat[len(lat) // 2], lat[int(len(lat) * 0.99)], len(lat)))
        print("lodevd peak RSS: %d KiB" % peak)
    finally:
        d.stop()
        bus.stop()
        platform.stop()


if __name__ == "__main__":
    main()
