# SPDX-License-Identifier: MIT
"""Local callers are bounded per user (UID), file descriptors included
(SPEC §4): a flood of UploadFile calls from one application meets
LimitsExceeded before lodevd takes its descriptors, and other users are not
affected; lodevd raises its own descriptor limit at start."""

import os
import resource
import shutil
import signal
import subprocess
import time

import pytest

import lodevtest
from lodevtest import wait_until

MiB = 1024 * 1024


def open_files(pid):
    with open("/proc/%d/limits" % pid) as f:
        line = next(l for l in f if l.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return soft, hard


def test_descriptor_limit_raised_at_start(bus, workdir, basic_config):
    """Started with the usual soft limit of 1024, lodevd runs with its hard
    limit, so that callers can never bring its own writes near the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip("the hard limit is %d: nothing to raise" % hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        d = lodevtest.Daemon(bus, workdir, basic_config).start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        got_soft, got_hard = open_files(d.proc.pid)
        assert got_soft == got_hard, (got_soft, got_hard)
        assert got_soft != "1024"
    finally:
        d.stop()


def test_uploads_bounded_per_user_before_the_descriptor_is_taken(bus, workdir, platform):
    """24 UploadFile calls from user nobody and 4 from root reach lodevd at
    once (it is stopped while they queue up). Each spooling upload holds three
    descriptors: nobody gets 16 through and LimitsExceeded for the other 8, at
    once and without a trace in the spool; root's 4 are not affected."""
    config = os.path.join(workdir, "lodevd.conf")
    # Offline: what is accepted stays queued and can be counted.
    lodevtest.write_device_config(config, workdir, platform, platform={"port": 1},
                                  transfers={"max_bytes": 1024 * MiB})
    d = lodevtest.Daemon(bus, workdir, config).start()
    pub = lodevtest.public_tempdir("lodev-flood-")
    procs = []
    try:
        path = os.path.join(pub, "flood.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(64 * 1024))
        os.chmod(path, 0o644)
        base = len(os.listdir("/proc/%d/fd" % d.proc.pid))
        d.send_signal(signal.SIGSTOP)
        for i in range(24):
            procs.append(("nobody", subprocess.Popen(
                lodevtest.member_cmd("nobody", lodevtest.LODEVCTL, "upload", path, "--name",
                                     "n%02d.bin" % i),
                env=bus.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        for i in range(4):
            procs.append(("root", subprocess.Popen(
                [lodevtest.LODEVCTL, "upload", path, "--name", "r%02d.bin" % i],
                env=bus.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        time.sleep(2)  # dbus-daemon hands every call over to lodevd's socket
        d.send_signal(signal.SIGCONT)
        results = {"nobody": [], "root": []}
        for user, p in procs:
            out, err = p.communicate(timeout=120)
            results[user].append((p.returncode, out.strip(), err.strip()))
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        d.send_signal(signal.SIGCONT)
    try:
        nobody_ok = [r for r in results["nobody"] if r[0] == 0]
        nobody_refused = [r for r in results["nobody"] if r[0] != 0]
        print("\nnobody: %d accepted, %d refused; root: %d accepted"
              % (len(nobody_ok), len(nobody_refused),
                 sum(1 for r in results["root"] if r[0] == 0)))
        assert len(nobody_ok) == 16, results["nobody"]
        assert all("too many files being spooled" in r[2] for r in nobody_refused), \
            nobody_refused[:2]
        assert all(r[0] == 0 for r in results["root"]), results["root"]
        listed = lodevtest.lodevctl_json(bus, "transfers")
        assert len(listed) == 20
        spool = os.path.join(workdir, "state", "transfers")
        assert len([f for f in os.listdir(spool) if f.endswith(".data")]) == 20
        # What the refused calls brought was closed: lodevd holds no more than before.
        wait_until(lambda: len(os.listdir("/proc/%d/fd" % d.proc.pid)) <= base + 2, 10,
                   what="lodevd's descriptors back to %d" % base)
        # The bound is on what is held now, not on what a user may ever do.
        r = subprocess.run(lodevtest.member_cmd("nobody", lodevtest.LODEVCTL, "upload", path,
                                                "--name", "later.bin"),
                           env=bus.env(), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    finally:
        d.stop()
        shutil.rmtree(pub, ignore_errors=True)


def test_error_names_are_sent(bus, workdir, platform):
    """NotProvisioned is an error lodevd sends (CheckJobs before the device has
    an identity); NotSupported, which nothing sent, is gone from the interface."""
    dbus = lodevtest.import_dbus()
    config = os.path.join(workdir, "lodevd.conf")
    # Nothing listens on port 1: the device stays unprovisioned.
    lodevtest.write_device_config(config, workdir, platform, platform={"port": 1})
    d = lodevtest.Daemon(bus, workdir, config).start()
    conn = dbus.bus.BusConnection(bus.address)
    try:
        iface = dbus.Interface(conn.get_object("com.lifeomic.Device1", "/com/lifeomic/Device1"),
                               "com.lifeomic.Device1")
        with pytest.raises(dbus.exceptions.DBusException) as e:
            iface.CheckJobs()
        assert e.value.get_dbus_name() == "com.lifeomic.Device1.Error.NotProvisioned"
        assert "not provisioned" in e.value.get_dbus_message()
        r = lodevtest.lodevctl(bus, "jobs", "--check")
        assert r.returncode == 1 and "not provisioned" in r.stderr, r.stderr
        with open(lodevtest.INTERFACE_XML) as f:
            assert "NotSupported" not in f.read()
    finally:
        conn.close()
        d.stop()


def test_reboot_holds_bounded_per_user(bus, workdir, basic_config):
    """Each reboot hold is a descriptor lodevd keeps: one user gets 32 over
    several connections (16 each), then LimitsExceeded; the count goes down as
    holds are released."""
    dbus = lodevtest.import_dbus()
    d = lodevtest.Daemon(bus, workdir, basic_config).start()
    conns, holds = [], []
    try:
        refused = []
        for c in range(3):
            conn = dbus.bus.BusConnection(bus.address)
            conns.append(conn)
            iface = dbus.Interface(conn.get_object("com.lifeomic.Device1",
                                                   "/com/lifeomic/Device1"),
                                   "com.lifeomic.Device1")
            for k in range(16):
                try:
                    holds.append(iface.InhibitReboot("test", "hold %d.%d" % (c, k)).take())
                except dbus.exceptions.DBusException as e:
                    refused.append((e.get_dbus_name(), e.get_dbus_message()))
        assert len(holds) == 32, (len(holds), refused[:2])
        assert len(refused) == 16
        assert all(n == "com.lifeomic.Device1.Error.LimitsExceeded" and "per user" in m
                   for n, m in refused), refused[:2]
        # Released holds count no more.
        for fd in holds[:4]:
            os.close(fd)
        del holds[:4]
        wait_until(lambda: len(lodevtest.lodevctl_json(bus, "status")["reboot_inhibitors"])
                   == 28, 10, what="the released holds to go")
        holds.append(iface.InhibitReboot("test", "again").take())
    finally:
        for fd in holds:
            os.close(fd)
        for conn in conns:
            conn.close()
        d.stop()


def test_installer_hook_gets_the_usual_descriptor_limit(bus, workdir, platform):
    """lodevd raises its own soft limit; the programs it runs (the installer
    hook) get the one lodevd was started with, as systemd does for services:
    programs that use select() break with descriptors at or above 1024."""
    rec = os.path.join(workdir, "hook-limits")
    hook = os.path.join(workdir, "hook")
    with open(hook, "w") as f:
        f.write("#!/bin/sh\ngrep 'Max open files' /proc/self/limits > %s\nexit 0\n" % rec)
    os.chmod(hook, 0o755)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip("the hard limit is %d: nothing to raise" % hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        d, thing = lodevtest.start_online(bus, workdir, platform,
                                          firmware={"installer": hook, "install_timeout": 60})
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        fw_id = "fw-limits"
        platform.add_firmware(fw_id, b"firmware")
        platform.queue_job(thing, document={
            "operation": "firmware_update", "deploymentId": "dep-limits", "firmwareId": fw_id,
            "firmwareUrl": "${lodev:firmware-url:%s}" % fw_id})
        lodevtest.lodevctl(bus, "jobs", "--check")
        wait_until(lambda: os.path.exists(rec) and os.path.getsize(rec) > 0, 60,
                   what="the hook to run")
        with open(rec) as f:
            hook_soft = f.read().split()[3]
        assert hook_soft == "1024", hook_soft
        assert open_files(d.proc.pid)[0] != "1024"
    finally:
        d.stop()
