"""Clients for the tests: mosquitto's command-line tools, and a small paho
device for what needs a connection that stays open."""

import http.client
import itertools
import json
import os
import queue
import ssl
import subprocess
import threading
import time
import urllib.parse
import uuid

import paho.mqtt.client as mqtt

TEMPLATE = "DefaultProvisioningTemplate"
CREATE = "$aws/certificates/create/json"
CREATE_CSR = "$aws/certificates/create-from-csr/json"
REGISTER = f"$aws/provisioning-templates/{TEMPLATE}/provision/json"
_serials = itertools.count(1)
FHIR = "$aws/rules/FHIRIngest"
LINK = "$aws/rules/CreateFileUploadLink"
OBSERVATION = {"value": 97, "unit": "%",
               "coding": [{"code": "9750d5e5-d766-4793-a97d-16179578cc4d",
                           "system": "http://lifeomic.com/fhir/devices",
                           "display": "Battery Percentage"}]}


def wait_for(condition, timeout=10.0, what="condition"):
    """Polls `condition` (a cheap query of the emulator) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Device:
    """Files of an identity: certificate, key and the client id it must use."""

    def __init__(self, cert, key, client_id):
        self.cert = cert
        self.key = key
        self.client_id = client_id

    @property
    def thing(self):
        return self.client_id


def rr(p, ident, topic, response_topic, payload, timeout=5):
    """One request/response with mosquitto_rr over a single connection (AWS
    answers only the connection that asked). Returns the parsed answer or None
    on timeout."""
    if not isinstance(payload, (str, bytes)):
        payload = json.dumps(payload)
    if isinstance(payload, bytes):
        payload = payload.decode()
    proc = subprocess.run(
        ["mosquitto_rr", "-V", "311", "-h", p.host, "-p", str(p.mqtt_port), "--cafile",
         p.ca_file, "--cert", ident.cert, "--key", ident.key, "-i", ident.client_id, "-q", "1",
         "-t", topic, "-e", response_topic, "-m", payload, "-W", str(timeout)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout + 10)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return json.loads(proc.stdout)


def claim(p):
    return Device(p.claim_cert, p.claim_key, f"claim-{uuid.uuid4()}")


def parameters(serial=None):
    return {"SerialNumber": serial or f"SN-{next(_serials)}-{uuid.uuid4().hex[:6]}",
            "Manufacturer": "acme", "Name": "bench unit", "Model": "gw-1"}


def provision(p, directory, serial=None):
    """Fleet provisioning by claim (CreateKeysAndCertificate + RegisterThing)
    with mosquitto_rr; returns the Device."""
    c = claim(p)
    created = rr(p, c, CREATE, CREATE + "/accepted", {})
    assert created, "CreateKeysAndCertificate got no accepted answer"
    registered = rr(p, c, REGISTER, REGISTER + "/accepted", {
        "parameters": parameters(serial), "templateName": TEMPLATE,
        "certificateOwnershipToken": created["certificateOwnershipToken"]})
    assert registered, "RegisterThing got no accepted answer"
    return save_device(directory, registered["thingName"], created["certificatePem"],
                       created["privateKey"])


def save_device(directory, thing, cert_pem, key_pem):
    os.makedirs(str(directory), exist_ok=True)
    base = os.path.join(str(directory), thing.replace(":", "_"))
    with open(base + ".pem", "w") as f:
        f.write(cert_pem)
    fd = os.open(base + ".key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key_pem)
    return Device(base + ".pem", base + ".key", thing)


class Client:
    """A paho connection with a message queue and connection events."""

    def __init__(self, p, ident, client_id=None, clean_session=True):
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.suback = queue.Queue()
        self.client = mqtt.Client(client_id=client_id or ident.client_id,
                                  clean_session=clean_session)
        ctx = ssl.create_default_context(cafile=p.ca_file)
        ctx.load_cert_chain(ident.cert, ident.key)
        self.client.tls_set_context(ctx)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.on_subscribe = lambda c, u, mid, granted: self.suback.put(granted)
        self.client.connect_async(p.host, p.mqtt_port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, rc):
        if rc == 0:
            self.disconnected.clear()
            self.connected.set()

    def _on_disconnect(self, client, userdata, rc):
        self.connected.clear()
        self.disconnected.set()

    def wait_connected(self, timeout=10):
        assert self.connected.wait(timeout), "no CONNACK"
        return self

    def subscribe(self, topic, timeout=5):
        """Subscribes and returns the granted QoS list (128 = refused)."""
        self.client.subscribe(topic, qos=1)
        return self.suback.get(timeout=timeout)

    def publish(self, topic, payload, qos=1):
        if not isinstance(payload, (str, bytes)):
            payload = json.dumps(payload)
        return self.client.publish(topic, payload, qos=qos)

    def next_message(self, timeout=5):
        """(topic, parsed JSON or raw bytes); raises queue.Empty."""
        topic, payload = self.messages.get(timeout=timeout)
        try:
            return topic, json.loads(payload)
        except ValueError:
            return topic, payload

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def put(url, body, content_type, headers=None):
    """PUT with http.client, which sends exactly the headers asked for."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    hdrs = {"Content-Type": content_type, "Content-Length": str(len(body))}
    hdrs.update(headers or {})
    conn.putrequest("PUT", f"{u.path}?{u.query}", skip_accept_encoding=True)
    for k, v in hdrs.items():
        if v is not None:
            conn.putheader(k, v)
    conn.endheaders()
    if hdrs.get("Transfer-Encoding") == "chunked":
        conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    else:
        conn.send(body)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def upload_link(p, dev, file_name="trace.csv", content_type="text/csv"):
    answer = rr(p, dev, LINK, dev.thing, {"fileName": file_name, "contentType": content_type})
    assert answer and "uploadUrl" in answer, answer
    return answer["uploadUrl"]


def get(url, headers=None):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", f"{u.path}?{u.query}", headers=headers or {})
    resp = conn.getresponse()
    try:
        data = resp.read()
    finally:
        conn.close()
    return resp.status, dict(resp.getheaders()), data
