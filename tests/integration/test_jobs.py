# SPDX-License-Identifier: MIT
"""Firmware jobs end to end: the real lodevd against the platform emulator's Jobs API and
firmware server, with a test installer hook and a reboot command that only records that it
ran (the "simulated reboot": the test restarts lodevd with a new boot id, which it sees in
a private mount namespace over /proc/sys/kernel/random/boot_id; see lodevtest.BootId)."""

import hashlib
import json
import os
import signal
import time
import uuid

import pytest

import lodevtest
from lodevtest import wait_until

TERMINAL = {"SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT", "REMOVED"}

HOOK = r"""#!/bin/sh
# Test installer: records each call, copies the file, writes progress, exits as told.
rec="{rec}"
echo "$1|$2|$LODEV_JOB_ID|$LODEV_FIRMWARE_ID|$LODEV_DEPLOYMENT_ID|$LODEV_THING_NAME|$LODEV_PROGRESS_FD" >> "$rec/calls"
ls /proc/self/fd > "$rec/fds-$1"
case "$1" in
install)
        tr '\0' '\n' < /proc/$$/environ > "$rec/env-install"
        echo $$ > "$rec/install.pid"
        cp "$2" "$rec/installed-$LODEV_JOB_ID"
        for p in 10 40 70 100; do echo $p >&3; done
        if [ -f "$rec/grandchild" ]; then
                sleep 60 &
                echo $! > "$rec/grandchild.pid"
        fi
        n=0
        while [ -f "$rec/hold-install" ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
        echo "installer: last words" >&2
        exit $(cat "$rec/install-exit" 2>/dev/null || echo 0)
        ;;
confirm)
        n=0
        while [ -f "$rec/hold-confirm" ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
        exit $(cat "$rec/confirm-exit" 2>/dev/null || echo 0)
        ;;
rollback)
        date +%s.%N >> "$rec/rollback-times"
        env > "$rec/env-rollback"
        echo "rollback: nothing armed any more" >&2
        exit $(cat "$rec/rollback-exit" 2>/dev/null || echo 0)
        ;;
esac
exit 3
"""

REBOOT = """#!/bin/sh
echo reboot >> "{rec}/reboots"
exit $(cat "{rec}/reboot-exit" 2>/dev/null || echo 0)
"""


class Device:
    """lodevd with the test hook, a reboot command and a boot id of its own (real_boot: the
    kernel's own boot id, untouched)."""

    def __init__(self, bus, workdir, platform, real_boot=False, **overrides):
        self.bus, self.workdir, self.platform = bus, workdir, platform
        self.rec = os.path.join(workdir, "rec")
        os.makedirs(self.rec, exist_ok=True)
        self.hook = os.path.join(workdir, "hook")
        self.reboot = os.path.join(workdir, "reboot")
        for path, text in ((self.hook, HOOK), (self.reboot, REBOOT)):
            with open(path, "w") as f:
                f.write(text.format(rec=self.rec))
            os.chmod(path, 0o755)
        self.boot_id = None if real_boot else lodevtest.BootId(workdir)
        firmware = {"installer": self.hook, "reboot_command": self.reboot,
                    "install_timeout": 60, "max_reboot_delay": 60}
        firmware.update(overrides.pop("firmware", {}))
        self.config = os.path.join(workdir, "lodevd.conf")
        lodevtest.write_device_config(self.config, workdir, platform, firmware=firmware,
                                      **overrides)
        self.daemon = lodevtest.Daemon(bus, workdir, self.config, boot_id=self.boot_id)
        self.thing = None

    def new_boot(self):
        self.boot_id.new_boot()

    def start(self):
        self.daemon.start()
        self.daemon.wait_online()
        self.thing = self.daemon.status()["thing_name"]
        return self

    def stop(self, sig=signal.SIGTERM):
        self.daemon.stop(sig)

    def flag(self, name, value=""):
        with open(os.path.join(self.rec, name), "w") as f:
            f.write(value)

    def unflag(self, name):
        try:
            os.unlink(os.path.join(self.rec, name))
        except FileNotFoundError:
            pass

    def calls(self, kind=None):
        try:
            with open(os.path.join(self.rec, "calls")) as f:
                lines = [l.rstrip("\n").split("|") for l in f]
        except FileNotFoundError:
            return []
        return [l for l in lines if kind is None or l[0] == kind]

    def rollback_times(self):
        try:
            with open(os.path.join(self.rec, "rollback-times")) as f:
                return [float(x) for x in f.read().split()]
        except FileNotFoundError:
            return []

    def reboots(self):
        try:
            with open(os.path.join(self.rec, "reboots")) as f:
                return len(f.readlines())
        except FileNotFoundError:
            return 0

    def downloads_dir(self):
        d = os.path.join(self.workdir, "state", "job")
        return [n for n in os.listdir(d) if n.startswith("firmware-")] if os.path.isdir(d) else []

    def journal(self):
        try:
            with open(os.path.join(self.workdir, "state", "job", "current")) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    def jobs(self):
        return lodevtest.lodevctl_json(self.bus, "jobs")

    def install_until_reboot(self, size=64 * 1024):
        """A job whose install asks for the reboot (exit 100), once the reboot command ran."""
        self.flag("install-exit", "100")
        fw, data = firmware(self.platform, size)
        job = self.platform.queue_job(self.thing, document=document(fw, data))
        wait_until(lambda: self.reboots() == 1, 30, what="the reboot command")
        return job

    def cleanup(self):
        self.stop()
        pidfile = os.path.join(self.rec, "grandchild.pid")
        if os.path.exists(pidfile):
            try:
                os.kill(int(open(pidfile).read()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        for name in ("hold-install", "hold-confirm"):
            self.unflag(name)


@pytest.fixture
def device(bus, workdir, platform):
    made = []

    def make(**overrides):
        d = Device(bus, workdir, platform, **overrides)
        made.append(d)
        LAST_DEVICE[:] = [d]
        return d

    yield make
    for d in made:
        d.cleanup()


def firmware(platform, size, seed=None):
    fw_id = "fw-" + uuid.uuid4().hex[:8]
    data = os.urandom(size)
    platform.add_firmware(fw_id, data)
    return fw_id, data


def document(fw_id, data=None, **extra):
    doc = {"operation": "firmware_update", "deploymentId": "dep-" + fw_id, "firmwareId": fw_id,
           "firmwareUrl": "${lodev:firmware-url:%s}" % fw_id}
    if data is not None:
        doc["sha256"] = hashlib.sha256(data).hexdigest()
        doc["size"] = len(data)
    doc.update(extra)
    return doc


def statuses(platform, thing, job):
    return [h["status"] for h in platform.job_history(thing, job)]


def device_terminals(platform, thing, job):
    """Terminal statuses the device set (accepted by the platform)."""
    return [h["status"] for h in platform.job_history(thing, job)
            if h["source"] != "platform" and h["status"] in TERMINAL]


LAST_DEVICE = []


def failed_after_rollback(platform, device, job):
    """The job's FAILED came after exactly one INSTALLER rollback (SPEC §6: never FAILED while
    the firmware may still be armed), with how the rollback ended in statusDetails."""
    hist = platform.job_history(device.thing, job)
    failed = [h for h in hist if h["status"] == "FAILED"]
    assert len(failed) == 1, hist
    rollbacks = device.rollback_times()
    assert len(rollbacks) == 1, (rollbacks, device.calls())
    assert rollbacks[0] < failed[0]["time"], (rollbacks, failed)
    assert "rollback exited with status 0" in failed[0]["statusDetails"].get("rollback", ""), \
        failed
    return failed[0]


def wait_status(platform, thing, job, want, timeout=60):
    def check():
        s = platform.job_execution(thing, job)["status"]
        return s if s in TERMINAL else None

    try:
        got = wait_until(check, timeout, interval=0.1, what="job %s to end" % job)
    except AssertionError:
        tail = LAST_DEVICE[-1].daemon.output()[-6000:] if LAST_DEVICE else ""
        raise AssertionError("job %s did not end within %d s; history %s\nlodevd:\n%s" % (
            job, timeout, platform.job_history(thing, job), tail))
    assert got == want, "job %s: %s, history %s" % (
        job, got, json.dumps(platform.job_history(thing, job), indent=1))
    return platform.job_execution(thing, job)


def test_success_history_and_identical_file(device, platform):
    d = device().start()
    d.flag("grandchild")  # the hook leaves a child holding its pipes open
    fw, data = firmware(platform, 3 * 1024 * 1024 + 123)
    job = platform.queue_job(d.thing, document=document(fw, data))
    t0 = time.monotonic()
    ex = wait_status(platform, d.thing, job, "SUCCEEDED")
    # The grandchild sleeps 60 s with the pipes open: the end came from the exit status.
    assert time.monotonic() - t0 < 30
    hist = platform.job_history(d.thing, job)
    st = [h["status"] for h in hist]
    assert st[0] == "QUEUED" and st[1] == "IN_PROGRESS" and st[-1] == "SUCCEEDED"
    assert set(st[1:-1]) <= {"IN_PROGRESS"}
    # statusDetails went out as strings, as AWS requires.
    for h in hist:
        for v in (h["rawStatusDetails"] or {}).values():
            assert isinstance(v, str), hist
    assert ex["statusDetails"].get("percentProgress") == "100"
    with open(os.path.join(d.rec, "installed-" + job), "rb") as f:
        assert f.read() == data
    (call,) = d.calls("install")
    assert call[2:7] == [job, fw, "dep-" + fw, d.thing, "3"]
    # Only stdin/out/err, the progress fd and the one ls opens itself.
    with open(os.path.join(d.rec, "fds-install")) as f:
        fds = sorted(int(x) for x in f.read().split())
    assert fds[:4] == [0, 1, 2, 3] and len(fds) <= 5, fds
    wait_until(lambda: d.downloads_dir() == [], 10, what="the download to be removed")
    wait_until(lambda: d.jobs()["id"] == "", 10, what="lodevd to be idle")
    out = d.daemon.output()
    assert "LODEV_JOB_ID" not in out  # fields go to the journal, not into the text
    assert "Job %s: SUCCEEDED" % job in out, out[-3000:]


def test_download_cut_resumes_with_range(device, platform):
    d = device().start()
    size = 6 * 1024 * 1024
    fw, data = firmware(platform, size)
    cut = 2 * 1024 * 1024
    platform.cut_next_download(cut)
    job = platform.queue_job(d.thing, document=document(fw, data))
    wait_status(platform, d.thing, job, "SUCCEEDED")
    dl = [x for x in platform.downloads() if x["path"] == "/firmware/" + fw]
    assert dl[0]["cut"] and dl[0]["sent"] == cut, dl
    assert dl[1]["status"] == 206 and dl[1]["range"] == "bytes=%d-" % cut, dl
    # Not a byte fetched twice: no restart from zero.
    assert sum(x["sent"] for x in dl) == size, dl
    with open(os.path.join(d.rec, "installed-" + job), "rb") as f:
        assert f.read() == data


def test_url_expired_mid_download(device, platform):
    d = device().start()
    size = 4 * 1024 * 1024
    fw, data = firmware(platform, size)
    platform.cut_next_download(1024 * 1024)
    job = platform.queue_job(d.thing, document=document(fw, data))
    # Once the first try was cut, the URL of the next one is already expired.
    wait_until(lambda: any(x["path"] == "/firmware/" + fw for x in platform.downloads()), 30,
               interval=0.02, what="the cut download")
    platform.expire_next_url(1)
    wait_status(platform, d.thing, job, "SUCCEEDED")
    dl = [x for x in platform.downloads() if x["path"] == "/firmware/" + fw]
    assert dl[-1]["range"] == "bytes=%d-" % (1024 * 1024) and dl[-1]["status"] == 206, dl
    assert sum(x["sent"] for x in dl) == size
    assert "stopped after 1048576 bytes: HTTP 403" in d.daemon.output()


def test_reboot_then_confirm(device, platform):
    d = device().start()
    job = d.install_until_reboot(512 * 1024)
    assert d.jobs()["status"] == "awaiting-reboot"
    assert platform.job_execution(d.thing, job)["status"] == "IN_PROGRESS"
    # The simulated reboot: lodevd stops, the boot id changes, lodevd starts.
    d.stop()
    d.new_boot()
    d.start()
    wait_status(platform, d.thing, job, "SUCCEEDED")
    assert len(d.calls("install")) == 1 and len(d.calls("confirm")) == 1
    assert d.reboots() == 1
    assert device_terminals(platform, d.thing, job) == ["SUCCEEDED"]


def test_journal_unreadable_at_start_waits(device, platform, bus, workdir):
    """After the reboot the job journal cannot be read (EIO on its open): lodevd runs, stays
    online and decides nothing (no confirm, no report, CheckJobs says why, a new job waits);
    once the journal can be read, the update is confirmed and the new job runs."""
    d = device().start()
    job = d.install_until_reboot()
    d.stop()
    d.new_boot()
    d.unflag("install-exit")
    flag = os.path.join(workdir, "journal-fault")
    open(flag, "w").close()
    d.daemon.start(extra_env=lodevtest.fault_env("/job/current", flag, 5))
    d.daemon.wait_online()
    fw2, data2 = firmware(platform, 64 * 1024)
    job2 = platform.queue_job(d.thing, document=document(fw2, data2))
    assert check_jobs_error(bus) == "com.lifeomic.Device1.Error.Failed"
    time.sleep(3)
    assert d.daemon.proc.poll() is None
    assert "Cannot read the job journal" in d.daemon.output()
    assert d.calls("confirm") == [] and len(d.calls("install")) == 1
    seen = len(statuses(platform, d.thing, job))
    time.sleep(2)
    assert statuses(platform, d.thing, job)[-1] == "IN_PROGRESS"
    assert len(statuses(platform, d.thing, job)) == seen, "a report while the journal is unread"
    assert statuses(platform, d.thing, job2) == ["QUEUED"]
    os.unlink(flag)
    wait_status(platform, d.thing, job, "SUCCEEDED")
    wait_status(platform, d.thing, job2, "SUCCEEDED")
    assert len(d.calls("confirm")) == 1 and len(d.calls("install")) == 2
    assert device_terminals(platform, d.thing, job) == ["SUCCEEDED"]


def test_restart_in_the_same_real_boot_reboots_again(device, platform):
    """lodevd reads the kernel's boot id itself (nothing overridden, nothing mounted): a
    restart of lodevd alone, in the same boot, asks for the reboot again and never
    confirms (SPEC §6); only a real new boot would."""
    with open(lodevtest.BOOT_ID) as f:
        real = f.read().strip()
    d = device(real_boot=True).start()
    job = d.install_until_reboot()
    d.stop()
    d.start()
    wait_until(lambda: d.reboots() == 2 or d.calls("confirm"), 30,
               what="the reboot command or confirm after the restart")
    assert d.calls("confirm") == []
    assert d.reboots() == 2
    assert d.jobs()["status"] == "awaiting-reboot"
    assert platform.job_execution(d.thing, job)["status"] == "IN_PROGRESS"
    assert d.journal().get("bootId") == real, d.journal()
    assert "Cannot read the boot id" not in d.daemon.output()


def test_failed_confirm_fails_the_job(device, platform):
    d = device().start()
    d.flag("install-exit", "100")
    d.flag("confirm-exit", "1")
    fw, data = firmware(platform, 64 * 1024)
    job = platform.queue_job(d.thing, document=document(fw, data))
    wait_until(lambda: d.reboots() == 1, 30, what="the reboot command")
    d.stop()
    d.new_boot()
    d.start()
    ex = wait_status(platform, d.thing, job, "FAILED")
    assert "confirm" in ex["statusDetails"]["reason"]


def test_restarts_without_reboot_are_bounded(device, platform):
    """A reboot command that never reboots: lodevd restarts with the same boot id, asks for
    the reboot again, and fails the job after firmware.max_attempts."""
    d = device(firmware={"max_attempts": 2}).start()
    d.flag("install-exit", "100")
    fw, data = firmware(platform, 64 * 1024)
    job = platform.queue_job(d.thing, document=document(fw, data))
    for n in (1, 2, 3):
        wait_until(lambda: d.reboots() == n, 30, what="reboot %d" % n)
        d.stop()
        d.start()
    ex = wait_status(platform, d.thing, job, "FAILED")
    assert "restarted" in ex["statusDetails"]["reason"]
    assert d.reboots() == 3 and len(d.calls("install")) == 1
    failed_after_rollback(platform, d, job)


@pytest.mark.parametrize("phase", ["downloading", "installing", "awaiting-reboot", "confirming"])
def test_sigkill_in_each_phase(device, platform, phase):
    size = 4 * 1024 * 1024
    d = device(transfers={"max_rate": 1024 * 1024} if phase == "downloading" else {}).start()
    if phase == "installing":
        d.flag("hold-install")
    if phase in ("awaiting-reboot", "confirming"):
        d.flag("install-exit", "100")
    if phase == "confirming":
        d.flag("hold-confirm")
    fw, data = firmware(platform, size)
    job = platform.queue_job(d.thing, document=document(fw, data))

    if phase == "downloading":
        wait_until(lambda: d.journal().get("offset", 0) > 0, 30,
                   what="a durable part of the download")
    elif phase == "installing":
        wait_until(lambda: d.calls("install"), 30, what="the installer")
    else:
        wait_until(lambda: d.reboots() == 1, 30, what="the reboot command")
    if phase == "confirming":
        d.stop()
        d.new_boot()
        d.start()
        wait_until(lambda: d.calls("confirm"), 30, what="the confirm hook")
    d.stop(signal.SIGKILL)
    if phase == "awaiting-reboot":
        d.new_boot()  # a power cut: the device comes back on the new firmware
    if phase == "installing":
        d.unflag("hold-install")  # the orphaned installer ends by itself
    if phase == "confirming":
        d.unflag("hold-confirm")
    d.start()

    want = "FAILED" if phase == "installing" else "SUCCEEDED"
    ex = wait_status(platform, d.thing, job, want, timeout=90)
    if phase == "installing":
        # RAUC's service finishes an install its client left: rolled back first.
        assert "interrupted" in ex["statusDetails"]["reason"]
        failed_after_rollback(platform, d, job)
    else:
        assert d.rollback_times() == []
    time.sleep(1)
    assert device_terminals(platform, d.thing, job) == [want]
    assert len(d.calls("install")) == 1
    if phase == "downloading":
        dl = [x for x in platform.downloads() if x["path"] == "/firmware/" + fw]
        if not (dl[-1]["range"] and dl[-1]["status"] == 206):
            open("/tmp/sigkill-dl.log", "w").write(json.dumps(dl) + "\n" + d.daemon.output())
        assert dl[-1]["range"] and dl[-1]["status"] == 206, dl  # resumed, not restarted
        with open(os.path.join(d.rec, "installed-" + job), "rb") as f:
            assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()


def test_hook_timeout_fails_with_stderr(device, platform):
    """A timed-out install may have armed the new firmware: rolled back before FAILED."""
    d = device(firmware={"install_timeout": 2}).start()
    d.flag("hold-install")
    fw, data = firmware(platform, 64 * 1024)
    job = platform.queue_job(d.thing, document=document(fw, data))
    ex = wait_status(platform, d.thing, job, "FAILED", timeout=40)
    assert "did not finish in time" in ex["statusDetails"]["reason"]
    failed = failed_after_rollback(platform, d, job)
    # The rollback's own words go with it, not as the installer's.
    assert failed["statusDetails"]["rollback"].endswith(": rollback: nothing armed any more")
    assert "rollback" not in ex["statusDetails"].get("stderr", "")


NO_CLOSE_RANGE = os.path.join(lodevtest.BUILD_DIR, "tests", "liblodev-no-close-range.so")


def test_hook_environment_and_descriptors(device, platform, workdir):
    """The hook's environment is an allow-list of lodevd's plus the job's variables (SPEC §6):
    a LODEV_JOB_ID lodevd got does not shadow the job's, and NOTIFY_SOCKET, WATCHDOG_* and
    other LODEV_* stay out. Where close_range() fails, the descriptors are closed another way:
    one leaked without close-on-exec does not reach the hook."""
    d = device()
    d.daemon.start(extra_env={"LODEV_JOB_ID": "job-forged", "LODEV_SECRET": "s3cret",
                              "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1",
                              "LANG": "C.UTF-8", "LC_TIME": "C", "SOMETHING_ELSE": "x",
                              **lodevtest.preload_env(NO_CLOSE_RANGE),
                              "LODEV_LEAK_FLAG": os.path.join(workdir, "leak")})
    d.daemon.wait_online()
    d.thing = d.daemon.status()["thing_name"]
    open(os.path.join(workdir, "leak"), "w").close()
    leaked = "/proc/%d/fd/77" % d.daemon.proc.pid
    wait_until(lambda: os.path.exists(leaked), 10, what="the leaked descriptor")
    fw, data = firmware(platform, 64 * 1024)
    job = platform.queue_job(d.thing, document=document(fw, data))
    wait_status(platform, d.thing, job, "SUCCEEDED")
    env = {}
    # The environment the hook was started with (/proc/PID/environ), before the shell made
    # one variable of two.
    with open(os.path.join(d.rec, "env-install")) as f:
        for line in f:
            if "=" in line:  # the first of a name wins, as getenv() takes it
                env.setdefault(*line.rstrip("\n").split("=", 1))
    assert env["LODEV_JOB_ID"] == job, env
    assert env["LODEV_FIRMWARE_ID"] == fw and env["LODEV_DEPLOYMENT_ID"] == "dep-" + fw
    assert env["LODEV_THING_NAME"] == d.thing and env["LODEV_PROGRESS_FD"] == "3"
    lodev = sorted(k for k in env if k.startswith("LODEV_"))
    assert lodev == ["LODEV_DEPLOYMENT_ID", "LODEV_FIRMWARE_ID", "LODEV_JOB_ID",
                     "LODEV_PROGRESS_FD", "LODEV_THING_NAME"], lodev
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "SOMETHING_ELSE",
              "LD_PRELOAD", "LODEV_LEAK_FLAG"):
        assert k not in env, (k, env)
    assert env["LANG"] == "C.UTF-8" and env["LC_TIME"] == "C" and env["PATH"], env
    assert env["DBUS_SYSTEM_BUS_ADDRESS"] == d.bus.address
    with open(os.path.join(d.rec, "fds-install")) as f:
        fds = sorted(int(x) for x in f.read().split())
    assert 77 not in fds and fds[:4] == [0, 1, 2, 3] and len(fds) <= 5, fds
    # lodevd itself still holds the leaked descriptor: the hook did not miss it by chance.
    assert os.path.exists(leaked)


def test_killed_installer_rolled_back_before_failed(device, platform):
    d = device().start()
    d.flag("hold-install")
    fw, data = firmware(platform, 64 * 1024)
    job = platform.queue_job(d.thing, document=document(fw, data))
    wait_until(lambda: os.path.exists(os.path.join(d.rec, "install.pid")), 30,
               what="the installer")
    with open(os.path.join(d.rec, "install.pid")) as f:
        os.kill(int(f.read()), signal.SIGKILL)
    ex = wait_status(platform, d.thing, job, "FAILED")
    assert "killed by signal 9" in ex["statusDetails"]["reason"], ex
    failed_after_rollback(platform, d, job)
    d.unflag("hold-install")


def test_reboot_command_fails_retried_then_rolled_back(device, platform):
    """reboot_command fails after an install that exited 100: run again with a growing
    wait, up to max_reboot_tries (3 by default), then INSTALLER rollback, then FAILED;
    never FAILED with the slot armed. The next job then runs."""
    d = device().start()
    d.flag("install-exit", "100")
    d.flag("reboot-exit", "1")
    fw, data = firmware(platform, 64 * 1024)
    job = platform.queue_job(d.thing, document=document(fw, data))
    t0 = time.monotonic()
    ex = wait_status(platform, d.thing, job, "FAILED", timeout=90)
    assert d.reboots() == 3, d.reboots()
    # The waits between the tries: 2 s, then 4 s.
    assert time.monotonic() - t0 >= 6
    assert "could not be rebooted into the new firmware (3 tries)" in \
        ex["statusDetails"]["reason"], ex
    failed_after_rollback(platform, d, job)
    assert d.calls("confirm") == []
    assert device_terminals(platform, d.thing, job) == ["FAILED"]
    d.unflag("install-exit")
    d.unflag("reboot-exit")
    fw2, data2 = firmware(platform, 64 * 1024)
    job2 = platform.queue_job(d.thing, document=document(fw2, data2))
    wait_status(platform, d.thing, job2, "SUCCEEDED")


def test_reboot_that_does_not_happen_runs_again(device, platform):
    """reboot_command exits 0 but the device stays in the same boot: after reboot_timeout it
    runs again, and after max_reboot_tries the install is rolled back and the job FAILED; the
    device is not stuck in awaiting-reboot, and the next job runs."""
    d = device(firmware={"reboot_timeout": 10, "max_reboot_tries": 2}).start()
    job = d.install_until_reboot()
    t1 = time.monotonic()
    assert d.jobs()["status"] == "awaiting-reboot"
    wait_until(lambda: d.reboots() == 2, 30, what="the reboot command again")
    assert time.monotonic() - t1 >= 10
    ex = wait_status(platform, d.thing, job, "FAILED", timeout=40)
    assert "still the same boot 10 s after the reboot command" in ex["statusDetails"]["reason"]
    failed_after_rollback(platform, d, job)
    wait_until(lambda: d.jobs()["id"] == "", 10, what="lodevd to be idle")
    d.unflag("install-exit")
    fw2, data2 = firmware(platform, 64 * 1024)
    job2 = platform.queue_job(d.thing, document=document(fw2, data2))
    wait_status(platform, d.thing, job2, "SUCCEEDED")


def test_hook_failure_reports_last_stderr_line(device, platform):
    d = device().start()
    d.flag("install-exit", "7")
    fw, data = firmware(platform, 64 * 1024)
    job = platform.queue_job(d.thing, document=document(fw, data))
    ex = wait_status(platform, d.thing, job, "FAILED")
    assert ex["statusDetails"]["stderr"] == "installer: last words"
    assert "status 7" in ex["statusDetails"]["reason"]


def test_unknown_operation_rejected(device, platform):
    d = device().start()
    job = platform.queue_job(d.thing, document={"operation": "reboot_now"})
    ex = wait_status(platform, d.thing, job, "REJECTED")
    assert "not supported" in ex["statusDetails"]["reason"]
    assert d.calls() == []


def job_errors(platform, job):
    return [e for e in platform.errors() if "/jobs/%s/" % job in e["topic"]]


def test_job_queued_at_startup_answered_once(device, platform):
    """A job queued while lodevd is down reaches it twice at the next start: notify-next
    (kept for the persistent session) and the list it asks for. It is decided and reported
    once: no second REJECTED that the platform would refuse."""
    for _ in range(3):
        d = device().start()
        d.stop()
        job = platform.queue_job(d.thing, document={"operation": "reboot_now"})
        d.start()
        ex = wait_status(platform, d.thing, job, "REJECTED")
        assert "not supported" in ex["statusDetails"]["reason"]
        time.sleep(2)
        assert device_terminals(platform, d.thing, job) == ["REJECTED"]
        assert job_errors(platform, job) == [], job_errors(platform, job)
        d.stop()


def test_next_job_not_held_by_the_last_ones_update(device, platform):
    """The previous job's final update was carried out but its answers were lost, and it is
    being sent again when the next job starts: the next job's first update does not wait
    behind it (30 s), and goes out within 2 s of lodevd learning the previous one is over."""
    d = device().start()
    d.flag("hold-install")
    fw, data = firmware(platform, 64 * 1024)
    job = platform.queue_job(d.thing, document=document(fw, data))
    wait_until(lambda: d.jobs()["status"] == "installing", 30, what="the install")
    fw2, data2 = firmware(platform, 64 * 1024)
    job2 = platform.queue_job(d.thing, document=document(fw2, data2))
    time.sleep(1)  # the progress report of the install is answered
    # SUCCEEDED is recorded, and its answer and that of the copy sent after the reconnect
    # are lost.
    platform.lose_next_answer("jobs-update", 2)
    d.unflag("hold-install")
    wait_status(platform, d.thing, job, "SUCCEEDED")
    time.sleep(1)
    t0 = time.time()
    platform.drop_client(d.thing)
    wait_status(platform, d.thing, job2, "SUCCEEDED", timeout=90)
    started = [h["time"] for h in platform.job_history(d.thing, job2)
               if h["status"] == "IN_PROGRESS"]
    assert started[0] - t0 < 5.0, (t0, started, d.daemon.output()[-3000:])
    assert device_terminals(platform, d.thing, job) == ["SUCCEEDED"]


FAULT_INJECT = os.path.join(lodevtest.BUILD_DIR, "tests", "liblodev-fault-inject.so")


def test_journal_that_cannot_be_saved_ends_the_job(device, platform, workdir):
    """The disk is full for the job journal (ENOSPC from the LD_PRELOAD shim): a new job is
    REJECTED once with the reason, from memory, and not retried in a loop; one under way
    is FAILED. Once the disk has room again, the next job runs."""
    flag = os.path.join(workdir, "journal-fault")
    d = device(transfers={"max_rate": 1024 * 1024})
    d.daemon.start(extra_env={**lodevtest.preload_env(FAULT_INJECT), "LODEV_FAULT_FLAG": flag,
                              "LODEV_FAULT_PATH": "/job/current.tmp", "LODEV_FAULT_ERRNO": "28"})
    d.daemon.wait_online()
    d.thing = d.daemon.status()["thing_name"]
    open(flag, "w").close()
    fw, data = firmware(platform, 64 * 1024)
    job = platform.queue_job(d.thing, document=document(fw, data))
    ex = wait_status(platform, d.thing, job, "REJECTED")
    assert "the job journal cannot be saved: No space left on device" in \
        ex["statusDetails"]["reason"], ex
    time.sleep(3)
    assert statuses(platform, d.thing, job) == ["QUEUED", "REJECTED"]
    assert job_errors(platform, job) == []
    assert d.daemon.proc.poll() is None
    assert d.calls() == []

    # Full again half-way through a download: FAILED, reported from memory.
    os.unlink(flag)
    fw2, data2 = firmware(platform, 4 * 1024 * 1024)
    job2 = platform.queue_job(d.thing, document=document(fw2, data2))
    wait_until(lambda: d.journal().get("offset", 0) > 0, 30, what="a durable part")
    open(flag, "w").close()
    ex = wait_status(platform, d.thing, job2, "FAILED", timeout=60)
    assert "No space left on device" in ex["statusDetails"]["reason"], ex
    assert device_terminals(platform, d.thing, job2) == ["FAILED"]
    assert d.calls() == []

    os.unlink(flag)
    fw3, data3 = firmware(platform, 64 * 1024)
    job3 = platform.queue_job(d.thing, document=document(fw3, data3))
    wait_status(platform, d.thing, job3, "SUCCEEDED")


def test_older_journal_confirmed(device, platform):
    """The journal of an older lodevd (version 1, what the firmware before this one wrote) in
    awaiting-reboot: an update that brings a new journal format is still confirmed after its
    reboot."""
    d = device().start()
    job = d.install_until_reboot()
    d.stop()
    path = os.path.join(d.workdir, "state", "job", "current")
    with open(path) as f:
        journal = json.load(f)
    assert journal["version"] == 2 and journal["phase"] == "awaiting-reboot"
    journal["version"] = 1
    del journal["rebootTries"]
    with open(path, "w") as f:
        json.dump(journal, f)
    d.new_boot()
    d.start()
    wait_status(platform, d.thing, job, "SUCCEEDED")
    assert len(d.calls("confirm")) == 1


def test_newer_journal_kept(device, platform):
    """A journal written by a newer lodevd (after a fallback to older firmware, say) is not
    read and not deleted; the job it was about is failed as one without a record."""
    d = device().start()
    d.flag("hold-install")
    fw2, data2 = firmware(platform, 64 * 1024)
    job2 = platform.queue_job(d.thing, document=document(fw2, data2))
    wait_until(lambda: d.calls("install"), 30, what="the install")
    path = os.path.join(d.workdir, "state", "job", "current")
    d.stop(signal.SIGKILL)
    d.unflag("hold-install")
    newer = '{"version": 99, "phase": "something new", "jobId": "%s"}\n' % job2
    with open(path, "w") as f:
        f.write(newer)
    d.start()
    ex = wait_status(platform, d.thing, job2, "FAILED")
    assert "unreadable" in ex["statusDetails"]["reason"], ex
    with open(path + ".newer") as f:
        assert f.read() == newer
    assert "written by a newer lodevd" in d.daemon.output()


class Server:
    """A small HTTP server of the test's own on loopback: answer(path) -> (status, headers,
    body) for each GET; the paths asked for are kept."""

    def __init__(self, answer):
        import http.server
        import threading

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.paths.append(self.path)
                status, headers, body = answer(self.path)
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.paths = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("answer, words", [
    ((302, [("Location", "file:///etc/passwd")], b""), "firmware download was refused"),
    ((404, [], b"no such firmware"), "HTTP 404"),
])
def test_permanent_download_errors_fail_at_once(device, platform, answer, words):
    """What cannot pass is not retried: a redirect to a scheme lodevd refuses, a 404."""
    server = Server(lambda path: answer)
    try:
        d = device().start()
        job = platform.queue_job(d.thing, document={
            "operation": "firmware_update", "deploymentId": "dep-x", "firmwareId": "fw-x",
            "firmwareUrl": server.url + "/fw.bin"})
        t0 = time.monotonic()
        ex = wait_status(platform, d.thing, job, "FAILED")
        assert time.monotonic() - t0 < 10
        assert words in ex["statusDetails"]["reason"], ex
        assert server.paths == ["/fw.bin"], server.paths
        assert d.calls() == []
    finally:
        server.stop()


def test_download_keeps_the_spools_room(device, platform):
    """The observation spool may take up to spool.max_bytes: a download that would leave less
    free than what the spool may still take fails, with a reason that says so, without a
    byte fetched."""
    d = device(spool={"max_bytes": 1 << 40}).start()
    fw, data = firmware(platform, 256 * 1024)
    job = platform.queue_job(d.thing, document=document(fw, data))
    ex = wait_status(platform, d.thing, job, "FAILED")
    reason = ex["statusDetails"]["reason"]
    assert "not enough space for the firmware" in reason, ex
    assert "must stay free for the observation spool and the job journal" in reason, ex
    assert not [x for x in platform.downloads() if x["path"] == "/firmware/" + fw]
    assert d.calls() == []


def test_download_capped_without_a_size(device, platform):
    """Without a size in the document a download takes at most firmware.max_download_bytes;
    with one, at most that size (a server that sends more is not what the document says)."""
    d = device(firmware={"max_download_bytes": 1024 * 1024}).start()
    fw, data = firmware(platform, 3 * 1024 * 1024)
    job = platform.queue_job(d.thing, document=document(fw))
    ex = wait_status(platform, d.thing, job, "FAILED")
    assert "larger than firmware.max_download_bytes, 1048576 bytes" in \
        ex["statusDetails"]["reason"], ex
    doc = document(fw, data)
    doc["size"] = 1024 * 1024
    doc["sha256"] = hashlib.sha256(data[:1024 * 1024]).hexdigest()
    job2 = platform.queue_job(d.thing, document=doc)
    ex = wait_status(platform, d.thing, job2, "FAILED")
    assert "does not match the job document" in ex["statusDetails"]["reason"], ex
    wait_until(lambda: d.downloads_dir() == [], 10, what="the download to be removed")
    assert d.calls() == []


def test_resume_hash_does_not_hold_the_loop(device, platform, workdir):
    """A download cut near the end of 1 GiB resumes: the bytes already there are hashed again
    from the loop in short steps, so the watchdog (WATCHDOG_USEC 200 ms, pinged from the loop)
    never waits long; hashing them in one go held the loop for a second or more."""
    size = 1024 * 1024 * 1024
    fw_id = "big-" + uuid.uuid4().hex[:8]
    path = os.path.join(platform.workdir, "firmware", fw_id)
    digest = hashlib.sha256()
    chunk = os.urandom(4 * 1024 * 1024)
    with open(path, "wb") as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)
            digest.update(chunk)
    try:
        d = device()
        d.daemon.start(extra_env={"WATCHDOG_USEC": "200000"})
        d.daemon.wait_online()
        d.thing = d.daemon.status()["thing_name"]
        platform.cut_next_download(size - 1024 * 1024)
        job = platform.queue_job(d.thing, document={
            "operation": "firmware_update", "deploymentId": "dep", "firmwareId": fw_id,
            "firmwareUrl": "${lodev:firmware-url:%s}" % fw_id,
            "sha256": digest.hexdigest(), "size": size})
        wait_until(lambda: any(x["path"] == "/firmware/" + fw_id and x.get("cut")
                               for x in platform.downloads()), 120, what="the cut download")
        t0 = time.monotonic()
        wait_status(platform, d.thing, job, "SUCCEEDED", timeout=300)
        dl = [x for x in platform.downloads() if x["path"] == "/firmware/" + fw_id]
        assert dl[-1]["status"] == 206 and dl[-1]["range"] == \
            "bytes=%d-" % (size - 1024 * 1024), dl
        ticks = [t for t in d.daemon.notify.watchdog if t >= t0]
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        assert len(ticks) > 10, ticks
        assert max(gaps) < 0.5, "the loop stood still for %.3f s" % max(gaps)
    finally:
        os.unlink(path)


def test_sha256_mismatch_fails(device, platform):
    d = device().start()
    fw, data = firmware(platform, 256 * 1024)
    doc = document(fw, data)
    doc["sha256"] = hashlib.sha256(b"other").hexdigest()
    job = platform.queue_job(d.thing, document=doc)
    ex = wait_status(platform, d.thing, job, "FAILED")
    assert "does not match" in ex["statusDetails"]["reason"]
    assert d.calls() == []
    wait_until(lambda: d.downloads_dir() == [], 10, what="the download to be removed")


def test_canceled_mid_download(device, platform):
    d = device(transfers={"max_rate": 512 * 1024}).start()
    fw, data = firmware(platform, 8 * 1024 * 1024)
    job = platform.queue_job(d.thing, document=document(fw, data))
    wait_until(lambda: d.jobs()["status"] == "downloading" and d.downloads_dir(), 30,
               what="the download under way")
    platform.cancel_job(d.thing, job, force=True)
    wait_until(lambda: d.jobs()["id"] == "", 20, what="lodevd to drop the job")
    wait_until(lambda: d.downloads_dir() == [], 10, what="the download to be removed")
    assert statuses(platform, d.thing, job)[-1] == "CANCELED"
    assert device_terminals(platform, d.thing, job) == []
    assert d.calls() == []
    # The next job runs.
    fw2, data2 = firmware(platform, 64 * 1024)
    job2 = platform.queue_job(d.thing, document=document(fw2, data2))
    wait_status(platform, d.thing, job2, "SUCCEEDED")


def test_inhibitor_delays_reboot(device, platform, bus):
    import subprocess

    d = device().start()
    d.flag("install-exit", "100")
    release = os.path.join(d.rec, "release")
    holder = subprocess.Popen(
        [lodevtest.LODEVCTL, "inhibit-reboot", "--who", "ecg", "--why", "recording a patient",
         "sh", "-c", "while [ ! -f %s ]; do sleep 0.1; done" % release], env=bus.env())
    try:
        wait_until(lambda: lodevtest.lodevctl_json(bus, "status")["reboot_inhibitors"], 10,
                   what="the inhibitor")
        st = lodevtest.lodevctl(bus, "status")
        assert "Reboot held by: ecg: recording a patient" in st.stdout
        fw, data = firmware(platform, 64 * 1024)
        job = platform.queue_job(d.thing, document=document(fw, data))
        wait_until(lambda: d.jobs()["status"] == "awaiting-reboot", 30, what="the install")
        time.sleep(2)
        assert d.reboots() == 0
        open(release, "w").close()
        wait_until(lambda: d.reboots() == 1, 10, what="the reboot after the release")
        assert holder.wait(10) == 0
        assert lodevtest.lodevctl_json(bus, "status")["reboot_inhibitors"] == []
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert platform.job_execution(d.thing, job)["status"] == "IN_PROGRESS"


def test_check_jobs_and_jobs_command(device, platform, bus):
    d = device().start()
    r = lodevtest.lodevctl(bus, "jobs", "--check")
    assert r.returncode == 0, r.stderr
    assert "No firmware job." in r.stdout
    d.flag("hold-install")
    fw, data = firmware(platform, 64 * 1024)
    job = platform.queue_job(d.thing, document=document(fw, data))
    wait_until(lambda: d.jobs()["status"] == "installing", 30, what="the install")
    r = lodevtest.lodevctl(bus, "jobs")
    assert job in r.stdout and "installing" in r.stdout
    d.unflag("hold-install")
    wait_status(platform, d.thing, job, "SUCCEEDED")


def check_jobs_error(bus):
    """CheckJobs() through dbus-send: the error name, or None on success."""
    import subprocess

    r = subprocess.run(["dbus-send", "--system", "--print-reply", "--reply-timeout=90000",
                        "--dest=com.lifeomic.Device1", "/com/lifeomic/Device1",
                        "com.lifeomic.Device1.CheckJobs"],
                       env=bus.env(), capture_output=True, text=True, timeout=120)
    if r.returncode == 0:
        return None
    return r.stderr.split(":")[0].replace("Error ", "").strip()


def test_check_jobs_errors_are_distinct(device, platform, bus):
    """CheckJobs: no answer from the platform is Timeout, no connection is Offline, each with
    its own error name (liblodev: ETIMEDOUT, ENETDOWN) rather than one Failed for both."""
    d = device().start()
    # The list request of the connect is answered first, so that the one ignored is ours.
    assert check_jobs_error(bus) is None
    platform.ignore_next("jobs-get")
    t0 = time.monotonic()
    assert check_jobs_error(bus) == "com.lifeomic.Device1.Error.Timeout"
    assert 25 < time.monotonic() - t0 < 60
    r = lodevtest.lodevctl(bus, "jobs", "--check")
    assert r.returncode == 0, r.stderr
    platform.broker_stop()
    try:
        wait_until(lambda: d.daemon.status()["state"] != "online", 30, what="offline")
        assert check_jobs_error(bus) == "com.lifeomic.Device1.Error.Offline"
        r = lodevtest.lodevctl(bus, "jobs", "--check")
        assert r.returncode == 1 and "not online" in r.stderr, (r.returncode, r.stderr)
    finally:
        platform.broker_start()
    d.daemon.wait_online(60)
    assert check_jobs_error(bus) is None


HOSTILE = [
    ({"operation": "firmware_update", "deploymentId": "d", "firmwareId": 5,
      "firmwareUrl": "https://127.0.0.1/x"}, "REJECTED", "firmwareId"),
    ({"operation": "firmware_update", "deploymentId": "d", "firmwareId": "f"},
     "REJECTED", "firmwareUrl"),
    ({"operation": "firmware_update", "deploymentId": "d", "firmwareId": "f",
      "firmwareUrl": "file:///etc/shadow"}, "REJECTED", "https"),
    ({"operation": "firmware_update", "deploymentId": "d", "firmwareId": "f",
      "firmwareUrl": "http://127.0.0.1/fw"}, "REJECTED", "http://"),
    ({"operation": "firmware_update", "deploymentId": "d", "firmwareId": "f",
      "firmwareUrl": "https://127.0.0.1/fw", "sha256": ["x"]}, "REJECTED", "sha256"),
    ({"operation": "firmware_update", "deploymentId": "d", "firmwareId": "x" * 120000,
      "firmwareUrl": "https://127.0.0.1/fw"}, "REJECTED", "firmwareId"),
    ({"operation": ["firmware_update"]}, "REJECTED", "operation"),
    ([1, 2, 3], "REJECTED", "operation"),
]


def test_hostile_documents(device, platform):
    d = device(http={"allow_http": False}).start()
    jobs = [(platform.queue_job(d.thing, document=doc), want, word) for doc, want, word in HOSTILE]
    # Ids no report can be addressed to, injected as the platform.
    topic = "$aws/things/%s/jobs/notify-next" % d.thing
    for bad in ("../../etc/passwd", "a/b", "job\nFAKE: line", "x" * 65):
        payload = {"execution": {"jobId": bad, "status": "QUEUED", "versionNumber": 1,
                                 "executionNumber": 1,
                                 "jobDocument": {"operation": "firmware_update"}}}
        platform.inject(topic, json.dumps(payload).encode())
    platform.inject(topic, b"\xff not json")
    for job, want, word in jobs:
        ex = wait_status(platform, d.thing, job, want)
        assert word in ex["statusDetails"]["reason"], (word, ex)
    assert d.calls() == []
    assert d.daemon.proc.poll() is None
    out = d.daemon.output()
    assert out.count("cannot be decoded") >= 5, out[-4000:]
    assert "\nFAKE: line" not in out
    assert d.downloads_dir() == []
