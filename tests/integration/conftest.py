# SPDX-License-Identifier: MIT
import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import lodevtest  # noqa: E402


def require_tool(name):
    """Outside CI a missing tool skips; under CI=true it fails."""
    if shutil.which(name):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("%s is required under CI" % name)
    pytest.skip("%s not installed" % name)


@pytest.fixture
def bus():
    require_tool("dbus-daemon")
    b = lodevtest.Bus()
    yield b
    b.stop()


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="lodev-test-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ca_file(workdir):
    """Any readable PEM file satisfies the start-up check before the emulator exists."""
    path = os.path.join(workdir, "ca.pem")
    with open(path, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    return path


@pytest.fixture
def basic_config(workdir, ca_file):
    path = os.path.join(workdir, "lodevd.conf")
    lodevtest.write_config(
        path,
        platform={"endpoint": "127.0.0.1", "port": 1, "ca_file": ca_file},
        provisioning={"claim_cert": os.path.join(workdir, "claim.pem"),
                      "claim_key": os.path.join(workdir, "claim.key")},
        state_dir=os.path.join(workdir, "state"),
    )
    return path


@pytest.fixture
def daemon(bus, workdir, basic_config):
    d = lodevtest.Daemon(bus, workdir, basic_config)
    yield d
    d.stop()
