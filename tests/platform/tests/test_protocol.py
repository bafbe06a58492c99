"""The emulator answers as the platform does: provisioning, policies, rules,
uploads, downloads and clear errors. Devices are provisioned with
mosquitto_rr (one connection that subscribes and publishes, as AWS answers
only the asking connection) and the certificates the emulator issued."""

import hashlib
import os
import re
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpers import (CREATE, CREATE_CSR, FHIR, LINK, OBSERVATION, REGISTER, TEMPLATE, Client,
                     claim, get, parameters, provision, put, rr, save_device, upload_link)

@pytest.fixture(scope="module")
def device(platform, tmp_path_factory):
    return provision(platform, tmp_path_factory.mktemp("device"))


# -- provisioning ---------------------------------------------------------------


def test_emulator_files(platform):
    assert platform.host == "127.0.0.1"
    assert stat.S_IMODE(os.stat(platform.claim_key).st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(open(platform.ca_file, "rb").read())
    server = x509.load_pem_x509_certificate(
        open(os.path.join(platform.workdir, "server.pem"), "rb").read())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert server.issuer == ca.subject


def test_create_keys_and_register(platform, tmp_path):
    c = claim(platform)
    created = rr(platform, c, CREATE, CREATE + "/accepted", {})
    assert set(created) == {"certificateId", "certificatePem", "privateKey",
                            "certificateOwnershipToken"}
    assert re.fullmatch(r"[0-9a-f]{64}", created["certificateId"])
    cert = x509.load_pem_x509_certificate(created["certificatePem"].encode())
    ca = x509.load_pem_x509_certificate(open(platform.ca_file, "rb").read())
    assert cert.issuer == ca.subject
    params = parameters()
    registered = rr(platform, c, REGISTER, REGISTER + "/accepted", {
        "parameters": params, "templateName": TEMPLATE,
        "certificateOwnershipToken": created["certificateOwnershipToken"]})
    thing = registered["thingName"]
    assert re.fullmatch(rf"{platform.account}:[0-9a-f-]{{36}}", thing)
    listed = {t["thingName"]: t for t in platform.things()}
    assert listed[thing]["parameters"] == params

    dev = save_device(tmp_path, thing, created["certificatePem"], created["privateKey"])
    before = len(platform.observations())
    assert rr(platform, dev, FHIR, f"{thing}/FHIRIngest/accepted", OBSERVATION)
    obs = platform.observations()[before:]
    assert [(o["thing"], o["client_id"], o["payload"]) for o in obs] == \
        [(thing, thing, OBSERVATION)]


def test_create_from_csr(platform, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw")]))
           .sign(key, hashes.SHA256()))
    c = claim(platform)
    created = rr(platform, c, CREATE_CSR, CREATE_CSR + "/accepted", {
        "certificateSigningRequest": csr.public_bytes(serialization.Encoding.PEM).decode()})
    assert set(created) == {"certificateId", "certificatePem", "certificateOwnershipToken"}
    cert = x509.load_pem_x509_certificate(created["certificatePem"].encode())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    registered = rr(platform, c, REGISTER, REGISTER + "/accepted", {
        "parameters": parameters(),
        "certificateOwnershipToken": created["certificateOwnershipToken"]})
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    dev = save_device(tmp_path, registered["thingName"], created["certificatePem"], key_pem)
    assert rr(platform, dev, FHIR, f"{dev.thing}/FHIRIngest/accepted", OBSERVATION)


def test_same_serial_keeps_its_thing(platform, tmp_path):
    a = provision(platform, tmp_path / "a", serial="SN-REPROVISION")
    b = provision(platform, tmp_path / "b", serial="SN-REPROVISION")
    assert a.thing == b.thing
    # Both certificates stay valid for that thing.
    for dev in (a, b):
        assert rr(platform, dev, FHIR, f"{dev.thing}/FHIRIngest/accepted", OBSERVATION)


def test_answers_reach_only_the_asking_connection(platform):
    asker = Client(platform, claim(platform)).wait_connected()
    other = Client(platform, claim(platform)).wait_connected()
    try:
        for c in (asker, other):
            assert c.subscribe(CREATE + "/accepted") == (1,)
        asker.publish(CREATE, {})
        topic, answer = asker.next_message()
        assert topic == CREATE + "/accepted" and "certificateId" in answer
        # Answers to one connection arrive in order: if `other` had been sent
        # the first answer, it would come before the answer to its own request.
        other.publish(CREATE, {})
        topic, own = other.next_message()
        assert own["certificateId"] != answer["certificateId"]
        assert other.messages.empty()
    finally:
        asker.close()
        other.close()


def test_register_checks(platform):
    c = claim(platform)
    created = rr(platform, c, CREATE, CREATE + "/accepted", {})
    token = created["certificateOwnershipToken"]
    rejected = REGISTER + "/rejected"

    missing = rr(platform, c, REGISTER, rejected, {
        "parameters": {"SerialNumber": "x"}, "certificateOwnershipToken": token})
    assert missing["statusCode"] == 400 and missing["errorCode"] == "InvalidParameters"
    assert "Manufacturer" in missing["errorMessage"]

    empty = rr(platform, c, REGISTER, rejected, {"parameters": parameters()})
    assert empty["errorCode"] == "InvalidCertificateOwnershipToken"

    bogus = rr(platform, c, REGISTER, rejected, {"parameters": parameters(),
                                                 "certificateOwnershipToken": "nope"})
    assert bogus["errorCode"] == "InvalidCertificateOwnershipToken"

    wrong_type = rr(platform, c, REGISTER, rejected, {
        "parameters": {**parameters(), "SerialNumber": 5}, "certificateOwnershipToken": token})
    assert wrong_type["errorCode"] == "InvalidParameters"

    other_template = "$aws/provisioning-templates/NoSuchTemplate/provision/json"
    unknown = rr(platform, c, other_template, other_template + "/rejected", {
        "parameters": parameters(), "certificateOwnershipToken": token})
    assert unknown["statusCode"] == 404

    # The token was not used up by the failed attempts.
    assert rr(platform, c, REGISTER, REGISTER + "/accepted", {
        "parameters": parameters(), "certificateOwnershipToken": token})
    reused = rr(platform, c, REGISTER, rejected, {"parameters": parameters(),
                                                  "certificateOwnershipToken": token})
    assert reused["errorCode"] == "InvalidCertificateOwnershipToken"


def test_malformed_requests_are_rejected_clearly(platform, device):
    c = claim(platform)
    for topic in (CREATE, CREATE_CSR, REGISTER):
        err = rr(platform, c, topic, topic + "/rejected", "{not json")
        assert err["statusCode"] == 400 and err["errorCode"] == "InvalidPayload", err
        assert "JSON" in err["errorMessage"]
    csr = rr(platform, c, CREATE_CSR, CREATE_CSR + "/rejected", {})
    assert "certificateSigningRequest" in csr["errorMessage"]
    bad_csr = rr(platform, c, CREATE_CSR, CREATE_CSR + "/rejected",
                 {"certificateSigningRequest": "-----BEGIN CERTIFICATE REQUEST-----\nxx"})
    assert bad_csr["errorCode"] == "InvalidCertificateSigningRequest"

    t = device.thing
    before = len(platform.observations())
    for payload, field in (({**OBSERVATION, "value": "high"}, "value"),
                           ({k: v for k, v in OBSERVATION.items() if k != "unit"}, "unit"),
                           ({**OBSERVATION, "coding": []}, "coding"),
                           ([1, 2], "object")):
        err = rr(platform, device, FHIR, f"{t}/FHIRIngest/rejected", payload)
        assert err["statusCode"] == 400 and field in err["errorMessage"], err
    assert len(platform.observations()) == before
    err = rr(platform, device, LINK, f"{t}/CreateFileUploadLink/rejected", {"fileName": "x"})
    assert "contentType" in err["errorMessage"]


def test_token_expires(platform):
    c = claim(platform)
    created = rr(platform, c, CREATE, CREATE + "/accepted", {})
    platform.expire_tokens()
    err = rr(platform, c, REGISTER, REGISTER + "/rejected", {
        "parameters": parameters(),
        "certificateOwnershipToken": created["certificateOwnershipToken"]})
    assert err["errorCode"] == "InvalidCertificateOwnershipToken"
    assert "expired" in err["errorMessage"]


# -- policies -------------------------------------------------------------------


def test_claim_may_only_provision(platform, device):
    c = Client(platform, claim(platform)).wait_connected()
    try:
        assert c.subscribe(f"{device.thing}/#") == (128,)
        assert c.subscribe("$aws/things/+/jobs/#") == (128,)
        assert c.subscribe(CREATE + "/accepted") == (1,)
        before = len(platform.observations())
        c.publish(FHIR, OBSERVATION).wait_for_publish(5)
        # A request that is allowed still gets its answer after the denied one.
        c.publish(CREATE, {})
        assert c.next_message()[0] == CREATE + "/accepted"
        assert len(platform.observations()) == before
    finally:
        c.close()


def test_device_is_confined_to_its_own_topics(platform, device, tmp_path):
    other = provision(platform, tmp_path)
    c = Client(platform, device).wait_connected()
    try:
        assert c.subscribe(f"{other.thing}/#") == (128,)
        assert c.subscribe(f"$aws/things/{other.thing}/jobs/notify-next") == (128,)
        assert c.subscribe("#") == (128,)
        assert c.subscribe(CREATE + "/accepted") == (128,)
        assert c.subscribe(f"{device.thing}/#") == (1,)
        assert c.subscribe(f"$aws/things/{device.thing}/jobs/notify-next") == (1,)
    finally:
        c.close()


def test_client_id_must_be_the_thing_name(platform, device, tmp_path):
    other = provision(platform, tmp_path)
    # The device's certificate used with another thing's name is cut off.
    c = Client(platform, device, client_id=other.thing).wait_connected()
    try:
        c.client.reconnect_delay_set(30, 30)  # stay down once dropped
        assert c.subscribe(f"{other.thing}/x") == (128,)
        assert c.disconnected.wait(5)
    finally:
        c.close()


# -- uploads --------------------------------------------------------------------


def test_upload(platform, device):
    url = upload_link(platform, device, "ecg 1.csv", "text/csv")
    assert url.startswith(f"http://127.0.0.1:{platform.http_port}/")
    body = os.urandom(200_000)
    status, _ = put(url, body, "text/csv")
    assert status == 200
    up = platform.uploads()[-1]
    assert (up["thing"], up["file_name"], up["content_type"], up["size"], up["sha256"]) == \
        (device.thing, "ecg 1.csv", "text/csv", len(body), hashlib.sha256(body).hexdigest())
    assert open(up["path"], "rb").read() == body


def test_upload_checks(platform, device):
    url = upload_link(platform, device, "a.bin", "application/octet-stream")
    n = len(platform.uploads())
    status, body = put(url, b"data", "text/plain")
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, body = put(url, b"data", "application/octet-stream",
                       {"Content-Length": None, "Transfer-Encoding": "chunked"})
    assert status == 501 and b"NotImplemented" in body
    status, body = put(url, b"", "application/octet-stream", {"Content-Length": None})
    assert status == 411 and b"MissingContentLength" in body
    tampered = url.replace("X-Amz-Expires=900", "X-Amz-Expires=9000")
    status, body = put(tampered, b"data", "application/octet-stream")
    assert status == 403 and b"SignatureDoesNotMatch" in body
    assert len(platform.uploads()) == n
    assert put(url, b"data", "application/octet-stream")[0] == 200


def test_upload_link_goes_to_the_thing_topic(platform, device):
    c = Client(platform, device).wait_connected()
    try:
        assert c.subscribe(device.thing) == (1,)
        c.publish(LINK, {"fileName": "f.txt", "contentType": "text/plain"})
        topic, answer = c.next_message()
        assert topic == device.thing and set(answer) == {"uploadUrl"}
    finally:
        c.close()


# -- downloads ------------------------------------------------------------------


def test_firmware_download_and_ranges(platform):
    data = os.urandom(300_000)
    assert platform.add_firmware("fw-ranges", data) == "/firmware/fw-ranges"
    url = platform.firmware_url("fw-ranges")
    status, headers, body = get(url)
    assert status == 200 and body == data and headers["Accept-Ranges"] == "bytes"
    status, headers, body = get(url, {"Range": "bytes=1000-"})
    assert status == 206 and body == data[1000:]
    assert headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    status, _, body = get(url, {"Range": "bytes=10-19"})
    assert status == 206 and body == data[10:20]
    status, _, body = get(url, {"Range": "bytes=-5"})
    assert status == 206 and body == data[-5:]
    status, headers, _ = get(url, {"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
    status, _, body = get(url.replace("fw-ranges?", "fw-other?"))
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, _, _ = get(platform.firmware_url("missing"))
    assert status == 404
