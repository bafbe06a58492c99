"""The emulator's mosquitto: its plugin, its configuration, its process."""

import concurrent.futures
import ctypes
import hashlib
import os
import threading
import shutil
import signal
import socket
import subprocess
import time

from .pki import CLAIM_IDENTITY, SERVICE_IDENTITY
from .util import tail, write_file_atomic

PLUGIN_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "broker", "lodev_broker.c")
RULES = ("FHIRIngest", "CreateFileUploadLink")

# AWS IoT Core quotas that mosquitto can enforce itself.
MAX_MESSAGE_BYTES = 128 * 1024
MAX_KEEPALIVE = 1200


class BrokerError(RuntimeError):
    pass


def build_plugin(directory):
    """Compiles the broker plugin into `directory` (once per source version)
    and returns its path. $LODEV_PLATFORM_PLUGIN names a prebuilt one."""
    prebuilt = os.environ.get("LODEV_PLATFORM_PLUGIN")
    if prebuilt:
        if not os.path.exists(prebuilt):
            raise BrokerError(f"LODEV_PLATFORM_PLUGIN={prebuilt} does not exist")
        return prebuilt
    with open(PLUGIN_SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    out = os.path.join(directory, f"lodev_broker-{digest}.so")
    if os.path.exists(out):
        return out
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not cc:
        raise BrokerError("a C compiler is needed to build the broker plugin "
                          "(apt-get install gcc mosquitto-dev)")
    if not os.path.exists("/usr/include/mosquitto_plugin.h"):
        raise BrokerError("mosquitto_plugin.h is missing: apt-get install mosquitto-dev")
    tmp = out + ".tmp"
    proc = subprocess.run(
        [cc, "-std=gnu11", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-o", tmp,
         PLUGIN_SOURCE],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
    )
    if proc.returncode != 0:
        raise BrokerError(f"building the broker plugin failed:\n{proc.stdout}")
    os.replace(tmp, out)
    return out


def _die_with_parent():
    """Runs in the child before exec: SIGTERM it if the emulator dies, so a
    killed emulator never leaves a broker behind."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Broker:
    def __init__(self, directory, pki, port, throttle_rate):
        self.directory = directory
        self.pki = pki
        self.port = port
        self.throttle_rate = throttle_rate
        self.identities_file = os.path.join(directory, "identities")
        self.publish_log = os.path.join(directory, "publishes.log")
        self.conf_file = os.path.join(directory, "mosquitto.conf")
        self.log_file = os.path.join(directory, "mosquitto.log")
        self.proc = None
        self._pub_lock = threading.Lock()
        self._pub_offset = 0
        self._pub_cache = []
        self._spawner = concurrent.futures.ThreadPoolExecutor(1, "broker-spawner")
        self.mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        os.makedirs(directory, exist_ok=True)

    def _write_config(self, plugin):
        lines = [
            "# Written by the LODEV platform emulator; rewritten on every start.",
            "per_listener_settings false",
            # First, so that no listener option below makes mosquitto open its
            # default listener on port 1883.
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            "allow_zero_length_clientid false",
            "persistence true",
            f"persistence_location {self.directory}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
            # AWS IoT Core: QoS 0 and 1 only, 128 KB messages, keep-alive <= 1200 s.
            "max_qos 1",
            f"message_size_limit {MAX_MESSAGE_BYTES}",
            f"max_keepalive {MAX_KEEPALIVE}",
            "max_inflight_messages 100",
            # The rules engine behind AWS IoT takes every accepted message; a
            # bounded queue here would drop requests the service has not read
            # yet during a burst.
            "max_queued_messages 1000000",
            f"plugin {plugin}",
            f"plugin_opt_service_identity {SERVICE_IDENTITY}",
            f"plugin_opt_claim_identity {CLAIM_IDENTITY}",
            f"plugin_opt_identities {self.identities_file}",
            f"plugin_opt_publish_log {self.publish_log}",
            f"plugin_opt_rules {','.join(RULES)}",
            f"plugin_opt_throttle {self.throttle_rate}",
            f"cafile {self.pki.ca_file}",
            f"certfile {self.pki.server_cert}",
            f"keyfile {self.pki.server_key}",
            "require_certificate true",
            "use_identity_as_username true",
        ]
        if os.geteuid() == 0:
            # As root mosquitto switches to user "mosquitto", which cannot read
            # the 0600 keys the emulator wrote.
            lines.insert(1, "user root")
        with open(self.conf_file, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, timeout=10.0):
        if self.proc and self.proc.poll() is None:
            return
        if not os.path.exists(self.mosquitto):
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        plugin = build_plugin(self.directory)
        if not os.path.exists(self.identities_file):
            with open(self.identities_file, "w"):
                pass
        self._write_config(plugin)
        # PR_SET_PDEATHSIG fires when the *thread* that forked exits, so the
        # broker is always spawned from one thread that lives as long as we do.
        self.proc = self._spawner.submit(self._spawn).result()
        self._wait_listening(timeout)

    def _spawn(self):
        with open(self.log_file, "ab") as log:
            return subprocess.Popen(
                [self.mosquitto, "-c", self.conf_file],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_die_with_parent,
            )

    def _wait_listening(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"mosquitto exited with {self.proc.returncode}:\n"
                                  f"{tail(self.log_file)}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout} s:\n"
                          f"{tail(self.log_file)}")

    def stop(self, timeout=10.0):
        proc, self.proc = self.proc, None
        if not proc or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    @property
    def running(self):
        return bool(self.proc and self.proc.poll() is None)

    @property
    def pid(self):
        return self.proc.pid if self.running else None

    def write_identities(self, mapping):
        """Publishes certificate id -> thing name to the plugin."""
        text = "".join(f"{cert} {thing}\n" for cert, thing in sorted(mapping.items()))
        write_file_atomic(self.identities_file, text.encode(), 0o644)

    def read_publishes(self):
        """Every client publish the broker saw: (time, client id, verdict, topic).

        The log is parsed incrementally (only what was appended since the
        last call), so polling it during a load stays cheap."""
        with self._pub_lock:
            try:
                with open(self.publish_log, "rb") as f:
                    f.seek(0, os.SEEK_END)
                    if f.tell() < self._pub_offset:
                        self._pub_offset, self._pub_cache = 0, []  # a new log
                    f.seek(self._pub_offset)
                    data = f.read()
            except FileNotFoundError:
                return list(self._pub_cache)
            complete = data.rfind(b"\n") + 1  # a line being written waits
            self._pub_offset += complete
            for line in data[:complete].decode(errors="replace").splitlines():
                parts = line.split()
                if len(parts) != 4:
                    continue
                try:
                    self._pub_cache.append(
                        (float(parts[0]), bytes.fromhex(parts[1]).decode(errors="replace"),
                         parts[2], bytes.fromhex(parts[3]).decode(errors="replace")))
                except ValueError:
                    continue
            return list(self._pub_cache)
