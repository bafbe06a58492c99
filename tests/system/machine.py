# SPDX-License-Identifier: MIT
"""A Debian 12 machine booted under a real systemd with systemd-nspawn, for the
system tests.

    debs = build_packages(source_dir, out_dir)   scripts/build-debs.sh
    packages = root_packages(debs)               what the root needs for `apt-get install ./*.deb`
    tarball = root_tarball(packages)             mmdebstrap, cached by that list
    m = Machine(tarball, workdir, name)          the root unpacked into workdir/root
    m.boot()                                     systemd-nspawn -b; waits until `running`
    m.run(["systemctl", ...])                    nsenter -t LEADER -a, a clean environment
    m.wait_exit()                                nspawn's exit status: 133 after a reboot
    m.destroy()                                  container stopped (by the PIDs started
                                                 here), root removed

The host has no systemd as PID 1, so there is no machinectl: the container is
registered nowhere (--register=no --keep-unit) and is driven with nsenter through
its systemd's PID (the child of the nspawn process). It shares the host's network
namespace, so a server on the host's 127.0.0.1 is reachable from inside.
"""

import ctypes
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time

# Where the Debian roots are kept between runs: outside the source tree, so that a
# second run unpacks one in seconds and a fresh CI machine builds it once.
CACHE_DIR = os.environ.get("LODEV_SYSTEM_CACHE", "/var/cache/lodevd-system-test")
# A cached root older than this is made again (security updates); roots for other
# package lists are removed after a week.
CACHE_MAX_AGE = 30 * 24 * 3600
CACHE_KEEP_OTHERS = 7 * 24 * 3600

SUITE = "bookworm"
MIRRORS = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
]

# A root with systemd as init, the system bus and polkit (the reboot path of
# lodevd.rules), plus RAUC's service for the RAUC hook. The packages' own
# dependencies are added by root_packages().
BASE_PACKAGES = ["systemd", "systemd-sysv", "dbus", "polkitd", "rauc", "rauc-service"]

# The environment of every command run in the container: nothing of the host's.
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    "PAGER": "cat",
}


class Budget:
    """The suite's own time limit, below meson's timeout: every wait and command is cut
    to what is left, so that a run out of time still stops its container and removes
    its root before meson kills the process group."""

    def __init__(self):
        self.deadline = None

    def start(self, seconds):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def cut(self, timeout):
        if self.deadline is None:
            return timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("the suite's time budget of %.0f s is used up" % self.seconds)
        return min(timeout, left)


budget = Budget()


class Timings:
    """Named figures (durations in seconds unless said), printed at the end of the run."""

    def __init__(self):
        self.items = []

    def add(self, name, value, unit="s"):
        self.items.append((name, value, unit))

    def report(self):
        width = max((len(n) for n, _, _ in self.items), default=0)
        return [("%-*s %8.2f %s" % (width, n, v, u)).rstrip() for n, v, u in self.items]


timings = Timings()


class Stopwatch:
    """with Stopwatch(name) as w: ...; w.name may change before the end."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self.start
        if exc[0] is None:
            timings.add(self.name, self.seconds)


def run(args, timeout=60, check=True, **kw):
    """subprocess.run with text output captured and a bound; check=True raises with it."""
    r = subprocess.run(args, capture_output=True, text=True, timeout=budget.cut(timeout), **kw)
    if check and r.returncode != 0:
        raise AssertionError("%s exited with %d:\n%s%s"
                             % (" ".join(args), r.returncode, r.stdout, r.stderr))
    return r


def wait_until(predicate, timeout, what, interval=0.1):
    """Polls predicate until it returns something true; bounded in time."""
    deadline = time.monotonic() + budget.cut(timeout)
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            budget.cut(timeout)
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


# --- The packages ---------------------------------------------------------------


def build_packages(source_dir, out_dir, timeout=420):
    """Builds the Debian packages with scripts/build-debs.sh (a copy of the tree, local
    changes included) into out_dir and returns the .deb paths. The tests run in the
    meson test suites, so the package build skips them (nocheck)."""
    r = subprocess.run(["dpkg-checkbuilddeps"], cwd=source_dir, capture_output=True, text=True,
                       timeout=budget.cut(60))
    if r.returncode != 0:
        raise AssertionError("build dependencies missing (scripts/setup.sh installs them):\n"
                             + r.stderr)
    env = dict(os.environ)
    env["DEB_BUILD_OPTIONS"] = "nocheck parallel=%d" % (os.cpu_count() or 1)
    env["TMPDIR"] = out_dir
    log = os.path.join(out_dir, "build-debs.log")
    with open(log, "w") as f:
        p = subprocess.run(["bash", os.path.join(source_dir, "scripts", "build-debs.sh"), out_dir],
                           env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                           timeout=budget.cut(timeout))
    if p.returncode != 0:
        with open(log, errors="replace") as f:
            tail = f.read()[-6000:]
        raise AssertionError("scripts/build-debs.sh failed (%d):\n%s" % (p.returncode, tail))
    # Not the debug symbols: not what a device installs.
    debs = sorted(os.path.join(out_dir, n) for n in os.listdir(out_dir)
                  if n.endswith(".deb") and "-dbgsym_" not in n)
    if not debs:
        raise AssertionError("scripts/build-debs.sh built no .deb in %s" % out_dir)
    return debs


def deb_field(deb, field):
    return run(["dpkg-deb", "-f", deb, field]).stdout.strip()


def root_packages(debs):
    """BASE_PACKAGES plus every Depends and Recommends of the built packages (first
    alternative, without versions) that is not one of them: then `apt-get install
    ./*.deb` in the root needs no download, and the cache key changes whenever the
    packages need something new."""
    own = {deb_field(d, "Package") for d in debs}
    wanted = set(BASE_PACKAGES)
    for d in debs:
        for field in ("Depends", "Pre-Depends", "Recommends"):
            for item in deb_field(d, field).split(","):
                name = re.sub(r"\(.*?\)|\[.*?\]|<.*?>", "", item.split("|")[0]).strip()
                name = name.split(":")[0]
                if name and name not in own:
                    wanted.add(name)
    return sorted(wanted)


def root_tarball(packages, timeout=420):
    """A Debian 12 minbase root with PACKAGES as a tarball, from the cache or made
    with mmdebstrap (then cached). Returns (path, made_now)."""
    key = hashlib.sha256("\n".join([SUITE] + MIRRORS + sorted(packages)).encode()).hexdigest()
    os.makedirs(CACHE_DIR, exist_ok=True)
    path = os.path.join(CACHE_DIR, "root-%s-%s.tar" % (SUITE, key[:16]))
    for name in os.listdir(CACHE_DIR):
        other = os.path.join(CACHE_DIR, name)
        if (name.startswith("root-") and other != path
                and time.time() - os.stat(other).st_mtime > CACHE_KEEP_OTHERS):
            os.unlink(other)
    try:
        if time.time() - os.stat(path).st_mtime < CACHE_MAX_AGE:
            return path, False
    except FileNotFoundError:
        pass
    # Made under a name of its own and renamed: a concurrent run or an interrupted one
    # never leaves a partial tarball under the cached name.
    tmp = os.path.join(CACHE_DIR, ".root-%s.%d.tar" % (key[:16], os.getpid()))
    log = tmp + ".log"
    try:
        with open(log, "w") as f:
            p = subprocess.run(["mmdebstrap", "--variant=minbase", "--mode=root",
                                "--aptopt=Acquire::Retries \"3\"",
                                "--include=" + ",".join(packages), SUITE, tmp] + MIRRORS,
                               stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                               timeout=budget.cut(timeout))
        if p.returncode != 0:
            with open(log, errors="replace") as f:
                raise AssertionError("mmdebstrap failed (%d):\n%s"
                                     % (p.returncode, f.read()[-4000:]))
        os.rename(tmp, path)
    finally:
        for f in (tmp, log):
            if os.path.exists(f):
                os.unlink(f)
    return path, True


# --- The container --------------------------------------------------------------


def _nspawn_preexec():
    """nspawn in a session of its own, so that a kill of the test's process group
    (meson's timeout) cannot SIGKILL it before the container is down, and SIGTERM (a
    clean poweroff) when the test process dies for any reason."""
    os.setsid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


WORK_PREFIX = "lodevd-system-"


def remove_stale_roots(parent="/var/tmp"):
    """Work directories of earlier runs whose test process is gone (killed before its
    own cleanup): removed once no systemd-nspawn runs on them and nothing is mounted
    there."""
    cmdlines = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    cmdlines.append(f.read().decode(errors="replace"))
            except OSError:
                pass
    for name in os.listdir(parent):
        m = re.match(re.escape(WORK_PREFIX) + r"(\d+)-", name)
        if not m or os.path.exists("/proc/" + m.group(1)):
            continue
        d = os.path.join(parent, name)
        if any(d + "/" in c for c in cmdlines) or _mounts_under(d):
            continue
        shutil.rmtree(d, ignore_errors=True)


def _children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _mounts_under(path):
    path = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            if mp == path or mp.startswith(path + "/"):
                found.append(mp)
    return found


class Machine:
    """One container: a root directory booted again and again (a reboot is nspawn
    exiting with 133 and being started again on the same root)."""

    # How many /dev/loopN nodes the container gets (see boot()).
    LOOP_NODES = 64

    def __init__(self, tarball, workdir, name):
        self.workdir = workdir
        self.name = name
        self.root = os.path.join(workdir, "root")
        os.makedirs(self.root)
        os.chmod(self.root, 0o755)
        # Numeric owners: the names in the tarball are the root's, not the host's.
        run(["tar", "-C", self.root, "--numeric-owner", "--xattrs", "--xattrs-include=*",
             "-xf", tarball], timeout=120)
        self.proc = None
        self.leader = None
        self.boots = 0
        self.boot_started = None  # time.time() when nspawn was started

    def path(self, p):
        """The host path of P in the container's root."""
        return os.path.join(self.root, p.lstrip("/"))

    def write(self, p, data, mode=0o644):
        dest = self.path(p)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.chmod(dest, mode)

    def console_log(self, n=None):
        n = n or self.boots
        try:
            with open(os.path.join(self.workdir, "console-%d.log" % n), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def boot(self, timeout=120):
        """Starts the container and waits until systemd says `running`; returns the
        seconds from the start of nspawn to `running`."""
        assert self.proc is None, "the container is running"
        self.boots += 1
        log = open(os.path.join(self.workdir, "console-%d.log" % self.boots), "wb")
        args = ["systemd-nspawn", "--directory", self.root, "--boot", "--console=pipe",
                "--register=no", "--keep-unit", "--machine", self.name,
                # RAUC's service mounts bundles on loop devices. Without systemd on the
                # host there is no scope whose DeviceAllow= (--property=) would apply
                # (--keep-unit), and no device cgroup restricts the container; it
                # needs the control node, and the loop nodes made below.
                "--bind=/dev/loop-control"]
        self.boot_started = time.time()
        start = time.monotonic()
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, preexec_fn=_nspawn_preexec)
        log.close()

        def leader():
            if self.proc.poll() is not None:
                raise AssertionError("systemd-nspawn exited with %d:\n%s"
                                     % (self.proc.returncode, self.console_log()))
            for c in _children(self.proc.pid):
                try:
                    with open("/proc/%d/comm" % c) as f:
                        if f.read().strip() == "systemd":
                            return c
                except OSError:
                    pass
            return None

        self.leader = wait_until(leader, 30, "the container's systemd")
        # /dev of the container is nspawn's own tmpfs: give it the loop nodes the
        # kernel hands out through /dev/loop-control (LOOP_CTL_GET_FREE names a
        # number; RAUC then opens /dev/loopN).
        self.run(["sh", "-c", "for i in $(seq 0 %d); do [ -e /dev/loop$i ] ||"
                  " mknod -m 0600 /dev/loop$i b 7 $i; done" % (self.LOOP_NODES - 1)])
        state = self.wait_running(timeout - (time.monotonic() - start))
        if state != "running":
            failed = self.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
            raise AssertionError("the container booted to %r, failed units:\n%s"
                                 % (state, failed))
        return time.monotonic() - start

    def wait_running(self, timeout):
        """systemctl is-system-running --wait, retried while the manager is not yet
        reachable; returns the state."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("the container did not finish booting in %.0f s:\n%s"
                                     % (timeout, self.console_log()[-3000:]))
            try:
                r = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                             timeout=left)
            except subprocess.TimeoutExpired:
                continue
            state = r.stdout.strip()
            if state in ("running", "degraded", "maintenance", "stopping"):
                return state
            if self.proc.poll() is not None:
                raise AssertionError("systemd-nspawn exited with %d while booting:\n%s"
                                     % (self.proc.returncode, self.console_log()[-3000:]))
            time.sleep(0.1)

    def command(self, args, user=None):
        cmd = ["nsenter", "-t", str(self.leader), "-a", "--", "/usr/bin/env", "-i"]
        cmd += ["%s=%s" % kv for kv in CONTAINER_ENV.items()]
        if user:
            cmd += ["runuser", "-u", user, "--"]
        return cmd + list(args)

    def run(self, args, check=True, timeout=60, user=None, input=None):
        """Runs ARGS in the container (as USER), output captured, bounded."""
        assert self.proc is not None and self.proc.poll() is None, "the container is not running"
        return run(self.command(args, user), timeout=timeout, check=check, input=input)

    def sh(self, script, **kw):
        return self.run(["/bin/sh", "-ec", script], **kw)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout):
        """Waits until nspawn exits (the container powered off or rebooted)."""
        try:
            code = self.proc.wait(timeout=budget.cut(timeout))
        except subprocess.TimeoutExpired:
            raise AssertionError("the container did not stop within %.0f s" % timeout)
        self.proc = None
        self.leader = None
        return code

    def stop(self, timeout=30):
        """Powers the container off: SIGTERM to our nspawn (it asks the container's
        systemd to power off), then SIGKILL to the container's init and to nspawn,
        both processes started here."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                if self.leader:
                    try:
                        os.kill(self.leader, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None
        self.leader = None

    def destroy(self):
        """Stops the container and removes its root (never across a mount point)."""
        try:
            self.stop()
        finally:
            left = _mounts_under(self.root)
            if left:
                raise AssertionError("mounts left under %s, root kept: %s" % (self.root, left))
            shutil.rmtree(self.root, ignore_errors=True)
