# SPDX-License-Identifier: MIT
"""Helpers for the integration tests: a private system bus with lodevd's
policy, lodevd itself with a NOTIFY_SOCKET we read, and lodevctl."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler

BUILD_DIR = os.environ.get("LODEV_BUILD_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
SOURCE_DIR = os.environ.get("LODEV_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
LODEVD = os.path.join(BUILD_DIR, "daemon", "lodevd")
LODEVCTL = os.path.join(BUILD_DIR, "client", "lodevctl")
POLICY = os.path.join(SOURCE_DIR, "systemd", "com.lifeomic.Device1.conf")
# lodevd and tests/tools/lodev-http start the transfer helper of this build, not an installed one.
TRANSFER_HELPER = os.path.join(BUILD_DIR, "daemon", "lodevd-transfer")
os.environ.setdefault("LODEVD_TRANSFER_PATH", TRANSFER_HELPER)
INTERFACE_XML = os.path.join(SOURCE_DIR, "daemon", "com.lifeomic.Device1.xml")

# A system bus like Debian's system.conf: everything denied but what a
# policy file allows, so our policy is what decides.
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"""


def spawn_transfer_helper(path, writable=True, env=None, helper=None):
    """lodevd-transfer as lodevd starts it: its socket on fd 3, the file (read-write, or
    read-only for an upload) on fd 4, an empty environment (or env), a session of its own.
    Returns (the process, our end of its socket)."""
    a, b = socket.socketpair()
    fd = os.open(path, (os.O_RDWR | os.O_CREAT) if writable else os.O_RDONLY, 0o600)

    def place_fds():
        x, y = os.dup(b.fileno()), os.dup(fd)
        os.dup2(x, 3)
        os.dup2(y, 4)
        os.setsid()

    try:
        proc = subprocess.Popen([helper or TRANSFER_HELPER], pass_fds=(3, 4), preexec_fn=place_fds,
                                env=env or {}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    finally:
        b.close()
        os.close(fd)
    return proc, a


def require_tool(name):
    """Outside CI a missing tool skips; under CI=true it fails."""
    import pytest

    if shutil.which(name):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("%s is required under CI" % name)
    pytest.skip("%s not installed" % name)


def import_dbus():
    """python3-dbus, which hands lodevd descriptors of every kind and reads
    error names; a skip without it, a failure under CI."""
    import pytest

    try:
        import dbus
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("python3-dbus is required under CI")
        pytest.skip("python3-dbus not installed")
    return dbus


def public_tempdir(prefix):
    """A directory that user nobody can traverse (the bus socket lives there)."""
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)
    return d


class Bus:
    def __init__(self):
        self.dir = public_tempdir("lodev-bus-")
        self.socket = os.path.join(self.dir, "system_bus_socket")
        self.config = os.path.join(self.dir, "bus.conf")
        with open(self.config, "w") as f:
            f.write(BUS_CONFIG.format(socket=self.socket, policy=os.path.abspath(POLICY)))
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            ["dbus-daemon", "--config-file", self.config, "--nofork", "--print-address=%d" % w],
            pass_fds=(w,),
        )
        os.close(w)
        with os.fdopen(r) as f:
            self.address = f.readline().strip()
        if not self.address:
            raise RuntimeError("dbus-daemon did not print its address")

    def env(self):
        env = dict(os.environ)
        env["DBUS_SYSTEM_BUS_ADDRESS"] = self.address
        return env

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Notify:
    """The NOTIFY_SOCKET end that systemd would hold. A thread drains it all
    the time, as systemd does: the kernel queues only a few datagrams, and
    sd_notify() blocks when the queue is full."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []
        self.watchdog = []  # time.monotonic() of each WATCHDOG=1
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self):
        while not self.closed:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self.cond:
                lines = data.decode(errors="replace").split("\n")
                self.messages.extend(lines)
                if "WATCHDOG=1" in lines:
                    self.watchdog.append(now)
                self.cond.notify_all()

    def wait_for(self, key, timeout=20.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.messages:
                    if m.startswith(key):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no %s from lodevd within %.0f s; got %r"
                                       % (key, timeout, self.messages[-20:]))
                self.cond.wait(left)

    def clear(self):
        with self.cond:
            self.messages.clear()

    def close(self):
        self.closed = True
        self.thread.join(2)
        self.sock.close()


def write_config(path, **sections):
    """Writes a lodevd.conf from nested dicts; strings are quoted, bools and ints as is."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return ("%dL" % v) if v > 2**31 - 1 else str(v)
        if isinstance(v, dict):
            return "{\n" + "".join("  %s = %s;\n" % (k, value(x)) for k, x in v.items()) + "}"
        return json.dumps(v)

    with open(path, "w") as f:
        for k, v in sections.items():
            f.write("%s = %s;\n" % (k, value(v)))


def write_device_config(path, workdir, emulator, **overrides):
    """A lodevd.conf for a device of the emulator, state under workdir."""
    serial = os.path.join(workdir, "serial")
    if not os.path.exists(serial):
        with open(serial, "w") as f:
            f.write("SN-%s\n" % os.path.basename(workdir))
    sections = {
        "platform": {"endpoint": "127.0.0.1", "port": emulator.mqtt_port,
                     "ca_file": emulator.ca_file, "keepalive": 30},
        "provisioning": {"claim_cert": emulator.claim_cert, "claim_key": emulator.claim_key,
                         "parameters": {"SerialNumber": "file:" + serial,
                                        "Manufacturer": "Acme", "Name": "gateway",
                                        "Model": "GW-1"}},
        "state_dir": os.path.join(workdir, "state"),
        "http": {"allow_http": True},
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(sections.get(k), dict):
            sections[k] = dict(sections[k], **v)
        else:
            sections[k] = v
    write_config(path, **sections)


def start_online(bus, workdir, emulator, **overrides):
    """lodevd for a device of the emulator (config overrides as for
    write_device_config), started and online: (Daemon, thing name)."""
    config = os.path.join(workdir, "lodevd.conf")
    write_device_config(config, workdir, emulator, **overrides)
    d = Daemon(bus, workdir, config).start()
    d.wait_online()
    return d, d.status()["thing_name"]


def member_cmd(user, *args):
    """A command line that runs args as `user` in group lodev (whom the bus
    policy lets call methods). Skips, or fails under CI, without the group."""
    import pytest

    r = subprocess.run(["getent", "group", "lodev"], capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("CI") == "true":
            raise AssertionError("group lodev is missing; the test setup creates it")
        pytest.skip("group lodev is missing")
    gid = r.stdout.split(":")[2]
    return ["setpriv", "--reuid=" + user, "--regid=nogroup", "--groups=" + gid] + list(args)


FAULT_INJECT = os.path.join(BUILD_DIR, "tests", "liblodev-fault-inject.so")


def preload_env(library):
    """The environment for lodevd with an LD_PRELOAD shim of the tests."""
    return {"LD_PRELOAD": library,
            # The sanitizer build: the shim comes before ASan's runtime.
            "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}


def fault_env(path, flag, errno_value, calls="open"):
    """The environment for lodevd with the fault shim (tests/tools/fault-inject.c):
    `calls` ("open", "unlink" or both) on paths that contain `path` fail with
    errno_value while the file `flag` exists."""
    return {**preload_env(FAULT_INJECT), "LODEV_FAULT_PATH": path, "LODEV_FAULT_FLAG": flag,
            "LODEV_FAULT_ERRNO": str(errno_value), "LODEV_FAULT_CALLS": calls}


class AppHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 for the tests' own servers: GET and PUT go to server.app.handle(handler)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.app.handle(self)

    do_PUT = do_GET


def wait_until(predicate, timeout=30.0, interval=0.05, what="condition"):
    """Polls predicate until true; bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


BOOT_ID = "/proc/sys/kernel/random/boot_id"


class BootId:
    """A boot id of the test's own, for a lodevd that must see a reboot: lodevd runs in a
    private mount namespace (unshare -m) where a file of the test is bind-mounted over the
    kernel's boot id, so that a new id is what a reboot changes, as the kernel shows it."""

    def __init__(self, workdir):
        self.path = os.path.join(workdir, "boot_id")
        self.new_boot()

    def new_boot(self):
        with open(self.path, "w") as f:
            f.write(str(uuid.uuid4()) + "\n")

    def wrap(self, argv):
        require_tool("unshare")
        return ["unshare", "-m", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" %s && exec "$@"' % BOOT_ID, self.path] + list(argv)


class Daemon:
    def __init__(self, bus, workdir, config_path, args=(), verbose=True, boot_id=None):
        """boot_id: a BootId lodevd sees instead of the kernel's; None for the real one."""
        self.bus = bus
        self.boot_id = boot_id
        self.verbose = verbose
        self.workdir = workdir
        self.config_path = config_path
        self.args = list(args)
        self.proc = None
        self.notify = None
        self.log_path = os.path.join(workdir, "lodevd.log")

    def start(self, wait_ready=True, extra_env=None):
        if self.notify:
            self.notify.close()
            os.unlink(self.notify.path)
        self.notify = Notify(self.workdir)
        env = self.bus.env()
        env["NOTIFY_SOCKET"] = self.notify.path
        env.pop("JOURNAL_STREAM", None)
        if extra_env:
            env.update(extra_env)
        self.log = open(self.log_path, "a")
        argv = ([LODEVD, "--config", self.config_path] + (["--verbose"] if self.verbose else [])
                + self.args)
        if self.boot_id:
            argv = self.boot_id.wrap(argv)
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        if wait_ready:
            try:
                self.notify.wait_for("READY=1")
            except TimeoutError:
                raise AssertionError("lodevd not ready:\n" + self.output())
        return self

    def status(self):
        return lodevctl_json(self.bus, "status")

    def wait_online(self, timeout=30):
        r = lodevctl(self.bus, "wait-online", "--timeout", str(timeout), timeout=timeout + 10)
        assert r.returncode == 0, "not online: %s\n%s" % (r.stderr, self.output()[-3000:])

    def output(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("lodevd did not stop within %d s after %s" % (timeout, sig))
        if self.notify:
            self.notify.close()
            try:
                os.unlink(self.notify.path)
            except FileNotFoundError:
                pass
            self.notify = None
        return self.proc.returncode if self.proc else None


def lodevctl(bus, *args, user=None, timeout=60, binary=LODEVCTL, env=None):
    cmd = [binary] + list(args)
    if user:
        cmd = ["setpriv", "--reuid=%s" % user, "--regid=nogroup", "--clear-groups"] + cmd
    e = bus.env() if bus else dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout)


def lodevctl_json(bus, *args, **kw):
    r = lodevctl(bus, "--json", *args, **kw)
    assert r.returncode == 0, "lodevctl %s failed (%d): %s" % (args, r.returncode, r.stderr)
    return json.loads(r.stdout)
