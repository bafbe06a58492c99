# SPDX-License-Identifier: MIT
"""liblodev against the real lodevd: the asynchronous calls from an sd-event loop
(tests/tools/lodev-async.c), slots dropped before the answer, and the
destructors' convention (tests/unit/test-lodev-api.c covers NULL)."""

import json
import os
import signal
import subprocess

import lodevtest
from lodevtest import wait_until

ASYNC = os.path.join(lodevtest.BUILD_DIR, "tests", "lodev-async")
MiB = 1024 * 1024


def start_online(bus, workdir, emulator, **overrides):
    config = os.path.join(workdir, "lodevd.conf")
    lodevtest.write_device_config(config, workdir, emulator, **overrides)
    d = lodevtest.Daemon(bus, workdir, config).start()
    d.wait_online()
    return d


def data_file(path, size):
    """size bytes of data (no holes, so lodevd's copy really copies)."""
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(block)
    return path


def run_async(bus, *args, timeout=300):
    r = subprocess.run([ASYNC] + list(args), env=bus.env(), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, "lodev-async %s: %d\n%s%s" % (args, r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout.splitlines()[-1])


def test_async_upload_keeps_the_callers_loop_serving_a_timer(bus, workdir, platform):
    """UploadFile answers only once lodevd holds a durable copy. Through
    lodev_upload_file_async() the caller's sd-event loop keeps serving a 10 ms
    timer all that time; the blocking lodev_upload_file() called from the same
    loop starves the timer for as long as the copy takes, which shows the
    measure can fail."""
    d = start_online(bus, workdir, platform,
                     transfers={"max_bytes": 4096 * MiB, "max_rate": 1024 * 1024})
    try:
        path = data_file(os.path.join(workdir, "large.bin"), 768 * MiB)
        a = run_async(bus, "timer", path)
        s = run_async(bus, "timer", path, "--sync")
        print("\nasync: %s\nsync:  %s" % (a, s))
        ids = [t["id"] for t in lodevtest.lodevctl_json(bus, "transfers")]
        assert a["id"] in ids and s["id"] in ids
        # The copy took long enough for the timer to matter.
        assert a["call_usec"] >= 200000, a
        assert a["max_gap_usec"] <= 100000, a
        assert a["ticks"] >= a["call_usec"] / 10000 / 2, a
        assert s["call_usec"] >= 200000, s
        assert s["max_gap_usec"] >= 0.9 * s["call_usec"], s
        for i in ids:
            lodevtest.lodevctl(bus, "cancel", i)
    finally:
        d.stop()


def test_dropped_slots_never_call_back(bus, workdir, platform):
    """Every asynchronous call, sent while lodevd is stopped and its slot freed at
    once: its callback never runs, while the same call with a kept slot does.
    Answers read but not dispatched when the slot goes find nobody either, and
    calls still waiting when the handle closes run nothing, also when a callback
    closes it. Under the sanitizer
    build LeakSanitizer fails the tool if anything was left allocated. lodevd
    still carries out what it received: every upload lands."""
    d = start_online(bus, workdir, platform)
    path = os.path.join(workdir, "small.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(4096))
    proc = subprocess.Popen([ASYNC, "drop", path], env=bus.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stopped = False
    try:
        d.send_signal(signal.SIGSTOP)
        stopped = True
        assert proc.stdout.readline().strip() == "sent"
        d.send_signal(signal.SIGCONT)
        stopped = False
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
        r = json.loads(out.splitlines()[-1])
        print("\n%s" % r)
        calls = set(r["kept"])
        assert len(calls) == 6
        assert r["kept"] == {c: 1 for c in calls}, r
        assert r["failed"] == 0, err
        assert r["dropped"] == {c: 0 for c in calls}, r
        assert r["queued_ready"] is True
        assert r["queued"] == {c: 0 for c in calls}, r
        assert r["closed"] == {c: 0 for c in calls}, r
        assert r["closed_in_callback"] == {c: 0 for c in calls}, r
        thing = d.status()["thing_name"]
        wait_until(lambda: len([u for u in platform.uploads()
                                if u["thing"] == thing and u["file_name"] == "async-drop.bin"])
                   == 4, 60, interval=0.2, what="the four uploads")
    finally:
        if stopped:
            d.send_signal(signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        d.stop()


def test_sd_event_example_uploads_a_file(bus, workdir, platform):
    """lib/examples/upload.c, liblodev(3)'s sd-event integration, end to end."""
    d = start_online(bus, workdir, platform)
    try:
        path = data_file(os.path.join(workdir, "example.bin"), 3 * MiB)
        example = os.path.join(lodevtest.BUILD_DIR, "lib", "lodev-example-upload")
        r = subprocess.run([example, path], env=bus.env(), capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        tid = r.stdout.strip()
        assert "%s: " % tid in r.stderr
        thing = d.status()["thing_name"]
        (u,) = [u for u in platform.uploads()
                if u["thing"] == thing and u["file_name"] == "example.bin"]
        assert u["size"] == 3 * MiB
    finally:
        d.stop()
