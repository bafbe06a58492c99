#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Firmware download benchmark: a firmware job through lodevd against `curl -o` from the same
emulator server in the same run.

For each size, the same file is fetched by curl (baseline, twice, the best kept) and by
lodevd running a job whose document carries sha256 and size, so lodevd hashes while it
streams and verifies before the installer runs. lodevd's time runs from queuing the job to the
installer starting: it includes the MQTT exchanges (IN_PROGRESS, fetching the job), the
durability syncs and the verification, so it is if anything pessimistic. Peak RSS is VmHWM of a
lodevd started afresh for each size: it must not grow with the file.

The resume measure (--resume-mib, 1024 by default; 0 skips it): a download of that size is cut
1 MiB before its end, and lodevd resumes it; the transfer helper hashes again the bytes already
there, in its own process, while lodevd's loop goes on. lodevd runs with
WATCHDOG_USEC=100 ms, so its loop sends WATCHDOG=1 every 50 ms or so when nothing holds it up;
the longest gap between two of them, from the cut to the installer, is the longest the loop
stood still (printed less the usual gap, as "longest stall"; on a busy machine it includes the
time lodevd waited for a core, and the fsync()s of the journal).

    tests/bench/firmware.py [--sizes-mib 64,512] [--resume-mib 1024]
"""

import argparse
import hashlib
import os
import shutil
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

HOOK = """#!/bin/sh
date +%s.%N > "{rec}/started"
exit 0
"""


def make_firmware(platform, size):
    fw_id = "bench-%d" % size
    path = os.path.join(platform.workdir, "firmware", fw_id)
    digest = hashlib.sha256()
    chunk = os.urandom(4 * 1024 * 1024)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            digest.update(chunk[:n])
            left -= n
    return fw_id, digest.hexdigest()


def vm_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def curl_seconds(url, out):
    t0 = time.monotonic()
    subprocess.run(["curl", "-s", "-f", "-o", out, url]
                   + (["--limit-rate", str(RATE)] if RATE else []), check=True)
    return time.monotonic() - t0


NO_SHA = False
RATE = 0  # bytes per second for both, 0 = loopback at full speed


class BenchDevice:
    """A lodevd of its own (private bus, the recording hook), online, for one measure."""

    def __init__(self, platform, scratch, rate=0, verbose=False, extra_env=None):
        self.work = tempfile.mkdtemp(prefix="lodev-bench-fw-", dir=scratch)
        self.rec = os.path.join(self.work, "rec")
        os.makedirs(self.rec)
        hook = os.path.join(self.work, "hook")
        with open(hook, "w") as f:
            f.write(HOOK.format(rec=self.rec))
        os.chmod(hook, 0o755)
        self.bus = lodevtest.Bus()
        config = os.path.join(self.work, "lodevd.conf")
        lodevtest.write_device_config(config, self.work, platform,
                                      firmware={"installer": hook, "reboot_command": "/bin/true"},
                                      transfers={"max_rate": rate})
        self.d = lodevtest.Daemon(self.bus, self.work, config, verbose=verbose)
        try:
            self.d.start(extra_env=extra_env)
            self.d.wait_online()
            self.thing = self.d.status()["thing_name"]
        except BaseException:
            self.stop()
            raise

    def installer_started(self):
        """When the installer started (its own clock), waiting for it."""
        started = os.path.join(self.rec, "started")
        lodevtest.wait_until(lambda: os.path.exists(started) and os.path.getsize(started), 600,
                             interval=0.01, what="the installer")
        with open(started) as f:
            return float(f.read())

    def succeeded(self, platform, job):
        lodevtest.wait_until(
            lambda: platform.job_execution(self.thing, job)["status"] == "SUCCEEDED", 60,
            what="SUCCEEDED")

    def stop(self):
        self.d.stop()
        self.bus.stop()
        shutil.rmtree(self.work, ignore_errors=True)


def run_size(platform, size, scratch):
    fw_id, sha = make_firmware(platform, size)
    out = os.path.join(scratch, "curl.out")
    base = min(curl_seconds(platform.firmware_url(fw_id), out) for _ in range(2))
    os.unlink(out)

    dev = BenchDevice(platform, scratch, rate=RATE)
    try:
        idle = vm_hwm_kib(dev.d.proc.pid)
        doc = {"operation": "firmware_update", "deploymentId": "bench", "firmwareId": fw_id,
               "firmwareUrl": "${lodev:firmware-url:%s}" % fw_id, "size": size}
        if not NO_SHA:
            doc["sha256"] = sha
        t0 = time.time()
        job = platform.queue_job(dev.thing, document=doc)
        t1 = dev.installer_started()
        dev.succeeded(platform, job)
        peak = vm_hwm_kib(dev.d.proc.pid)
    finally:
        dev.stop()
        os.unlink(os.path.join(platform.workdir, "firmware", fw_id))
    mib = size / 1048576
    took = t1 - t0
    if RATE:
        print("both capped at %.0f MiB/s (curl --limit-rate, transfers.max_rate):"
              % (RATE / 1048576))
    print("%5d MiB  curl -o %.2f s (%.0f MiB/s)  lodevd %.2f s (%.0f MiB/s%s)  "
          "ratio %.2f  lodevd RSS idle %.1f MiB, peak %.1f MiB"
          % (mib, base, mib / base, took, mib / took, "" if NO_SHA else ", sha256 verified",
             base / took, idle / 1024, peak / 1024),
          flush=True)


def run_resume(platform, size, scratch):
    fw_id, sha = make_firmware(platform, size)
    dev = BenchDevice(platform, scratch, verbose=True, extra_env={"WATCHDOG_USEC": "100000"})
    try:
        platform.cut_next_download(size - 1024 * 1024)
        job = platform.queue_job(dev.thing, document={
            "operation": "firmware_update", "deploymentId": "bench", "firmwareId": fw_id,
            "firmwareUrl": "${lodev:firmware-url:%s}" % fw_id, "size": size, "sha256": sha})
        lodevtest.wait_until(lambda: any(x["path"] == "/firmware/" + fw_id and x.get("cut")
                                         for x in platform.downloads()), 600, interval=0.01,
                             what="the cut download")
        t0 = time.monotonic()
        dev.installer_started()
        t1 = time.monotonic()
        dev.succeeded(platform, job)
        ticks = [t for t in dev.d.notify.watchdog if t0 <= t <= t1]
    finally:
        dev.stop()
        os.unlink(os.path.join(platform.workdir, "firmware", fw_id))
    gaps = sorted(b - a for a, b in zip(ticks, ticks[1:]))
    if not gaps:
        print("%5d MiB resume: no watchdog pings (lodevd without WATCHDOG_USEC support?)"
              % (size // 1048576))
        return
    usual = gaps[len(gaps) // 2]
    print("%5d MiB resume at %d MiB: cut to installer %.2f s, %d watchdog pings, usual gap "
          "%.0f ms, longest %.0f ms: longest stall of the loop %.0f ms"
          % (size // 1048576, (size - 1048576) // 1048576, t1 - t0, len(ticks), usual * 1000,
             gaps[-1] * 1000, max(0.0, gaps[-1] - usual) * 1000), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-mib", default="64,512")
    ap.add_argument("--no-sha", action="store_true", help="a document without sha256")
    ap.add_argument("--rate-mib", type=int, default=0,
                    help="cap both downloads at this many MiB/s, as a real link would")
    ap.add_argument("--resume-mib", type=int, default=1024,
                    help="the size of the resumed download (0: none)")
    args = ap.parse_args()
    global NO_SHA, RATE
    NO_SHA = args.no_sha
    RATE = args.rate_mib * 1048576
    scratch = tempfile.mkdtemp(prefix="lodev-bench-")
    try:
        with Platform.start(os.path.join(scratch, "platform")) as p:
            for s in filter(None, args.sizes_mib.split(",")):
                run_size(p, int(s) * 1024 * 1024, scratch)
            if args.resume_mib:
                run_resume(p, args.resume_mib * 1024 * 1024, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
