"""Every fault switch, each with an assertion of its effect. Devices are
provisioned with mosquitto_rr and the certificates the emulator issues."""

import hashlib
import http.client
import json
import os
import socket
import subprocess
import urllib.parse

import pytest

from helpers import (CREATE, CREATE_CSR, FHIR, LINK, OBSERVATION, REGISTER, Client, claim, get,
                     parameters, provision, put, rr, upload_link, wait_for)

from lodev_platform import REQUEST_KINDS


@pytest.fixture(scope="module")
def device(platform, tmp_path_factory):
    return provision(platform, tmp_path_factory.mktemp("device"))


def test_broker_stop_and_start_on_the_same_port(fresh_platform, tmp_path):
    p = fresh_platform
    dev = provision(p, tmp_path)
    c = Client(p, dev, clean_session=False).wait_connected()
    try:
        assert c.subscribe(f"{dev.thing}/FHIRIngest/accepted") == (1,)
        p.broker_stop()
        assert c.disconnected.wait(5), "the device did not see the broker go"
        with pytest.raises(OSError):
            socket.create_connection((p.host, p.mqtt_port), timeout=2).close()
        assert p.status()["broker_running"] is False

        p.broker_start()
        assert c.connected.wait(10), "the device did not reconnect to the same port"
        # The persistent session (and its subscription) survived the restart.
        c.publish(FHIR, OBSERVATION)
        topic, answer = c.next_message(timeout=10)
        assert topic == f"{dev.thing}/FHIRIngest/accepted" and "observationId" in answer
    finally:
        c.close()


def test_drop_client(platform, device, tmp_path):
    bystander_dev = provision(platform, tmp_path)
    victim = Client(platform, device).wait_connected()
    bystander = Client(platform, bystander_dev).wait_connected()
    try:
        victim.client.reconnect_delay_set(30, 30)
        platform.drop_client(device.thing)
        assert victim.disconnected.wait(5), "the client was not dropped"
        assert bystander.connected.is_set() and not bystander.disconnected.is_set()
    finally:
        victim.close()
        bystander.close()


def test_expire_next_url(platform, device):
    platform.expire_next_url()
    expired = upload_link(platform, device)
    status, body = put(expired, b"x", "text/csv")
    assert status == 403 and b"Request has expired" in body
    fresh = upload_link(platform, device)
    assert put(fresh, b"x", "text/csv")[0] == 200

    platform.add_firmware("fw-expiry", b"firmware")
    platform.expire_next_url()
    status, _, body = get(platform.firmware_url("fw-expiry"))
    assert status == 403 and b"Request has expired" in body
    assert get(platform.firmware_url("fw-expiry"))[0] == 200


@pytest.mark.parametrize("status,code", [(403, b"AccessDenied"), (500, b"InternalError")])
def test_fail_next_puts(platform, device, status, code):
    url = upload_link(platform, device)
    n = len(platform.uploads())
    platform.fail_next_puts(2, status)
    for _ in range(2):
        got, body = put(url, b"payload", "text/csv")
        assert got == status and code in body
    assert len(platform.uploads()) == n
    assert put(url, b"payload", "text/csv")[0] == 200
    assert len(platform.uploads()) == n + 1


@pytest.mark.parametrize("status,code", [
    (400, "RequestTimeout"), (400, "ExpiredToken"), (400, "EntityTooLarge"),
    (503, "SlowDown"), (503, "ServiceUnavailable"), (301, "PermanentRedirect"),
    (307, "TemporaryRedirect")])
def test_fail_next_puts_with_s3_codes(platform, device, status, code):
    """The answers S3 gives that a device must tell apart: S3's status, code
    and message; a redirect also says where to go."""
    url = upload_link(platform, device)
    n = len(platform.uploads())
    platform.fail_next_puts(1, status, code=code)
    assert platform.status()["faults"]["fail_next_puts"] == [[status, code, None]]
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("PUT", f"{u.path}?{u.query}", body=b"payload",
                 headers={"Content-Type": "text/csv"})
    resp = conn.getresponse()
    body = resp.read()
    location = resp.getheader("Location")
    conn.close()
    assert resp.status == status
    assert b"<Code>%s</Code>" % code.encode() in body and b"<Message>" in body
    if status in (301, 307):
        assert location and location.startswith("http://")
    else:
        assert location is None
    assert len(platform.uploads()) == n
    assert put(url, b"payload", "text/csv")[0] == 200


def test_fail_next_puts_for_one_file_name(platform, device):
    """A failure armed for one file's links leaves the PUTs of other files
    alone, in whatever order they come."""
    other = upload_link(platform, device, file_name="other.csv")
    target = upload_link(platform, device, file_name="target.csv")
    platform.fail_next_puts(2, 500, file_name="target.csv")
    assert put(other, b"o", "text/csv")[0] == 200
    got, body = put(target, b"t", "text/csv")
    assert got == 500 and b"InternalError" in body
    assert put(other, b"o", "text/csv")[0] == 200
    assert put(target, b"t", "text/csv")[0] == 500
    assert put(target, b"t", "text/csv")[0] == 200
    assert platform.status()["faults"]["fail_next_puts"] == []


def test_fail_next_puts_refuses_what_s3_never_answers(platform):
    with pytest.raises(Exception, match="status"):
        platform.fail_next_puts(1, 418)
    with pytest.raises(Exception, match="unknown S3 code"):
        platform.fail_next_puts(1, 400, code="NoSuchThing")


def test_cut_next_download(platform):
    data = os.urandom(200_000)
    platform.add_firmware("fw-cut", data)
    url = urllib.parse.urlsplit(platform.firmware_url("fw-cut"))
    platform.cut_next_download(50_000)

    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", f"{url.path}?{url.query}")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.getheader("Content-Length")) == len(data)
    with pytest.raises(http.client.IncompleteRead) as cut:
        resp.read()
    conn.close()
    assert len(cut.value.partial) == 50_000
    assert platform.downloads()[-1]["sent"] == 50_000

    # Resuming with a range gives the rest; the fault was one-shot.
    status, _, rest = get(platform.firmware_url("fw-cut"), {"Range": "bytes=50000-"})
    assert status == 206
    assert hashlib.sha256(cut.value.partial + rest).digest() == hashlib.sha256(data).digest()


def _valid_request(p, kind, dev, claim_ident, created):
    """(identity, topic, payload) of a request of `kind` that would succeed."""
    jobs = f"$aws/things/{dev.thing}/jobs"
    if kind == "create":
        return claim_ident, CREATE, {}
    if kind == "create-from-csr":
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
               .sign(key, hashes.SHA256()))
        return claim_ident, CREATE_CSR, {
            "certificateSigningRequest": csr.public_bytes(serialization.Encoding.PEM).decode()}
    if kind == "register":
        return claim_ident, REGISTER, {
            "parameters": parameters(),
            "certificateOwnershipToken": created["certificateOwnershipToken"]}
    if kind == "fhir":
        return dev, FHIR, OBSERVATION
    if kind == "upload-link":
        return dev, LINK, {"fileName": "f", "contentType": "text/plain"}
    if kind == "jobs-get":
        return dev, f"{jobs}/get", {}
    if kind == "jobs-describe":
        return dev, f"{jobs}/$next/get", {}
    if kind == "jobs-start-next":
        return dev, f"{jobs}/start-next", {}
    if kind == "jobs-update":
        job = p.queue_job(dev.thing, document={"operation": "noop"})
        return dev, f"{jobs}/{job}/update", {"status": "IN_PROGRESS"}
    raise AssertionError(kind)


def _answer_topics(kind, dev, topic):
    if kind == "fhir":
        return f"{dev.thing}/FHIRIngest/accepted", f"{dev.thing}/FHIRIngest/rejected"
    if kind == "upload-link":
        return dev.thing, f"{dev.thing}/CreateFileUploadLink/rejected"
    return topic + "/accepted", topic + "/rejected"


@pytest.mark.parametrize("kind", REQUEST_KINDS)
def test_reject_next(platform, tmp_path, kind):
    dev = provision(platform, tmp_path)
    c = claim(platform)
    created = rr(platform, c, CREATE, CREATE + "/accepted", {})
    ident, topic, payload = _valid_request(platform, kind, dev, c, created)
    accepted, rejected = _answer_topics(kind, dev, topic)

    platform.reject_next(kind, error_code="Throttling", status_code=429, message="slow down")
    err = rr(platform, ident, topic, rejected, payload)
    assert err is not None, f"{kind}: no rejection"
    if kind.startswith("jobs-"):
        assert (err["code"], err["message"]) == ("Throttling", "slow down")
    else:
        assert (err["statusCode"], err["errorCode"], err["errorMessage"]) == \
            (429, "Throttling", "slow down")
    # One-shot: the same request succeeds next.
    assert rr(platform, ident, topic, accepted, payload) is not None, f"{kind}: not accepted"


def test_ignore_next(platform, device):
    platform.ignore_next("fhir")
    before = len(platform.observations())
    assert rr(platform, device, FHIR, f"{device.thing}/FHIRIngest/accepted", OBSERVATION,
              timeout=2) is None
    assert rr(platform, device, FHIR, f"{device.thing}/FHIRIngest/accepted", OBSERVATION)
    assert len(platform.observations()) == before + 1


def _burst(p, dev, count):
    """`count` observations as fast as mosquitto_pub can send them, on one
    connection; returns the stats the broker recorded for the client."""
    before = p.publish_stats(dev.thing)
    subprocess.run(
        ["mosquitto_pub", "-h", p.host, "-p", str(p.mqtt_port), "--cafile", p.ca_file,
         "--cert", dev.cert, "--key", dev.key, "-i", dev.thing, "-q", "1", "-t", FHIR,
         "-m", json.dumps(OBSERVATION), "--repeat", str(count)],
        check=True, timeout=60)
    after = wait_for(lambda: (lambda s: s if s["total"] - before["total"] == count else None)(
        p.publish_stats(dev.thing)), what="the broker to log the burst")
    return {"total": after["total"] - before["total"],
            "throttled": after["throttled"] - before["throttled"],
            "max_per_second": after["max_per_second"],
            "max_accepted_per_second": after["max_accepted_per_second"]}


def test_throttle(fresh_platform, tmp_path):
    p = fresh_platform
    dev = provision(p, tmp_path)
    assert p.status()["throttle_rate"] == 100  # on by default, as AWS

    stats = _burst(p, dev, 300)
    assert stats["throttled"] > 0, stats
    accepted = stats["total"] - stats["throttled"]
    assert stats["max_accepted_per_second"] == 100, stats
    # What the throttle dropped never reached the platform.
    wait_for(lambda: len(p.observations()) == accepted, what="accepted observations")

    p.set_throttle(False)
    n = len(p.observations())
    stats = _burst(p, dev, 300)
    assert stats["throttled"] == 0
    wait_for(lambda: len(p.observations()) == n + 300, what="all 300 observations")
    assert p.publish_stats(dev.thing)["max_per_second"] > 100
