#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Transfers benchmark: what lodevd costs at rest and while it moves files, against the
baselines the project measures itself by, in one run, on one machine.

Rows (medians of --rounds runs each, a ratio beside each baseline):
  idle USS of lodevd online (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) vs
    mosquitto_sub's holding one TLS connection to the same broker with the same identity;
  a firmware download (--fw-mib, default 256 MiB) through a job with sha256 and size, from
    queuing the job to the installer starting, vs `curl -o` of the same file;
  CPU per GiB of that download (lodevd and its children, the transfer helper) vs `curl -o`
    plus `sha256sum`;
  a file upload (--up-mib, default 1 GiB), the PUT alone (transfer id to TransferFinished)
    vs `curl -T` to a freshly signed URL of the same emulator;
  p99 of one-at-a-time SubmitObservation round trips (tests/tools/lodev-submit --window 1)
    while a --big-mib firmware downloads at full speed vs idle;
  RSS of lodevd plus its children during that download: idle, peak, growth;
  the cost of starting the transfer helper: ms per transfer of a 1 KiB file through it vs
    `curl -o` of the same (only when the build has daemon/lodevd-transfer);
  idle wakeups per minute (epoll_wait returns, strace -c) with the watchdog on (30 s).

    tests/bench/transfers.py [--rounds 3] [--fw-mib 256] [--up-mib 1024] [--big-mib 1024]
                             [--idle-seconds 40]

The machine's load average is printed at the start and the end: the machine is shared.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "platform"))
os.environ.setdefault("LODEV_BUILD_DIR", os.path.join(HERE, "..", "..", "build"))
os.environ.setdefault("LODEV_SOURCE_DIR", os.path.join(HERE, "..", ".."))

import firmware as firmware_bench  # noqa: E402
import lodevtest  # noqa: E402
from lodev_platform import Platform  # noqa: E402

MiB = 1024 * 1024
HELPER = os.path.join(lodevtest.BUILD_DIR, "daemon", "lodevd-transfer")
SUBMIT = os.path.join(lodevtest.BUILD_DIR, "tests", "lodev-submit")
TICK = os.sysconf("SC_CLK_TCK")

HOOK = firmware_bench.HOOK


def load():
    return "load average %s" % " ".join(open("/proc/loadavg").read().split()[:3])


def memory_kib(pid):
    """(USS, PSS, RSS) from smaps_rollup. USS counts a library page only when no other process
    maps it: on a shared machine where other programs use libcurl's libraries it reads lower
    than on a gateway where lodevd alone does; PSS and RSS are printed beside it."""
    v = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            k, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                v[k] = int(rest.split()[0])
    return v["Private_Clean"] + v["Private_Dirty"], v["Pss"], v["Rss"]


def uss_kib(pid):
    return memory_kib(pid)[0]


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def pss_kib(pid):
    try:
        return memory_kib(pid)[1]
    except (FileNotFoundError, ProcessLookupError, KeyError):
        return 0


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def cpu_seconds(pid):
    """utime + stime of the process and of its children it has waited for."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def med(xs):
    return statistics.median(xs)


def row(name, ours, base=None, fmt="%.1f", note=""):
    """One line: our figure, the baseline and the ratio ours/baseline."""
    s = "%-60s %9s" % (name, fmt % ours)
    if base is not None:
        s += "  vs %9s" % (fmt % base)
        s += "  ratio %5.2f" % (ours / base) if base else "  ratio   n/a"
    if note:
        s += "  (" + note + ")"
    print(s, flush=True)


class Device:
    """One lodevd of the emulator, provisioned, with a hook that records when it starts."""

    def __init__(self, platform, scratch, watchdog=False, **conf):
        self.work = tempfile.mkdtemp(prefix="lodev-bench-dev-", dir=scratch)
        self.rec = os.path.join(self.work, "rec")
        os.makedirs(self.rec)
        hook = os.path.join(self.work, "hook")
        with open(hook, "w") as f:
            f.write(HOOK.format(rec=self.rec))
        os.chmod(hook, 0o755)
        self.bus = lodevtest.Bus()
        self.config = os.path.join(self.work, "lodevd.conf")
        lodevtest.write_device_config(self.config, self.work, platform,
                                      firmware={"installer": hook, "reboot_command": "/bin/true"},
                                      platform={"keepalive": 1200}, log_level="notice", **conf)
        self.d = lodevtest.Daemon(self.bus, self.work, self.config, verbose=False)
        env = {"WATCHDOG_USEC": "30000000"} if watchdog else None
        self.d.start(extra_env=env)
        self.d.wait_online()
        self.thing = self.d.status()["thing_name"]
        self.pid = self.d.proc.pid

    def stop(self):
        try:
            self.d.stop()
        finally:
            self.bus.stop()
            shutil.rmtree(self.work, ignore_errors=True)

    def run_job(self, platform, fw_id, size, sha, during=None):
        """Queues a firmware job; returns (seconds to the installer, CPU seconds, samples of
        during() taken every 50 ms while the job runs)."""
        started = os.path.join(self.rec, "started")
        if os.path.exists(started):
            os.unlink(started)
        doc = {"operation": "firmware_update", "deploymentId": "bench", "firmwareId": fw_id,
               "firmwareUrl": "${lodev:firmware-url:%s}" % fw_id, "size": size, "sha256": sha}
        cpu0 = cpu_seconds(self.pid)
        samples = []
        t0 = time.time()
        job = platform.queue_job(self.thing, document=doc)
        deadline = time.monotonic() + 900
        while not (os.path.exists(started) and os.path.getsize(started)):
            if during:
                samples.append(during())
            if time.monotonic() > deadline:
                raise SystemExit("the installer never started:\n" + self.d.output()[-3000:])
            time.sleep(0.05)
        with open(started) as f:
            t1 = float(f.read())
        lodevtest.wait_until(lambda: platform.job_execution(self.thing, job)["status"] == "SUCCEEDED",
                             120, what="SUCCEEDED")
        # The helper has been reaped by now: its CPU is in lodevd's children's share.
        return t1 - t0, cpu_seconds(self.pid) - cpu0, samples


def make_firmware(platform, size):
    """firmware.py's image of that size in the emulator: (its path, its id, its sha256)."""
    fw_id, sha = firmware_bench.make_firmware(platform, size)
    return os.path.join(platform.workdir, "firmware", fw_id), fw_id, sha


def mosquitto_sub_uss(platform, ident, thing, seconds=3):
    p = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(platform.mqtt_port),
                          "--cafile", platform.ca_file, "--cert", os.path.join(ident, "device.pem"),
                          "--key", os.path.join(ident, "device.key"), "-i", thing, "-t", thing],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(seconds)
        if p.poll() is not None:
            raise SystemExit("mosquitto_sub: %s" % p.stderr.read().decode())
        return memory_kib(p.pid)
    finally:
        p.terminate()
        p.wait(10)


def idle_memory(platform, scratch, rounds):
    usses, subs = [], []
    for _ in range(rounds):
        dev = Device(platform, scratch)
        try:
            time.sleep(2)
            usses.append(memory_kib(dev.pid))
            ident = os.path.join(dev.work, "state", "identity")
            thing = dev.thing
            dev.d.stop()
            time.sleep(1.1)  # one CONNECT a second per client id
            subs.append(mosquitto_sub_uss(platform, ident, thing))
        finally:
            dev.stop()
    for i, name in enumerate(("USS", "PSS", "RSS")):
        row("idle %s of lodevd online, nothing to send (MiB)" % name, med([u[i] for u in usses]) / 1024,
            med([s[i] for s in subs]) / 1024, fmt="%.2f", note="vs mosquitto_sub holding one TLS connection")


def firmware(platform, scratch, rounds, size):
    path, fw_id, sha = make_firmware(platform, size)
    out = os.path.join(scratch, "curl.out")
    curl_t, curl_cpu, ours_t, ours_cpu = [], [], [], []
    dev = Device(platform, scratch, transfers={"max_bytes": 64 * MiB})
    try:
        for _ in range(rounds):
            c0 = children_cpu()
            t0 = time.monotonic()
            subprocess.run(["curl", "-s", "-f", "-o", out, platform.firmware_url(fw_id)], check=True)
            curl_t.append(time.monotonic() - t0)
            subprocess.run(["sha256sum", out], check=True, stdout=subprocess.DEVNULL)
            curl_cpu.append(children_cpu() - c0)
            os.unlink(out)
            took, cpu, _ = dev.run_job(platform, fw_id, size, sha)
            ours_t.append(took)
            ours_cpu.append(cpu)
    finally:
        dev.stop()
        os.unlink(path)
    mib = size / MiB
    row("firmware download %d MiB, sha256, loopback (MiB/s)" % mib, mib / med(ours_t), mib / med(curl_t),
        fmt="%.0f", note="job queued to installer start vs curl -o")
    gib = size / (1024 * MiB)
    row("CPU per GiB downloaded, lodevd + helper (s)", med(ours_cpu) / gib, med(curl_cpu) / gib,
        fmt="%.2f", note="vs curl -o + sha256sum")


def upload(platform, scratch, rounds, size):
    dev = Device(platform, scratch, transfers={"max_bytes": 2 * size + 64 * MiB})
    path = os.path.join(scratch, "payload.bin")
    chunk = os.urandom(4 * MiB)
    with open(path, "wb") as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)
    puts, curls = [], []
    try:
        for i in range(rounds):
            p = subprocess.Popen([lodevtest.LODEVCTL, "upload", path, "--name", "l-%d.bin" % i, "--wait"],
                                 env=dev.bus.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            p.stdout.readline()  # the id: the copy is durable, the PUT starts
            t_id = time.monotonic()
            _, err = p.communicate(timeout=1800)
            if p.returncode != 0:
                raise SystemExit("lodevctl upload failed: %s" % err)
            puts.append(time.monotonic() - t_id)
            url = platform.upload_link(dev.thing, "c-%d.bin" % i, "application/octet-stream")
            t0 = time.monotonic()
            r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-T", path,
                                "-H", "Content-Type: application/octet-stream", url],
                               capture_output=True, text=True, timeout=1800)
            if r.stdout.strip() != "200":
                raise SystemExit("curl -T failed: %s %s" % (r.stdout, r.stderr))
            curls.append(time.monotonic() - t0)
    finally:
        dev.stop()
        os.unlink(path)
    mib = size / MiB
    row("upload PUT %d MiB, loopback (MiB/s)" % mib, mib / med(puts), mib / med(curls), fmt="%.0f",
        note="transfer id to TransferFinished vs curl -T")


def submit_latencies(bus, stop):
    """One-at-a-time SubmitObservation round trips (µs) until stop is set."""
    p = subprocess.Popen([SUBMIT, "--count", "1000000", "--window", "1"], env=bus.env(),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lat = []

    def reader():
        for line in p.stdout:
            f = line.split()
            if len(f) == 4:
                lat.append((int(f[3]), int(f[2])))

    t = threading.Thread(target=reader)
    t.start()
    stop.wait()
    p.send_signal(signal.SIGTERM)
    p.wait(10)
    t.join(10)
    return lat


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))] if xs else 0


def mono_usec():
    return int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)


def busy_download(platform, scratch, rounds, size):
    path, fw_id, sha = make_firmware(platform, size)
    idle_p99, busy_p99, growth, peaks, idles, counts, pss_growth = [], [], [], [], [], [], []
    dev = Device(platform, scratch, transfers={"max_bytes": 64 * MiB})
    try:
        for _ in range(rounds):
            # Idle: 3 s of one-at-a-time calls.
            stop = threading.Event()
            threading.Timer(3, stop.set).start()
            lat = submit_latencies(dev.bus, stop)
            idle_p99.append(p99([l for _, l in lat[20:]]))
            time.sleep(1)

            idle_rss = rss_kib(dev.pid) + sum(rss_kib(c) for c in children(dev.pid))
            idle_pss = pss_kib(dev.pid)
            stop = threading.Event()
            box = {}
            th = threading.Thread(target=lambda: box.setdefault("lat", submit_latencies(dev.bus, stop)))
            th.start()
            time.sleep(0.5)
            t0 = mono_usec()
            took, _, samples = dev.run_job(
                platform, fw_id, size, sha,
                during=lambda: (rss_kib(dev.pid) + sum(rss_kib(c) for c in children(dev.pid)),
                                pss_kib(dev.pid) + sum(pss_kib(c) for c in children(dev.pid))))
            t1 = t0 + int(took * 1e6)
            stop.set()
            th.join(30)
            during = [l for s, l in box.get("lat", []) if t0 <= s <= t1]
            counts.append(len(during))
            busy_p99.append(p99(during))
            peak = max([x[0] for x in samples] + [idle_rss])
            idles.append(idle_rss)
            peaks.append(peak)
            growth.append(peak - idle_rss)
            pss_growth.append(max([x[1] for x in samples] + [idle_pss]) - idle_pss)
    finally:
        dev.stop()
        os.unlink(path)
    row("p99 SubmitObservation round trip, idle (ms)", med(idle_p99) / 1000, fmt="%.2f")
    row("p99 SubmitObservation during a %d MiB download (ms)" % (size / MiB), med(busy_p99) / 1000,
        med(idle_p99) / 1000, fmt="%.2f",
        note="vs idle; %d calls during the download" % med(counts))
    row("RSS of lodevd + helper, idle before the download (MiB)", med(idles) / 1024, fmt="%.1f")
    row("RSS of lodevd + helper, peak during it (MiB)", med(peaks) / 1024, fmt="%.1f")
    row("RSS growth for %d MiB (MiB)" % (size / MiB), med(growth) / 1024, fmt="%.1f",
        note="RSS counts the libraries both map twice")
    row("PSS growth of lodevd + helper for %d MiB (MiB)" % (size / MiB), med(pss_growth) / 1024,
        fmt="%.1f")


class TinyServer:
    def __init__(self, directory):
        self.p = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1",
                                   "--directory", directory], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        line = self.p.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N ..."
        self.port = int(line.split(" port ")[1].split()[0])

    def stop(self):
        self.p.terminate()
        self.p.wait(10)


def run_helper(request, path, write=True):
    """lodevd-transfer on its own, as lodevd starts it: (seconds, its report lines)."""
    t0 = time.monotonic()
    p, a = lodevtest.spawn_transfer_helper(path, writable=write, helper=HELPER)
    a.sendall(("".join("%s %s\n" % kv for kv in request.items()) + "end\n").encode())
    a.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        k = a.recv(65536)
        if not k:
            break
        data += k
    a.close()
    p.communicate()
    took = time.monotonic() - t0
    lines = data.decode().splitlines()
    if not lines or not lines[-1].startswith("done 0 "):
        raise SystemExit("helper: %r" % lines[-3:])
    return took, lines


def helper_alone(scratch, rounds, down_size, up_size):
    """The helper alone against the same local server as curl: a GET with sha256 and syncs,
    a PUT."""
    if not os.path.exists(HELPER):
        row("lodevd-transfer alone", 0, fmt="%.0f", note="n/a: no helper in this build")
        return
    d = tempfile.mkdtemp(dir=scratch)
    chunk = os.urandom(4 * MiB)
    for name, size in (("down", down_size), ("up", up_size)):
        with open(os.path.join(d, name), "wb") as f:
            for _ in range(size // len(chunk)):
                f.write(chunk)
    blob = os.path.join(d, "up")
    srv = TinyServer(d)
    out = os.path.join(scratch, "helper.out")
    get_t, curl_t, curl_sha_t, put_t, curlput_t = [], [], [], [], []
    try:
        url = "http://127.0.0.1:%d/down" % srv.port
        for _ in range(rounds):
            t0 = time.monotonic()
            subprocess.run(["curl", "-s", "-f", "-o", out, url], check=True)
            curl_t.append(time.monotonic() - t0)
            subprocess.run(["sha256sum", out], check=True, stdout=subprocess.DEVNULL)
            curl_sha_t.append(time.monotonic() - t0)
            os.unlink(out)
            took, _ = run_helper({"method": "GET", "url": url, "allow-http": 1, "sha256": 1,
                                  "max-size": 0, "sync-bytes": 16 * MiB, "sync-ms": 1000,
                                  "offset": 0}, out)
            get_t.append(took)
            os.unlink(out)
    finally:
        srv.stop()
    mib = down_size / MiB
    row("lodevd-transfer alone: GET %d MiB, sha256, syncs (MiB/s)" % mib, mib / med(get_t),
        mib / med(curl_t), fmt="%.0f", note="vs curl -o, same server")
    row("lodevd-transfer alone: the same (MiB/s)", mib / med(get_t), mib / med(curl_sha_t), fmt="%.0f",
        note="vs curl -o then sha256sum")
    put = PutServer()
    try:
        for _ in range(rounds):
            t0 = time.monotonic()
            r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-T", blob,
                                "-H", "Content-Type: application/octet-stream", put.url], capture_output=True,
                               text=True, timeout=1800)
            curlput_t.append(time.monotonic() - t0)
            if r.stdout.strip() != "200":
                raise SystemExit("curl -T: %s %s" % (r.stdout, r.stderr))
            took, _ = run_helper({"method": "PUT", "url": put.url, "allow-http": 1,
                                  "content-type": "application/octet-stream",
                                  "size": os.path.getsize(blob)}, blob, write=False)
            put_t.append(took)
    finally:
        put.stop()
    mib = os.path.getsize(blob) / MiB
    row("lodevd-transfer alone: PUT %d MiB (MiB/s)" % mib, mib / med(put_t), mib / med(curlput_t),
        fmt="%.0f", note="vs curl -T, same server")


class PutServer:
    """Takes PUTs and throws the bytes away (the emulator hashes them, which bounds it)."""

    def __init__(self):
        import http.server

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_PUT(self):
                left = int(self.headers.get("Content-Length", "0"))
                while left:
                    k = self.rfile.read(min(left, 1 << 20))
                    if not k:
                        break
                    left -= len(k)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = "http://127.0.0.1:%d/put" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def helper_start(scratch, rounds, n=20):
    """ms per transfer of a 1 KiB GET through lodevd's own HTTP code (tests/tools/lodev-http):
    with the helper, its start is in it; compare with a build without the helper."""
    tool = os.path.join(lodevtest.BUILD_DIR, "tests", "lodev-http")
    d = tempfile.mkdtemp(dir=scratch)
    with open(os.path.join(d, "tiny"), "wb") as f:
        f.write(os.urandom(1024))
    srv = TinyServer(d)
    url = "http://127.0.0.1:%d/tiny" % srv.port
    out = os.path.join(d, "out")
    ms = []
    try:
        for _ in range(rounds):
            each = []
            for _ in range(n):
                r = subprocess.run([tool, "--allow-http", "get", url, out], capture_output=True,
                                   text=True, timeout=60)
                if r.returncode != 0:
                    raise SystemExit("lodev-http: %s %s" % (r.stdout, r.stderr))
                each.append(json.loads(r.stdout)["elapsed_ms"])
            ms.append(med(each))
    finally:
        srv.stop()
    row("a 1 KiB GET through lodevd's HTTP code, call to end (ms)", med(ms), fmt="%.1f",
        note="%s; median of %d per round" % ("transfer helper started for it" if os.path.exists(HELPER)
                                              else "in-process libcurl", n))


def idle_wakeups(platform, scratch, rounds, seconds):
    dev = Device(platform, scratch, watchdog=True)
    per_min = []
    try:
        time.sleep(2)
        for _ in range(rounds):
            out = os.path.join(scratch, "strace.out")
            st = subprocess.Popen(["strace", "-f", "-c", "-o", out, "-p", str(dev.pid)],
                                  stderr=subprocess.DEVNULL)
            time.sleep(seconds)
            st.terminate()
            st.wait(10)
            n = 0
            with open(out) as f:
                for line in f:
                    fields = line.split()
                    if fields and fields[-1] == "epoll_wait" and fields[3].isdigit():
                        n = int(fields[3])
            per_min.append(n * 60.0 / seconds)
    finally:
        dev.stop()
    row("idle wakeups per minute, watchdog 30 s", med(per_min), fmt="%.1f",
        note="epoll_wait returns over %d s, %d windows" % (seconds, rounds))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fw-mib", type=int, default=256)
    ap.add_argument("--up-mib", type=int, default=1024)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--idle-seconds", type=int, default=40)
    ap.add_argument("--only", default="",
                    help="comma-separated: memory,firmware,upload,busy,alone,start,wakeups")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))

    def want(x):
        return not only or x in only

    print("build: %s; %s; %d rounds, medians" % (lodevtest.BUILD_DIR, load(), args.rounds), flush=True)
    scratch = tempfile.mkdtemp(prefix="lodev-bench-xfer-")
    try:
        with Platform.start(os.path.join(scratch, "platform")) as p:
            if want("memory"):
                idle_memory(p, scratch, args.rounds)
            if want("firmware"):
                firmware(p, scratch, args.rounds, args.fw_mib * MiB)
            if want("upload"):
                upload(p, scratch, args.rounds, args.up_mib * MiB)
            if want("busy"):
                busy_download(p, scratch, args.rounds, args.big_mib * MiB)
            if want("alone"):
                helper_alone(scratch, args.rounds, args.fw_mib * MiB, args.up_mib * MiB)
            if want("start"):
                helper_start(scratch, args.rounds)
            if want("wakeups"):
                idle_wakeups(p, scratch, args.rounds, args.idle_seconds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("end: %s" % load(), flush=True)


if __name__ == "__main__":
    main()
