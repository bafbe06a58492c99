"""Fixtures for the emulator's own tests (real mosquitto, real TLS, real HTTP)."""

import os
import shutil
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # lodev_platform
sys.path.insert(0, HERE)                   # helpers

from lodev_platform import Platform  # noqa: E402


def require_tool(name, package):
    """Skips without `name`, but fails under CI=true: there a missing tool is
    a broken machine, not a reason to test less."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}")
                                  else None)
    if path:
        return path
    message = f"{name} is not installed (apt-get install {package})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_platform_tools():
    """What the emulator needs: mosquitto, its clients, and a C compiler with
    mosquitto's plugin headers for the broker plugin."""
    require_tool("mosquitto", "mosquitto")
    require_tool("mosquitto_rr", "mosquitto-clients")
    if not os.environ.get("LODEV_PLATFORM_PLUGIN"):
        require_tool("cc", "gcc")
        if not os.path.exists("/usr/include/mosquitto_plugin.h"):
            message = "mosquitto_plugin.h is missing (apt-get install mosquitto-dev)"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    require_platform_tools()
    with Platform.start(str(tmp_path_factory.mktemp("platform"))) as p:
        yield p


@pytest.fixture
def fresh_platform(tmp_path):
    """An emulator of its own, for tests that change global state."""
    require_platform_tools()
    with Platform.start(str(tmp_path / "platform")) as p:
        yield p
