"""The lodev-platform command line sees the same emulator as the API."""

import json
import os
import subprocess

import pytest

from conftest import require_platform_tools
from helpers import FHIR, OBSERVATION, provision, rr, wait_for
from lodev_platform import Platform, PlatformError

CLI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lodev-platform")


def cli(workdir, *args, check=True):
    proc = subprocess.run([CLI, "--workdir", str(workdir), *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_start_use_stop(tmp_path):
    require_platform_tools()
    workdir = tmp_path / "emu"
    started = json.loads(cli(workdir, "start").stdout)
    try:
        assert started["broker_running"] and started["service_connected"]
        p = Platform.attach(workdir)
        assert p.mqtt_port == started["mqtt_port"]

        dev = provision(p, tmp_path)
        assert rr(p, dev, FHIR, f"{dev.thing}/FHIRIngest/accepted", OBSERVATION)
        observed = json.loads(cli(workdir, "observations").stdout)
        assert [o["thing"] for o in observed] == [dev.thing]

        fw = tmp_path / "fw.bin"
        fw.write_bytes(b"\x7fELF image")
        assert json.loads(cli(workdir, "firmware", "add", "fw-cli", str(fw)).stdout)["size"] == 10
        job = json.loads(cli(workdir, "jobs", "add", dev.thing, "--firmware-id", "fw-cli").stdout)
        assert p.job_execution(dev.thing, job["job_id"])["status"] == "QUEUED"
        cli(workdir, "jobs", "cancel", dev.thing, job["job_id"])
        history = json.loads(cli(workdir, "jobs", "history", dev.thing, job["job_id"]).stdout)
        assert [h["status"] for h in history] == ["QUEUED", "CANCELED"]

        cli(workdir, "fault", "reject-next", "fhir", "--error-code", "Busy", "--status-code", "503")
        assert p.status()["faults"]["reject_next"] == {"fhir": 1}
        cli(workdir, "fault", "throttle", "off")
        assert p.status()["throttle_rate"] == 0

        bad = cli(workdir, "jobs", "add", "nobody:0", "--firmware-id", "fw-cli", check=False)
        assert bad.returncode == 1 and "no thing named" in bad.stderr
    finally:
        cli(workdir, "stop", check=False)
    wait_for(lambda: not (workdir / "platform.json").exists(), what="the emulator to stop")
    with pytest.raises(PlatformError):
        Platform.attach(workdir)
    assert cli(workdir, "status", check=False).returncode == 1
