"""Python API of the platform emulator.

    from lodev_platform import Platform
    with Platform.start("/tmp/work") as p:
        ...  # p.mqtt_port, p.ca_file, p.claim_cert, p.observations(), ...

The emulator runs as its own process; this handle talks to it over its
loopback control endpoint (port in WORKDIR/platform.json), so the CLI in
another shell sees the same state.
"""

import base64
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

from .util import tail

PYTHON = os.environ.get("LODEV_PLATFORM_PYTHON", "/usr/bin/python3")
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PlatformError(RuntimeError):
    """The emulator failed to start, or refused a control call."""


def _read_info(workdir):
    try:
        with open(os.path.join(workdir, "platform.json")) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Platform:
    """Handle on a running emulator."""

    def __init__(self, info, proc=None, parent_fd=None):
        self._info = info
        self._proc = proc
        self._parent_fd = parent_fd
        self.host = info["host"]
        self.mqtt_port = info["mqtt_port"]
        self.http_port = info["http_port"]
        self.control_port = info["control_port"]
        self.ca_file = info["ca_file"]
        self.claim_cert = info["claim_cert"]
        self.claim_key = info["claim_key"]
        self.workdir = info["workdir"]
        self.account = info["account"]
        self.pid = info["pid"]

    # -- lifecycle -----------------------------------------------------------

    @classmethod
    def start(cls, workdir, *, mqtt_port=0, http_port=0, control_port=0, account=None,
              throttle=True, timeout=20.0, detach=False):
        """Spawns the emulator and waits (at most `timeout` s) until broker and
        service answer. Unless `detach`, the emulator stops by itself when
        this process exits."""
        workdir = os.path.abspath(workdir)
        os.makedirs(workdir, exist_ok=True)
        info_path = os.path.join(workdir, "platform.json")
        old = _read_info(workdir)
        if old and _pid_alive(old["pid"]):
            raise PlatformError(f"an emulator (pid {old['pid']}) already runs in {workdir}")
        if os.path.exists(info_path):
            os.unlink(info_path)

        cmd = [PYTHON, "-m", "lodev_platform.emulator", "--workdir", workdir,
               "--mqtt-port", str(mqtt_port), "--http-port", str(http_port),
               "--control-port", str(control_port)]
        if account:
            cmd += ["--account", account]
        if not throttle:
            cmd.append("--no-throttle")
        read_fd = write_fd = None
        if not detach:
            read_fd, write_fd = os.pipe()
            os.set_inheritable(read_fd, True)
            cmd += ["--parent-fd", str(read_fd)]
        env = dict(os.environ)
        env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"]
                                            if env.get("PYTHONPATH") else "")
        out = open(os.path.join(workdir, "emulator.out"), "ab")
        try:
            proc = subprocess.Popen(cmd, cwd=PACKAGE_ROOT, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out,
                                    pass_fds=(read_fd,) if read_fd is not None else (),
                                    start_new_session=detach)
        finally:
            out.close()
            if read_fd is not None:
                os.close(read_fd)

        deadline = time.monotonic() + timeout
        while True:
            info = _read_info(workdir)
            if info and info.get("pid") == proc.pid:
                return cls(info, proc=proc, parent_fd=write_fd)
            if proc.poll() is not None:
                if write_fd is not None:
                    os.close(write_fd)
                raise PlatformError(cls._failure(workdir, f"exited with {proc.returncode}"))
            if time.monotonic() > deadline:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if write_fd is not None:
                    os.close(write_fd)
                raise PlatformError(cls._failure(workdir, f"was not ready within {timeout} s"))
            time.sleep(0.05)

    @staticmethod
    def _failure(workdir, what):
        return (f"the platform emulator in {workdir} {what}\n"
                f"--- emulator.log ---\n{tail(os.path.join(workdir, 'emulator.log'))}\n"
                f"--- emulator.out ---\n{tail(os.path.join(workdir, 'emulator.out'))}\n"
                f"--- broker/mosquitto.log ---\n"
                f"{tail(os.path.join(workdir, 'broker', 'mosquitto.log'))}")

    @classmethod
    def attach(cls, workdir):
        """Handle on an emulator that already runs in `workdir`."""
        info = _read_info(os.path.abspath(workdir))
        if not info or not _pid_alive(info["pid"]):
            raise PlatformError(f"no emulator runs in {workdir}")
        return cls(info)

    def stop(self, timeout=10.0):
        """Stops the emulator (and its broker) and waits for it to exit."""
        try:
            self._call("shutdown")
        except (PlatformError, OSError):
            pass
        deadline = time.monotonic() + timeout
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        else:
            while _pid_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(self.pid):
                os.kill(self.pid, signal.SIGTERM)
        if self._parent_fd is not None:
            os.close(self._parent_fd)
            self._parent_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- control channel -----------------------------------------------------

    def _call(self, method, **params):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.control_port}/rpc",
            data=json.dumps({"method": method, "params": params}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.load(resp)["result"]
        except urllib.error.HTTPError as e:
            try:
                message = json.load(e)["error"]
            except ValueError:
                message = str(e)
            raise PlatformError(f"{method}: {message}") from None
        except urllib.error.URLError as e:
            raise PlatformError(f"{method}: the emulator does not answer ({e.reason})") from None

    def status(self):
        return self._call("status")

    # -- recorded data -------------------------------------------------------

    def observations(self):
        """[{"thing", "client_id", "payload", "raw", "time", "id"}] in arrival order."""
        return self._call("observations")

    def observation_count(self, thing=None):
        """How many observations were recorded (from one thing): cheap to poll."""
        return self._call("observation_count", thing=thing)

    def uploads(self):
        """[{"thing", "client_id", "file_name", "content_type", "size", "sha256", "path", "time"}]."""
        return self._call("uploads")

    def downloads(self):
        """Firmware GETs served: [{"path", "range", "status", "sent", "length", "cut", "time"}]."""
        return self._call("downloads")

    def things(self):
        """[{"thingName", "parameters", "certificates", "template", "registeredAt"}]."""
        return self._call("things")

    def certificates(self):
        return self._call("certificates")

    def errors(self):
        """Requests the platform rejected: [{"kind", "client_id", "topic", "code", "message"}]."""
        return self._call("errors")

    def publish_stats(self, client_id):
        """{"total", "throttled", "max_per_second"} of a client's publishes."""
        return self._call("publish_stats", client_id=client_id)

    def publish_counts(self, thing):
        """The most publishes the thing's connection made in any one-second window."""
        return self.publish_stats(thing)["max_per_second"]

    # -- firmware and jobs ---------------------------------------------------

    def add_firmware(self, firmware_id, data):
        """Stores a firmware image; returns its URL path (/firmware/ID)."""
        return self._call("add_firmware", firmware_id=firmware_id,
                          data_b64=base64.b64encode(bytes(data)).decode())["path"]

    def upload_link(self, thing, file_name, content_type):
        """A freshly signed upload URL for thing, as CreateFileUploadLink
        answers (for baselines such as curl -T)."""
        return self._call("upload_link", thing=thing, file_name=file_name,
                          content_type=content_type)

    def firmware_url(self, firmware_id):
        """A freshly signed download URL for the firmware."""
        return self._call("firmware_url", firmware_id=firmware_id)

    def queue_job(self, thing, job_id=None, document=None, firmware_id=None, deployment_id=None):
        """Queues a job execution for `thing`; returns the job id. The default
        document is a firmware_update whose firmwareUrl is signed afresh each
        time the device fetches it."""
        return self._call("queue_job", thing=thing, job_id=job_id, document=document,
                          firmware_id=firmware_id, deployment_id=deployment_id)

    def cancel_job(self, thing, job_id, force=False):
        """Cancels the execution (an IN_PROGRESS one only with force, as AWS)."""
        return self._call("cancel_job", thing=thing, job_id=job_id, force=force)

    def job_execution(self, thing, job_id):
        """{"status", "versionNumber", "statusDetails", "executionNumber", ...}."""
        return self._call("job_execution", thing=thing, job_id=job_id)

    def job_history(self, thing, job_id):
        """Every status the execution went through, with statusDetails as stored
        and as sent ("rawStatusDetails")."""
        return self._call("job_history", thing=thing, job_id=job_id)

    def jobs(self, thing=None):
        return self._call("jobs", thing=thing)

    # -- faults --------------------------------------------------------------

    def broker_stop(self):
        """Stops the broker; every connection drops. The port stays reserved."""
        return self._call("broker_stop")

    def broker_start(self):
        """Starts the broker again on the same port (sessions persisted)."""
        return self._call("broker_start")

    def inject(self, topic, payload):
        """Publishes raw bytes (anything, malformed included) on a topic as the platform."""
        self._call("inject", topic=topic, payload_b64=base64.b64encode(bytes(payload)).decode())

    def drop_client(self, client_id):
        """Closes that client's connection, as a network loss would."""
        return self._call("drop_client", client_id=client_id)

    def expire_next_url(self, count=1):
        """The next `count` URLs handed out (upload links, firmware URLs) are
        already expired."""
        return self._call("expire_next_url", count=count)

    def fail_next_puts(self, n, status, code=None, file_name=None):
        """The next `n` upload PUTs are answered `status` (301, 307, 400, 403,
        500 or 503) with S3's error `code` (default per status: PermanentRedirect,
        TemporaryRedirect, InvalidRequest, AccessDenied, InternalError, SlowDown;
        others: RequestTimeout, ExpiredToken, EntityTooLarge, InvalidArgument,
        ServiceUnavailable). With `file_name`, only PUTs to links made for that
        file name count."""
        return self._call("fail_next_puts", n=n, status=status, code=code,
                          file_name=file_name)

    def cut_next_put(self, k_bytes, count=1):
        """The next upload PUT that passes its checks has its connection closed
        after `k_bytes` bytes of body, as a network loss would."""
        return self._call("cut_next_put", k_bytes=k_bytes, count=count)

    def cut_next_download(self, k_bytes, count=1):
        """The next firmware download closes the connection after `k_bytes`
        bytes of body (the headers still announce the full length)."""
        return self._call("cut_next_download", k_bytes=k_bytes, count=count)

    def reject_next(self, kind, error_code="InternalError", status_code=500, message=None,
                    count=1):
        """The next request of `kind` is rejected with that error (see
        faults.REQUEST_KINDS). Jobs kinds answer {"code", "message"} as AWS
        IoT Jobs do; the others {"statusCode", "errorCode", "errorMessage"}."""
        return self._call("reject_next", kind=kind, error_code=error_code,
                          status_code=status_code, message=message, count=count)

    def ignore_next(self, kind, count=1):
        """The next request of `kind` gets no answer at all."""
        return self._call("ignore_next", kind=kind, count=count)

    def lose_next_answer(self, kind, count=1):
        """The next `count` requests of `kind` (jobs kinds) are carried out, but their
        answers are lost on the way back."""
        return self._call("lose_next_answer", kind=kind, count=count)

    def set_throttle(self, enabled, rate=100):
        """Drop a client's publishes beyond `rate` per second (on by default, as
        AWS IoT Core)."""
        return self._call("set_throttle", enabled=enabled, rate=rate)

    def expire_tokens(self):
        """Every certificate ownership token handed out so far is now stale."""
        return self._call("expire_tokens")

    def set_ttl(self, upload=None, firmware=None, token=None):
        """Lifetimes in seconds of upload links, firmware URLs and ownership
        tokens issued from now on."""
        return self._call("set_ttl", upload=upload, firmware=firmware, token=token)
