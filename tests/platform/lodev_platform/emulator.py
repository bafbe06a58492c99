"""The emulator process: broker, platform service, storage and the control
endpoint, glued together.

Run as `python3 -m lodev_platform.emulator --workdir DIR` (the API and the
CLI do it). Once everything answers it writes DIR/platform.json with its
ports and paths; the API and the CLI read that file to find it.
"""

import argparse
import base64
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import broker as broker_mod
from .faults import Faults
from .jobs import JobStore
from .pki import Pki
from .registry import Registry
from .service import Service
from .storage import Storage
from .util import free_port, write_json_atomic

log = logging.getLogger("lodev.emulator")

DEFAULT_ACCOUNT = "lodevtest"
DEFAULT_TEMPLATE = "DefaultProvisioningTemplate"
THROTTLE_RATE = 100  # AWS IoT Core: publishes per second per connection
_FIRMWARE_PLACEHOLDER = re.compile(r"\$\{lodev:firmware-url:([A-Za-z0-9._-]+)\}")


class Emulator:
    def __init__(self, workdir, mqtt_port=0, http_port=0, control_port=0,
                 account=DEFAULT_ACCOUNT, templates=(DEFAULT_TEMPLATE,), throttle=True):
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.account = account
        self.templates = set(templates)
        self.throttle_rate = THROTTLE_RATE if throttle else 0
        self.faults = Faults()
        self.pki = Pki(self.workdir)
        self.pki.ensure()
        self.mqtt_port = mqtt_port or free_port()
        self.broker = broker_mod.Broker(os.path.join(self.workdir, "broker"), self.pki,
                                        self.mqtt_port, self.throttle_rate)
        self.registry = Registry(os.path.join(self.workdir, "registry.json"), account,
                                 self.broker.write_identities)
        self.broker.write_identities(self.registry.identities())
        self.storage = Storage(self.workdir, self.faults)
        self.jobs = JobStore(render=self._render_document)
        self.service = Service(self, "127.0.0.1", self.mqtt_port, self.pki)
        self._http_port = http_port
        self._control_port = control_port
        self._lock = threading.Lock()
        self._observations = []
        self._errors = []
        self._last_next = {}
        self._control = None
        self.stopped = threading.Event()
        self.done = threading.Event()

    # -- lifecycle -----------------------------------------------------------

    def start(self, timeout=15.0):
        self.storage.start(self._http_port)
        self.broker.start()
        self.service.start()
        if not self.service.connected.wait(timeout):
            raise RuntimeError("the platform service could not connect to the broker")
        self._control = ThreadingHTTPServer(("127.0.0.1", self._control_port), _ControlHandler)
        self._control.daemon_threads = True
        self._control.emulator = self
        threading.Thread(target=self._control.serve_forever, name="control",
                         daemon=True).start()
        write_json_atomic(self.info_path, self.info())
        log.info("ready: mqtt %d, http %d, control %d", self.mqtt_port, self.storage.port,
                 self._control.server_address[1])

    @property
    def info_path(self):
        return os.path.join(self.workdir, "platform.json")

    def info(self):
        return {
            "pid": os.getpid(),
            "host": "127.0.0.1",
            "mqtt_port": self.mqtt_port,
            "http_port": self.storage.port,
            "control_port": self._control.server_address[1] if self._control else None,
            "ca_file": self.pki.ca_file,
            "claim_cert": self.pki.claim_cert,
            "claim_key": self.pki.claim_key,
            "workdir": self.workdir,
            "account": self.account,
            "templates": sorted(self.templates),
        }

    def shutdown(self):
        with self._lock:
            if self.stopped.is_set():
                return
            self.stopped.set()
        log.info("stopping")
        try:
            os.unlink(self.info_path)
        except FileNotFoundError:
            pass
        self.service.stop()
        self.broker.stop()
        self.storage.stop()
        if self._control:
            # Never called from the serve_forever thread itself (handlers run
            # in their own threads), so this cannot deadlock.
            self._control.shutdown()
            self._control.server_close()
        log.info("stopped")
        self.done.set()

    # -- records -------------------------------------------------------------

    def record_observation(self, thing, req, payload, observation_id):
        with self._lock:
            self._observations.append({
                "id": observation_id,
                "thing": thing,
                "client_id": req.client_id,
                "payload": payload,
                "raw": req.payload.decode("utf-8"),
                "time": time.time(),
            })
        log.info("observation from %s: %s", thing, req.payload[:200])

    def record_error(self, kind, req, code, message):
        with self._lock:
            self._errors.append({"kind": kind, "client_id": req.client_id, "topic": req.topic,
                                 "code": code, "message": message, "time": time.time()})
        log.info("rejected %s from %s: %s %s", kind, req.client_id, code, message)

    def publish_stats(self, client_id):
        """What the broker saw this client publish: totals, and the most
        publishes it made (and the most the throttle let through) in any
        one-second window."""
        attempts, accepted = [], []
        for t, cid, verdict, _topic in self.broker.read_publishes():
            if cid == client_id:
                attempts.append(t)
                if verdict == "ok":
                    accepted.append(t)
        return {"client_id": client_id, "total": len(attempts),
                "throttled": len(attempts) - len(accepted),
                "max_per_second": _max_in_window(attempts),
                "max_accepted_per_second": _max_in_window(accepted),
                "first_time": attempts[0] if attempts else None,
                "last_time": attempts[-1] if attempts else None}

    # -- jobs ----------------------------------------------------------------

    def _render_document(self, document):
        """Replaces ${lodev:firmware-url:ID} by a freshly signed URL, as AWS
        presigns its URL placeholders on every delivery."""
        def render(value):
            if isinstance(value, str):
                return _FIRMWARE_PLACEHOLDER.sub(lambda m: self.storage.firmware_url(m.group(1)),
                                                 value)
            if isinstance(value, list):
                return [render(v) for v in value]
            if isinstance(value, dict):
                return {k: render(v) for k, v in value.items()}
            return value
        return render(document)

    def jobs_changed(self, thing, pending_before):
        pending = self.jobs.pending_ids(thing)
        nxt = pending[0] if pending else None
        with self._lock:
            next_changed = self._last_next.get(thing) != nxt
            self._last_next[thing] = nxt
        self.service.notify_jobs(thing, set(pending) != set(pending_before), next_changed)

    # -- control API (every method here is callable over /rpc) ---------------

    def rpc_status(self):
        return {**self.info(), "broker_running": self.broker.running,
                "broker_pid": self.broker.pid, "service_connected": self.service.connected.is_set(),
                "throttle_rate": self.throttle_rate, "faults": self.faults.pending(),
                "things": len(self.registry.things())}

    def rpc_observations(self):
        with self._lock:
            return list(self._observations)

    def rpc_observation_count(self, thing=None):
        with self._lock:
            if thing is None:
                return len(self._observations)
            return sum(1 for o in self._observations if o["thing"] == thing)

    def rpc_errors(self):
        with self._lock:
            return list(self._errors)

    def rpc_uploads(self):
        return self.storage.uploads()

    def rpc_downloads(self):
        return self.storage.downloads()

    def rpc_things(self):
        return self.registry.things()

    def rpc_certificates(self):
        return self.registry.certificates()

    def rpc_publish_stats(self, client_id):
        return self.publish_stats(client_id)

    def rpc_add_firmware(self, firmware_id, data_b64):
        return {"path": self.storage.add_firmware(firmware_id, base64.b64decode(data_b64))}

    def rpc_upload_link(self, thing, file_name, content_type):
        return self.storage.create_upload_link(thing, "control", file_name, content_type)

    def rpc_firmware_url(self, firmware_id):
        return self.storage.firmware_url(firmware_id)

    def rpc_queue_job(self, thing, job_id=None, document=None, firmware_id=None,
                      deployment_id=None):
        if not self.registry.has_thing(thing):
            raise ValueError(f"no thing named {thing}")
        if document is None:
            if not firmware_id:
                raise ValueError("firmware_id is needed for the default firmware_update document")
            if self.storage.firmware_path(firmware_id) is None:
                raise ValueError(f"no firmware {firmware_id}: add it first")
            document = {
                "operation": "firmware_update",
                "deploymentId": deployment_id or str(uuid.uuid4()),
                "firmwareId": firmware_id,
                "firmwareUrl": f"${{lodev:firmware-url:{firmware_id}}}",
            }
        job_id = job_id or f"job-{uuid.uuid4().hex[:12]}"
        before = self.jobs.pending_ids(thing)
        self.jobs.queue(thing, job_id, document)
        self.jobs_changed(thing, before)
        return job_id

    def rpc_cancel_job(self, thing, job_id, force=False):
        before = self.jobs.pending_ids(thing)
        self.jobs.cancel(thing, job_id, force)
        self.jobs_changed(thing, before)
        return self.jobs.execution_of(thing, job_id)

    def rpc_job_execution(self, thing, job_id):
        return self.jobs.execution_of(thing, job_id)

    def rpc_job_history(self, thing, job_id):
        return self.jobs.history_of(thing, job_id)

    def rpc_jobs(self, thing=None):
        return self.jobs.list_all(thing)

    def rpc_broker_stop(self):
        self.broker.stop()
        self.service.connected.clear()
        return True

    def rpc_broker_start(self, timeout=10.0):
        self.broker.start()
        if not self.service.connected.wait(timeout):
            raise RuntimeError("the service did not reconnect to the restarted broker")
        return True

    def rpc_inject(self, topic, payload_b64):
        """Publishes raw bytes on a topic as the platform, for tests of how a
        device copes with malformed messages."""
        self.service.client.publish(topic, base64.b64decode(payload_b64), qos=1)
        return True

    def rpc_drop_client(self, client_id):
        self.service.control("kick", client_id)
        return True

    def rpc_expire_next_url(self, count=1):
        self.faults.expire_next_url(count)
        return True

    def rpc_fail_next_puts(self, n, status, code=None, file_name=None):
        self.faults.fail_next_puts(n, status, code=code, file_name=file_name)
        return True

    def rpc_cut_next_put(self, k_bytes, count=1):
        self.faults.cut_next_put(k_bytes, count)

    def rpc_cut_next_download(self, k_bytes, count=1):
        self.faults.cut_next_download(k_bytes, count)
        return True

    def rpc_reject_next(self, kind, error_code="InternalError", status_code=500, message=None,
                        count=1):
        self.faults.reject_next(kind, error_code, status_code,
                                message or f"{error_code} (injected by the emulator)", count)
        return True

    def rpc_ignore_next(self, kind, count=1):
        self.faults.ignore_next(kind, count)
        return True

    def rpc_lose_next_answer(self, kind, count=1):
        self.faults.lose_next_answer(kind, count)
        return True

    def rpc_set_throttle(self, enabled, rate=THROTTLE_RATE):
        self.throttle_rate = int(rate) if enabled else 0
        self.broker.throttle_rate = self.throttle_rate  # kept across broker restarts
        self.service.control("throttle", str(self.throttle_rate))
        return self.throttle_rate

    def rpc_expire_tokens(self):
        self.registry.expire_tokens()
        return True

    def rpc_set_ttl(self, upload=None, firmware=None, token=None):
        if upload is not None:
            self.storage.upload_ttl = float(upload)
        if firmware is not None:
            self.storage.firmware_ttl = float(firmware)
        if token is not None:
            self.registry.token_ttl = float(token)
        return {"upload": self.storage.upload_ttl, "firmware": self.storage.firmware_ttl,
                "token": self.registry.token_ttl}

    def rpc_shutdown(self):
        return True  # the control handler shuts down once it has answered


def _max_in_window(stamps, window=1.0):
    """The most of the sorted `stamps` that fall within less than `window`
    seconds of each other (the log keeps microseconds, hence the slack)."""
    best, lo = 0, 0
    for hi, t in enumerate(stamps):
        while t - stamps[lo] >= window - 1e-5:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class _ControlHandler(BaseHTTPRequestHandler):
    """POST /rpc {"method": NAME, "params": {...}} -> {"result": ...} or
    {"error": MESSAGE} with status 400."""

    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        log.debug("control: " + fmt, *args)

    def _reply(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        if self.path != "/rpc":
            self._reply(404, {"error": "use POST /rpc"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            request = json.loads(self.rfile.read(length) or b"{}")
            method = getattr(self.server.emulator, "rpc_" + str(request.get("method")), None)
            if method is None:
                raise ValueError(f"unknown method {request.get('method')!r}")
            result = method(**(request.get("params") or {}))
        except (ValueError, TypeError, KeyError, RuntimeError) as e:
            self._reply(400, {"error": str(e)})
            return
        except Exception as e:  # report, keep serving
            log.exception("control call failed")
            self._reply(500, {"error": f"{type(e).__name__}: {e}"})
            return
        self._reply(200, {"result": result})
        if request.get("method") == "shutdown":
            self.server.emulator.shutdown()


def _watch_parent(fd, emulator):
    """Stops the emulator when the process that started it goes away (its end
    of the pipe closes), so a crashed test run leaves nothing behind."""
    def run():
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        log.info("parent went away")
        emulator.shutdown()
    threading.Thread(target=run, name="parent-watch", daemon=True).start()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="lodev_platform.emulator")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--mqtt-port", type=int, default=0)
    ap.add_argument("--http-port", type=int, default=0)
    ap.add_argument("--control-port", type=int, default=0)
    ap.add_argument("--account", default=DEFAULT_ACCOUNT)
    ap.add_argument("--template", action="append", dest="templates")
    ap.add_argument("--no-throttle", action="store_true")
    ap.add_argument("--parent-fd", type=int)
    ap.add_argument("--log-stderr", action="store_true")
    args = ap.parse_args(argv)

    os.makedirs(args.workdir, exist_ok=True)
    handlers = [logging.FileHandler(os.path.join(args.workdir, "emulator.log"))]
    if args.log_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.INFO, handlers=handlers,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    emu = Emulator(args.workdir, args.mqtt_port, args.http_port, args.control_port,
                   account=args.account, templates=args.templates or (DEFAULT_TEMPLATE,),
                   throttle=not args.no_throttle)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: threading.Thread(target=emu.shutdown, daemon=True).start())
    try:
        emu.start()
    except Exception:
        log.exception("start failed")
        emu.shutdown()
        return 1
    if args.parent_fd is not None:
        _watch_parent(args.parent_fd, emu)
    emu.done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
