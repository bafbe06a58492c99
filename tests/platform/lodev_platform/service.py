"""The platform service: answers device requests as AWS IoT and the LifeOmic
rules do.

The broker plugin hands every request to this client on
$lodev/in/<hex client id>/<hex identity>/<topic>. Provisioning answers go to
$lodev/to/<hex client id>/<topic>, which the plugin delivers to the asking
connection alone; the other answers go to the device's own topics.
"""

import json
import logging
import re
import ssl
import threading
import time
import uuid

import paho.mqtt.client as mqtt

from .jobs import JobError
from .pki import SERVICE_IDENTITY, CsrError, new_certificate_id
from .registry import RegistryError

log = logging.getLogger("lodev.service")

IN_PREFIX = "$lodev/in/"
_TEMPLATE_TOPIC = re.compile(r"^\$aws/provisioning-templates/([^/]+)/provision/json$")
_JOBS_TOPIC = re.compile(r"^\$aws/things/([^/]+)/jobs/(.+)$")
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;.*)?$")


class BadRequest(Exception):
    """A request the platform refuses: rules/provisioning error shape."""

    def __init__(self, status_code, error_code, message):
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code
        self.message = message


class Request:
    def __init__(self, client_id, identity, topic, payload):
        self.client_id = client_id
        self.identity = identity
        self.topic = topic
        self.payload = payload

    def json_object(self):
        """The payload as a JSON object; BadRequest otherwise."""
        try:
            data = json.loads(self.payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise BadRequest(400, "InvalidPayload", f"Payload is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise BadRequest(400, "InvalidPayload", "Payload must be a JSON object")
        return data


def _decode_in_topic(topic):
    rest = topic[len(IN_PREFIX):]
    parts = rest.split("/", 2)
    if len(parts) != 3:
        return None
    try:
        return (bytes.fromhex(parts[0]).decode(), bytes.fromhex(parts[1]).decode(), parts[2])
    except ValueError:
        return None


class _Client(mqtt.Client):
    """paho's network thread (loop_start) dies when an SSL write fails as the broker goes
    away mid-burst (ssl.SSLEOFError, eclipse-paho/paho.mqtt.python#750 in 1.6.1), and the
    service would never reconnect: this one goes on after such an error. It stays paho's own
    thread, so publishes from other threads are still left to it, never written at once."""

    def __init__(self, service, **kw):
        super().__init__(**kw)
        self._service = service

    def _thread_main(self):
        while not self._thread_terminate:
            try:
                self.loop_forever(retry_first_connection=True)
                return
            except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
                self._service.connected.clear()
                log.info("service connection failed (%s); reconnecting", e)
                time.sleep(0.05)
                try:
                    self.reconnect()
                except OSError:
                    pass


class Service:
    def __init__(self, emulator, host, port, pki):
        self.emu = emulator
        self.host = host
        self.port = port
        self.pki = pki
        self.connected = threading.Event()
        # MQTT 3.1.1 with a persistent session (clean session off): what devices publish while
        # the service reconnects is queued for it, also across a restart of the broker (its
        # persistence is on), as the platform's rules never miss a message the broker took.
        # Not MQTT 5: Debian's mosquitto 2.0.11 drops what it queued for an MQTT 5 session
        # when it restarts, whatever the session expiry.
        self.client = _Client(self, client_id=SERVICE_IDENTITY, clean_session=False)
        self.client.tls_set_context(self._tls())
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._sub_mid = None

    # -- connection ----------------------------------------------------------

    def _tls(self):
        ctx = ssl.create_default_context(cafile=self.pki.ca_file)
        ctx.load_cert_chain(self.pki.service_cert, self.pki.service_key)
        return ctx

    def _discard_old_session(self):
        """What an earlier emulator in this working directory left queued is not ours: one
        clean connection ends that session."""
        c = mqtt.Client(client_id=SERVICE_IDENTITY, clean_session=True)
        c.tls_set_context(self._tls())
        try:
            c.connect(self.host, self.port, keepalive=30)
            c.loop(1.0)
            c.disconnect()
        except OSError as e:
            log.warning("cannot clear the service's old session: %s", e)

    def start(self):
        self._discard_old_session()
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, rc, properties=None):
        if rc != 0:
            log.warning("service connection refused: %s", rc)
            return
        _, self._sub_mid = client.subscribe(IN_PREFIX + "#", qos=1)
        self.control("throttle", str(self.emu.throttle_rate))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties=None):
        # Ready only once the broker confirmed the subscription: a request
        # arriving earlier would be lost.
        if mid == self._sub_mid:
            log.info("service connected to the broker")
            self.connected.set()

    def _on_disconnect(self, client, userdata, rc, properties=None):
        self.connected.clear()
        log.info("service disconnected from the broker (%s)", rc)

    def control(self, what, arg):
        """A control message for the broker plugin ($lodev/ctl/...)."""
        self.client.publish(f"$lodev/ctl/{what}", arg.encode(), qos=1)

    def publish(self, topic, obj, qos=1):
        self.client.publish(topic, json.dumps(obj, separators=(",", ":")).encode(), qos=qos)

    def publish_to(self, client_id, topic, obj):
        """Delivers to one connection only (see the plugin)."""
        self.publish(f"$lodev/to/{client_id.encode().hex()}/{topic}", obj)

    # -- dispatch ------------------------------------------------------------

    def _on_message(self, client, userdata, msg):
        if not msg.topic.startswith(IN_PREFIX):
            return
        decoded = _decode_in_topic(msg.topic)
        if decoded is None:
            log.warning("malformed request topic %s", msg.topic)
            return
        req = Request(decoded[0], decoded[1], decoded[2], msg.payload)
        try:
            self._dispatch(req)
        except Exception:  # a bug here must not stop the service
            log.exception("request on %s from %s failed", req.topic, req.client_id)

    def _dispatch(self, req):
        t = req.topic
        if t == "$aws/certificates/create/json":
            self._provisioning(req, "create", self._create)
        elif t == "$aws/certificates/create-from-csr/json":
            self._provisioning(req, "create-from-csr", self._create_from_csr)
        elif _TEMPLATE_TOPIC.match(t):
            self._provisioning(req, "register", self._register)
        elif t == "$aws/rules/FHIRIngest":
            self._rule(req, "fhir", "FHIRIngest", self._fhir)
        elif t == "$aws/rules/CreateFileUploadLink":
            self._rule(req, "upload-link", "CreateFileUploadLink", self._upload_link)
        elif _JOBS_TOPIC.match(t):
            self._jobs(req, *_JOBS_TOPIC.match(t).groups())
        else:
            log.info("no handler for %s from %s (only the JSON APIs are emulated)", t,
                     req.client_id)

    def _fault(self, kind, req):
        """An armed fault for this kind: 'ignore', (code, status, message) or None."""
        if self.emu.faults.take_ignore(kind):
            log.info("fault: ignoring %s request from %s", kind, req.client_id)
            return "ignore"
        rejection = self.emu.faults.take_rejection(kind)
        if rejection:
            log.info("fault: rejecting %s request from %s with %s", kind, req.client_id,
                     rejection[0])
        return rejection

    # -- provisioning --------------------------------------------------------

    def _provisioning(self, req, kind, handler):
        fault = self._fault(kind, req)
        if fault == "ignore":
            return
        try:
            if fault:
                code, status, message = fault
                raise BadRequest(status, code, message)
            answer = handler(req, req.json_object())
        except BadRequest as e:
            self.emu.record_error(kind, req, e.error_code, e.message)
            self.publish_to(req.client_id, req.topic + "/rejected", {
                "statusCode": e.status_code, "errorCode": e.error_code,
                "errorMessage": e.message})
            return
        self.publish_to(req.client_id, req.topic + "/accepted", answer)

    def _create(self, req, body):
        cert_id = new_certificate_id()
        cert_pem, key_pem = self.pki.create_keys_and_certificate(cert_id)
        token = self.emu.registry.add_certificate(cert_id, cert_pem, "create", req.client_id)
        log.info("CreateKeysAndCertificate for %s: %s", req.client_id, cert_id)
        return {"certificateId": cert_id, "certificatePem": cert_pem, "privateKey": key_pem,
                "certificateOwnershipToken": token}

    def _create_from_csr(self, req, body):
        csr = body.get("certificateSigningRequest")
        if csr is None:
            raise BadRequest(400, "InvalidPayload", "certificateSigningRequest is required")
        cert_id = new_certificate_id()
        try:
            cert_pem = self.pki.certificate_from_csr(cert_id, csr)
        except CsrError as e:
            raise BadRequest(400, "InvalidCertificateSigningRequest", str(e)) from None
        token = self.emu.registry.add_certificate(cert_id, cert_pem, "csr", req.client_id)
        log.info("CreateCertificateFromCsr for %s: %s", req.client_id, cert_id)
        return {"certificateId": cert_id, "certificatePem": cert_pem,
                "certificateOwnershipToken": token}

    def _register(self, req, body):
        template = _TEMPLATE_TOPIC.match(req.topic).group(1)
        if template not in self.emu.templates:
            raise BadRequest(404, "ResourceNotFound",
                             f"Provisioning template {template} does not exist")
        if "templateName" in body and body["templateName"] != template:
            raise BadRequest(400, "InvalidParameters",
                             f"templateName {body['templateName']!r} does not match the topic's "
                             f"template {template!r}")
        try:
            thing = self.emu.registry.register(template, body.get("certificateOwnershipToken"),
                                               body.get("parameters"))
        except RegistryError as e:
            raise BadRequest(e.status_code, e.error_code, e.message) from None
        log.info("RegisterThing for %s: %s", req.client_id, thing)
        return {"deviceConfiguration": {}, "thingName": thing}

    # -- rules ---------------------------------------------------------------

    def _rule(self, req, kind, rule, handler):
        thing = self.emu.registry.thing_of_identity(req.identity)
        if thing is None:  # the broker's policy makes this unreachable
            log.warning("%s from %s, which is no device", rule, req.client_id)
            return
        fault = self._fault(kind, req)
        if fault == "ignore":
            return
        try:
            if fault:
                code, status, message = fault
                raise BadRequest(status, code, message)
            handler(req, thing, req.json_object())
        except BadRequest as e:
            self.emu.record_error(kind, req, e.error_code, e.message)
            self.publish(f"{thing}/{rule}/rejected", {
                "statusCode": e.status_code, "errorCode": e.error_code,
                "errorMessage": e.message})

    def _fhir(self, req, thing, body):
        value = body.get("value")
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                raise BadRequest(400, "InvalidPayload", "value must be a number") from None
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRequest(400, "InvalidPayload", "value is required and must be a number")
        if not isinstance(body.get("unit"), str):
            raise BadRequest(400, "InvalidPayload", "unit is required and must be a string")
        coding = body.get("coding")
        if not isinstance(coding, list) or not coding:
            raise BadRequest(400, "InvalidPayload", "coding must be a non-empty array")
        for c in coding:
            if not isinstance(c, dict) or not isinstance(c.get("code"), str) \
                    or not isinstance(c.get("system"), str):
                raise BadRequest(400, "InvalidPayload",
                                 "each coding needs string code and system")
            if "display" in c and not isinstance(c["display"], str):
                raise BadRequest(400, "InvalidPayload", "coding display must be a string")
        if "patientId" in body and not isinstance(body["patientId"], str):
            raise BadRequest(400, "InvalidPayload", "patientId must be a string")
        observation_id = str(uuid.uuid4())
        self.emu.record_observation(thing, req, body, observation_id)
        self.publish(f"{thing}/FHIRIngest/accepted", {"observationId": observation_id})

    def _upload_link(self, req, thing, body):
        file_name = body.get("fileName")
        content_type = body.get("contentType")
        if not isinstance(file_name, str) or not file_name or len(file_name) > 1024 \
                or not file_name.isprintable():
            raise BadRequest(400, "InvalidPayload",
                             "fileName is required: 1 to 1024 printable characters")
        if not isinstance(content_type, str) or not _CONTENT_TYPE.match(content_type):
            raise BadRequest(400, "InvalidPayload",
                             "contentType is required and must be a media type")
        url = self.emu.storage.create_upload_link(thing, req.client_id, file_name, content_type)
        log.info("upload link for %s: %s", thing, file_name)
        self.publish(thing, {"uploadUrl": url})

    # -- jobs ----------------------------------------------------------------

    def _jobs(self, req, thing, op):
        store = self.emu.jobs
        if op.endswith("/accepted") or op.endswith("/rejected") or op in ("notify", "notify-next"):
            return  # answers and notifications are the platform's own
        base = f"$aws/things/{thing}/jobs/{op}"
        if op == "get":
            kind, action = "jobs-get", lambda b: store.get_pending(thing)
        elif op == "start-next":
            kind, action = "jobs-start-next", lambda b: store.start_next(thing, b, req.client_id)
        elif op.endswith("/get") and op.count("/") == 1:
            job_id = op[:-len("/get")]
            kind, action = "jobs-describe", lambda b: store.describe(thing, job_id, b)
        elif op.endswith("/update") and op.count("/") == 1 and op != "$next/update":
            job_id = op[:-len("/update")]
            kind, action = "jobs-update", lambda b: store.update(thing, job_id, b, req.client_id)
        else:
            self._jobs_reject(base, None, JobError("InvalidTopic",
                                                   f"{req.topic} maps to no Jobs API"))
            return
        fault = self._fault(kind, req)
        if fault == "ignore":
            return
        body = None
        try:
            try:
                body = json.loads(req.payload.decode("utf-8")) if req.payload else {}
            except (UnicodeDecodeError, ValueError) as e:
                raise JobError("InvalidJson", f"Payload is not valid JSON: {e}") from None
            if not isinstance(body, dict):
                raise JobError("InvalidRequest", "Payload must be a JSON object")
            if fault:
                raise JobError(fault[0], fault[2])
            before = store.pending_ids(thing)
            answer = action(body)
        except JobError as e:
            self.emu.record_error(kind, req, e.code, e.message)
            if self.emu.faults.take_lost_answer(kind):
                log.info("fault: the answer to %s from %s is lost", kind, req.client_id)
                return
            self._jobs_reject(base, body, e)
            return
        answer["timestamp"] = int(time.time())
        if isinstance(body.get("clientToken"), str):
            answer["clientToken"] = body["clientToken"]
        if self.emu.faults.take_lost_answer(kind):
            log.info("fault: the answer to %s from %s is lost", kind, req.client_id)
        else:
            self.publish(base + "/accepted", answer)
        self.emu.jobs_changed(thing, before)

    def _jobs_reject(self, base, body, err):
        payload = {"code": err.code, "message": err.message, "timestamp": int(time.time())}
        if isinstance(body, dict) and isinstance(body.get("clientToken"), str):
            payload["clientToken"] = body["clientToken"]
        if err.execution_state:
            payload["executionState"] = err.execution_state
        self.publish(base + "/rejected", payload)

    # -- platform-initiated --------------------------------------------------

    def notify_jobs(self, thing, notify_list, notify_next):
        now = int(time.time())
        if notify_list:
            self.publish(f"$aws/things/{thing}/jobs/notify",
                         {**self.emu.jobs.notify_payload(thing), "timestamp": now})
        if notify_next:
            self.publish(f"$aws/things/{thing}/jobs/notify-next",
                         {**self.emu.jobs.next_payload(thing), "timestamp": now})
