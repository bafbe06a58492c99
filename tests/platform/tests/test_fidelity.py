"""Fidelity: the official AWS IoT Device SDK v2 for JavaScript drives the
emulator (fidelity/fidelity.js). Its npm dependencies are pinned by
fidelity/package-lock.json and installed with `npm ci` once per lockfile into
$LODEV_FIDELITY_DIR (meson sets it to the build directory) or, when run
directly, into fidelity/ itself (node_modules is git-ignored)."""

import hashlib
import json
import os
import shutil
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import require_platform_tools, require_tool
from lodev_platform import Platform

SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fidelity")
FILES = ("package.json", "package-lock.json", "fidelity.js")


def install_sdk():
    """The directory holding fidelity.js and its node_modules, installed from
    the lockfile unless the same lockfile was installed there before."""
    npm = require_tool("npm", "npm")
    require_tool("node", "nodejs")
    target = os.environ.get("LODEV_FIDELITY_DIR") or SOURCE
    os.makedirs(target, exist_ok=True)
    if os.path.abspath(target) != SOURCE:
        for name in FILES:
            shutil.copyfile(os.path.join(SOURCE, name), os.path.join(target, name))
    with open(os.path.join(SOURCE, "package-lock.json"), "rb") as f:
        lock = hashlib.sha256(f.read()).hexdigest()
    stamp = os.path.join(target, "node_modules", ".lodev-lock-sha256")
    try:
        with open(stamp) as f:
            if f.read().strip() == lock:
                return target
    except FileNotFoundError:
        pass
    proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=target,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=240)
    assert proc.returncode == 0, f"npm ci failed:\n{proc.stdout[-4000:]}"
    with open(stamp, "w") as f:
        f.write(lock + "\n")
    return target


def write_csr(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fidelity")]))
           .sign(key, hashes.SHA256()))
    csr_file = os.path.join(directory, "device.csr")
    key_file = os.path.join(directory, "device-csr.key")
    with open(csr_file, "wb") as f:
        f.write(csr.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return csr_file, key_file


def test_sdk_against_emulator(tmp_path):
    require_platform_tools()
    sdk_dir = install_sdk()
    devices = tmp_path / "devices"
    devices.mkdir()
    csr_file, csr_key = write_csr(str(devices))
    with Platform.start(str(tmp_path / "platform")) as p:
        config = {"host": p.host, "mqtt_port": p.mqtt_port, "control_port": p.control_port,
                  "ca_file": p.ca_file, "claim_cert": p.claim_cert, "claim_key": p.claim_key,
                  "account": p.account, "workdir": str(devices), "csr_file": csr_file,
                  "csr_key_file": csr_key}
        config_file = tmp_path / "config.json"
        config_file.write_text(json.dumps(config))
        proc = subprocess.run(["node", os.path.join(sdk_dir, "fidelity.js"), str(config_file)],
                              cwd=sdk_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=180)
        assert proc.returncode == 0, f"fidelity.js failed:\n{proc.stderr[-6000:]}"
        summary = json.loads(proc.stdout.strip().splitlines()[-1])

        # What the SDK saw is also what the platform recorded.
        keys_thing, csr_thing = summary["things"]
        things = {t["thingName"]: t for t in p.things()}
        assert things[keys_thing]["parameters"]["SerialNumber"] == "FID-KEYS"
        assert things[csr_thing]["parameters"]["SerialNumber"] == "FID-CSR"
        obs = p.observations()
        assert [(o["thing"], o["client_id"]) for o in obs] == \
            [(keys_thing, keys_thing), (csr_thing, csr_thing)]
        assert obs[0]["id"] == summary["observation"]["observationId"]
        up = p.uploads()
        assert [(u["thing"], u["file_name"], u["content_type"], u["size"], u["sha256"])
                for u in up] == [(keys_thing, "dice.png", "image/png", summary["upload"]["size"],
                                  summary["upload"]["sha256"])]
        job = summary["job"]["jobId"]
        assert [h["status"] for h in p.job_history(keys_thing, job)] == \
            ["QUEUED", "IN_PROGRESS", "IN_PROGRESS", "SUCCEEDED"]
        assert p.job_execution(keys_thing, job)["statusDetails"] == {"percentProgress": "100"}
