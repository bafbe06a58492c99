# SPDX-License-Identifier: MIT
import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "platform"))

import faultlib  # noqa: E402
import lodevtest  # noqa: E402


@pytest.fixture(scope="session")
def bus():
    lodevtest.require_tool("dbus-daemon")
    b = lodevtest.Bus()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def platform():
    """One emulator for the whole matrix, without its 100 messages/s throttle: the load is
    above it on purpose (lodevd runs with publish_rate = 0)."""
    lodevtest.require_tool("mosquitto")
    from lodev_platform import Platform

    d = tempfile.mkdtemp(prefix="lodev-faults-platform-")
    p = Platform.start(d, throttle=False)
    yield p
    p.stop()
    if not os.environ.get("LODEV_FAULTS_KEEP"):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def workdir():
    d = tempfile.mkdtemp(prefix="lodev-faults-")
    yield d
    if not os.environ.get("LODEV_FAULTS_KEEP"):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rig(request, bus, platform, workdir):
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    # A short directory: lodevd's notify socket lives there (108 bytes at most).
    r = faultlib.Rig(bus, platform, tempfile.mkdtemp(prefix="c", dir=workdir), name)
    yield r
    for d in r.devices:
        d.kill()
    if not platform.status()["broker_running"]:
        platform.broker_start()


def pytest_terminal_summary(terminalreporter):
    for line in faultlib.REPORT.lines():
        terminalreporter.write_line(line)
