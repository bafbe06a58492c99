# SPDX-License-Identifier: MIT
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "platform"))
sys.path.insert(0, os.path.join(HERE, "..", "installers"))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import machine  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "prerequisite: the later steps need this one")


# The tests of test_system.py are steps on one machine, in order: after a failed
# step that the later ones need (or a failed setup) they are reported as not run,
# not as failures of their own.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.excinfo is None or call.excinfo.errisinstance(pytest.skip.Exception):
        return
    if call.when == "setup" or (call.when == "call" and item.get_closest_marker("prerequisite")):
        item.session.system_failed = item.name
    system = item.funcargs.get("system") if hasattr(item, "funcargs") else None
    if call.when == "call" and system is not None:
        outcome.get_result().sections.append(("the container", system.diagnostics()))


def pytest_runtest_setup(item):
    failed = getattr(item.session, "system_failed", None)
    if failed:
        pytest.skip("not run: step %s failed" % failed)


def pytest_terminal_summary(terminalreporter):
    lines = machine.timings.report()
    if lines:
        terminalreporter.write_sep("-", "system test timings")
        for line in lines:
            terminalreporter.write_line(line)
