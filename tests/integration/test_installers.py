# SPDX-License-Identifier: MIT
"""The example installer hooks of conf/hooks, driven as lodevd drives them (SPEC §6:
LODEV_* variables, a pipe as LODEV_PROGRESS_FD, their own process group, no other
inherited descriptor) against real RAUC and SWUpdate set up as the shared recipes
say (tests/installers/rauc_env.py, swupdate_env.py), with simulated reboots."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "installers"))

from envutil import HOOKS_DIR, require_root, require_tools, run_hook  # noqa: E402

RAUC_HOOK = os.path.join(HOOKS_DIR, "rauc")
SWUPDATE_HOOK = os.path.join(HOOKS_DIR, "swupdate")
COPY_HOOK = os.path.join(HOOKS_DIR, "copy")


@pytest.fixture
def scratch():
    d = tempfile.mkdtemp(prefix="lodev-installers-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def assert_progress(r):
    assert r.progress, "no progress line:\n%r" % r
    assert r.progress == sorted(r.progress), r.progress
    assert all(0 <= n <= 100 for n in r.progress), r.progress
    assert r.progress[-1] == 100, r.progress


# RAUC


@pytest.fixture
def rauc(scratch):
    require_root()
    require_tools("rauc", "dbus-daemon", "busctl", "openssl", "mksquashfs")
    from rauc_env import RaucEnv

    env = RaucEnv(os.path.join(scratch, "rauc"))
    env.start()
    yield env
    pids = [p.pid for p in (env.service, env.bus) if p]
    env.stop()
    for pid in pids:
        assert not os.path.exists("/proc/%d" % pid) or \
            open("/proc/%d/stat" % pid).read().split()[2] == "Z", "process %d left running" % pid


def rauc_hook(env, *args):
    e = env.hook_env()
    e["LODEV_HOOK_STATE_DIR"] = env.path("hook-state")
    return run_hook(RAUC_HOOK, *args, env=e, timeout=120)


def test_rauc_install_reboot_confirm(rauc):
    payload = os.urandom(1024 * 1024)
    bundle = rauc.bundle("v2", payload)
    assert rauc.booted == "A"

    r = rauc_hook(rauc, "install", bundle)
    assert r.code == 100, r
    assert_progress(r)
    assert len(r.progress) >= 3, r.progress
    assert rauc.boot_state() == {"primary": "B", "state_A": "good", "state_B": "bad"}
    assert rauc.slot_starts_with("B", payload)

    rauc.reboot()
    assert rauc.booted == "B"
    r = rauc_hook(rauc, "confirm")
    assert r.code == 0, r
    assert rauc.boot_state()["state_B"] == "good"
    slots = {s["rootfs.1"]["bootname"]: s["rootfs.1"] for s in rauc.status()["slots"]
             if "rootfs.1" in s}
    assert slots["B"]["boot_status"] == "good", slots
    assert not os.path.exists(rauc.path("hook-state", "rauc.target"))

    # lodevd runs confirm again after a restart: the same answer.
    r = rauc_hook(rauc, "confirm")
    assert r.code == 0, r


def test_rauc_fallback(rauc):
    bundle = rauc.bundle("v3", os.urandom(512 * 1024), version="3.0")
    r = rauc_hook(rauc, "install", bundle)
    assert r.code == 100, r
    assert rauc.boot_state()["primary"] == "B"

    # The bootloader gives up on B and boots A again.
    rauc.reboot(slot="A")
    r = rauc_hook(rauc, "confirm")
    assert r.code == 1, r
    assert "booted slot A, not the updated slot B" in r.last_error, r
    assert "fell back" in r.last_error, r
    # The running slot is primary again, so the next reboot stays on it.
    assert rauc.boot_state()["primary"] == "A"
    r = rauc_hook(rauc, "confirm")
    assert r.code == 1 and "fell back" in r.last_error, r


def test_rauc_untrusted_bundle(rauc):
    bundle = rauc.bundle("evil", os.urandom(64 * 1024), signer=rauc.make_untrusted_signer())
    before = rauc.boot_state()
    r = rauc_hook(rauc, "install", bundle)
    assert r.code == 1, r
    assert r.last_error.startswith("rauc: signature verification failed: "), r
    assert rauc.boot_state() == before
    assert not os.path.exists(rauc.path("hook-state", "rauc.target"))
    r = rauc_hook(rauc, "confirm")
    assert r.code == 1 and "no pending update" in r.last_error, r


def test_rauc_incompatible_bundle_and_no_service(rauc):
    bundle = rauc.bundle("other", os.urandom(64 * 1024), compatible="other")
    r = rauc_hook(rauc, "install", bundle)
    assert r.code == 1, r
    assert "Compatible mismatch" in r.last_error, r
    rauc.stop_service()
    r = rauc_hook(rauc, "install", bundle)
    assert r.code == 1 and r.last_error.startswith("rauc: "), r


def test_rauc_rollback_after_armed_install(rauc):
    """An install armed slot B (primary B, state bad); rollback makes the booted slot A
    primary again, so the next boot stays on the running firmware."""
    r = rauc_hook(rauc, "install", rauc.bundle("v2", os.urandom(256 * 1024)))
    assert r.code == 100, r
    assert rauc.boot_state()["primary"] == "B"
    r = rauc_hook(rauc, "rollback")
    assert r.code == 0, r
    assert "rolled back: the booted slot A is primary again" in r.last_error, r
    assert rauc.boot_state()["primary"] == "A"
    assert not os.path.exists(rauc.path("hook-state", "rauc.target"))
    # Nothing to confirm any more; a reboot boots A.
    rauc.reboot()
    assert rauc.booted == "A"
    r = rauc_hook(rauc, "confirm")
    assert r.code == 1 and "no pending update" in r.last_error, r
    # Rolling back again changes nothing.
    assert rauc_hook(rauc, "rollback").code == 0
    assert rauc.boot_state()["primary"] == "A"


def test_rauc_rollback_waits_for_a_cut_install(rauc):
    """The hook's install is killed half-way (lodevd's timeout, a restart): RAUC's service
    goes on and arms slot B at its end. rollback waits for it, then undoes it."""
    bundle = rauc.bundle("v2", os.urandom(15 * 1024 * 1024))
    e = dict(os.environ, **rauc.hook_env(), LODEV_HOOK_STATE_DIR=rauc.path("hook-state"))
    hook = subprocess.Popen([RAUC_HOOK, "install", bundle], env=e, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            process_group=0)
    op = ["busctl", "--user", "get-property", "de.pengutronix.rauc", "/",
          "de.pengutronix.rauc.Installer", "Operation"]
    from envutil import wait_until

    wait_until(lambda: '"installing"' in subprocess.run(op, env=rauc.env(), capture_output=True,
                                                        text=True).stdout,
               30, "RAUC installing")
    os.killpg(hook.pid, signal.SIGKILL)
    hook.wait(10)
    r = rauc_hook(rauc, "rollback")
    assert r.code == 0, r
    assert '"idle"' in subprocess.run(op, env=rauc.env(), capture_output=True, text=True).stdout
    # The install finished in the service (B written, B armed), and was undone after.
    with open(rauc.path("backend.log")) as f:
        log = f.read().split("\n")
    assert "set-primary B" in log and log.index("set-primary A") > log.index("set-primary B"), log
    assert rauc.boot_state()["primary"] == "A"


def test_rauc_rollback_with_nothing_armed(rauc):
    r = rauc_hook(rauc, "rollback")
    assert r.code == 0, r
    assert rauc.boot_state() == {"primary": "A", "state_A": "good", "state_B": "good"}


# SWUpdate


@pytest.fixture
def swupdate(scratch):
    require_root()
    require_tools("swupdate", "cpio", "openssl", "grub-editenv", "unshare")
    from swupdate_env import SwupdateEnv

    return SwupdateEnv(os.path.join(scratch, "swupdate"))


def swupdate_hook(env, *args):
    argv = env.wrap([SWUPDATE_HOOK] + list(args))
    return run_hook(argv[0], *argv[1:], env=env.hook_env(), timeout=120)


def test_swupdate_install_reboot_confirm(swupdate):
    payload = os.urandom(1024 * 1024)
    swu = swupdate.swu("v2", payload)
    r = swupdate_hook(swupdate, "install", swu)
    assert r.code == 100, r
    assert_progress(r)
    assert swupdate.slot_starts_with("B", payload)
    env = swupdate.grubenv()
    assert env["rootslot"] == "B" and env["upgrade_available"] == "1", env

    swupdate.reboot()
    assert swupdate.booted == "B"
    r = swupdate_hook(swupdate, "confirm")
    assert r.code == 0, r
    env = swupdate.grubenv()
    assert "upgrade_available" not in env and env["ustate"] == "0", env
    r = swupdate_hook(swupdate, "confirm")
    assert r.code == 0, r

    # The next update goes to the other copy.
    payload = os.urandom(256 * 1024)
    r = swupdate_hook(swupdate, "install", swupdate.swu("v3", payload, version="3.0"))
    assert r.code == 100, r
    assert swupdate.slot_starts_with("A", payload)
    assert swupdate.grubenv()["rootslot"] == "A"


def test_swupdate_fallback(swupdate):
    r = swupdate_hook(swupdate, "install", swupdate.swu("v2", os.urandom(128 * 1024)))
    assert r.code == 100, r
    swupdate.reboot(fallback=True)
    assert swupdate.booted == "A"
    r = swupdate_hook(swupdate, "confirm")
    assert r.code == 1, r
    assert "booted slot A, not the updated slot B" in r.last_error, r
    env = swupdate.grubenv()
    assert "upgrade_available" not in env and env["ustate"] == "3", env


def test_swupdate_untrusted_image(swupdate):
    before = swupdate.grubenv()
    swu = swupdate.swu("evil", os.urandom(64 * 1024), signer=swupdate.make_untrusted_signer())
    r = swupdate_hook(swupdate, "install", swu)
    assert r.code == 1, r
    assert r.last_error == "swupdate: Authentication of all signatures failed", r
    assert swupdate.grubenv() == before
    assert not os.path.exists(os.path.join(swupdate.state_dir, "swupdate.target"))


def test_swupdate_rollback_after_armed_install(swupdate):
    r = swupdate_hook(swupdate, "install", swupdate.swu("v2", os.urandom(128 * 1024)))
    assert r.code == 100, r
    assert swupdate.grubenv()["rootslot"] == "B"
    r = swupdate_hook(swupdate, "rollback")
    assert r.code == 0, r
    assert "rolled back: slot A (running) boots next" in r.last_error, r
    env = swupdate.grubenv()
    assert env["rootslot"] == "A" and "upgrade_available" not in env and env["ustate"] == "3", env
    swupdate.reboot()
    assert swupdate.booted == "A"
    assert not os.path.exists(os.path.join(swupdate.state_dir, "swupdate.target"))


# SWUpdate in its default mode, the way lodevd's hardened unit runs it: the hook as an
# unprivileged user without write access to /boot, the root side in what
# lodevd-swupdate.path starts.


@pytest.fixture
def swupdate_service(scratch):
    require_root()
    require_tools("swupdate", "cpio", "openssl", "grub-editenv", "unshare", "setpriv")
    from swupdate_env import SwupdateEnv

    env = SwupdateEnv(os.path.join(scratch, "swupdate"), mode="service")
    with env.service() as service:
        env.runs = service.runs
        yield env


def service_hook(env, *args, **kw):
    return run_hook(SWUPDATE_HOOK, *args, env=env.hook_env(), timeout=180, user=env.user, **kw)


def test_swupdate_service_install_reboot_confirm(swupdate_service):
    env = swupdate_service
    payload = os.urandom(1024 * 1024)
    r = service_hook(env, "install", env.swu("v2", payload))
    assert r.code == 100, r
    assert_progress(r)
    assert r.last_error == "swupdate: installed into slot B; reboot needed", r
    assert env.slot_starts_with("B", payload)
    assert env.grubenv()["rootslot"] == "B"
    # The hook itself could not have written there.
    r = run_hook("/bin/sh", "-c", ": >>/tmp/x/../../%s" % env.grubenv_path.lstrip("/"),
                 user="nobody")
    assert r.code != 0
    env.reboot()
    r = service_hook(env, "confirm")
    assert r.code == 0, r
    assert "upgrade_available" not in env.grubenv()
    assert [op for op, code, _ in env.runs] == ["install", "confirm"], env.runs


def test_swupdate_service_rollback(swupdate_service):
    env = swupdate_service
    r = service_hook(env, "install", env.swu("v2", os.urandom(128 * 1024)))
    assert r.code == 100, r
    r = service_hook(env, "rollback")
    assert r.code == 0, r
    grubenv = env.grubenv()
    assert grubenv["rootslot"] == "A" and "upgrade_available" not in grubenv, grubenv
    # A failed install reports SWUpdate's reason through the service too.
    swu = env.swu("evil", os.urandom(64 * 1024), signer=env.make_untrusted_signer())
    r = service_hook(env, "install", swu)
    assert r.code == 1 and r.last_error == "swupdate: Authentication of all signatures failed", r


def test_swupdate_service_refuses_other_files(swupdate_service, scratch):
    env = swupdate_service
    outside = os.path.join(scratch, "elsewhere.swu")
    shutil.copy(env.swu("v2", os.urandom(4096)), outside)
    os.chmod(outside, 0o644)
    r = service_hook(env, "install", outside)
    assert r.code == 1 and "is not a file in " + env.dir in r.last_error, r
    assert env.grubenv()["rootslot"] == "A"


def test_swupdate_service_rollback_waits_for_a_cut_install(swupdate_service):
    """The hook is killed while the service installs: the install goes on; the rollback
    request waits behind it and then undoes what it armed."""
    env = swupdate_service
    swu = env.swu("v2", os.urandom(8 * 1024 * 1024))
    e = dict(os.environ, **env.hook_env(), LODEV_JOB_ID="job-1")
    hook = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                             SWUPDATE_HOOK, "install", swu], env=e, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            process_group=0)
    from envutil import wait_until

    wait_until(lambda: os.path.exists(os.path.join(env.service_dir, "progress")), 30,
               "the service at work")
    os.killpg(hook.pid, signal.SIGKILL)
    hook.wait(10)
    r = service_hook(env, "rollback")
    assert r.code == 0, r
    assert [op for op, code, _ in env.runs] == ["install", "rollback"], env.runs
    assert env.runs[0][1] == 0  # the service finished the install
    grubenv = env.grubenv()
    assert grubenv["rootslot"] == "A" and "upgrade_available" not in grubenv, grubenv


def test_swupdate_bad_config(swupdate):
    swupdate.write_conf(SWUPDATE_BOOTED_FILE=swupdate.path("nonexistent"))
    r = swupdate_hook(swupdate, "install", swupdate.swu("v2", b"x" * 4096))
    assert r.code == 1, r
    assert "cannot read " + swupdate.path("nonexistent") in r.last_error, r


# copy


def test_copy_install(scratch):
    src = os.path.join(scratch, "fw.bin")
    data = os.urandom(3 * 1024 * 1024 + 17)
    with open(src, "wb") as f:
        f.write(data)
    dest_dir = os.path.join(scratch, "dest")
    os.mkdir(dest_dir)
    dest = os.path.join(dest_dir, "firmware.bin")
    with open(dest, "wb") as f:
        f.write(b"old")
    r = run_hook(COPY_HOOK, "install", src, env={"LODEV_COPY_DEST": dest})
    assert r.code == 0, r
    assert_progress(r)
    assert len(r.progress) >= 4, r.progress
    with open(dest, "rb") as f:
        assert f.read() == data
    # No temporary file left; the previous file is kept for a rollback of this job.
    assert sorted(os.listdir(dest_dir)) == [".firmware.bin.lodevd-previous",
                                            ".firmware.bin.lodevd-previous.job",
                                            "firmware.bin"]
    with open(os.path.join(dest_dir, ".firmware.bin.lodevd-previous"), "rb") as f:
        assert f.read() == b"old"
    assert run_hook(COPY_HOOK, "confirm").code == 0


def test_copy_config_file_and_failures(scratch):
    src = os.path.join(scratch, "fw.bin")
    with open(src, "wb") as f:
        f.write(b"firmware")
    conf = os.path.join(scratch, "copy-hook.conf")
    dest = os.path.join(scratch, "it's here.bin")
    with open(conf, "w") as f:
        f.write("COPY_DEST='%s'\nCOPY_MODE=0600\n" % dest.replace("'", "'\\''"))
    r = run_hook(COPY_HOOK, "install", src, env={"LODEV_COPY_CONF": conf})
    assert r.code == 0, r
    with open(dest, "rb") as f:
        assert f.read() == b"firmware"
    assert os.stat(dest).st_mode & 0o777 == 0o600

    r = run_hook(COPY_HOOK, "install", src,
                 env={"LODEV_COPY_CONF": os.path.join(scratch, "none.conf")})
    assert r.code == 1 and r.last_error.startswith("copy: no destination"), r
    r = run_hook(COPY_HOOK, "install", src,
                 env={"LODEV_COPY_DEST": os.path.join(scratch, "no", "dir", "f")})
    assert r.code == 1 and "does not exist" in r.last_error, r
    r = run_hook(COPY_HOOK, "install", os.path.join(scratch, "missing"),
                 env={"LODEV_COPY_DEST": dest})
    assert r.code == 1 and r.last_error.startswith("copy: no such file"), r
    r = run_hook(COPY_HOOK, "frobnicate")
    assert r.code == 2, r


def test_copy_rollback(scratch):
    """rollback puts back what the install of the same job replaced, removes what it
    created, and leaves alone what another job installed."""
    src = os.path.join(scratch, "fw.bin")
    with open(src, "wb") as f:
        f.write(b"new firmware")
    dest = os.path.join(scratch, "firmware.bin")
    with open(dest, "wb") as f:
        f.write(b"old")
    env = {"LODEV_COPY_DEST": dest, "LODEV_JOB_ID": "job-7"}
    assert run_hook(COPY_HOOK, "install", src, env=env).code == 0
    r = run_hook(COPY_HOOK, "rollback", env=env)
    assert r.code == 0 and "as it was before job job-7" in r.last_error, r
    with open(dest, "rb") as f:
        assert f.read() == b"old"
    # Again: nothing more to do.
    r = run_hook(COPY_HOOK, "rollback", env=env)
    assert r.code == 0 and "nothing of job job-7" in r.last_error, r
    # A job that installed and succeeded is not undone by another job's rollback.
    assert run_hook(COPY_HOOK, "install", src, env=env).code == 0
    r = run_hook(COPY_HOOK, "rollback", env=dict(env, LODEV_JOB_ID="job-8"))
    assert r.code == 0 and "nothing of job job-8" in r.last_error, r
    with open(dest, "rb") as f:
        assert f.read() == b"new firmware"
    # An install that created the file: its rollback removes it.
    os.unlink(dest)
    assert run_hook(COPY_HOOK, "install", src, env=dict(env, LODEV_JOB_ID="job-9")).code == 0
    assert run_hook(COPY_HOOK, "rollback", env=dict(env, LODEV_JOB_ID="job-9")).code == 0
    assert not os.path.exists(dest)


def test_hooks_are_posix_sh():
    """The hooks run with /bin/sh (dash on Debian); checked with dash -n and, when
    installed, checkbashisms/shellcheck are not required."""
    for hook in (RAUC_HOOK, SWUPDATE_HOOK, COPY_HOOK):
        with open(hook) as f:
            assert f.readline().strip() == "#!/bin/sh", hook
        assert os.access(hook, os.X_OK), hook
        sh = shutil.which("dash") or "/bin/sh"
        import subprocess

        r = subprocess.run([sh, "-n", hook], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, (hook, r.stderr)
