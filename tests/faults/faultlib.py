# SPDX-License-Identifier: MIT
"""The fault matrix's rig: lodevd under a mixed load (observations from four clients,
uploads, a firmware job) against the platform emulator, faults made to happen at random
moments or at named steps, and a ledger of what lodevd acknowledged checked against what
the platform received.

A named step is reached without any code of lodevd's own: the LD_PRELOAD shim
(tests/tools/fault-inject.c, LODEV_STOP_AT) stops lodevd with SIGSTOP at the N-th call that
matches (an fdatasync of a spool segment, the TLS write of a publish on a topic, the journal
write of a job phase), and the rig SIGKILLs it there.

The HTTP steps (a PUT or a firmware GET going out or answered) happen in lodevd-transfer, the
helper lodevd starts for each transfer with an empty environment: lodevd is pointed at a
wrapper (LODEVD_TRANSFER_PATH) that gives the helper the shim and the same stop point, so the
helper stops itself there (the shim stops only processes whose name starts with "lodevd",
and its calls are within the helper's seccomp allow-list). Counts are per process: the N-th
matching call of one helper. The rig then stops the machine as a whole: lodevd and every
helper of its are SIGKILLed, lodevd first stopped so that it sees nothing of the helper's end.

A reboot is a new boot id as lodevd reads it (sd_id128_get_boot()): lodevd runs in a mount
namespace of its own with a file of the rig's bind-mounted over the kernel's boot id
(lodevtest.BootId); the wrapper execs lodevd, so the pid the rig watches is lodevd's."""

import glob
import hashlib
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))

import lodevtest  # noqa: E402
from lodevtest import wait_until  # noqa: E402

SUBMIT = os.path.join(lodevtest.BUILD_DIR, "tests", "lodev-submit")
SHIM = os.path.join(lodevtest.BUILD_DIR, "tests", "liblodev-fault-inject.so")
HELPER_NAME = "lodevd-transfer"
TERMINAL = {"SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT", "REMOVED"}
KiB = 1024

# Full scale: 100 SIGKILL rounds, 100 broker restarts. The default fits CI's time on two
# shared cores; LODEV_FAULTS_SCALE=1 is the long run.
SCALE = float(os.environ.get("LODEV_FAULTS_SCALE", "0.15"))
SEED = int(os.environ.get("LODEV_FAULTS_SEED", "14"))


def scaled(full, minimum=1):
    return max(minimum, int(round(full * SCALE)))


HOOK = r"""#!/bin/sh
# Installer for the fault matrix: records each call, copies the file, asks for a reboot.
rec="{rec}"
echo "$1|$LODEV_JOB_ID" >> "$rec/calls"
case "$1" in
install)
        cp "$2" "$rec/installed-$LODEV_JOB_ID" || exit 1
        for p in 30 60 100; do echo $p >&3; done
        exit 100
        ;;
confirm|rollback)
        exit 0
        ;;
esac
exit 3
"""

REBOOT = """#!/bin/sh
echo reboot >> "{rec}/reboots"
"""

# lodevd starts its transfer helper with an empty environment: this wrapper, named by
# LODEVD_TRANSFER_PATH, gives it the shim and lodevd's stop point, and execs the real one.
TRANSFER_WRAPPER = """#!/bin/sh
LD_PRELOAD={shim} LODEV_STOP_AT={stop_at} LODEV_STOP_ARM={stop_arm}
export LD_PRELOAD LODEV_STOP_AT LODEV_STOP_ARM
exec {helper} "$@"
"""


class StepNotReached(AssertionError):
    pass


class Ledger:
    """What lodevd acknowledged (and what was merely asked of it), to check against what the
    platform got."""

    def __init__(self):
        self.submitted = {}   # value -> client run
        self.acked = set()    # values whose submit was answered with an id
        self.runs = []        # values of each client run, in submit order
        self.uploads = {}     # file name -> sha256, every upload asked for
        self.acked_uploads = set()
        self.jobs = []        # job ids queued
        self.next_base = 1

    def new_run(self, count):
        base = self.next_base * 100000
        self.next_base += 1
        values = [float(base + i) for i in range(count)]
        for v in values:
            self.submitted[v] = len(self.runs)
        self.runs.append(values)
        return base

    def take_submit_output(self, out):
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] != "DELIVERED":
                self.acked.add(float(parts[1]))


class Device:
    """lodevd with the shim preloaded (its transfer helpers too, while a stop point is set),
    a test installer and reboot command, and a boot id of its own (lodevtest.BootId); its
    state directory may live on a small file system."""

    def __init__(self, rig, name, state_dir=None, **overrides):
        self.rig = rig
        self.bus = rig.bus
        self.platform = rig.platform
        # The emulator keeps a thing per serial number, and the serial is the directory's
        # name: unique, so that no two devices of the matrix share a thing.
        self.workdir = os.path.join(rig.workdir, "%s-%s" % (name, uuid.uuid4().hex[:8]))
        os.makedirs(self.workdir)
        self.rec = os.path.join(self.workdir, "rec")
        os.makedirs(self.rec)
        self.hook = os.path.join(self.workdir, "hook")
        self.reboot = os.path.join(self.workdir, "reboot")
        for path, text in ((self.hook, HOOK), (self.reboot, REBOOT)):
            with open(path, "w") as f:
                f.write(text.format(rec=self.rec))
            os.chmod(path, 0o755)
        self.boot = lodevtest.BootId(self.workdir)
        self.transfer_wrapper = os.path.join(self.workdir, "transfer-helper")
        self.state_dir = state_dir or os.path.join(self.workdir, "state")
        self.config = os.path.join(self.workdir, "lodevd.conf")
        sections = {
            "platform": {"publish_rate": 0},
            "firmware": {"installer": self.hook, "reboot_command": self.reboot,
                         "install_timeout": 60, "max_reboot_delay": 60},
            "state_dir": self.state_dir,
        }
        for k, v in overrides.items():
            sections[k] = dict(sections.get(k, {}), **v) if isinstance(v, dict) else v
        lodevtest.write_device_config(self.config, self.workdir, self.platform, **sections)
        self.daemon = lodevtest.Daemon(self.bus, self.workdir, self.config, boot_id=self.boot)
        self.fault_env = {}
        self.stop_at = None
        # The stop point counts only while this file exists: start-up is left out.
        self.stop_arm = os.path.join(self.workdir, "stop-armed")
        self.reboots_seen = 0
        self.restarts = 0
        self.thing = None

    # -- life ----------------------------------------------------------------

    def new_boot(self):
        self.boot.new_boot()

    def env(self):
        env = {"LD_PRELOAD": SHIM}
        env.update(self.fault_env)
        if self.stop_at:
            env["LODEV_STOP_AT"] = self.stop_at
            env["LODEV_STOP_ARM"] = self.stop_arm
            with open(self.transfer_wrapper, "w") as f:
                f.write(TRANSFER_WRAPPER.format(
                    shim=shlex.quote(SHIM), stop_at=shlex.quote(self.stop_at),
                    stop_arm=shlex.quote(self.stop_arm),
                    helper=shlex.quote(lodevtest.TRANSFER_HELPER)))
            os.chmod(self.transfer_wrapper, 0o755)
            env["LODEVD_TRANSFER_PATH"] = self.transfer_wrapper
        return env

    def start(self, online=True):
        armed = self.stop_at and os.path.exists(self.stop_arm)
        self.daemon.start(extra_env=self.env(), wait_ready=False)
        if not armed:
            # READY=1, or the reason it exited at once.
            wait_until(lambda: not self.alive() or any(
                m.startswith("READY=1") for m in self.daemon.notify.messages), 30,
                what="READY=1 from lodevd")
            if not self.alive():
                raise AssertionError("lodevd exited at start (status %s):\n%s"
                                     % (self.daemon.proc.returncode, self.output_tail()))
        if armed:
            # It may stop at the step at any moment of its start (a job phase is recorded,
            # a pending job status sent once online): wait for one or the other.
            wait_until(self._online_or_stopped, 60, interval=0.01, what="online or the step")
            return self
        if online:
            self.daemon.wait_online(timeout=60)
            thing = self.daemon.status()["thing_name"]
            assert self.thing in (None, thing), "the thing name changed: %s -> %s" % (
                self.thing, thing)
            self.thing = thing
        return self

    def _online_or_stopped(self):
        if self.stopped():
            return True
        if not any(m.startswith("READY=1") for m in self.daemon.notify.messages):
            return False
        try:
            r = lodevtest.lodevctl(self.bus, "--json", "status", timeout=2)
        except subprocess.TimeoutExpired:
            return self.stopped()
        return r.returncode == 0 and json.loads(r.stdout)["state"] == "online"

    @property
    def pid(self):
        return self.daemon.proc.pid

    def alive(self):
        return self.daemon.proc is not None and self.daemon.proc.poll() is None

    @staticmethod
    def _state(pid):
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return "gone"

    def proc_state(self):
        """lodevd's state: R, S, T (stopped at the step), Z, or gone."""
        return self._state(self.pid)

    def helpers(self):
        """The pids of lodevd's transfer helpers (its children named lodevd-transfer)."""
        if not self.alive():
            return []
        pids = []
        for path in glob.glob("/proc/%d/task/*/children" % self.pid):
            try:
                with open(path) as f:
                    pids.extend(int(p) for p in f.read().split())
            except (FileNotFoundError, ProcessLookupError):
                pass
        found = []
        for pid in pids:
            try:
                with open("/proc/%d/comm" % pid) as f:
                    if f.read().strip() == HELPER_NAME:
                        found.append(pid)
            except (FileNotFoundError, ProcessLookupError):
                pass
        return found

    def stopped(self):
        """True once lodevd, or one of its transfer helpers, stopped itself at the step."""
        return self.proc_state() == "T" or any(self._state(p) == "T" for p in self.helpers())

    def kill(self):
        """The machine dies: lodevd and its transfer helpers are SIGKILLed. lodevd is stopped
        first, so that it never sees a helper end; a helper, lodevd's child, stays a zombie
        (its pid taken) until lodevd is gone."""
        if self.alive():
            self.daemon.proc.send_signal(signal.SIGSTOP)
            for pid in self.helpers():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.daemon.proc.send_signal(signal.SIGKILL)
            self.daemon.proc.wait(timeout=15)
        self.daemon.stop()

    def restart(self, online=True):
        self.kill()
        self.restarts += 1
        self.start(online=online)

    def arm(self, on=True):
        if on:
            open(self.stop_arm, "w").close()
        elif os.path.exists(self.stop_arm):
            os.unlink(self.stop_arm)

    def wait_stopped(self, timeout, service=None):
        """True once lodevd, or a transfer helper of its, stopped itself at the armed step
        (state T)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.proc_state()
            if state in ("gone", "Z"):
                return False
            if self.stopped():
                return True
            if service:
                service()
            time.sleep(0.01)
        return False

    def service(self, online=True):
        """What the device around lodevd does while the rig waits: a requested reboot
        happens (lodevd stops, the boot id changes, lodevd starts), and a lodevd that is
        gone (killed by a fault) is started again. online=False while the rig holds the
        broker away: lodevd is not waited for online then."""
        n = self.reboots()
        if n > self.reboots_seen and not self.stopped():
            self.reboots_seen = n
            self.daemon.stop()
            self.new_boot()
            self.start(online=online)

    # -- records -------------------------------------------------------------

    def _records(self, name):
        """The lines the installer or the reboot command wrote to rec/NAME."""
        path = os.path.join(self.rec, name)
        return open(path).read().splitlines() if os.path.exists(path) else []

    def reboots(self):
        return len(self._records("reboots"))

    def installs(self, job):
        return self._records("calls").count("install|" + job)

    def status(self):
        return self.daemon.status()

    def output_tail(self, n=4000):
        return self.daemon.output()[-n:]


class Load:
    """One round of mixed load on a device: four observation clients, uploads, optionally a
    firmware job; bounded, recorded in the ledger."""

    def __init__(self, rig, device, count=300, uploads=1, upload_size=96 * KiB, job=False,
                 window=32):
        self.rig, self.device, self.ledger = rig, device, rig.ledger
        self.clients = []
        self.uploads = []
        for _ in range(4):
            base = self.ledger.new_run(count)
            self.clients.append(subprocess.Popen(
                [SUBMIT, "--count", str(count), "--start", str(base), "--window", str(window)],
                env=rig.bus.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for _ in range(uploads):
            self.uploads.append(rig.start_upload(upload_size))
        if job:
            rig.queue_job(device)

    def finish(self, timeout=120):
        for c in self.clients:
            out, _ = c.communicate(timeout=timeout)
            self.ledger.take_submit_output(out)
        for name, p in self.uploads:
            out, _ = p.communicate(timeout=timeout)
            if p.returncode == 0 and out.strip():
                self.ledger.acked_uploads.add(name)


class Rig:
    """The platform, the bus and the ledger a case runs against, and the checks."""

    def __init__(self, bus, platform, workdir, name):
        self.bus, self.platform, self.workdir, self.name = bus, platform, workdir, name
        self.ledger = Ledger()
        self.rng = random.Random("%d-%s" % (SEED, name))
        self.devices = []
        self.files = os.path.join(workdir, "files")
        os.makedirs(self.files, exist_ok=True)
        self.firmware = {}

    def device(self, name="device", **kw):
        d = Device(self, name, **kw)
        self.devices.append(d)
        return d

    def start_upload(self, size):
        name = "%s-%06d.bin" % (self.name, len(self.ledger.uploads))
        path = os.path.join(self.files, name)
        data = self.rng.randbytes(size)
        with open(path, "wb") as f:
            f.write(data)
        self.ledger.uploads[name] = hashlib.sha256(data).hexdigest()
        p = subprocess.Popen([lodevtest.LODEVCTL, "upload", path], env=self.bus.env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return name, p

    def queue_job(self, device, size=192 * KiB):
        fw_id = "fw-%s-%d" % (self.name, len(self.ledger.jobs))
        data = self.rng.randbytes(size)
        self.platform.add_firmware(fw_id, data)
        doc = {"operation": "firmware_update", "deploymentId": "dep-" + fw_id,
               "firmwareId": fw_id, "firmwareUrl": "${lodev:firmware-url:%s}" % fw_id,
               "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        job = self.platform.queue_job(device.thing, document=doc)
        self.ledger.jobs.append((device, job))
        self.firmware[job] = data
        return job

    # -- waiting and checking ------------------------------------------------

    def settle(self, device, timeout=90):
        """Lets lodevd finish what it was given: the queues drain and every job ends, while
        the device reboots when asked. Bounded; what is left shows in the check."""
        deadline = time.monotonic() + timeout

        def done():
            device.service()
            if not device.alive():
                return False
            st = device.status()
            if st["queued_observations"] or st["queued_transfers"] or st["state"] != "online":
                return False
            return all(self.platform.job_execution(device.thing, j)["status"] in TERMINAL
                       for d, j in self.ledger.jobs if d is device)

        while time.monotonic() < deadline:
            try:
                if done():
                    return True
            except AssertionError:
                pass
            time.sleep(0.2)
        return False

    def check(self, device, what):
        """Every acknowledged observation delivered, every upload byte-identical or still
        queued, every job with one terminal status and at most one install, lodevd running.
        Returns the counts; raises AssertionError naming each broken promise."""
        led = self.ledger
        problems = []
        if not device.alive():
            problems.append("lodevd is not running (exit %s)" % device.daemon.proc.returncode)
        acked = {v for v in led.acked if v in led.submitted}

        def delivered():
            return [o["payload"]["value"] for o in self.platform.observations()
                    if o["thing"] == device.thing]

        # The broker's PUBACK comes before the emulator records the message: give it a moment.
        values = delivered()
        deadline = time.monotonic() + 15
        while not acked <= set(values) and time.monotonic() < deadline:
            time.sleep(0.2)
            values = delivered()
        got = set(values)
        lost = sorted(acked - got)
        unknown = sorted(got - set(led.submitted))
        if lost:
            problems.append("%d acknowledged observations not delivered, first %s"
                            % (len(lost), lost[:10]))
        if unknown:
            problems.append("%d observations delivered that no one submitted: %s"
                            % (len(unknown), unknown[:10]))
        # In order: within each client's run, first deliveries come in submit order.
        firsts = {}
        for v in values:
            firsts.setdefault(v, len(firsts))
        for run in led.runs:
            order = [firsts[v] for v in run if v in firsts]
            if order != sorted(order):
                problems.append("observations of one client delivered out of order")
                break

        transfers = {}
        if device.alive():
            try:
                transfers = {t["file_name"]: t
                             for t in lodevtest.lodevctl_json(self.bus, "transfers")}
            except AssertionError as e:
                problems.append("lodevctl transfers: %s" % e)
        uploaded = {}
        for u in self.platform.uploads():
            if u["thing"] == device.thing:
                uploaded.setdefault(u["file_name"], []).append(u["sha256"])
        for name, digests in uploaded.items():
            want = led.uploads.get(name)
            if want is None:
                problems.append("upload %s was never asked for" % name)
            elif any(d != want for d in digests):
                problems.append("upload %s arrived with other bytes" % name)
        for name in led.acked_uploads:
            if name not in uploaded and name not in transfers:
                problems.append("acknowledged upload %s neither uploaded nor queued" % name)

        for d, job in led.jobs:
            if d is not device:
                continue
            hist = self.platform.job_history(device.thing, job)
            terminals = [h["status"] for h in hist
                         if h["source"] != "platform" and h["status"] in TERMINAL]
            installs = device.installs(job)
            if len(terminals) != 1:
                problems.append("job %s: terminal statuses %s (history %s)"
                                % (job, terminals, [h["status"] for h in hist]))
            if installs > 1:
                problems.append("job %s installed %d times" % (job, installs))
            if terminals == ["SUCCEEDED"] and installs != 1:
                problems.append("job %s SUCCEEDED with %d installs" % (job, installs))
            if terminals == ["SUCCEEDED"]:
                with open(os.path.join(device.rec, "installed-" + job), "rb") as f:
                    if f.read() != self.firmware[job]:
                        problems.append("job %s installed other bytes" % job)

        counts = {"acknowledged": len(acked), "delivered": len(got & set(led.submitted)),
                  "duplicates": len(values) - len(got), "lost": len(lost),
                  "uploads": len(led.acked_uploads),
                  "uploaded": sum(1 for n in led.acked_uploads if n in uploaded),
                  "jobs": sum(1 for d, _ in led.jobs if d is device)}
        if problems:
            raise AssertionError("%s: %s\nlodevd:\n%s"
                                 % (what, "; ".join(problems), device.output_tail()))
        return counts


# Cases that fail today because of a defect being fixed elsewhere, keyed by the case (the
# test's name), with the defect: such a case is reported as an expected failure, printed with
# its defect, and one that passes fails the suite until its entry is removed here, so the
# list never hides a failure nor outlives the fix.
EXPECTED_FAILURES = {
}


class Report:
    """Counts of every case, printed at the end of the run."""

    def __init__(self):
        self.cases = []

    def add(self, name, rounds, counts, outcome):
        self.cases.append((name, rounds, counts or {}, outcome))

    def lines(self):
        if not self.cases:
            return []
        total = {}
        rounds = 0
        for _, r, counts, _ in self.cases:
            rounds += r
            for k, v in counts.items():
                total[k] = total.get(k, 0) + v
        out = ["faults: %d cases, %d rounds (scale %g, seed %d): %d acknowledged, %d delivered, "
               "%d duplicates, %d lost; %d uploads acknowledged, %d uploaded, the rest queued; "
               "%d firmware jobs"
               % (len(self.cases), rounds, SCALE, SEED, total.get("acknowledged", 0),
                  total.get("delivered", 0), total.get("duplicates", 0), total.get("lost", 0),
                  total.get("uploads", 0), total.get("uploaded", 0), total.get("jobs", 0))]
        for name, r, counts, outcome in self.cases:
            out.append("faults:   %-44s %4d rounds %6d acknowledged %6d delivered %5d dup "
                       "%3d lost  %s" % (name, r, counts.get("acknowledged", 0),
                                         counts.get("delivered", 0),
                                         counts.get("duplicates", 0), counts.get("lost", 0),
                                         outcome))
        for name, (defect, what) in sorted(EXPECTED_FAILURES.items()):
            out.append("faults: expected to fail until %s is fixed: %s (%s)" % (defect, name,
                                                                               what))
        return out


REPORT = Report()


class Case:
    """Runs a case's body and files its outcome: passed, failed, or an expected failure."""

    def __init__(self, name, baseline=None):
        self.name = name
        self.rounds = 0
        self.counts = None
        self.baseline = baseline or {}  # counts before the case, when a ledger is shared

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        import pytest

        name = self.name
        counts = {k: v - self.baseline.get(k, 0) for k, v in (self.counts or {}).items()}
        expected = EXPECTED_FAILURES.get(name)
        failed = kind is not None
        if failed and not issubclass(kind, AssertionError):
            REPORT.add(name, self.rounds, counts, "ERROR %s" % kind.__name__)
            return False
        if failed and expected:
            REPORT.add(name, self.rounds, counts,
                       "expected failure (%s): %s" % (expected[0], str(value).split("\n")[0]))
            pytest.xfail("%s: %s" % expected)
        if failed:
            REPORT.add(name, self.rounds, counts, "FAILED: %s" % str(value).split("\n")[0])
            return False
        if expected:
            REPORT.add(name, self.rounds, counts,
                       "PASSED but listed as failing for %s" % expected[0])
            pytest.fail("%s passes: %s looks fixed; remove it from EXPECTED_FAILURES"
                        % (name, expected[0]))
        REPORT.add(name, self.rounds, counts, "ok")
        return False
