# SPDX-License-Identifier: MIT
"""Storage under stress, on real file systems: a state directory on a small
tmpfs or loop-mounted ext4 that other files fill, and read errors injected
with the LD_PRELOAD shim. Nothing acknowledged may be lost, nothing may be
deleted for an error that can pass, and lodevd must come back to normal by
itself once space is back."""

import os
import shutil
import subprocess
import time

import pytest

import lodevtest
from lodevtest import wait_until

SUBMIT = os.path.join(lodevtest.BUILD_DIR, "tests", "lodev-submit")
FAULT_INJECT = os.path.join(lodevtest.BUILD_DIR, "tests", "liblodev-fault-inject.so")
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


def start_online(bus, workdir, platform, **overrides):
    config = os.path.join(workdir, "lodevd.conf")
    lodevtest.write_device_config(config, workdir, platform, **overrides)
    d = lodevtest.Daemon(bus, workdir, config).start()
    d.wait_online()
    return d, d.status()["thing_name"]


def test_observations_survive_a_full_disk(bus, workdir, platform, small_fs):
    """Other files fill the state directory's file system while the broker is
    away: submits fail with NoSpace (never QueueFull: spool.max_bytes is far
    from used up), every accepted observation is delivered once the broker is
    back, the spool gives its space back, and new observations are taken
    again without anyone freeing the other files."""
    d, thing = start_online(bus, workdir, platform, spool={"max_bytes": 64 * MiB})
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
        wait_until(lambda: platform.observation_count(thing) >= len(accepted), 60, interval=0.5,
                   what="the emulator to record every accepted observation")
        got = {o["payload"]["value"] for o in platform.observations() if o["thing"] == thing}
        assert accepted <= got, "lost: %s" % sorted(accepted - got)[:10]

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
