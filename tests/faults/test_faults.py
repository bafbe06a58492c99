# SPDX-License-Identifier: MIT
"""The fault matrix (issue 14): lodevd under a mixed load (observations from four clients,
uploads, a firmware job) through the real bus, broker and emulator, with faults at random
moments and at each named step. After each: every acknowledged observation delivered, every
spooled file uploaded byte-identical or still queued, every job with exactly one terminal
status and at most one install, lodevd running.

Bounded: LODEV_FAULTS_SCALE (default 0.15) scales the rounds of the random cases (1 = 100
SIGKILLs and 100 broker restarts); LODEV_FAULTS_SEED fixes the moments. The counts are
printed at the end ("faults: ...")."""

import errno
import os
import shutil
import signal
import subprocess
import time

import pytest

import faultlib
import lodevtest
from faultlib import KiB, SEED, Case, Load, StepNotReached, scaled
from lodevtest import wait_until


def sleep_serving(device, seconds, online=True):
    """Sleeps while the device reboots when asked; online=False while the broker is held
    away (stopped or paused), when lodevd cannot come online."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        device.service(online=online)
        time.sleep(min(0.02, max(0, end - time.monotonic())))


def settle_and_check(rig, device, what, case, timeout=90):
    if not rig.settle(device, timeout):
        st = device.status() if device.alive() else {}
        raise AssertionError("%s: lodevd did not finish its work within %d s (%s)\n%s"
                             % (what, timeout, st, device.output_tail()))
    case.counts = rig.check(device, what)


# --- SIGKILL at random moments --------------------------------------------------------------


def test_sigkill_at_random_moments(rig):
    d = rig.device().start()
    with Case(rig.name) as case:
        for i in range(scaled(100)):
            load = Load(rig, d, count=250, uploads=1, job=(i % 4 == 0))
            sleep_serving(d, rig.rng.uniform(0.05, 1.5))
            d.kill()
            load.finish()
            d.start()
            case.rounds += 1
            settle_and_check(rig, d, "after SIGKILL %d" % (i + 1), case)


# --- SIGKILL at each named step -------------------------------------------------------------

# name: (LODEV_STOP_AT, what the load includes). Job phases stop at the journal write that
# records them, before it is made (the phase is not durable yet) unless said otherwise. The
# HTTP steps (send, recv: put*, job-download*) are calls of the transfer helper lodevd starts
# (lodevd-transfer, given the shim by faultlib's wrapper): the helper stops there, and lodevd
# and the helper are SIGKILLed together, as when the machine dies; N counts in that helper.
JOURNAL = "write|path~/job/current&data~\"phase\":\"%s\"|1|before"
STEPS = {
        "observation-fsync": ("fdatasync|path~/spool/|3|before", "observations"),
        "observation-fsynced": ("fdatasync|path~/spool/|3|after", "observations"),
        "puback": ("ssl_read|data=hex:40|40|after", "observations"),
        "ack-persist": ("rename|path~/spool/head|1|before", "observations"),
        "ack-persisted": ("rename|path~/spool/head|1|after", "observations"),
        "upload-commit": ("rename|path~/transfers/&path~.json|1|before", "upload"),
        "upload-committed": ("rename|path~/transfers/&path~.json|1|after", "upload"),
        "link-request": ("ssl_write|data~$aws/rules/CreateFileUploadLink|1|before", "upload"),
        "link-requested": ("ssl_write|data~$aws/rules/CreateFileUploadLink|1|after", "upload"),
        "link-answer": ("ssl_read|data~uploadUrl|1|after", "upload"),
        "put": ("send|data^PUT |1|before", "upload"),
        "put-sent": ("send|data^PUT |1|after", "upload"),
        "put-answered": ("recv|data^HTTP/1.1 200|1|after", "upload"),
        "job-accepted": (JOURNAL % "accepted", "job"),
        "job-in-progress": ("ssl_write|data~\"status\":\"IN_PROGRESS\"|1|after", "job"),
        "job-download": ("send|data^GET /firmware|1|before", "job"),
        "job-downloading": (JOURNAL % "downloading", "job"),
        "job-download-answered": ("recv|data^HTTP/1.1 20|1|after", "job"),
        "job-installing": (JOURNAL % "installing", "job"),
        "job-awaiting-reboot": (JOURNAL % "awaiting-reboot", "job"),
        "job-confirming": (JOURNAL % "confirming", "job"),
        "job-reporting": (JOURNAL % "reporting", "job"),
        "job-succeeded": ("ssl_write|data~\"status\":\"SUCCEEDED\"|1|before", "job"),
        "job-succeeded-sent": ("ssl_write|data~\"status\":\"SUCCEEDED\"|1|after", "job"),
        "job-done": (JOURNAL % "done", "job"),
}


class Steps:
    """One device for the steps in turn: what one step leaves behind is the next one's start.
    After a step that failed, the next starts over on a new device, so that one failure is
    not counted again by every step after it."""

    def __init__(self, bus, platform, workdir):
        self.bus, self.platform, self.workdir = bus, platform, workdir
        self.rig = None
        self.n = 0

    def get(self):
        if self.rig is None:
            self.n += 1
            self.rig = faultlib.Rig(self.bus, self.platform,
                                    os.path.join(self.workdir, "s%d" % self.n), "steps")
            self.rig.device().start()
            self.rig.last_counts = {}
        return self.rig

    def drop(self):
        if self.rig:
            for d in self.rig.devices:
                d.kill()
        self.rig = None


class TestSigkillAtStep:
    """Each step in turn on one device; the device goes when the last step is done, before
    the next case starts its own (one lodevd per bus)."""

    @pytest.fixture(scope="class")
    def steps(self, bus, platform, workdir):
        s = Steps(bus, platform, workdir)
        yield s
        s.drop()

    @pytest.fixture(autouse=True)
    def _steps_start_over(self, steps):
        """A failed step hands the next one a new device."""
        steps.failed = True
        yield
        if steps.failed:
            steps.drop()

    @pytest.mark.parametrize("step", list(STEPS))
    def test_sigkill_at_step(self, steps, step):
        """lodevd (or its transfer helper, for an HTTP step) stops itself at the step
        (SIGSTOP from the shim) and both are SIGKILLed there."""
        rig = steps.get()
        d = rig.devices[0]
        spec, kind = STEPS[step]
        with Case("test_sigkill_at_step-" + step, baseline=rig.last_counts) as case:
            d.stop_at = spec
            d.daemon.stop()
            d.start()
            d.arm()
            load = Load(rig, d, count=100, uploads=1, job=(kind == "job"))
            reached = d.wait_stopped(45, service=d.service)
            d.arm(False)
            d.stop_at = None
            d.kill()
            load.finish()
            if not reached:
                raise StepNotReached("step %s (%s) was never reached\n%s"
                                     % (step, spec, d.output_tail()))
            d.start()
            case.rounds += 1
            settle_and_check(rig, d, "after SIGKILL at %s" % step, case)
            rig.last_counts = case.counts
            steps.failed = False


# --- The broker: restarts and pauses --------------------------------------------------------


def test_broker_restarts(rig, platform):
    d = rig.device().start()
    with Case(rig.name) as case:
        for i in range(scaled(100)):
            load = Load(rig, d, count=200, uploads=1, job=(i % 5 == 0))
            sleep_serving(d, rig.rng.uniform(0, 0.5))
            platform.broker_stop()
            sleep_serving(d, rig.rng.uniform(0.1, 1.0), online=False)
            platform.broker_start()
            load.finish()
            case.rounds += 1
            assert d.alive(), "lodevd exited after broker restart %d" % (i + 1)
            settle_and_check(rig, d, "after broker restart %d" % (i + 1), case)


def test_broker_pauses(rig, platform):
    """The broker hangs (SIGSTOP) for up to 3 s mid-load, as a stalled link would."""
    d = rig.device().start()
    with Case(rig.name) as case:
        for i in range(scaled(20, minimum=2)):
            load = Load(rig, d, count=200, uploads=1, job=(i == 0))
            sleep_serving(d, rig.rng.uniform(0, 0.5))
            pid = platform.status()["broker_pid"]
            os.kill(pid, signal.SIGSTOP)
            try:
                sleep_serving(d, rig.rng.uniform(0.5, 3.0), online=False)
            finally:
                os.kill(pid, signal.SIGCONT)
            load.finish()
            case.rounds += 1
            settle_and_check(rig, d, "after broker pause %d" % (i + 1), case)


# --- HTTP transfers cut ----------------------------------------------------------------------


def test_http_transfers_cut(rig, platform):
    """PUTs and firmware downloads lose their connection part-way, or get a 5xx."""
    d = rig.device().start()
    with Case(rig.name) as case:
        for i in range(scaled(30, minimum=3)):
            platform.cut_next_put(rig.rng.randrange(0, 96 * KiB))
            platform.fail_next_puts(1, rig.rng.choice([500, 503]))
            job = i % 2 == 0
            if job:
                platform.cut_next_download(rig.rng.randrange(0, 192 * KiB))
            load = Load(rig, d, count=100, uploads=2, job=job)
            load.finish()
            case.rounds += 1
            settle_and_check(rig, d, "after HTTP cut %d" % (i + 1), case)


# --- Errors of the stores: EIO and ENOSPC from the shim ---------------------------------------

STORES = {"spool": "observations", "transfers": "upload", "job": "job", "identity": None}


@pytest.mark.parametrize("error", ["EIO", "ENOSPC"])
@pytest.mark.parametrize("store", list(STORES))
def test_store_error(rig, platform, store, error):
    """Every open, write, sync and rename in one store fails with EIO or ENOSPC for a while
    under load; then the disk heals."""
    d = rig.device()
    flag = os.path.join(d.workdir, "fault-on")
    made = os.path.join(d.workdir, "faults-made")
    d.fault_env = {"LODEV_FAULT_PATH": os.path.join(d.state_dir, store),
                   "LODEV_FAULT_FLAG": flag,
                   "LODEV_FAULT_ERRNO": str(getattr(errno, error)),
                   "LODEV_FAULT_CALLS": "open,write,sync,rename",
                   "LODEV_FAULT_LOG": made}
    d.start()
    things = len(platform.things())
    with Case(rig.name) as case:
        if store == "identity":
            # The identity cannot be read at start: lodevd keeps running and tries again,
            # and never asks the platform for a new one.
            open(flag, "w").close()
            d.daemon.stop()
            d.start(online=False)
            sleep_serving(d, 2.0)
            assert d.alive(), "lodevd exited when its identity could not be read"
            load = Load(rig, d, count=100, uploads=1)
            os.unlink(flag)
            load.finish()
            d.daemon.wait_online(timeout=90)
            assert "cannot read the identity" in d.daemon.output().lower(), \
                "the fault never happened"
            assert d.status()["thing_name"] == d.thing
            assert len(platform.things()) == things, "lodevd provisioned again"
        else:
            # The job's first steps come at once: the fault is there from the start.
            if store == "job":
                open(flag, "w").close()
            load = Load(rig, d, count=400, uploads=2, job=(store == "job"))
            sleep_serving(d, 0.3)
            open(flag, "w").close()
            if store == "transfers":
                # The first two may be spooled and sent already: these meet the fault.
                for _ in range(2):
                    load.uploads.append(rig.start_upload(96 * KiB))
            sleep_serving(d, 1.5)
            os.unlink(flag)
            load.finish()
            # The shim logs every call it failed.
            assert os.path.exists(made), "no %s was made in %s" % (error, store)
        case.rounds += 1
        settle_and_check(rig, d, "after %s on %s" % (error, store), case)


@pytest.mark.parametrize("store", ["spool", "transfers", "job"])
def test_store_unreadable_at_start(rig, platform, store):
    """lodevd starts while its store cannot be read (EIO on every open in it): what the store
    holds waits, nothing is deleted, and once the disk heals it all goes out."""
    d = rig.device()
    flag = os.path.join(d.workdir, "fault-on")
    d.fault_env = {"LODEV_FAULT_PATH": os.path.join(d.state_dir, store),
                   "LODEV_FAULT_FLAG": flag,
                   "LODEV_FAULT_ERRNO": str(errno.EIO),
                   "LODEV_FAULT_CALLS": "open,write,sync,rename"}
    d.start()
    with Case(rig.name) as case:
        if store == "job":
            # A job installed and waiting for its reboot; the device reboots into a job
            # journal it cannot read.
            rig.queue_job(d)
            wait_until(lambda: d.reboots() > 0, 60, what="the reboot request")
            d.reboots_seen = d.reboots()
            d.daemon.stop()
            d.new_boot()
            load = None
        else:
            # Observations and files queued while the broker is away.
            platform.broker_stop()
            wait_until(lambda: d.status()["state"] != "online", 20, what="offline")
            load = Load(rig, d, count=200, uploads=2)
            load.finish()
            assert len(rig.ledger.acked_uploads) == 2, "the uploads were not spooled"
            d.daemon.stop()
        open(flag, "w").close()
        d.start(online=False)
        sleep_serving(d, 2.0)
        assert d.alive(), "lodevd exited when its %s could not be read:\n%s" % (
            store, d.output_tail())
        assert "input/output error" in d.daemon.output().lower(), "the fault never happened"
        os.unlink(flag)
        if not platform.status()["broker_running"]:
            platform.broker_start()
        case.rounds += 1
        settle_and_check(rig, d, "after %s could not be read at start" % store, case)


# --- A real full disk --------------------------------------------------------------------------


@pytest.fixture
def small_fs(rig):
    """A 16 MiB tmpfs for the state directory."""
    path = os.path.join(rig.workdir, "small")
    os.makedirs(path)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("cannot mount a tmpfs: %s" % r.stderr)
        pytest.skip("cannot mount a tmpfs: %s" % r.stderr.strip())
    yield path
    for d in rig.devices:
        d.kill()
    subprocess.run(["umount", "-l", path], check=False)


def fill(path, leave):
    """Fills the file system of path with one file until leave bytes are free."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    filler = os.path.join(path, "filler")
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(0, free - leave))
    return filler


def test_disk_full(rig, platform, small_fs):
    """Other files fill the state directory's file system while the broker is away: submits
    and uploads are refused (nothing acknowledged is lost), the backlog drains once the
    broker is back, and the space the spool held comes back by itself, the filler still in
    place."""
    d = rig.device(state_dir=os.path.join(small_fs, "state"))
    d.start()
    with Case(rig.name) as case:
        platform.broker_stop()
        wait_until(lambda: d.status()["state"] != "online", 20, what="offline")
        filler = fill(small_fs, 512 * KiB)
        load = Load(rig, d, count=3000, uploads=2, upload_size=192 * KiB, window=4)
        load.finish()
        case.rounds += 1
        acked = len(rig.ledger.acked)
        assert 0 < acked < 12000, "%d of 12000 taken on a full disk" % acked
        platform.broker_start()
        settle_and_check(rig, d, "after the backlog of a full disk", case, timeout=30)
        # The filler stays: what the spool held must be free again for new readings.
        before = len(rig.ledger.acked)
        load = Load(rig, d, count=100, uploads=0, window=4)
        load.finish()
        took = len(rig.ledger.acked) - before
        assert took == 400, ("after the backlog drained only %d of 400 new observations were "
                             "taken: the space did not come back" % took)
        os.unlink(filler)
        settle_and_check(rig, d, "after the disk was freed", case)
