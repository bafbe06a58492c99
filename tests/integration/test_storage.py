# SPDX-License-Identifier: MIT
"""Storage under stress, on real file systems: a state directory on a small
tmpfs or loop-mounted ext4 that other files fill, and read errors injected
with the LD_PRELOAD shim. Nothing acknowledged may be lost, nothing may be
deleted for an error that can pass, and lodevd must come back to normal by
itself once space is back."""

import hashlib
import os
import shutil
import subprocess
import time

import pytest

import lodevtest
from lodevtest import wait_until

SUBMIT = os.path.join(lodevtest.BUILD_DIR, "tests", "lodev-submit")
KiB = 1024
MiB = 1024 * KiB


def _mount_failed(what, r):
    if os.environ.get("CI") == "true":
        raise AssertionError("cannot mount %s: %s" % (what, r.stderr))
    pytest.skip("cannot mount %s: %s" % (what, r.stderr))


@pytest.fixture(params=["tmpfs", "ext4"])
def small_fs(request, workdir):
    """workdir/state on a file system of 8 MiB of its own."""
    state = os.path.join(workdir, "state")
    os.mkdir(state, 0o700)
    image = None
    if request.param == "tmpfs":
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", state],
                           capture_output=True, text=True)
        if r.returncode != 0:
            _mount_failed("a tmpfs", r)
    else:
        lodevtest.require_tool("mkfs.ext4")
        image = os.path.join(workdir, "ext4.img")
        with open(image, "wb") as f:
            f.truncate(8 * MiB)
        r = subprocess.run(["mkfs.ext4", "-q", "-m", "0", image], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        r = subprocess.run(["mount", "-o", "loop", image, state], capture_output=True, text=True)
        if r.returncode != 0:
            _mount_failed("a loop device", r)
        os.chmod(state, 0o700)
        shutil.rmtree(os.path.join(state, "lost+found"), ignore_errors=True)
    yield state
    subprocess.run(["umount", "-l", state])
    if image:
        os.unlink(image)


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path, name, leave=0):
    """Writes a file under path until only `leave` bytes are free (0: none at all)."""
    chunk = b"\xa5" * (64 * KiB)
    try:
        with open(os.path.join(path, name), "ab") as f:
            while True:
                room = free_bytes(path) - leave
                if room <= 0:
                    break
                f.write(chunk[:min(len(chunk), room)])
                f.flush()
            if leave == 0:
                while True:
                    f.write(b"\xa5")
                    f.flush()
    except OSError:
        pass  # full: what the caller wanted


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


start_online = lodevtest.start_online


def test_observations_survive_a_full_disk(bus, workdir, platform, small_fs):
    """Other files fill the state directory's file system while the broker is
    away: submits fail with NoSpace (never QueueFull: spool.max_bytes is far
    from used up), every accepted observation is delivered once the broker is
    back, the spool gives its space back, and new observations are taken
    again without anyone freeing the other files."""
    d, thing = start_online(bus, workdir, platform, spool={"max_bytes": 64 * MiB})
    # What is under test is the spool, not the pacing: on a loaded machine (the sanitizer
    # build) the broker can see a backlog's publishes bunched above 100 a second and would
    # drop some, as AWS does.
    platform.set_throttle(False)
    try:
        platform.broker_stop()
        wait_until(lambda: d.status()["state"] != "online", 20, what="offline")
        fill(small_fs, "filler-1", leave=400 * KiB)
        sub = subprocess.run([SUBMIT, "--count", "4000", "--start", "100000", "--window", "32"],
                             env=bus.env(), capture_output=True, text=True, timeout=300)
        accepted = {float(l.split()[1]) for l in sub.stdout.splitlines() if l.strip()}
        errors = [l for l in sub.stderr.splitlines() if l.startswith("error:")]
        print("\n%d accepted, %d refused; first refusal: %s"
              % (len(accepted), len(errors), errors[0] if errors else None))
        assert accepted and errors, sub.stderr[-2000:]
        assert len(accepted) + len(errors) == 4000
        # The disk is full, not the queue: say which file system, and what is left.
        assert not any("queue is full" in l for l in errors), errors[:3]
        assert all("is full" in l and small_fs in l and "bytes free" in l for l in errors), \
            errors[:3]
        # Whatever room the spool left, another file takes it now.
        fill(small_fs, "filler-2")
        spool_before = du(os.path.join(small_fs, "spool"))

        platform.broker_start()
        wait_until(lambda: d.status()["queued_observations"] == 0, 180, interval=0.5,
                   what="the backlog to drain")
        def recorded():
            return {o["payload"]["value"] for o in platform.observations()
                    if o["thing"] == thing}
        try:
            wait_until(lambda: accepted <= recorded(), 60, interval=0.5,
                       what="the emulator to record every accepted observation")
        except AssertionError:
            missing = sorted(accepted - recorded())
            raise AssertionError("%d accepted observations not recorded (%s...); publishes: %s"
                                 % (len(missing), missing[:5], platform.publish_stats(thing)))

        # The space is back: delivered segments deleted, acknowledgements recorded.
        try:
            wait_until(lambda: du(os.path.join(small_fs, "spool")) < 256 * KiB, 10,
                       what="the spool to shrink (was %d bytes)" % spool_before)
        except AssertionError:
            print(d.output()[-6000:])
            print(os.listdir(os.path.join(small_fs, "spool")))
            raise
        out = d.output()
        assert "Failed to persist delivery state" not in out, \
            "\n".join(l for l in out.splitlines() if "persist" in l)[:3000]
        # Back to normal by itself: the other files are still there.
        assert os.path.exists(os.path.join(small_fs, "filler-1"))
        r = lodevtest.lodevctl(bus, "observe", "--code", "8867-4", "--code-system",
                               "http://loinc.org", "--value", "61", "--unit", "/min")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: 61 in {o["payload"]["value"] for o in platform.observations()
                                  if o["thing"] == thing}, 30, what="the new observation")
        assert d.proc.poll() is None
    finally:
        if d.proc.poll() is None:
            d.stop()
        platform.broker_start()
        platform.set_throttle(True)


def dbus_upload(bus, path, name):
    """UploadFile of an open file, returning (error name, message) or (None, id)."""
    dbus = lodevtest.import_dbus()
    conn = dbus.bus.BusConnection(bus.address)
    fd = os.open(path, os.O_RDONLY)
    try:
        iface = dbus.Interface(conn.get_object("com.lifeomic.Device1", "/com/lifeomic/Device1"),
                               "com.lifeomic.Device1")
        try:
            return None, str(iface.UploadFile(dbus.types.UnixFd(fd), name, "",
                                              dbus.Dictionary({}, signature="sv"),
                                              signature="hssa{sv}", timeout=120))
        except dbus.exceptions.DBusException as e:
            return e.get_dbus_name(), e.get_dbus_message()
    finally:
        os.close(fd)
        conn.close()


def transfer_files(state):
    d = os.path.join(state, "transfers")
    return sorted(f for f in os.listdir(d) if f.endswith((".json", ".data")))


def test_uploads_on_a_full_disk(bus, workdir, platform, small_fs):
    """A file that does not fit in the free space is refused with NoSpace (the
    budget is far from used up); a file already spooled is uploaded even when
    other files have taken every block left, which gives its space back."""
    d, thing = start_online(bus, workdir, platform, transfers={"max_bytes": 256 * MiB})
    try:
        platform.broker_stop()
        wait_until(lambda: d.status()["state"] != "online", 20, what="offline")
        small = os.path.join(workdir, "small.bin")
        with open(small, "wb") as f:
            f.write(os.urandom(600 * KiB))
        error, tid = dbus_upload(bus, small, "small.bin")
        assert error is None, (error, tid)

        fill(small_fs, "filler", leave=1 * MiB)
        big = os.path.join(workdir, "big.bin")
        with open(big, "wb") as f:
            f.write(os.urandom(2 * MiB))
        error, message = dbus_upload(bus, big, "big.bin")
        assert error == "com.lifeomic.Device1.Error.NoSpace", (error, message)
        assert small_fs in message and "bytes free" in message, message
        assert transfer_files(small_fs) == sorted([tid + ".data", tid + ".json"])

        # Every block taken: the queued file still goes out, and frees its space.
        fill(small_fs, "filler-2")
        platform.broker_start()
        wait_until(lambda: [u for u in platform.uploads()
                            if u["thing"] == thing and u["file_name"] == "small.bin"], 60,
                   interval=0.2, what="the upload on a full disk")
        wait_until(lambda: transfer_files(small_fs) == [], 20, what="the spool to empty")
        assert d.proc.poll() is None
    finally:
        if d.proc.poll() is None:
            d.stop()
        platform.broker_start()


@pytest.mark.parametrize("errno_name,errno_value", [("EIO", 5), ("EMFILE", 24), ("EACCES", 13)])
def test_a_read_error_deletes_no_upload(bus, workdir, platform, errno_name, errno_value):
    """Reading a queued transfer's metadata fails at start-up with an error
    that may pass: both files stay, lodevd says so under its MESSAGE_ID and
    reads the spool again with backoff; once the error is gone the transfer is
    there and is uploaded byte-identical."""
    config = os.path.join(workdir, "lodevd.conf")
    # Offline (nothing listens on port 1): the file stays queued.
    lodevtest.write_device_config(config, workdir, platform, platform={"port": 1})
    flag = os.path.join(workdir, "fault-on")
    env = lodevtest.fault_env(".json", flag, errno_value)
    d = lodevtest.Daemon(bus, workdir, config).start(extra_env=env)
    try:
        path = os.path.join(workdir, "precious.bin")
        data = os.urandom(100 * KiB)
        with open(path, "wb") as f:
            f.write(data)
        r = lodevtest.lodevctl(bus, "upload", path)
        assert r.returncode == 0, r.stderr
        tid = r.stdout.strip()
        state = os.path.join(workdir, "state")
        files = transfer_files(state)
        assert files == sorted([tid + ".data", tid + ".json"])
        assert d.stop() == 0

        with open(flag, "w"):
            pass
        d.start(extra_env=env)
        time.sleep(3)  # the first read and a retry or two, with the error still there
        assert transfer_files(state) == files, "deleted on %s" % errno_name
        wait_until(lambda: "Cannot read the transfer spool" in d.output(), 20,
                   what="the read error to be reported")
        out = d.output()
        assert "%s.json" % tid in out and "nothing is deleted" in out
        assert "transfer %s deleted" % tid not in out
        r = lodevtest.lodevctl(bus, "upload", path)
        assert r.returncode == 1 and "cannot be read now" in r.stderr, r.stderr

        os.unlink(flag)
        wait_until(lambda: [t["id"] for t in lodevtest.lodevctl_json(bus, "transfers")]
                   == [tid], 30, what="the spool read again")
        assert d.stop() == 0

        # Online: it is uploaded as it was.
        lodevtest.write_device_config(config, workdir, platform)
        d.start()
        d.wait_online()
        thing = d.status()["thing_name"]
        wait_until(lambda: [u for u in platform.uploads()
                            if u["thing"] == thing and u["file_name"] == "precious.bin"], 60,
                   interval=0.2, what="the upload")
        (u,) = [u for u in platform.uploads()
                if u["thing"] == thing and u["file_name"] == "precious.bin"]
        assert u["sha256"] == hashlib.sha256(data).hexdigest()
    finally:
        d.stop()


def test_a_read_error_on_the_observation_spool_deletes_nothing(bus, workdir, platform):
    """Opening the spool fails with EIO at start-up: lodevd runs on, says so
    under its MESSAGE_ID, refuses new readings for now, deletes nothing, and
    opens the spool again with backoff; the readings in it are delivered."""
    config = os.path.join(workdir, "lodevd.conf")
    lodevtest.write_device_config(config, workdir, platform, platform={"port": 1})
    flag = os.path.join(workdir, "fault-on")
    env = lodevtest.fault_env(".seg", flag, 5)
    observe = ["observe", "--code", "8867-4", "--code-system", "http://loinc.org", "--unit",
               "/min", "--value"]
    d = lodevtest.Daemon(bus, workdir, config)
    try:
        d.start(extra_env=env)
        for v in ("71", "72", "73"):
            r = lodevtest.lodevctl(bus, *observe, v)
            assert r.returncode == 0, r.stderr
        assert d.stop() == 0
        spool = os.path.join(workdir, "state", "spool")
        segments = sorted(f for f in os.listdir(spool) if f.endswith(".seg"))
        assert segments

        with open(flag, "w"):
            pass
        d.start(extra_env=env)
        wait_until(lambda: "Cannot open the observation spool" in d.output(), 20,
                   what="the error to be reported")
        r = lodevtest.lodevctl(bus, *observe, "74")
        assert r.returncode == 1 and "cannot be opened now" in r.stderr, r.stderr
        assert sorted(f for f in os.listdir(spool) if f.endswith(".seg")) == segments
        assert d.status()["queued_observations"] == 0

        os.unlink(flag)
        wait_until(lambda: d.status()["queued_observations"] == 3, 30,
                   what="the spool opened again")
        assert d.stop() == 0

        lodevtest.write_device_config(config, workdir, platform)
        d.start()
        d.wait_online()
        thing = d.status()["thing_name"]
        wait_until(lambda: {71, 72, 73} <= {o["payload"]["value"] for o in platform.observations()
                                            if o["thing"] == thing}, 30,
                   what="the three readings delivered")
    finally:
        d.stop()
