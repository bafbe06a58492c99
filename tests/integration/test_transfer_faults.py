# SPDX-License-Identifier: MIT
"""lodevd with a transfer helper that fails it: a helper that crashes or writes garbage is a
network error of that attempt, retried as one, never a failed upload or job; once a working
helper is back (lodevd restarted with it), the same transfer completes."""

import hashlib
import os
import time

import lodevtest
from lodevtest import wait_until

MiB = 1024 * 1024
TERMINAL = ("SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT", "REMOVED")


def fake_helper(workdir, body):
    path = os.path.join(workdir, "fake-helper")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(path, 0o755)
    return path


def start(bus, workdir, platform, helper, **overrides):
    config = os.path.join(workdir, "lodevd.conf")
    if not os.path.exists(config):
        lodevtest.write_device_config(config, workdir, platform, **overrides)
    d = lodevtest.Daemon(bus, workdir, config)
    d.start(extra_env={"LODEVD_TRANSFER_PATH": helper})
    d.wait_online()
    return d


def test_upload_survives_a_crashing_helper(bus, workdir, platform):
    crash = fake_helper(workdir, "kill -SEGV $$")
    d = start(bus, workdir, platform, crash)
    try:
        path = os.path.join(workdir, "payload.bin")
        data = os.urandom(3 * MiB)
        with open(path, "wb") as f:
            f.write(data)
        r = lodevtest.lodevctl(bus, "upload", path, "--name", "crash.bin")
        assert r.returncode == 0, r.stderr
        # At least two attempts, each ended by the crash, none failing the transfer.
        wait_until(lambda: d.output().count("killed by signal SEGV") >= 2, 30,
                   what="two attempts with a crashing helper")
        (t,) = lodevtest.lodevctl_json(bus, "transfers")
        assert t["state"] not in ("failed", "canceled"), t
        thing = d.status()["thing_name"]
        assert not [u for u in platform.uploads() if u["thing"] == thing]
    finally:
        d.stop()
    d = start(bus, workdir, platform, lodevtest.TRANSFER_HELPER)
    try:
        thing = d.status()["thing_name"]
        up = wait_until(lambda: [u for u in platform.uploads()
                                 if u["thing"] == thing and u["file_name"] == "crash.bin"], 60,
                        what="the upload with the real helper")
        assert up[0]["sha256"] == hashlib.sha256(data).hexdigest()
    finally:
        d.stop()


def test_firmware_job_survives_a_garbage_helper(bus, workdir, platform):
    garbage = fake_helper(workdir, "printf 'answer 200 0 0\\n\\033[31mnot a report\\n' >&3")
    hook = os.path.join(workdir, "hook")
    with open(hook, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(hook, 0o755)
    d = start(bus, workdir, platform, garbage,
              firmware={"installer": hook, "reboot_command": "/bin/true", "max_attempts": 3})
    try:
        thing = d.status()["thing_name"]
        data = os.urandom(2 * MiB)
        fw = "fw-garbage"
        platform.add_firmware(fw, data)
        job = platform.queue_job(thing, document={
            "operation": "firmware_update", "deploymentId": "dep", "firmwareId": fw,
            "firmwareUrl": "${lodev:firmware-url:%s}" % fw,
            "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
        wait_until(lambda: d.output().count("malformed report") >= 2, 60,
                   what="two attempts with a garbage-writing helper")
        assert platform.job_execution(thing, job)["status"] == "IN_PROGRESS"
    finally:
        d.stop()
    d = start(bus, workdir, platform, lodevtest.TRANSFER_HELPER)
    try:
        def ended():
            s = platform.job_execution(thing, job)["status"]
            return s if s in TERMINAL else None

        assert wait_until(ended, 90, interval=0.1, what="the job to end") == "SUCCEEDED", \
            platform.job_history(thing, job)
    finally:
        d.stop()
