#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Upload benchmark for lodevd against the platform emulator.

Sends one large file (default 1 GiB, random bytes) through lodevd
(`lodevctl upload --wait`: copy into the spool, fsync, link request, PUT)
and, as the baseline in the same run, `curl -T` of the same file to a
freshly signed URL of the same emulator. Prints, as medians over a few
rounds: the time and throughput of each, lodevd's PUT alone (from the
transfer id to TransferFinished), the throughput ratio, and lodevd's peak
RSS (VmHWM) over the whole run. Both are bound by the emulator's Python
HTTP server (it hashes every byte twice) on the same cores, so read the
ratio.

    tests/bench/uploads.py [--size-mib N] [--rounds N]
"""

import argparse
import os
import shutil
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

MiB = 1024 * 1024


def vm_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def lodevd_round(bus, path, name):
    """(seconds from the call to TransferFinished, seconds of the PUT alone)."""
    t0 = time.monotonic()
    p = subprocess.Popen([lodevtest.LODEVCTL, "upload", path, "--name", name, "--wait"],
                         env=bus.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    line = p.stdout.readline()  # the id: the copy is durable
    t_id = time.monotonic()
    _, err = p.communicate(timeout=1800)
    t1 = time.monotonic()
    if p.returncode != 0 or not line.strip():
        raise SystemExit("lodevctl upload failed: %s" % err)
    return t1 - t0, t1 - t_id


def curl_round(platform, thing, path, name):
    url = platform.upload_link(thing, name, "application/octet-stream")
    t0 = time.monotonic()
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-T", path,
                        "-H", "Content-Type: application/octet-stream", url],
                       capture_output=True, text=True, timeout=1800)
    t1 = time.monotonic()
    if r.stdout.strip() != "200":
        raise SystemExit("curl failed: %s %s" % (r.stdout, r.stderr))
    return t1 - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mib * MiB

    pdir = tempfile.mkdtemp(prefix="lodev-bench-platform-")
    workdir = tempfile.mkdtemp(prefix="lodev-bench-")
    platform = Platform.start(pdir)
    bus = lodevtest.Bus()
    d = None
    try:
        config = os.path.join(workdir, "lodevd.conf")
        lodevtest.write_device_config(config, workdir, platform,
                                      transfers={"max_bytes": 2 * size + 64 * MiB})
        d = lodevtest.Daemon(bus, workdir, config, verbose=False).start()
        d.wait_online()
        thing = d.status()["thing_name"]
        path = os.path.join(workdir, "payload.bin")
        with open(path, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))

        ours, puts, theirs = [], [], []
        for i in range(args.rounds):
            total, put = lodevd_round(bus, path, "lodevd-%d.bin" % i)
            ours.append(total)
            puts.append(put)
            theirs.append(curl_round(platform, thing, path, "curl-%d.bin" % i))
        hwm = vm_hwm_kib(d.proc.pid)
        for u in platform.uploads():
            if u["size"] != size:
                raise SystemExit("an upload arrived with %d bytes" % u["size"])

        def mibs(t):
            return args.size_mib / t
        o, p, c = statistics.median(ours), statistics.median(puts), statistics.median(theirs)
        print("file: %d MiB, %d rounds (medians)" % (args.size_mib, args.rounds))
        print("lodevd, call to TransferFinished: %6.2f s  %7.1f MiB/s" % (o, mibs(o)))
        print("lodevd, PUT alone (id to end):    %6.2f s  %7.1f MiB/s" % (p, mibs(p)))
        print("curl -T, same emulator:           %6.2f s  %7.1f MiB/s" % (c, mibs(c)))
        print("throughput ratio lodevd/curl: end to end %.2f, PUT alone %.2f"
              % (c / o, c / p))
        print("lodevd peak RSS (VmHWM): %.1f MiB" % (hwm / 1024))
    finally:
        if d:
            d.stop()
        bus.stop()
        platform.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(pdir, ignore_errors=True)


if __name__ == "__main__":
    main()
