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


def wait_total(platform, thing, broker_total, recorded_total, timeout=600):
    """Two moments: when the broker had received (and acknowledged) every
    message, and when the emulator's service had recorded every observation:
    end to end, its own processing included. The same for lodevd and the
    baseline."""
    deadline = time.monotonic() + timeout
    at_broker = None
    while True:
        if at_broker is None and platform.publish_stats(thing)["total"] >= broker_total:
            at_broker = time.monotonic()
        if at_broker is not None and platform.observation_count(thing) >= recorded_total:
            return at_broker, time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError("the emulator did not get %d observations" % recorded_total)
        time.sleep(0.02)


def counts(platform, thing):
    return platform.publish_stats(thing)["total"], platform.observation_count(thing)


def vm_hwm_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    """User plus system CPU time of a process so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_lodevd(bus, platform, d, thing, count, clients, start_value):
    pub_before, rec_before = counts(platform, thing)
    cpu_before = cpu_seconds(d.proc.pid)
    per = count // clients
    t0 = time.monotonic()
    # One client follows ObservationDelivered for the latency figures; the
    # others do not subscribe, as a plain application would not.
    procs = [subprocess.Popen([SUBMIT, "--count", str(per), "--start", str(start_value + i * per),
                               "--window", "64"] + (["--wait-delivered"] if i == 0 else []),
                              env=bus.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(clients)]
    outs = [p.communicate(timeout=900) for p in procs]
    tb, te = wait_total(platform, thing, pub_before + per * clients, rec_before + per * clients)
    cpu_us = (cpu_seconds(d.proc.pid) - cpu_before) * 1e6 / (per * clients)
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
    return per * clients / (tb - t0), per * clients / (te - t0), latencies, cpu_us


def run_baseline(platform, workdir, thing, count, start_value):
    ident = os.path.join(workdir, "state", "identity")
    pub_before, rec_before = counts(platform, thing)
    data = "".join(PAYLOAD % (start_value + i) + "\n" for i in range(count))
    t0 = time.monotonic()
    r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(platform.mqtt_port),
                        "--cafile", platform.ca_file, "--cert", os.path.join(ident, "device.pem"),
                        "--key", os.path.join(ident, "device.key"), "-i", thing, "-q", "1",
                        "-M", "100", "-t", "$aws/rules/FHIRIngest", "-l"],
                       input=data, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError("mosquitto_pub failed: %s" % r.stderr)
    tb, te = wait_total(platform, thing, pub_before + count, rec_before + count)
    return count / (tb - t0), count / (te - t0)


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
        ours, base, ours_e2e, base_e2e, lat, cpu = [], [], [], [], [], []
        value = 0
        for run in range(args.runs):
            # Baseline with lodevd stopped: the platform allows one
            # connection per client id, and both use the device's.
            d.stop()
            b_broker, b_e2e = run_baseline(platform, workdir, thing, args.count, value)
            base.append(b_broker)
            base_e2e.append(b_e2e)
            value += args.count
            d.start()
            d.wait_online()
            o_broker, o_e2e, latencies, cpu_us = run_lodevd(bus, platform, d, thing,
                                                            args.count, args.clients, value)
            cpu.append(cpu_us)
            value += args.count
            ours.append(o_broker)
            ours_e2e.append(o_e2e)
            lat += latencies
            print("run %d: until the emulator recorded all: lodevd %.0f/s, mosquitto_pub %.0f/s, "
                  "ratio %.2f; until the broker had all: lodevd %.0f/s, mosquitto_pub %.0f/s, "
                  "ratio %.2f" % (run + 1, o_e2e, b_e2e, o_e2e / b_e2e, o_broker, b_broker,
                                  o_broker / b_broker), flush=True)
        lat.sort()
        peak = vm_hwm_kb(d.proc.pid)
        print()
        print("observations per run: %d (%d clients through liblodev, publish_rate = 0, fsync on)"
              % (args.count, args.clients))
        med = statistics.median
        print("end to end, until the emulator recorded all:")
        print("  lodevd %.0f/s, mosquitto_pub %.0f/s; throughput ratio %.2f"
              % (med(ours_e2e), med(base_e2e),
                 med([a / b for a, b in zip(ours_e2e, base_e2e)])))
        print("until the broker had acknowledged all (the device side alone):")
        print("  lodevd %.0f/s, mosquitto_pub %.0f/s; throughput ratio %.2f"
              % (med(ours), med(base), med([a / b for a, b in zip(ours, base)])))
        if lat:
            print("submit-to-PUBACK latency: p50 %.1f ms, p99 %.1f ms (%d samples)"
                  % (lat[len(lat) // 2], lat[int(len(lat) * 0.99)], len(lat)))
        print("lodevd CPU per observation: %.1f µs (median of runs)" % med(cpu))
        print("lodevd peak RSS: %d KiB" % peak)
    finally:
        d.stop()
        bus.stop()
        platform.stop()


if __name__ == "__main__":
    main()
