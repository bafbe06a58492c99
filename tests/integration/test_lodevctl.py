# SPDX-License-Identifier: MIT
"""lodevctl's command line against a real lodevd: options anywhere on the line,
each --json form, --no-legend tables, usage errors (exit 2) before anything is
asked, and the bash completion sourced in a real bash."""

import json
import os
import re
import shlex
import subprocess

import pytest

import lodevtest

MiB = 1024 * 1024
COMPLETION = os.path.join(lodevtest.SOURCE_DIR, "client", "lodevctl.bash")
BASH_COMPLETION = "/usr/share/bash-completion/bash_completion"


def ctl(bus, *args, **kw):
    return lodevtest.lodevctl(bus, *args, **kw)


@pytest.fixture
def online(bus, workdir, platform):
    config = os.path.join(workdir, "lodevd.conf")
    # Slow uploads, so that a transfer stays listed while the test looks.
    lodevtest.write_device_config(config, workdir, platform,
                                  transfers={"max_rate": 64 * 1024})
    d = lodevtest.Daemon(bus, workdir, config).start()
    d.wait_online()
    yield d
    d.stop()


def test_options_anywhere_and_every_json_form(bus, online):
    pretty = ctl(bus, "--json", "status")
    assert pretty.returncode == 0, pretty.stderr
    st = json.loads(pretty.stdout)
    assert st["state"] == "online"
    assert st["current_job"] == {"id": "", "status": "", "percent": 0}
    assert len(pretty.stdout.splitlines()) > 5  # pretty: one key a line
    for args in (["status", "--json"], ["-j", "status"], ["status", "-j"],
                 ["--json=pretty", "status"], ["status", "--json=pretty"]):
        r = ctl(bus, *args)
        assert r.returncode == 0, (args, r.stderr)
        assert r.stdout == pretty.stdout, args
    for args in (["--json=short", "status"], ["status", "--json=short"]):
        r = ctl(bus, *args)
        assert r.returncode == 0, (args, r.stderr)
        assert len(r.stdout.splitlines()) == 1, args
        assert json.loads(r.stdout) == st
    # off: text, also when it comes after an earlier --json (the last one counts).
    for args in (["--json=off", "status"], ["--json", "status", "--json=off"]):
        r = ctl(bus, *args)
        assert r.returncode == 0, (args, r.stderr)
        assert "State: online" in r.stdout, args
    r = ctl(bus, "--json=help")
    assert r.returncode == 0 and r.stdout.split() == ["pretty", "short", "off"]
    # A command's own options before the command, and between its arguments.
    r = ctl(bus, "--check", "--no-legend", "jobs")
    assert r.returncode == 0 and r.stdout == "", (r.stdout, r.stderr)
    r = ctl(bus, "--code", "8867-4", "--json=short", "--value", "61", "observe",
            "--code-system", "http://loinc.org", "--unit", "/min")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["id"]
    r = ctl(bus, "wait-online", "-t", "5")
    assert r.returncode == 0, r.stderr
    # What follows inhibit-reboot's COMMAND is COMMAND's, options and all.
    r = ctl(bus, "--json", "inhibit-reboot", "--who", "test", "sh", "-c", "exit 7", "--json")
    assert r.returncode == 7, r.stderr
    r = ctl(bus, "inhibit-reboot", "--", "sh", "-c", "echo $0 $1", "-j", "--check")
    assert r.returncode == 0 and r.stdout.strip() == "-j --check", (r.stdout, r.stderr)


def test_no_legend_tables(bus, online, workdir):
    path = os.path.join(workdir, "slow.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(4 * MiB))
    r = ctl(bus, "--name", "slow.bin", "upload", path, "--json=off")
    assert r.returncode == 0, r.stderr
    tid = r.stdout.strip()
    table = ctl(bus, "transfers")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["ID", "STATE", "DONE", "SIZE", "NAME"]
    assert lines[1].split()[0] == tid and lines[1].split()[-1] == "slow.bin"
    assert lines[-1] == "1 transfer listed."
    plain = ctl(bus, "transfers", "--no-legend")
    assert plain.returncode == 0, plain.stderr
    # The same row without the headers and the footer. DONE may have moved on
    # between the two calls: compare the other columns.
    rows = plain.stdout.splitlines()
    assert len(rows) == 1, rows
    assert rows[0].split()[:2] == lines[1].split()[:2]
    assert rows[0].split()[-3:] == lines[1].split()[-3:]
    assert ctl(bus, "cancel", tid).returncode == 0
    assert ctl(bus, "transfers").stdout == "No transfers.\n"
    assert ctl(bus, "--no-legend", "transfers").stdout == ""
    assert ctl(bus, "jobs").stdout == "No firmware job.\n"
    assert ctl(bus, "jobs", "--no-legend").stdout == ""
    # Accepted where systemd's tools take it; lodevctl never pages.
    assert ctl(bus, "--no-pager", "status").returncode == 0


USAGE_ERRORS = [
    ([], "missing command"),
    (["frobnicate"], "unknown command"),
    (["status", "--force"], "--force does not apply"),
    (["--check", "status"], "--check does not apply"),
    (["transfers", "--wait"], "--wait does not apply"),
    (["status", "--frobnicate"], "unrecognized option"),
    (["--json=bogus", "status"], "unknown mode 'bogus'"),
    (["status", "--json=bogus"], "unknown mode 'bogus'"),
    (["status", "extra"], "unexpected argument 'extra'"),
    (["transfers", "extra"], "unexpected argument 'extra'"),
    (["upload"], "exactly one FILE is required"),
    (["upload", "a", "b"], "unexpected argument 'b'"),
    (["cancel"], "exactly one transfer ID is required"),
    (["inhibit-reboot", "--who", "x"], "COMMAND is required"),
    (["observe", "--code", "c"], "are required"),
    (["--value", "ten", "--code", "c", "--code-system", "s", "--unit", "u", "observe"],
     "not a finite number"),
    (["wait-online", "--timeout"], "requires an argument"),
    (["wait-online", "--timeout", "soon"], "not a number of seconds"),
]


@pytest.mark.parametrize("args,message", USAGE_ERRORS)
def test_usage_errors_exit_2_before_asking_lodevd(bus, args, message):
    # No lodevd on this bus: a usage error is found before any call (which would exit 3).
    r = ctl(bus, *args)
    assert r.returncode == 2, (args, r.returncode, r.stderr)
    assert message in r.stderr, r.stderr
    assert r.stdout == ""


def test_exit_statuses_unchanged(bus):
    r = ctl(bus, "status", "--json")
    assert r.returncode == 3 and "not running" in r.stderr
    r = ctl(bus, "--help")
    assert r.returncode == 0 and "--no-legend" in r.stdout
    r = ctl(bus, "jobs", "--version")
    assert r.returncode == 0 and r.stdout.startswith("lodevctl ")


def complete(bus, line, extra_env=None):
    """COMPREPLY of the bash completion with the cursor at the end of `line`, split into
    COMP_WORDS as bash splits it (on blanks, and around "=" and ":")."""
    if not os.path.exists(BASH_COMPLETION):
        if os.environ.get("CI") == "true":
            pytest.fail("bash-completion is required under CI")
        pytest.skip("bash-completion not installed")
    words = re.findall(r"[^\s=:]+|[=:]", line)
    if line[-1:].isspace():
        words.append("")
    script = """
source %s
source %s
COMP_WORDS=(%s)
COMP_CWORD=%d
COMP_LINE=%s
COMP_POINT=${#COMP_LINE}
COMPREPLY=()
_lodevctl lodevctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%%s\\n' "${COMPREPLY[@]}"
""" % (BASH_COMPLETION, COMPLETION, " ".join(shlex.quote(w) for w in words), len(words) - 1,
       shlex.quote(line))
    env = bus.env()
    env["PATH"] = os.path.join(lodevtest.BUILD_DIR, "client") + ":" + env["PATH"]
    if extra_env:
        env.update(extra_env)
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return sorted(w for w in r.stdout.splitlines() if w)


def test_bash_completion(bus, online, workdir):
    assert complete(bus, "lodevctl st") == ["status"]
    assert complete(bus, "lodevctl --json w") == ["wait-online"]
    assert "inhibit-reboot" in complete(bus, "lodevctl ")
    # Options: the global ones and those of the command, wherever it stands.
    assert complete(bus, "lodevctl jobs --c") == ["--check"]
    assert complete(bus, "lodevctl --no-legend jobs --") == sorted(
        ["--json", "--no-legend", "--no-pager", "--help", "--version", "--check"])
    assert complete(bus, "lodevctl observe --code x --code-") == [
        "--code-display", "--code-system"]
    assert complete(bus, "lodevctl status --c") == []
    assert complete(bus, "lodevctl status --json=s") == ["short"]
    assert "text/csv" in complete(bus, "lodevctl upload --content-type text/cs")
    # Files for upload.
    open(os.path.join(workdir, "reading-42.csv"), "w").close()
    assert complete(bus, "lodevctl upload " + os.path.join(workdir, "reading-4")) == [
        os.path.join(workdir, "reading-42.csv")]
    # inhibit-reboot: a command, then that command's own completion.
    assert "sleep" in complete(bus, "lodevctl inhibit-reboot --who x slee")
    # Transfer ids, asked from the running lodevd through lodevctl itself.
    path = os.path.join(workdir, "slow.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(4 * MiB))
    ids = []
    for _ in range(2):
        r = ctl(bus, "upload", path)
        assert r.returncode == 0, r.stderr
        ids.append(r.stdout.strip())
    assert complete(bus, "lodevctl cancel ") == sorted(ids)
    assert complete(bus, "lodevctl --json cancel " + ids[1][:8]) == [ids[1]]
    assert complete(bus, "lodevctl cancel %s " % ids[0]) == []
    for i in ids:
        assert ctl(bus, "cancel", i).returncode == 0


def test_bash_completion_quiet_without_lodevd(bus):
    # No lodevd on the bus, or no bus at all: no ids, no noise, commands still complete.
    assert complete(bus, "lodevctl cancel ") == []
    assert complete(bus, "lodevctl cancel ",
                    {"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent"}) == []
    assert complete(bus, "lodevctl tr") == ["transfers"]
