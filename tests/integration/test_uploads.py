# SPDX-License-Identifier: MIT
"""File uploads: fd passing, the durable file spool, signed-URL PUTs with the
emulator's real HTTP faults, restarts, cancel, and the observations beside."""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import lodevtest
from lodevtest import wait_until

SUBMIT = os.path.join(lodevtest.BUILD_DIR, "tests", "lodev-submit")
MiB = 1024 * 1024


start_online = lodevtest.start_online


def random_file(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, MiB)
            f.write(os.urandom(n))
            left -= n
    return sha256_of(path)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def uploads_of(platform, thing, name=None):
    return [u for u in platform.uploads()
            if u["thing"] == thing and (name is None or u["file_name"] == name)]


def upload(bus, path, *args, timeout=120):
    return lodevtest.lodevctl(bus, "upload", path, *args, timeout=timeout)


def spool_files(workdir):
    """The transfers' files in the spool (not the space it keeps in reserve)."""
    d = os.path.join(workdir, "state", "transfers")
    return sorted(f for f in os.listdir(d) if not f.startswith(".") and f != "reserve")


def dbus_upload(bus, fd, name, content_type=""):
    """UploadFile with an fd of any kind, which lodevctl (it opens a path for
    reading) cannot produce; busctl cannot pass fds. Returns (error name,
    message), or (None, id)."""
    dbus = lodevtest.import_dbus()
    conn = dbus.bus.BusConnection(bus.address)
    try:
        iface = dbus.Interface(conn.get_object("com.lifeomic.Device1", "/com/lifeomic/Device1"),
                               "com.lifeomic.Device1")
        try:
            return None, str(iface.UploadFile(dbus.types.UnixFd(fd), name, content_type,
                                              dbus.Dictionary({}, signature="sv"),
                                              signature="hssa{sv}"))
        except dbus.exceptions.DBusException as e:
            return e.get_dbus_name(), e.get_dbus_message()
    finally:
        conn.close()


def test_5mib_lands_exact_after_the_caller_deletes_its_file(bus, workdir, platform):
    d, thing = start_online(bus, workdir, platform)
    try:
        path = os.path.join(workdir, "report.pdf")
        digest = random_file(path, 5 * MiB)
        r = upload(bus, path)
        assert r.returncode == 0, r.stderr
        tid = r.stdout.strip()
        # The reply means lodevd holds its own copy: the caller's file may go.
        os.unlink(path)
        wait_until(lambda: uploads_of(platform, thing, "report.pdf"), 60, interval=0.2,
                   what="the upload")
        (u,) = uploads_of(platform, thing, "report.pdf")
        assert u["sha256"] == digest
        assert u["size"] == 5 * MiB
        # From /etc/mime.types (Debian's media-types), never a table of our own.
        assert u["content_type"] == "application/pdf"
        wait_until(lambda: d.status()["queued_transfers"] == 0, 20, what="the queue to empty")
        assert lodevtest.lodevctl_json(bus, "transfers") == []
        assert spool_files(workdir) == []
        out = d.output()
        assert "LODEV_TRANSFER_ID" not in out or tid in out
        assert "Transfer %s finished" % tid in out
        # The presigned query string is a credential: only the host is logged.
        assert "X-Amz-Signature" not in out and "Signature=" not in out
        # An explicit content type and name are used as given.
        path2 = os.path.join(workdir, "data.bin")
        digest2 = random_file(path2, 1000)
        r = upload(bus, path2, "--name", "reading.csv", "--content-type", "text/csv", "--wait")
        assert r.returncode == 0, r.stderr
        (u,) = uploads_of(platform, thing, "reading.csv")
        assert (u["sha256"], u["content_type"], u["size"]) == (digest2, "text/csv", 1000)
        # Unknown extension: application/octet-stream.
        r = upload(bus, path2, "--name", "blob.zzqx", "--wait")
        assert r.returncode == 0, r.stderr
        (u,) = uploads_of(platform, thing, "blob.zzqx")
        assert u["content_type"] == "application/octet-stream"
    finally:
        d.stop()


def test_1gib_sparse_file_lands_exact(bus, workdir, platform):
    d, thing = start_online(bus, workdir, platform, transfers={"max_bytes": 2048 * MiB})
    try:
        path = os.path.join(workdir, "big.img")
        size = 1024 * MiB
        with open(path, "wb") as f:
            f.truncate(size)
            f.seek(size // 2)
            f.write(b"middle")
            f.seek(size - 3)
            f.write(b"end")
        digest = sha256_of(path)
        start = time.monotonic()
        r = upload(bus, path, "--wait", timeout=400)
        assert r.returncode == 0, r.stderr + d.output()[-3000:]
        (u,) = uploads_of(platform, thing, "big.img")
        assert (u["sha256"], u["size"]) == (digest, size)
        print("1 GiB: spooled and uploaded in %.1f s" % (time.monotonic() - start))
        assert spool_files(workdir) == []
    finally:
        d.stop()


def test_expired_url_500_twice_and_a_cut_connection_still_deliver(bus, workdir, platform):
    d, thing = start_online(bus, workdir, platform)
    try:
        path = os.path.join(workdir, "faults.bin")
        digest = random_file(path, 3 * MiB)
        # An injected status comes before the link's own checks: with three expired
        # links, the two 500s come first, then "Request has expired", then a fresh
        # link whose PUT loses its connection after 1 MiB, then success.
        platform.expire_next_url(3)
        platform.fail_next_puts(2, 500)
        platform.cut_next_put(MiB)
        r = upload(bus, path, "--wait", timeout=180)
        assert r.returncode == 0, r.stderr + d.output()[-3000:]
        (u,) = uploads_of(platform, thing, "faults.bin")
        assert u["sha256"] == digest
        out = d.output()
        assert "Request has expired; asking for a new link" in out
        assert "HTTP 500 InternalError" in out
        assert "trying again" in out
        assert platform.status()["faults"]["cut_next_put"] == []
    finally:
        d.stop()


def test_400_fails_with_the_servers_message_and_wait_exits_1(bus, workdir, platform):
    d, thing = start_online(bus, workdir, platform)
    try:
        path = os.path.join(workdir, "refused.bin")
        random_file(path, 4096)
        platform.fail_next_puts(1, 400)
        r = upload(bus, path, "--wait", timeout=60)
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert "InvalidRequest" in r.stderr
        assert "The request was refused" in r.stderr
        assert uploads_of(platform, thing, "refused.bin") == []
        assert lodevtest.lodevctl_json(bus, "transfers") == []
        assert spool_files(workdir) == []
        assert "Transfer %s failed" % r.stdout.strip() in d.output()
    finally:
        d.stop()


def test_sigkill_mid_upload_then_restart_delivers(bus, workdir, platform):
    d, thing = start_online(bus, workdir, platform,
                            transfers={"max_rate": 512 * 1024})
    try:
        path = os.path.join(workdir, "killed.bin")
        digest = random_file(path, 4 * MiB)
        r = upload(bus, path)
        assert r.returncode == 0, r.stderr
        tid = r.stdout.strip()

        def sending():
            t = lodevtest.lodevctl_json(bus, "transfers")
            return t and t[0]["state"] == "uploading" and t[0]["done"] > 0
        wait_until(sending, 30, interval=0.1, what="the PUT to be under way")
        d.stop(sig=signal.SIGKILL)
        assert uploads_of(platform, thing, "killed.bin") == []
        d.start()
        d.wait_online()
        assert [t["id"] for t in lodevtest.lodevctl_json(bus, "transfers")] == [tid]
        wait_until(lambda: uploads_of(platform, thing, "killed.bin"), 60, interval=0.2,
                   what="the upload after the restart")
        (u,) = uploads_of(platform, thing, "killed.bin")
        assert u["sha256"] == digest
        wait_until(lambda: spool_files(workdir) == [], 10, what="the spool to empty")
    finally:
        d.stop()


def test_cancel_mid_upload_frees_the_spool(bus, workdir, platform):
    d, thing = start_online(bus, workdir, platform,
                            transfers={"max_rate": 256 * 1024})
    monitor = subprocess.Popen([lodevtest.LODEVCTL, "--json", "monitor"], env=bus.env(),
                               stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # the monitor's match is in place
        path = os.path.join(workdir, "cancel.bin")
        random_file(path, 4 * MiB)
        r = upload(bus, path)
        assert r.returncode == 0, r.stderr
        tid = r.stdout.strip()
        wait_until(lambda: lodevtest.lodevctl_json(bus, "transfers")[0]["done"] > 0, 30,
                   interval=0.1, what="the PUT to be under way")
        assert len(spool_files(workdir)) == 2
        r = lodevtest.lodevctl(bus, "cancel", tid)
        assert r.returncode == 0, r.stderr
        assert lodevtest.lodevctl_json(bus, "transfers") == []
        assert spool_files(workdir) == []
        assert d.status()["queued_transfers"] == 0
        r = lodevtest.lodevctl(bus, "cancel", tid)
        assert r.returncode == 1 and "no transfer" in r.stderr
        time.sleep(1)
        assert uploads_of(platform, thing, "cancel.bin") == []
        monitor.send_signal(signal.SIGINT)
        out, _ = monitor.communicate(timeout=10)
        assert monitor.returncode == 0
        events = [json.loads(line) for line in out.splitlines()]
        assert {"signal": "TransferFinished", "id": tid, "ok": False,
                "message": "canceled"} in events
        assert any(e["signal"] == "TransferProgress" and e["id"] == tid for e in events)
        assert any(e["signal"] == "PropertiesChanged" and e["property"] == "QueuedTransfers"
                   for e in events)
    finally:
        if monitor.poll() is None:
            monitor.kill()
            monitor.wait()
        d.stop()


def test_bad_fds_names_and_sizes_are_refused_with_their_reasons(bus, workdir, platform):
    config = os.path.join(workdir, "lodevd.conf")
    lodevtest.write_device_config(config, workdir, platform)
    d = lodevtest.Daemon(bus, workdir, config).start()  # offline is fine: nothing is sent
    try:
        def refused(fd, name, expect):
            error, message = dbus_upload(bus, fd, name)
            assert error == "com.lifeomic.Device1.Error.InvalidArgument", (error, message)
            assert expect in message, (expect, message)

        dfd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
        refused(dfd, "dir", "directory")
        os.close(dfd)
        fifo = os.path.join(workdir, "fifo")
        os.mkfifo(fifo)
        ffd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        refused(ffd, "fifo", "FIFO")
        os.close(ffd)
        a, b = socket.socketpair()
        refused(a.fileno(), "sock", "socket")
        a.close()
        b.close()
        path = os.path.join(workdir, "plain.txt")
        random_file(path, 100)
        wfd = os.open(path, os.O_WRONLY)
        refused(wfd, "wo", "not open for reading")
        os.close(wfd)
        rfd = os.open(path, os.O_RDONLY)
        refused(rfd, "a/b", "'/'")
        refused(rfd, "a\nb", "control")
        refused(rfd, "x" * 256, "255")
        os.close(rfd)
        big = os.path.join(workdir, "huge.img")
        with open(big, "wb") as f:
            f.truncate(5 * 1024 * MiB + 1)
        r = upload(bus, big)
        assert r.returncode == 1
        assert "larger than 5 GiB" in r.stderr, r.stderr
        # lodevctl's own view of bad names, the same text.
        r = upload(bus, path, "--name", "bad/name")
        assert r.returncode == 1 and "'/'" in r.stderr, r.stderr
        assert spool_files(workdir) == []
    finally:
        d.stop()


def test_budget_answers_queue_full_while_observations_are_accepted(bus, workdir, platform):
    config = os.path.join(workdir, "lodevd.conf")
    # Nothing listens on port 1: lodevd stays unprovisioned and the files wait in the
    # spool, as uploads made before provisioning do.
    lodevtest.write_device_config(config, workdir, platform, platform={"port": 1},
                                  transfers={"max_bytes": 2 * MiB})
    d = lodevtest.Daemon(bus, workdir, config).start()
    try:
        path = os.path.join(workdir, "one.bin")
        random_file(path, MiB)
        r = upload(bus, path)
        assert r.returncode == 0, r.stderr
        r = upload(bus, path)
        assert r.returncode == 1
        assert "queue is full" in r.stderr and "transfers.max_bytes" in r.stderr, r.stderr
        assert d.status()["queued_transfers"] == 1
        r = lodevtest.lodevctl(bus, "observe", "--code", "8867-4", "--code-system",
                               "http://loinc.org", "--value", "60", "--unit", "/min")
        assert r.returncode == 0, r.stderr
        assert d.status()["queued_observations"] == 1
        # A file that can never fit says so.
        with open(path, "ab") as f:
            f.truncate(3 * MiB)
        r = upload(bus, path)
        assert r.returncode == 1 and "larger than the transfer queue" in r.stderr, r.stderr
    finally:
        d.stop()


def test_an_upload_does_not_slow_observations(bus, workdir, platform):
    """5,000 observations drain at the platform's 100/s; a 512 MiB upload in the middle must
    not lower the rate by more than 10 %. The upload runs at transfers.max_rate 32 MiB/s, as a
    gateway's link would carry it: unbounded on loopback it takes 3 to 4 s, too short a window
    to measure a rate in, and the emulator's own process, taking in 140 MiB/s, then competes
    for the cores with the broker and the service that records the observations, which would
    measure the test's platform rather than lodevd."""
    d, thing = start_online(bus, workdir, platform,
                            transfers={"max_bytes": 1024 * MiB, "max_rate": 32 * MiB})
    try:
        path = os.path.join(workdir, "side.img")
        with open(path, "wb") as f:
            f.truncate(512 * MiB)
        sub = subprocess.Popen([SUBMIT, "--count", "5000", "--start", "0"], env=bus.env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(12)
        t0 = time.time()
        r = upload(bus, path, "--wait", timeout=300)
        t1 = time.time()
        assert r.returncode == 0, r.stderr
        sub.wait(timeout=120)
        wait_until(lambda: d.status()["queued_observations"] == 0, 120, interval=0.5,
                   what="the observations to drain")
        # The broker acknowledged them all; the emulator's service records them a moment
        # later (longer on a busy machine).
        wait_until(lambda: platform.observation_count(thing) >= 5000, 120, interval=0.2,
                   what="the emulator to record all 5000")
        times = sorted(o["time"] for o in platform.observations() if o["thing"] == thing)
        assert len(times) >= 5000
        span = max(t1 - t0, 1.0)
        assert span >= 10, "the upload took %.1f s: not capped at 32 MiB/s" % span
        during = sum(1 for t in times if t0 <= t < t1) / span
        before = sum(1 for t in times if t0 - 8 <= t < t0) / 8
        print("observations/s before the upload %.1f, during %.1f (%.2f) over %.1f s"
              % (before, during, during / before, span))
        assert before > 50
        assert during >= 0.9 * before, (before, during)
    finally:
        d.stop()


def test_answers_that_can_pass_deliver(bus, workdir, platform):
    """S3 answers that mean "not now" never cost the user's file: a 400
    RequestTimeout (slow links, transfers.max_rate), a 400 ExpiredToken, a 503
    SlowDown and a 307 redirect each get another try, and the file lands
    byte-identical."""
    d, thing = start_online(bus, workdir, platform)
    try:
        path = os.path.join(workdir, "passes.bin")
        digest = random_file(path, 256 * 1024)
        platform.fail_next_puts(1, 400, code="RequestTimeout", file_name="passes.bin")
        platform.fail_next_puts(1, 400, code="ExpiredToken", file_name="passes.bin")
        platform.fail_next_puts(1, 503, code="SlowDown", file_name="passes.bin")
        platform.fail_next_puts(1, 307, code="TemporaryRedirect", file_name="passes.bin")
        r = upload(bus, path, "--wait", timeout=180)
        assert r.returncode == 0, r.stderr + d.output()[-3000:]
        (u,) = uploads_of(platform, thing, "passes.bin")
        assert (u["sha256"], u["size"]) == (digest, 256 * 1024)
        out = d.output()
        assert "HTTP 400 RequestTimeout" in out and "HTTP 400 ExpiredToken" in out
        assert "HTTP 503 SlowDown" in out and "HTTP 307 TemporaryRedirect" in out
        assert platform.status()["faults"]["fail_next_puts"] == []
        assert spool_files(workdir) == []
    finally:
        d.stop()


def test_an_answer_that_cannot_pass_fails_at_once(bus, workdir, platform):
    d, thing = start_online(bus, workdir, platform)
    try:
        path = os.path.join(workdir, "huge-for-s3.bin")
        random_file(path, 4096)
        platform.fail_next_puts(1, 400, code="EntityTooLarge")
        t0 = time.monotonic()
        r = upload(bus, path, "--wait", timeout=60)
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert "EntityTooLarge" in r.stderr, r.stderr
        # No retry, no backoff.
        assert time.monotonic() - t0 < 10
        assert d.output().count("Uploading transfer") == 1
        assert spool_files(workdir) == []
    finally:
        d.stop()


def test_a_failing_transfer_does_not_hold_up_the_next(bus, workdir, platform):
    """One file keeps getting 500s: it waits out its own backoff while the file
    queued after it is uploaded, and is uploaded itself once the errors stop."""
    d, thing = start_online(bus, workdir, platform)
    try:
        first = os.path.join(workdir, "stuck.bin")
        second = os.path.join(workdir, "behind.bin")
        d1 = random_file(first, 64 * 1024)
        d2 = random_file(second, 64 * 1024)
        platform.fail_next_puts(4, 500, file_name="stuck.bin")
        r = upload(bus, first)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: "Transfer %s: HTTP 500" % r.stdout.strip() in d.output(), 30,
                   what="the first 500")
        t0 = time.monotonic()
        r2 = upload(bus, second)
        assert r2.returncode == 0, r2.stderr
        # Before: one at a time in order, behind 1+2+4+8 s of backoff at least.
        wait_until(lambda: uploads_of(platform, thing, "behind.bin"), 10, interval=0.1,
                   what="the second file while the first waits")
        waited = time.monotonic() - t0
        assert not uploads_of(platform, thing, "stuck.bin")
        listed = {t["id"]: t for t in lodevtest.lodevctl_json(bus, "transfers")}
        assert listed[r.stdout.strip()]["state"] in ("waiting", "uploading"), listed
        print("\nthe second file landed %.1f s after it was queued" % waited)
        wait_until(lambda: uploads_of(platform, thing, "stuck.bin"), 120, interval=0.5,
                   what="the first file after its errors")
        assert uploads_of(platform, thing, "stuck.bin")[0]["sha256"] == d1
        assert uploads_of(platform, thing, "behind.bin")[0]["sha256"] == d2
        wait_until(lambda: spool_files(workdir) == [], 10, what="the spool to empty")
    finally:
        d.stop()


def test_a_late_link_answer_never_sends_another_files_bytes(bus, workdir, platform):
    """The link answer carries no correlation id. An answer for another file
    (late, after a timeout or a cancel) arrives while this file's request is
    outstanding: it must not be used, and this file still lands under its own
    name."""
    d, thing = start_online(bus, workdir, platform)
    try:
        path = os.path.join(workdir, "mine.csv")
        digest = random_file(path, 10_000)
        platform.ignore_next("upload-link")
        r = upload(bus, path)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: "Asking for an upload link for transfer %s" % r.stdout.strip()
                   in d.output(), 20, what="the link request")
        time.sleep(0.5)
        stale = platform.upload_link(thing, "theirs.csv", "text/csv")
        platform.inject(thing, json.dumps({"uploadUrl": stale}).encode())
        time.sleep(2)
        assert uploads_of(platform, thing, "theirs.csv") == [], \
            "mine.csv's bytes were sent to the link of theirs.csv"
        wait_until(lambda: "not for the file asked for" in d.output(), 20,
                   what="the stale answer to be refused")
        fresh = platform.upload_link(thing, "mine.csv", "text/csv")
        platform.inject(thing, json.dumps({"uploadUrl": fresh}).encode())
        wait_until(lambda: uploads_of(platform, thing, "mine.csv"), 30, interval=0.2,
                   what="the upload under its own link")
        assert uploads_of(platform, thing, "mine.csv")[0]["sha256"] == digest
        assert uploads_of(platform, thing, "theirs.csv") == []
    finally:
        d.stop()


def test_a_transfer_that_cannot_be_removed_is_not_uploaded_again(bus, workdir, platform):
    """The upload succeeded but its files cannot be deleted (EIO): it is never
    picked and uploaded again; once the disk behaves, it is removed."""
    config = os.path.join(workdir, "lodevd.conf")
    lodevtest.write_device_config(config, workdir, platform)
    flag = os.path.join(workdir, "fault-on")
    d = lodevtest.Daemon(bus, workdir, config).start(
        extra_env=lodevtest.fault_env(".json", flag, 5, calls="unlink"))
    try:
        d.wait_online()
        thing = d.status()["thing_name"]
        path = os.path.join(workdir, "once.bin")
        random_file(path, 20_000)
        with open(flag, "w"):
            pass
        r = upload(bus, path, "--wait", timeout=60)
        assert r.returncode == 0, r.stderr
        tid = r.stdout.strip()
        time.sleep(5)
        assert len(uploads_of(platform, thing, "once.bin")) == 1, \
            "uploaded %d times" % len(uploads_of(platform, thing, "once.bin"))
        assert "Failed to remove transfer %s" % tid in d.output()
        listed = lodevtest.lodevctl_json(bus, "transfers")
        assert [(t["id"], t["state"]) for t in listed] == [(tid, "finished")]
        os.unlink(flag)
        wait_until(lambda: lodevtest.lodevctl_json(bus, "transfers") == [], 30,
                   what="the removal retried")
        assert spool_files(workdir) == []
        assert len(uploads_of(platform, thing, "once.bin")) == 1
    finally:
        d.stop()


def test_pseudo_files_upload_what_reads_to_the_end(bus, workdir, platform):
    """/proc and /sys files say nothing true of their size (0 and 4096 bytes):
    what reads to the end is uploaded."""
    d, thing = start_online(bus, workdir, platform)
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY)
        error, tid = dbus_upload(bus, fd, "status.txt")
        os.close(fd)
        assert error is None, (error, tid)
        sysfs = next((p for p in ("/sys/kernel/osrelease", "/sys/class/net/lo/address")
                      if os.access(p, os.R_OK)), None)
        assert sysfs, "no readable sysfs file"
        with open(sysfs, "rb") as f:
            expect = f.read()
        fd = os.open(sysfs, os.O_RDONLY)
        error, tid2 = dbus_upload(bus, fd, "sys.txt")
        os.close(fd)
        assert error is None, (error, tid2)
        wait_until(lambda: uploads_of(platform, thing, "sys.txt") and
                   uploads_of(platform, thing, "status.txt"), 30, what="both uploads")
        (st,) = uploads_of(platform, thing, "status.txt")
        with open(st["path"], "rb") as f:
            status = f.read()
        assert st["size"] > 100 and status.startswith(b"Name:") and b"\nPid:" in status
        (sy,) = uploads_of(platform, thing, "sys.txt")
        assert sy["sha256"] == hashlib.sha256(expect).hexdigest()
        assert sy["size"] == len(expect)
        assert st["content_type"] == "text/plain"
    finally:
        d.stop()


def test_cancel_belongs_to_the_submitter(bus, workdir, platform):
    """A transfer belongs to the UID that spooled it: another non-root user may
    not cancel it; its owner and root may."""
    lodevtest.member_cmd("nobody")  # skips without group lodev
    config = os.path.join(workdir, "lodevd.conf")
    # Offline (nothing on port 1): the transfers stay queued.
    lodevtest.write_device_config(config, workdir, platform, platform={"port": 1})
    d = lodevtest.Daemon(bus, workdir, config).start()
    pub = lodevtest.public_tempdir("lodev-upload-")
    try:
        path = os.path.join(pub, "shared.bin")
        random_file(path, 1000)
        os.chmod(path, 0o644)

        def as_user(user, *args):
            return subprocess.run(lodevtest.member_cmd(user, lodevtest.LODEVCTL, *args),
                                  env=bus.env(), capture_output=True, text=True, timeout=60)

        r = upload(bus, path, "--name", "roots.bin")
        assert r.returncode == 0, r.stderr
        roots = r.stdout.strip()
        r = as_user("nobody", "upload", path, "--name", "nobodys.bin")
        assert r.returncode == 0, r.stderr
        nobodys = r.stdout.strip()
        r = as_user("daemon", "upload", path, "--name", "daemons.bin")
        assert r.returncode == 0, r.stderr
        daemons = r.stdout.strip()

        r = as_user("nobody", "cancel", roots)
        assert r.returncode == 1 and "belongs to another user" in r.stderr, r.stderr
        r = as_user("nobody", "cancel", daemons)
        assert r.returncode == 1 and "belongs to another user" in r.stderr, r.stderr
        assert {t["id"] for t in lodevtest.lodevctl_json(bus, "transfers")} == \
            {roots, nobodys, daemons}
        r = as_user("nobody", "cancel", nobodys)
        assert r.returncode == 0, r.stderr
        r = lodevtest.lodevctl(bus, "cancel", daemons)
        assert r.returncode == 0, r.stderr
        assert [t["id"] for t in lodevtest.lodevctl_json(bus, "transfers")] == [roots]
    finally:
        d.stop()
        shutil.rmtree(pub, ignore_errors=True)
