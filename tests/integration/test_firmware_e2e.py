# SPDX-License-Identifier: MIT
"""A firmware job end to end through lodevd with the example RAUC hook (SPEC §2 jobs,
§4, §6): the platform emulator queues a firmware_update job, lodevd downloads the
bundle, runs conf/hooks/rauc as firmware.installer, which installs into slot B through
a real `rauc service` and exits 100; lodevd runs reboot_command (here a script that
records the request); the test "reboots": lodevd stops, the RAUC service restarts
booted from the slot the bootloader picks, the boot id changes, lodevd starts again
and runs `hook confirm`, and the platform sees SUCCEEDED (or FAILED after a fallback,
or FAILED with RAUC's reason for an untrusted bundle).

What it relies on in lodevd:
  - firmware.installer / firmware.reboot_command run as SPEC §6 says; the hook's
    environment is built by a wrapper here, so lodevd need not pass its own through;
  - a reboot is told from a restart by the boot id (/proc/sys/kernel/random/boot_id,
    or sd_id128_get_boot(), which reads it): lodevd runs in a private mount
    namespace where a file of the test is bind-mounted over it;
  - progress lines reach the platform as statusDetails.percentProgress while
    IN_PROGRESS; the last stderr line of a failed hook is one of the statusDetails
    values of the FAILED update.
Needs root (RAUC's service, the mount namespace)."""

import os
import shutil
import sys
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "installers"))

import lodevtest  # noqa: E402
from envutil import HOOKS_DIR, require_root, require_tools  # noqa: E402


@pytest.fixture
def rauc(workdir):
    require_root()
    require_tools("rauc", "dbus-daemon", "busctl", "openssl", "mksquashfs", "unshare")
    from rauc_env import RaucEnv

    env = RaucEnv(os.path.join(workdir, "rauc"))
    env.start()
    yield env
    env.stop()


class Device:
    """lodevd with an example hook (hook_script: the body of the firmware.installer
    wrapper that sets the hook's environment), a recording reboot_command and a boot
    id of its own; bootloader(slot) is what the "reboot" does to the installer's side."""

    def __init__(self, bus, workdir, platform, hook_script, bootloader):
        self.workdir = workdir
        self.bootloader = bootloader
        self.boot_id = lodevtest.BootId(workdir)
        self.reboot_marker = os.path.join(workdir, "reboot-requested")
        hook = os.path.join(workdir, "install-firmware")
        with open(hook, "w") as f:
            f.write("#!/bin/sh\n" + hook_script)
        os.chmod(hook, 0o755)
        reboot = os.path.join(workdir, "reboot")
        self.reboot_fails = os.path.join(workdir, "reboot-fails")
        with open(reboot, "w") as f:
            f.write("#!/bin/sh\necho \"$(date +%%s.%%N)\" >>'%s'\n"
                    "[ ! -e '%s' ] || { echo 'reboot: refused' >&2; exit 1; }\n"
                    % (self.reboot_marker, self.reboot_fails))
        os.chmod(reboot, 0o755)
        config = os.path.join(workdir, "lodevd.conf")
        lodevtest.write_device_config(config, workdir, platform, firmware={
            "installer": hook, "reboot_command": reboot, "install_timeout": 120,
            "max_reboot_delay": 5, "max_attempts": 3, "max_reboot_tries": 2})
        # lodevd in a mount namespace where the boot id is the test's.
        self.daemon = lodevtest.Daemon(bus, workdir, config, boot_id=self.boot_id)

    def reboots_requested(self):
        if not os.path.exists(self.reboot_marker):
            return 0
        with open(self.reboot_marker) as f:
            return len(f.read().split())

    def reboot(self, slot=None):
        """What a reboot does to this device: lodevd stops, the bootloader picks a
        slot (the primary, or SLOT for a fallback), a new boot id, lodevd starts."""
        self.daemon.stop()
        self.bootloader(slot)
        self.boot_id.new_boot()
        self.daemon.start()


@pytest.fixture
def device(bus, workdir, platform, rauc):
    script = ("export DBUS_STARTER_BUS_TYPE=session\n"
              "export DBUS_SESSION_BUS_ADDRESS='%s'\n"
              "export LODEV_HOOK_STATE_DIR='%s'\n"
              "exec '%s' \"$@\"\n"
              % (rauc.bus_address, os.path.join(workdir, "hook-state"),
                 os.path.join(HOOKS_DIR, "rauc")))
    d = Device(bus, workdir, platform, script, rauc.reboot)
    d.daemon.start()
    d.daemon.wait_online()
    yield d
    d.daemon.stop()


def thing_of(device):
    return device.daemon.status()["thing_name"]


def wait_status(platform, thing, job_id, statuses, timeout=120):
    def done():
        e = platform.job_execution(thing, job_id)
        return e if e and e.get("status") in statuses else None

    return lodevtest.wait_until(done, timeout=timeout, what="job %s in %s" % (job_id, statuses))


def details_text(execution):
    return " ".join(str(v) for v in (execution.get("statusDetails") or {}).values())


def queue(platform, device, name, bundle):
    with open(bundle, "rb") as f:
        platform.add_firmware(name, f.read())
    thing = thing_of(device)
    job = platform.queue_job(thing, firmware_id=name, deployment_id="deploy-" + name)
    lodevtest.lodevctl(device.daemon.bus, "jobs", "--check")
    return thing, job


def test_update_reboot_confirm(platform, device, rauc):
    payload = os.urandom(1024 * 1024)
    thing, job = queue(platform, device, "fw-2", rauc.bundle("v2", payload))

    lodevtest.wait_until(lambda: device.reboots_requested() >= 1, timeout=120,
                         what="reboot_command")
    assert rauc.boot_state()["primary"] == "B"
    assert rauc.slot_starts_with("B", payload)
    history = platform.job_history(thing, job)
    percents = [h.get("statusDetails", {}).get("percentProgress") for h in history]
    assert any(p not in (None, "0") for p in percents), history
    assert platform.job_execution(thing, job)["status"] == "IN_PROGRESS"

    device.reboot()
    e = wait_status(platform, thing, job, ("SUCCEEDED", "FAILED"))
    assert e["status"] == "SUCCEEDED", e
    assert rauc.boot_state()["state_B"] == "good"
    assert device.reboots_requested() == 1


def test_fallback_fails_the_job(platform, device, rauc):
    thing, job = queue(platform, device, "fw-3", rauc.bundle("v3", os.urandom(256 * 1024)))
    lodevtest.wait_until(lambda: device.reboots_requested() >= 1, timeout=120,
                         what="reboot_command")
    device.reboot(slot="A")
    e = wait_status(platform, thing, job, ("SUCCEEDED", "FAILED"))
    assert e["status"] == "FAILED", e
    assert "fell back" in details_text(e), e
    assert rauc.boot_state()["primary"] == "A"


def test_untrusted_bundle_fails_without_reboot(platform, device, rauc):
    bundle = rauc.bundle("evil", os.urandom(64 * 1024), signer=rauc.make_untrusted_signer())
    thing, job = queue(platform, device, "fw-evil", bundle)
    e = wait_status(platform, thing, job, ("SUCCEEDED", "FAILED"))
    assert e["status"] == "FAILED", e
    assert "signature verification failed" in details_text(e), e
    assert device.reboots_requested() == 0
    assert rauc.boot_state()["primary"] == "A"


def test_reboot_refused_rolls_back(platform, device, rauc):
    """The install armed slot B but the device cannot be rebooted: after max_reboot_tries
    lodevd runs the hook's rollback, RAUC makes the running slot A primary again, and only
    then is the job FAILED."""
    open(device.reboot_fails, "w").close()
    thing, job = queue(platform, device, "fw-5", rauc.bundle("v5", os.urandom(128 * 1024)))
    e = wait_status(platform, thing, job, ("SUCCEEDED", "FAILED"))
    assert e["status"] == "FAILED", e
    assert "could not be rebooted" in details_text(e), e
    assert "rolled back: the booted slot A is primary again" in \
        e["statusDetails"].get("rollback", ""), e
    assert device.reboots_requested() == 2
    assert rauc.boot_state()["primary"] == "A"
    with open(rauc.path("backend.log")) as f:
        log = f.read().split("\n")
    assert log.index("set-primary A") > log.index("set-primary B"), log


def test_repeated_restarts_confirm_once(platform, device, rauc):
    """lodevd restarts again after the reboot, before or after confirming: the
    confirm hook runs again and the job still ends SUCCEEDED once."""
    thing, job = queue(platform, device, "fw-4", rauc.bundle("v4", os.urandom(128 * 1024)))
    lodevtest.wait_until(lambda: device.reboots_requested() >= 1, timeout=120,
                         what="reboot_command")
    device.reboot()
    device.daemon.stop()
    device.daemon.start()
    e = wait_status(platform, thing, job, ("SUCCEEDED", "FAILED"))
    assert e["status"] == "SUCCEEDED", e
    statuses = [h.get("status") for h in platform.job_history(thing, job)]
    assert statuses.count("SUCCEEDED") == 1, statuses
    shutil.rmtree(os.path.join(device.workdir, "hook-state"), ignore_errors=True)


# --- SWUpdate: the same job flow with the swupdate example hook ---


@pytest.fixture
def swupdate(workdir):
    require_root()
    require_tools("swupdate", "cpio", "openssl", "grub-editenv", "unshare")
    from swupdate_env import SwupdateEnv

    return SwupdateEnv(os.path.join(workdir, "swupdate"))


@pytest.fixture
def swu_device(bus, workdir, platform, swupdate):
    env = "".join("export %s='%s'\n" % kv for kv in swupdate.hook_env().items())
    wrapped = " ".join("'%s'" % a for a in swupdate.wrap([os.path.join(HOOKS_DIR, "swupdate")]))
    script = env + "exec %s \"$@\"\n" % wrapped
    d = Device(bus, workdir, platform, script,
               lambda slot: swupdate.reboot(fallback=slot is not None))
    d.daemon.start()
    d.daemon.wait_online()
    yield d
    d.daemon.stop()


@pytest.fixture
def swu_service_device(bus, workdir, platform):
    """The swupdate hook in its default mode through lodevd: lodevd runs it, it leaves
    requests for the root side (what lodevd-swupdate.path starts)."""
    require_root()
    require_tools("swupdate", "cpio", "openssl", "grub-editenv", "unshare")
    from swupdate_env import SwupdateEnv

    swupdate = SwupdateEnv(os.path.join(workdir, "swupdate"), mode="service")
    # lodevd keeps its downloads in its state directory: the service takes files there.
    swupdate.write_conf(SWUPDATE_FILES_DIR=os.path.join(workdir, "state", "job"))
    env = "".join("export %s='%s'\n" % kv for kv in swupdate.hook_env().items())
    script = env + "exec '%s' \"$@\"\n" % os.path.join(HOOKS_DIR, "swupdate")
    d = Device(bus, workdir, platform, script,
               lambda slot: swupdate.reboot(fallback=slot is not None))
    with swupdate.service() as service:
        d.daemon.start()
        d.daemon.wait_online()
        d.swupdate, d.service = swupdate, service
        yield d
        d.daemon.stop()


def test_swupdate_service_update_rollback_and_update(platform, swu_service_device):
    d = swu_service_device
    swupdate = d.swupdate
    open(d.reboot_fails, "w").close()
    thing, job = queue(platform, d, "swu-6", swupdate.swu("v6", os.urandom(512 * 1024)))
    e = wait_status(platform, thing, job, ("SUCCEEDED", "FAILED"))
    assert e["status"] == "FAILED" and "could not be rebooted" in details_text(e), e
    grubenv = swupdate.grubenv()
    assert grubenv["rootslot"] == "A" and "upgrade_available" not in grubenv, grubenv
    assert [op for op, code, _ in d.service.runs] == ["install", "rollback"], d.service.runs

    os.unlink(d.reboot_fails)
    payload = os.urandom(256 * 1024)
    thing, job = queue(platform, d, "swu-7", swupdate.swu("v7", payload, version="7.0"))
    lodevtest.wait_until(lambda: d.reboots_requested() >= 3, timeout=120,
                         what="reboot_command")
    assert swupdate.slot_starts_with("B", payload)
    d.reboot()
    e = wait_status(platform, thing, job, ("SUCCEEDED", "FAILED"))
    assert e["status"] == "SUCCEEDED", e
    assert "upgrade_available" not in swupdate.grubenv()


def test_swupdate_update_reboot_confirm(platform, swu_device, swupdate):
    payload = os.urandom(1024 * 1024)
    thing, job = queue(platform, swu_device, "swu-2", swupdate.swu("v2", payload))
    lodevtest.wait_until(lambda: swu_device.reboots_requested() >= 1, timeout=120,
                         what="reboot_command")
    assert swupdate.slot_starts_with("B", payload)
    assert swupdate.grubenv()["rootslot"] == "B"
    assert platform.job_execution(thing, job)["status"] == "IN_PROGRESS"

    swu_device.reboot()
    e = wait_status(platform, thing, job, ("SUCCEEDED", "FAILED"))
    assert e["status"] == "SUCCEEDED", e
    assert swupdate.booted == "B"
    assert "upgrade_available" not in swupdate.grubenv()
    assert swu_device.reboots_requested() == 1


def test_swupdate_fallback_fails_the_job(platform, swu_device, swupdate):
    thing, job = queue(platform, swu_device, "swu-3",
                            swupdate.swu("v3", os.urandom(256 * 1024)))
    lodevtest.wait_until(lambda: swu_device.reboots_requested() >= 1, timeout=120,
                         what="reboot_command")
    swu_device.reboot(slot="A")
    e = wait_status(platform, thing, job, ("SUCCEEDED", "FAILED"))
    assert e["status"] == "FAILED", e
    assert "not the updated slot" in details_text(e), e
    assert swupdate.booted == "A"
