# SPDX-License-Identifier: MIT
import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "platform"))

import lodevtest  # noqa: E402


require_tool = lodevtest.require_tool


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


@pytest.fixture(scope="module")
def platform():
    """The local platform emulator, shared by the tests of a module."""
    require_tool("mosquitto")
    from lodev_platform import Platform

    d = tempfile.mkdtemp(prefix="lodev-platform-")
    p = Platform.start(d)
    yield p
    p.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def basic_config(workdir, platform):
    path = os.path.join(workdir, "lodevd.conf")
    lodevtest.write_device_config(path, workdir, platform)
    return path


@pytest.fixture
def daemon(bus, workdir, basic_config):
    d = lodevtest.Daemon(bus, workdir, basic_config)
    yield d
    d.stop()
