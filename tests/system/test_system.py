# SPDX-License-Identifier: MIT
"""lodevd installed on a real systemd, as a gateway runs it.

The packages are built from this tree (scripts/build-debs.sh), installed with
`apt-get install ./*.deb` into a Debian 12 root (mmdebstrap, cached) booted with
systemd-nspawn, and configured as an operator would: the configuration, the claim
certificate and key with the ownership and modes of lodevd(8). The shipped unit,
bus policy, activation file, reboot path units, sysusers entry and catalog do the
rest. Everything is checked through the real system: systemctl, busctl, lodevctl and
journalctl inside the container, and the platform emulator's records on the host
(the container shares the host's network, the emulator listens on 127.0.0.1).

The steps run in order on one machine; a failed step leaves the later ones not run.
What is the test's own, and why:
  - a bootloader for RAUC: two slot files and a custom backend keeping its state in a
    file (a container boots no bootloader); rauc.service starts with
    --override-boot-slot from that state, as a kernel command line would say;
  - the boot id (systest-boot-id.service and a drop-in of lodevd.service): nspawn gives
    the container its own boot id by a mount over /proc/sys/kernel/random/boot_id in the
    container's /proc. lodevd's unit has ProtectProc=invisible, so lodevd gets a procfs
    of its own, without that mount: it would see the host kernel's boot id, which does
    not change when the container reboots. On a device there is one kernel and no such
    difference. The drop-in binds a file holding the container's boot id over
    /proc/sys/kernel/random/boot_id in lodevd's namespace (BindReadOnlyPaths=), and the
    test checks from inside that namespace that the id lodevd sees is the container's
    and changes across the reboot. Nothing else of the unit changes. That file is a
    regular file: how lodevd reads the real pseudo-file (size 0) is checked before the
    drop-in is in place, in the first steps.
RAUC runs inside the container against loop devices (nspawn --bind=/dev/loop-control
and the /dev/loopN nodes), so the RAUC hook runs under the shipped unit as lodevd
runs it on a device.
Needs root, systemd-nspawn (systemd-container), mmdebstrap, dpkg-buildpackage and the
build dependencies of debian/control (scripts/setup.sh installs them all), and Debian's
mirror for the first mmdebstrap.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid

import pytest

import lodevtest
import machine
from machine import Stopwatch, timings, wait_until

SOURCE_DIR = os.path.abspath(os.environ.get(
    "LODEV_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", "..")))
CATALOG = os.path.join(SOURCE_DIR, "daemon", "lodevd.catalog")

TOOLS = ["systemd-nspawn", "nsenter", "mmdebstrap", "dpkg-buildpackage", "dpkg-deb", "tar",
         "rauc", "openssl", "mksquashfs", "mosquitto"]

# The steps' own limit; meson's timeout (tests/system/meson.build) is a minute more,
# for stopping the container and removing its root.
BUDGET = float(os.environ.get("LODEV_SYSTEM_BUDGET", "660"))

HOOK = "/usr/libexec/lodevd/hooks/rauc"
SERIAL = "SN-SYSTEST-0001"
UPLOAD_SIZE = 4 * 1024 * 1024

# The container's RAUC: rauc_env's system (two raw slots, a custom bootloader backend
# that keeps its state in a file) under RAUC_DIR. The service is told the booted slot
# by the backend's primary, as a kernel command line would (rauc.service drop-in).
RAUC_DIR = "/var/lib/systest-rauc"
RAUC_DROPIN = """[Service]
ExecStart=
ExecStart=/bin/sh -c 'exec /usr/bin/rauc --mount=/run/rauc service --override-boot-slot="$({d}/backend.sh get-primary)"'
"""

# The boot id, see the module's docstring.
BOOT_ID_UNIT = """[Unit]
Description=The container's boot id for lodevd (system test)
DefaultDependencies=no
Before=lodevd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'mkdir -p /run/systest && cat /proc/sys/kernel/random/boot_id >/run/systest/boot_id'
"""
BOOT_ID_DROPIN = """[Unit]
Requires=systest-boot-id.service
After=systest-boot-id.service

[Service]
BindReadOnlyPaths=/run/systest/boot_id:/proc/sys/kernel/random/boot_id
"""


def require_tools():
    missing = [t for t in TOOLS if not shutil.which(t)]
    why = None
    if missing:
        why = "missing tools: %s" % " ".join(missing)
    elif os.geteuid() != 0:
        why = "needs root (systemd-nspawn, mmdebstrap)"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why + " (required under CI)")
        pytest.skip(why)


def catalog():
    """{MESSAGE_ID: (Subject, first line of the text)} from the catalog in the tree."""
    entries, current, lines = {}, None, []

    def close():
        if current:
            subject = next(x[len("Subject: "):] for x in lines if x.startswith("Subject: "))
            text = [x for x in lines[lines.index(""):] if x] if "" in lines else []
            entries[current] = (subject, text[0] if text else "")

    with open(CATALOG) as f:
        for line in f:
            line = line.rstrip("\n")
            m = re.match(r"^-- ([0-9a-f]{32})\s*$", line)
            if m:
                close()
                current, lines = m.group(1), []
            elif current:
                lines.append(line.strip())
    close()
    return entries


def message_id(subject_start):
    found = [i for i, (s, _) in catalog().items() if s.startswith(subject_start)]
    assert len(found) == 1, "catalog subject %r: %s" % (subject_start, found)
    return found[0]


class System:
    """The machine, the emulator, and what the steps learn on the way."""

    def __init__(self, m, platform, rauc_env):
        self.m = m
        self.platform = platform
        self.rauc = rauc_env
        self.thing = None
        self.publish_rate = 100
        self.next_value = 1

    # In the container.

    def journal(self, *match, boot=None):
        """lodevd's journal entries (JSON) matching MATCH, this boot or BOOT."""
        args = ["journalctl", "-u", "lodevd.service", "-o", "json", "--no-pager"]
        args += ["-b", str(boot)] if boot is not None else ["-b"]
        r = self.m.run(args + list(match), check=False)
        return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]

    def show(self, *props, unit="lodevd.service"):
        args = ["systemctl", "show", unit] + ["-p" + p for p in props]
        out = self.m.run(args).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self):
        return int(self.show("MainPID")["MainPID"])

    def lodevctl(self, *args, user=None, check=True, timeout=60):
        return self.m.run(["lodevctl"] + list(args), user=user, check=check, timeout=timeout)

    def status(self):
        return json.loads(self.lodevctl("--json", "status").stdout)

    def wait_online(self, timeout=60):
        r = self.lodevctl("wait-online", "--timeout", str(timeout), check=False,
                          timeout=timeout + 10)
        assert r.returncode == 0, "lodevd not online: %s%s\n%s" % (
            r.stdout, r.stderr, self.m.run(["journalctl", "-u", "lodevd", "-n", "30",
                                            "--no-pager"], check=False).stdout)

    def diagnostics(self):
        """What to read when a step failed: lodevd's journal and the failed units."""
        if not self.m.running():
            return "the container is not running\n" + self.m.console_log()[-3000:]
        out = []
        for args in (["systemctl", "--failed", "--no-legend"],
                     ["systemctl", "status", "--no-pager", "lodevd.service"],
                     ["journalctl", "-b", "-u", "lodevd.service", "-n", "60", "--no-pager"]):
            try:
                r = self.m.run(args, check=False, timeout=20)
                out.append("$ %s\n%s%s" % (" ".join(args), r.stdout, r.stderr))
            except Exception as e:  # a diagnostic must not hide the failure
                out.append("$ %s: %s" % (" ".join(args), e))
        return "\n".join(out)

    def boot_id(self):
        return self.m.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()

    def boot_id_seen_by_lodevd(self):
        """The boot id in lodevd's own mount namespace (and its procfs)."""
        pid = self.main_pid()
        return self.m.run(["nsenter", "-t", str(pid), "-m", "cat",
                           "/proc/sys/kernel/random/boot_id"]).stdout.strip()

    def write_config(self):
        """/etc/lodevd/lodevd.conf as the operator writes it for this product. The
        claim files and the state directory stay at their defaults; reboot_command is
        not set (the shipped default)."""
        lodevtest.write_config(
            self.m.path("/var/tmp/systest/lodevd.conf"),
            platform={"endpoint": "127.0.0.1", "port": self.platform.mqtt_port,
                      "ca_file": "/etc/lodevd/platform-ca.pem",
                      "publish_rate": self.publish_rate},
            provisioning={"parameters": {"SerialNumber": "file:/etc/lodevd/serial",
                                         "Manufacturer": "Acme", "Name": "gateway",
                                         "Model": "GW-1"}},
            http={"allow_http": True},
            firmware={"installer": HOOK, "install_timeout": 300, "max_attempts": 3})
        self.m.run(["install", "-o", "root", "-g", "root", "-m", "0644",
                    "/var/tmp/systest/lodevd.conf", "/etc/lodevd/lodevd.conf"])

    def observe(self, n):
        """N observations from a loop in the container, each with a value of its own
        (the platform knows an observation by its content); returns the values."""
        first = self.next_value
        self.next_value += n
        r = self.m.sh(
            "i=%d; while [ $i -lt %d ]; do lodevctl observe --code 8867-4 "
            "--code-system http://loinc.org --code-display 'Heart rate' --value $i "
            "--unit /min; i=$((i + 1)); done" % (first, first + n), timeout=120)
        assert len(r.stdout.split()) == n, r.stdout + r.stderr
        return list(range(first, first + n))

    def delivered(self, values):
        """Those of VALUES the emulator recorded from this device."""
        got = {o["payload"].get("value") for o in self.platform.observations()
               if o["thing"] == self.thing}
        return [v for v in values if v in got]


def _wait_delivered(s, values, timeout):
    wait_until(lambda: len(s.delivered(values)) == len(values), timeout,
               "%d observations at the emulator" % len(values), interval=0.2)


@pytest.fixture(scope="module")
def system():
    require_tools()
    from lodev_platform import Platform
    from rauc_env import BACKEND, COMPATIBLE, SYSTEM_CONF, RaucEnv

    total = time.monotonic()
    machine.budget.start(BUDGET)
    machine.remove_stale_roots()
    work = tempfile.mkdtemp(prefix="%s%d-" % (machine.WORK_PREFIX, os.getpid()), dir="/var/tmp")
    name = "lodevd-systest-%d-%s" % (os.getpid(), uuid.uuid4().hex[:6])
    m = platform = None
    try:
        with Stopwatch("build the packages (scripts/build-debs.sh)"):
            os.makedirs(os.path.join(work, "pkg"))
            debs = machine.build_packages(SOURCE_DIR, os.path.join(work, "pkg"))
        packages = machine.root_packages(debs)
        with Stopwatch("the Debian root") as sw:
            tarball, made = machine.root_tarball(packages)
            sw.name += " (mmdebstrap)" if made else " (cached)"
        with Stopwatch("unpack the root"):
            m = machine.Machine(tarball, work, name)
        m.debs = debs

        platform = Platform.start(os.path.join(work, "platform"))
        rauc_env = RaucEnv(os.path.join(work, "rauc"))
        stage_rauc(m, rauc_env, SYSTEM_CONF, BACKEND, COMPATIBLE)
        m.write("/etc/systemd/system/systest-boot-id.service", BOOT_ID_UNIT)

        timings.add("boot 1: nspawn to running", m.boot())
        yield System(m, platform, rauc_env)
    finally:
        try:
            if m:
                m.destroy()
        finally:
            if platform:
                platform.stop()
            shutil.rmtree(work, ignore_errors=True)
            timings.add("the whole suite", time.monotonic() - total)


def stage_rauc(m, env, system_conf, backend, compatible):
    """The container's RAUC system: keyring, slots, bootloader (see RAUC_DIR)."""
    d = RAUC_DIR
    os.makedirs(m.path(d + "/mnt"))
    m.write("/etc/rauc/system.conf",
            system_conf.format(d=d, ca="/etc/rauc/ca.pem", compatible=compatible))
    with open(env.pki.ca_cert) as f:
        m.write("/etc/rauc/ca.pem", f.read())
    m.write(d + "/backend.sh", backend.format(state=d + "/boot.state", log=d + "/backend.log"),
            mode=0o755)
    m.write(d + "/boot.state", "primary=A\nstate_A=good\nstate_B=good\n")
    for slot in ("A", "B"):
        with open(m.path(d + "/slot%s.img" % slot), "wb") as f:
            f.truncate(16 * 1024 * 1024)
    m.write("/etc/systemd/system/rauc.service.d/systest-boot-slot.conf",
            RAUC_DROPIN.format(d=d))


# --- The steps --------------------------------------------------------------------


@pytest.mark.prerequisite
def test_install_packages(system):
    """apt-get install ./*.deb on the running system: installed and enabled."""
    m = system.m
    os.makedirs(m.path("/var/tmp/systest/debs"))
    for deb in m.debs:
        shutil.copy(deb, m.path("/var/tmp/systest/debs"))
    # The root has every dependency and no package lists: nothing is downloaded.
    with Stopwatch("apt-get install ./*.deb"):
        r = m.sh("cd /var/tmp/systest/debs && DEBIAN_FRONTEND=noninteractive "
                 "apt-get install -y ./*.deb", timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    for p in ("lodevd", "liblodev1", "liblodev-dev"):
        r = m.run(["dpkg-query", "-W", "-f=${Status}", p], check=False)
        assert r.stdout == "install ok installed", (p, r.stdout, r.stderr)
    assert m.run(["systemctl", "is-enabled", "lodevd.service"], check=False).stdout.strip() \
        == "enabled"


def test_no_claim_certificate_no_crash_loop(system):
    """A fresh install has no claim certificate yet: lodevd, started by the package,
    runs unprovisioned without failing or restarting, and the journal and
    `lodevctl status` name the missing file."""
    m = system.m
    time.sleep(6)  # longer than RestartSec=5s: a crash loop would show
    props = system.show("NRestarts", "ActiveState", "SubState")
    text = m.run(["journalctl", "-u", "lodevd", "-b", "--no-pager", "-o", "cat"]).stdout
    status = system.status()
    # The only complaint is the missing file. Here, before the test's boot id drop-in,
    # lodevd reads the boot id from the real procfs its unit gives it (a pseudo-file of
    # size 0): "Cannot read the boot id ... File too large" was the defect.
    warnings = [e["MESSAGE"] for e in system.journal("-p", "warning")
                if e.get("SYSLOG_IDENTIFIER") == "lodevd"]
    problems = []
    if "Failed with result" in text or props["NRestarts"] != "0":
        problems.append("lodevd failed or restarted after the install: %s" % props)
    if props["ActiveState"] != "active":
        problems.append("lodevd is not active: %s" % props)
    if "/etc/lodevd/claim.pem" not in text:
        problems.append("the journal does not name /etc/lodevd/claim.pem")
    if "/etc/lodevd/claim.pem" not in status["last_error"]:
        problems.append("lodevctl status does not name it: %r" % status["last_error"])
    problems += ["lodevd complained: %s" % w for w in warnings
                 if "/etc/lodevd/claim.pem" not in w]
    assert not problems, "\n".join(problems) + "\n\n" + text[-3000:]


def test_security_score(system):
    """systemd-analyze security of the shipped unit (before the test's drop-in)."""
    r = system.m.run(["systemd-analyze", "security", "--no-pager", "lodevd.service"],
                     check=False)
    m = re.search(r"Overall exposure level for lodevd\.service:\s*([0-9.]+)\s+(\S+)", r.stdout)
    assert m, r.stdout + r.stderr
    score = float(m.group(1))
    timings.add("systemd-analyze security lodevd.service", score, m.group(2))
    assert score <= 2.0, r.stdout


@pytest.mark.prerequisite
def test_configure_and_provision(system):
    """The operator's files, a restart: lodevd provisions with the claim certificate
    and goes online; the emulator registered the thing with the serial number."""
    m, p = system.m, system.platform
    for src, dest, owner, mode in (
            (p.ca_file, "/etc/lodevd/platform-ca.pem", "root", "0644"),
            (p.claim_cert, "/etc/lodevd/claim.pem", "root", "0644"),
            (p.claim_key, "/etc/lodevd/claim.key", "lodevd", "0600")):
        with open(src, "rb") as f:
            m.write("/var/tmp/systest/" + os.path.basename(dest), f.read(), mode=0o600)
        m.run(["install", "-o", owner, "-g", owner, "-m", mode,
               "/var/tmp/systest/" + os.path.basename(dest), dest])
    m.write("/etc/lodevd/serial", SERIAL + "\n")
    system.write_config()
    m.write("/etc/systemd/system/lodevd.service.d/systest-boot-id.conf", BOOT_ID_DROPIN)
    m.run(["systemctl", "daemon-reload"])

    start = time.monotonic()
    m.run(["systemctl", "restart", "lodevd.service"])
    system.wait_online(60)
    timings.add("restart to online, first provisioning", time.monotonic() - start)

    st = system.status()
    system.thing = st["thing_name"]
    assert st["state"] == "online", st
    things = {t["thingName"]: t for t in p.things()}
    assert system.thing in things, (system.thing, list(things))
    assert things[system.thing]["parameters"]["SerialNumber"] == SERIAL, things[system.thing]
    assert system.journal("MESSAGE_ID=" + message_id("Device provisioned")), \
        "no provisioning message in the journal"


def test_runs_unprivileged(system):
    """The system is running with no failed unit; lodevd runs as user lodevd with no
    effective capability, and sees the container's boot id."""
    m = system.m
    assert m.run(["systemctl", "is-system-running"], check=False).stdout.strip() == "running"
    assert m.run(["systemctl", "--failed", "--no-legend", "--plain"]).stdout.strip() == ""
    assert system.show("ActiveState")["ActiveState"] == "active"
    pid = system.main_pid()
    status = m.run(["cat", "/proc/%d/status" % pid]).stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uid = m.run(["id", "-u", "lodevd"]).stdout.strip()
    assert fields["Uid"].split() == [uid] * 4, fields["Uid"]
    assert int(fields["CapEff"].strip(), 16) == 0, fields["CapEff"]
    assert int(fields["CapPrm"].strip(), 16) == 0, fields["CapPrm"]
    assert system.boot_id_seen_by_lodevd() == system.boot_id()
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert f.read().strip() != system.boot_id(), "the container has the host's boot id"


def test_bus_policy(system):
    """A user outside group lodev is refused SubmitObservation; a member and root are
    allowed (the shipped policy on the system bus)."""
    m = system.m
    m.run(["useradd", "--system", "--no-create-home", "--groups", "lodev", "systest-member"])
    call = ["busctl", "--system", "call", "com.lifeomic.Device1", "/com/lifeomic/Device1",
            "com.lifeomic.Device1", "SubmitObservation", "a(sss)dsa{sv}", "1",
            "http://loinc.org", "8867-4", "Heart rate", "61", "/min", "0"]
    r = m.run(call, user="nobody", check=False)
    assert r.returncode != 0, r.stdout
    assert "Access denied" in r.stderr or "Rejected send message" in r.stderr, r.stderr
    # Properties stay readable to anyone.
    r = m.run(["busctl", "--system", "get-property", "com.lifeomic.Device1",
               "/com/lifeomic/Device1", "com.lifeomic.Device1", "State"], user="nobody",
              check=False)
    assert r.returncode == 0, r.stderr
    for user in ("systest-member", None):
        r = m.run(call, user=user, check=False)
        assert r.returncode == 0 and r.stdout.startswith("s "), (user, r.stdout, r.stderr)
    r = system.lodevctl("observe", "--code", "8867-4", "--code-system", "http://loinc.org",
                        "--value", "62", "--unit", "/min", user="nobody", check=False)
    assert r.returncode != 0, r.stdout


def test_dbus_activation(system):
    """A call to the bus name starts a stopped lodevd (activation file, unit alias)."""
    m = system.m
    m.run(["systemctl", "stop", "lodevd.service"])
    assert system.show("ActiveState")["ActiveState"] == "inactive"
    start = time.monotonic()
    r = system.lodevctl("--json", "status", check=False)
    assert r.returncode == 0, r.stderr
    assert system.show("ActiveState")["ActiveState"] == "active"
    system.wait_online(60)
    timings.add("D-Bus activation to online", time.monotonic() - start)


def test_observations_and_upload(system):
    """20 observations reach the platform; a 4 MiB file arrives byte for byte."""
    m, p = system.m, system.platform
    _wait_delivered(system, system.observe(20), 60)

    data = os.urandom(UPLOAD_SIZE)
    m.write("/var/tmp/systest/upload.bin", data)
    start = time.monotonic()
    r = system.lodevctl("upload", "/var/tmp/systest/upload.bin", "--name", "systest-upload.bin",
                        "--wait", timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    timings.add("4 MiB upload (lodevctl upload --wait)", time.monotonic() - start)
    ups = [u for u in p.uploads() if u["file_name"] == "systest-upload.bin"]
    assert len(ups) == 1, p.uploads()
    assert ups[0]["thing"] == system.thing
    assert ups[0]["size"] == UPLOAD_SIZE
    assert ups[0]["sha256"] == hashlib.sha256(data).hexdigest()
    with open(ups[0]["path"], "rb") as f:
        assert f.read() == data


def _job_entries(system, job, boot):
    return [e for e in system.journal("LODEV_JOB_ID=" + job, boot=boot)]


def _messages(entries, pattern):
    return [e for e in entries if re.search(pattern, e.get("MESSAGE", ""))]


@pytest.mark.prerequisite
def test_firmware_job_restart_then_reboot(system):
    """A RAUC firmware job through the shipped hook: install into slot B, exit 100.
    With the reboot held (InhibitReboot), `systemctl restart lodevd` in the same boot
    does not confirm: the new lodevd asks for the reboot again, and the shipped
    default reboot path reboots the container (nspawn exits 133). After the boot,
    confirm runs once (RAUC marks slot B good) and the job is SUCCEEDED; install ran
    once."""
    m, p = system.m, system.platform
    payload = os.urandom(1024 * 1024)
    bundle = system.rauc.bundle("v2", payload)
    with open(bundle, "rb") as f:
        p.add_firmware("fw-2.0", f.read())

    m.run(["systemd-run", "--unit=systest-hold", "--service-type=exec", "--",
           "lodevctl", "inhibit-reboot", "--who", "systest", "--why", "holding the reboot",
           "sleep", "600"])
    wait_until(lambda: len(system.status()["reboot_inhibitors"]) == 1, 20,
               "the reboot inhibitor")
    job = p.queue_job(system.thing, firmware_id="fw-2.0", deployment_id="deploy-systest")
    system.lodevctl("jobs", "--check")

    def held():
        return _messages(_job_entries(system, job, 0), r"reboot waits for 1 inhibitor")

    start = time.monotonic()
    wait_until(held, 180, "the installed job waiting for the held reboot", interval=0.5)
    timings.add("firmware job: queued to reboot held (download, rauc install)",
                time.monotonic() - start)
    entries = _job_entries(system, job, 0)
    assert len(_messages(entries, r"running \S+ install")) == 1, entries
    assert _messages(entries, r"INSTALLER \S+ exited with status 100\b"), entries
    assert p.job_execution(system.thing, job)["status"] == "IN_PROGRESS"
    with open(m.path(RAUC_DIR + "/boot.state")) as f:
        assert "primary=B" in f.read().split()
    with open(m.path(RAUC_DIR + "/slotB.img"), "rb") as f:
        assert f.read(len(payload)) == payload

    boot1 = system.boot_id()
    assert system.boot_id_seen_by_lodevd() == boot1
    waiting_pid = held()[0]["_PID"]

    # The restart in the same boot: the new lodevd must not confirm; it asks for the
    # reboot again (the hold went with the old process), and the container reboots.
    m.run(["systemctl", "restart", "lodevd.service"], check=False, timeout=60)
    code = m.wait_exit(120)
    assert code == 133, "systemd-nspawn exited with %d, not 133 (reboot):\n%s" % (
        code, m.console_log()[-3000:])

    timings.add("boot 2 (after the reboot): nspawn to running", m.boot())
    wait_until(lambda: (p.job_execution(system.thing, job) or {}).get("status")
               in ("SUCCEEDED", "FAILED"), 120, "the job's end", interval=0.5)
    online = system.journal("MESSAGE_ID=" + message_id("Device connection online"))
    assert online, "no online message in this boot"
    first_online = int(online[0]["__REALTIME_TIMESTAMP"]) / 1e6
    timings.add("boot 2: nspawn to lodevd online", first_online - m.boot_started)
    started = int(system.show("ExecMainStartTimestampMonotonic")[
        "ExecMainStartTimestampMonotonic"])
    timings.add("boot 2: lodevd start to online",
                (int(online[0]["__MONOTONIC_TIMESTAMP"]) - started) / 1e6)

    e = p.job_execution(system.thing, job)
    assert e["status"] == "SUCCEEDED", e
    statuses = [h["status"] for h in p.job_history(system.thing, job)]
    assert statuses.count("SUCCEEDED") == 1, statuses

    before = _job_entries(system, job, -1)
    assert not _messages(before, r"running \S+ confirm"), before
    rebooting = _messages(before, r"rebooting with")
    assert rebooting, before
    assert rebooting[-1]["_PID"] != waiting_pid, "the reboot was not asked by the restarted lodevd"
    after = _job_entries(system, job, 0)
    assert len(_messages(after, r"running \S+ confirm")) == 1, after
    assert not _messages(after, r"running \S+ install"), after
    assert _messages(after, r"INSTALLER \S+ exited with status 0\b"), after

    boot2 = system.boot_id()
    assert boot2 != boot1
    assert system.boot_id_seen_by_lodevd() == boot2
    with open(m.path(RAUC_DIR + "/boot.state")) as f:
        state = dict(line.split("=", 1) for line in f.read().split())
    assert state["primary"] == "B" and state["state_B"] == "good", state


def _fhir_publish_times(platform, thing, since):
    """Broker-side times of the thing's FHIRIngest publishes after SINCE, from the
    emulator's log of every client publish."""
    times = []
    with open(os.path.join(platform.workdir, "broker", "publishes.log")) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4:
                continue
            t = float(parts[0])
            if (t >= since and bytes.fromhex(parts[1]).decode() == thing
                    and bytes.fromhex(parts[3]).decode() == "$aws/rules/FHIRIngest"):
                times.append(t)
    return sorted(times)


def _max_per_second(times):
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_reload_applies_publish_rate(system):
    """`systemctl reload lodevd` with platform.publish_rate = 5: a backlog of 15
    observations then leaves at no more than 5 a second (at 100 it would leave in one)."""
    m, p = system.m, system.platform
    system.publish_rate = 5
    system.write_config()
    pid = system.main_pid()
    m.run(["systemctl", "reload", "lodevd.service"])
    wait_until(lambda: system.journal("_PID=%d" % pid, "--grep", "Configuration reloaded"),
               20, "the reload")
    assert system.main_pid() == pid

    p.broker_stop()
    wait_until(lambda: system.status()["state"] != "online", 30, "lodevd offline")
    values = system.observe(15)
    since = time.time()
    p.broker_start()
    _wait_delivered(system, values, 60)
    times = _fhir_publish_times(p, system.thing, since)
    assert len(times) >= 15, times
    rate = _max_per_second(times)
    timings.add("after reload to publish_rate 5: most observations in a second", rate, "")
    timings.add("after reload: a backlog of 15 observations sent in", times[-1] - times[0])
    assert rate <= 5, times


def _timespan(text):
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "min": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(us|ms|min|s|h)", text))


def test_watchdog_restarts_stopped_lodevd(system):
    """SIGSTOP of lodevd's main process: systemd's watchdog restarts it within
    WatchdogSec + 30 s, and every observation acknowledged before is delivered."""
    m, p = system.m, system.platform
    watchdog = _timespan(system.show("WatchdogUSec")["WatchdogUSec"])
    assert watchdog > 0
    restarts = int(system.show("NRestarts")["NRestarts"])
    pid = system.main_pid()
    # Acknowledged (on disk) and not delivered: the platform is away when they are
    # taken and comes back while lodevd is stopped.
    p.broker_stop()
    wait_until(lambda: system.status()["state"] != "online", 30, "lodevd offline")
    values = system.observe(20)
    # The shell's kill: /bin/kill (procps) is not part of a minimal system.
    m.run(["sh", "-c", "kill -STOP %d" % pid])
    stopped = time.monotonic()
    p.broker_start()
    assert not system.delivered(values)

    def restarted():
        s = system.show("MainPID", "ActiveState", "NRestarts")
        return (int(s["MainPID"]) not in (0, pid) and s["ActiveState"] == "active"
                and int(s["NRestarts"]) > restarts)

    wait_until(restarted, watchdog + 30, "the watchdog restart", interval=0.5)
    took = time.monotonic() - stopped
    timings.add("watchdog: SIGSTOP to a new lodevd (WatchdogSec=%.0fs)" % watchdog, took)
    text = m.run(["journalctl", "-u", "lodevd", "-b", "--no-pager", "-o", "cat"]).stdout
    assert "Watchdog timeout" in text, text[-2000:]
    _wait_delivered(system, values, 60)


def test_journal_fields_and_catalog(system):
    """The journal carries lodevd's MESSAGE_IDs and LODEV_THING; journalctl -x shows
    the catalog's text for the provisioning message."""
    r = system.m.run(["journalctl", "-u", "lodevd.service", "-o", "json", "--no-pager"])
    entries = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    ids = {e.get("MESSAGE_ID") for e in entries}
    for subject in ("lodevd started", "Device provisioned", "Device connection online",
                    "Firmware job"):
        assert message_id(subject) in ids, subject
    provisioned = [e for e in entries if e.get("MESSAGE_ID") == message_id("Device provisioned")]
    assert provisioned[0].get("LODEV_THING") == system.thing, provisioned[0]
    online = [e for e in entries if e.get("MESSAGE_ID") == message_id("Device connection online")]
    assert all(e.get("LODEV_THING") == system.thing for e in online), online

    mid = message_id("Device provisioned")
    r = system.m.run(["journalctl", "-x", "-u", "lodevd.service", "--no-pager",
                      "MESSAGE_ID=" + mid])
    subject, text = catalog()[mid]
    for line in ("Subject: " + subject, text):
        line = line.replace("@LODEV_THING@", system.thing)
        assert line and line in r.stdout, (line, r.stdout)


def test_still_running(system):
    """After all of it: running, no failed unit."""
    m = system.m
    assert m.run(["systemctl", "is-system-running"], check=False).stdout.strip() == "running", \
        m.run(["systemctl", "--failed", "--no-legend"], check=False).stdout


def test_remove_keeps_identity_purge_removes_it(system):
    """Removing the package keeps /var/lib/lodevd (the device's identity); purging
    removes it."""
    m = system.m
    m.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y lodevd", timeout=120)
    assert m.run(["systemctl", "is-active", "lodevd.service"], check=False).stdout.strip() \
        != "active"
    r = m.run(["cat", "/var/lib/lodevd/identity/thing-name"], check=False)
    assert r.returncode == 0 and r.stdout.strip() == system.thing, (r.stdout, r.stderr)
    m.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y lodevd", timeout=120)
    assert m.run(["test", "-e", "/var/lib/lodevd"], check=False).returncode != 0, \
        m.run(["ls", "-la", "/var/lib/lodevd"], check=False).stdout
