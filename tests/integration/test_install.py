# SPDX-License-Identifier: MIT
"""What `meson install` puts on a device: the layout under a --destdir, the
unit (systemd-analyze verify), the D-Bus files, the default configuration
(accepted by the installed lodevd), liblodev with its header and pkg-config
file (a program builds and runs against them), and the man pages.

The build must be configured with --prefix=/usr, as a distribution or an
image build does."""

import configparser
import glob
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import xml.etree.ElementTree as ET

import pytest

import lodevtest

BUILD_DIR = os.path.abspath(lodevtest.BUILD_DIR)
SOURCE_DIR = os.path.abspath(lodevtest.SOURCE_DIR)

MAN_PAGES = [
    "man8/lodevd.8",
    "man1/lodevctl.1",
    "man5/lodevd.conf.5",
    "man3/liblodev.3",
    "man5/com.lifeomic.Device1.5",
]


require_tool = lodevtest.require_tool


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def root():
    """The build installed into a fresh directory."""
    prefix = build_option("prefix")
    if prefix != "/usr":
        pytest.skip("the build is configured with --prefix=%s, not /usr" % prefix)
    d = tempfile.mkdtemp(prefix="lodev-install-")
    r = run(["meson", "install", "-C", BUILD_DIR, "--destdir", d, "--no-rebuild", "--quiet"])
    assert r.returncode == 0, "meson install failed:\n%s%s" % (r.stdout, r.stderr)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def build_option(name):
    with open(os.path.join(BUILD_DIR, "meson-info", "intro-buildoptions.json")) as f:
        for o in json.load(f):
            if o["name"] == name:
                return o["value"]
    raise KeyError(name)


def libdir(root):
    """The directory under root holding liblodev.so (multiarch or plain)."""
    found = glob.glob(os.path.join(root, "usr", "lib", "**", "liblodev.so"), recursive=True)
    assert len(found) == 1, "liblodev.so installed %d times: %s" % (len(found), found)
    return os.path.dirname(found[0])


def path(root, rel):
    return os.path.join(root, rel)


def assert_file(root, rel, executable=False):
    p = path(root, rel)
    assert os.path.isfile(p), "%s is not installed" % rel
    if executable:
        assert os.access(p, os.X_OK), "%s is not executable" % rel


def test_layout(root):
    assert_file(root, "usr/sbin/lodevd", executable=True)
    assert_file(root, "usr/bin/lodevctl", executable=True)
    for rel in [
        "usr/lib/systemd/system/lodevd.service",
        "usr/share/dbus-1/system.d/com.lifeomic.Device1.conf",
        "usr/share/dbus-1/system-services/com.lifeomic.Device1.service",
        "usr/share/dbus-1/interfaces/com.lifeomic.Device1.xml",
        "usr/lib/sysusers.d/lodevd.conf",
        "usr/lib/systemd/catalog/lodevd.catalog",
        "etc/lodevd/lodevd.conf",
        "usr/include/lodev.h",
        "usr/lib/systemd/system/lodevd-reboot.path",
        "usr/lib/systemd/system/lodevd-reboot.service",
        "usr/lib/systemd/system/lodevd-swupdate.path",
        "usr/lib/systemd/system/lodevd-swupdate.service",
        "usr/share/polkit-1/rules.d/lodevd.rules",
        "usr/share/bash-completion/completions/lodevctl",
    ]:
        assert_file(root, rel)
    for hook in ("rauc", "swupdate", "copy"):
        assert_file(root, "usr/libexec/lodevd/hooks/" + hook, executable=True)
    assert_file(root, "usr/libexec/lodevd/request-reboot", executable=True)
    assert_file(root, "usr/libexec/lodevd/lodevd-transfer", executable=True)


def test_libcurl_in_the_helper_only(root):
    """lodevd itself links no libcurl (nor what libcurl pulls in); the transfer helper does."""
    lodevtest.require_tool("ldd")
    daemon = subprocess.run(["ldd", path(root, "usr/sbin/lodevd")], capture_output=True, text=True,
                            timeout=30)
    helper = subprocess.run(["ldd", path(root, "usr/libexec/lodevd/lodevd-transfer")],
                            capture_output=True, text=True, timeout=30)
    assert daemon.returncode == 0 and helper.returncode == 0, (daemon.stderr, helper.stderr)
    for lib in ("libcurl", "libgnutls", "libldap", "librtmp", "libssh2", "libnghttp2"):
        assert lib not in daemon.stdout, daemon.stdout
    assert "libcurl" in helper.stdout and "libseccomp" in helper.stdout, helper.stdout


def version_script_symbols():
    """The names lib/liblodev.sym exports, and its version node."""
    with open(os.path.join(SOURCE_DIR, "lib", "liblodev.sym")) as f:
        text = f.read()
    node = re.match(r"\s*(\w+)\s*\{", text).group(1)
    body = text.split("global:")[1].split("local:")[0]
    return node, sorted(s.strip() for s in body.split(";") if s.strip())


def test_library_files(root):
    d = libdir(root)
    rel = os.path.relpath(d, root)
    assert rel in ("usr/lib", "usr/lib/x86_64-linux-gnu") or rel.startswith("usr/lib/"), rel
    real = glob.glob(os.path.join(d, "liblodev.so.1.*"))
    assert len(real) == 1 and not os.path.islink(real[0]), real
    assert os.readlink(os.path.join(d, "liblodev.so.1")) == os.path.basename(real[0])
    assert os.path.realpath(os.path.join(d, "liblodev.so")) == os.path.realpath(real[0])
    assert os.path.isfile(os.path.join(d, "pkgconfig", "liblodev.pc"))

    # The soname Debian's liblodev1 carries, and exactly the version script's symbols,
    # each in its version node: what debian/liblodev1.symbols records.
    require_tool("objdump")
    r = run(["objdump", "-p", real[0]])
    assert r.returncode == 0, r.stderr
    assert re.search(r"SONAME\s+liblodev\.so\.1\n", r.stdout), r.stdout
    require_tool("nm")
    r = run(["nm", "-D", "--defined-only", real[0]])
    assert r.returncode == 0, r.stderr
    exported = sorted(line.split()[-1] for line in r.stdout.splitlines() if " T " in line)
    node, listed = version_script_symbols()
    assert exported == sorted("%s@@%s" % (s, node) for s in listed), (exported, listed)
    symbols = [s.split("@")[0] for s in exported]
    assert all(s.startswith("lodev_") for s in symbols), symbols
    # Nothing else but the version node itself.
    others = [line for line in r.stdout.splitlines()
              if " T " not in line and not line.endswith(" " + node)]
    assert not others, others

    # Every exported function is documented in liblodev(3).
    man = path(root, "usr/share/man/man3/liblodev.3")
    if os.path.exists(man):
        with open(man) as f:
            text = f.read().replace("\\", "")
        missing = [s for s in symbols if s not in text]
        assert not missing, "liblodev(3) does not document %s" % missing


def man_pages_installed():
    """True when the build installs man pages."""
    with open(os.path.join(BUILD_DIR, "meson-info", "intro-installed.json")) as f:
        installed = json.load(f).values()
    return any("/man/man8/lodevd.8" in p for p in installed)


def test_man_pages(root):
    if not man_pages_installed():
        if build_option("man-pages") == "disabled":
            pytest.skip("the build is configured with -Dman-pages=disabled")
        # auto without scdoc: a missing tool, which CI must not hide.
        require_tool("scdoc")
        pytest.fail("scdoc is installed but the build installs no man pages")
    for page in MAN_PAGES:
        p = path(root, "usr/share/man/" + page)
        assert os.path.isfile(p), "%s is not installed" % page
        with open(p) as f:
            head = f.read(4096)
        name, section = os.path.basename(page).rsplit(".", 1)
        assert re.search(r'^\.TH "%s" "%s"' % (re.escape(name), section), head, re.M), \
            "%s has no .TH line for %s(%s)" % (page, name, section)


def test_unit_verifies(root):
    """systemd-analyze verify on the installed unit, with ExecStart pointing
    at the installed binary and man pointed at the installed pages, so that
    Documentation= is checked too."""
    require_tool("systemd-analyze")
    # Documentation= is checked with man(1) when the pages are installed.
    check_docs = man_pages_installed() and shutil.which("man") is not None
    unit = path(root, "usr/lib/systemd/system/lodevd.service")
    with open(unit) as f:
        text = f.read()
    m = re.search(r"^ExecStart=(\S+)", text, re.M)
    assert m, "no ExecStart= in lodevd.service"
    assert m.group(1) == "/usr/sbin/lodevd"
    assert os.access(path(root, m.group(1).lstrip("/")), os.X_OK)

    d = tempfile.mkdtemp(prefix="lodev-unit-")
    try:
        copy = os.path.join(d, "lodevd.service")
        with open(copy, "w") as f:
            f.write(text.replace("ExecStart=/usr/sbin/lodevd",
                                 "ExecStart=" + path(root, "usr/sbin/lodevd"), 1))
        env = dict(os.environ)
        env["MANPATH"] = path(root, "usr/share/man")
        env["SYSTEMD_LOG_LEVEL"] = "notice"
        r = run(["systemd-analyze", "verify", "--man=%s" % ("yes" if check_docs else "no"), copy],
                env=env, cwd=d)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        assert "lodevd.service" not in out, out
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_unit_security_score(root):
    """systemd-analyze security on the installed unit: the exposure stays at 3.0 or
    lower (lodevd and its hooks run without capabilities, see lodevd.service)."""
    require_tool("systemd-analyze")
    unit = path(root, "usr/lib/systemd/system/lodevd.service")
    r = run(["systemd-analyze", "security", "--offline=true", "--no-pager", unit],
            env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice", SYSTEMD_COLORS="0"))
    out = r.stdout + r.stderr
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    if not m and "offline" in out and "unrecognized" in out:
        pytest.skip("this systemd-analyze has no --offline")
    assert m, out
    assert float(m.group(1)) <= 3.0, out
    for rel in ("lodevd-reboot.path", "lodevd-reboot.service", "lodevd-swupdate.path",
                "lodevd-swupdate.service"):
        r = run(["systemd-analyze", "verify", "--man=no",
                 path(root, "usr/lib/systemd/system/" + rel)],
                env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
        out = r.stdout + r.stderr
        # The hook it runs is installed under the destdir, not on this host: it is there.
        hook = "/usr/libexec/lodevd/hooks/swupdate"
        if rel == "lodevd-swupdate.service" and "Command %s is not executable" % hook in out:
            assert os.access(path(root, hook.lstrip("/")), os.X_OK), out
            out = "\n".join(l for l in out.splitlines() if hook not in l)
            assert out.strip() == "", out
            continue
        assert r.returncode == 0 and rel not in out, out


def test_default_reboot_path(root):
    """The default reboot_command is the installed request-reboot, whose request the
    installed root path unit watches; without that unit active it fails, saying so."""
    with open(path(root, "etc/lodevd/lodevd.conf")) as f:
        m = re.search(r'^\s*reboot_command\s*=\s*"([^"]*)"', f.read(), re.M)
    assert m, "no reboot_command in the default lodevd.conf"
    helper = m.group(1)
    assert helper == "/usr/libexec/lodevd/request-reboot", helper
    assert_file(root, helper.lstrip("/"), executable=True)
    with open(path(root, helper.lstrip("/"))) as f:
        request = re.search(r"^request=(\S+)$", f.read(), re.M).group(1)
    unit = read_ini(path(root, "usr/lib/systemd/system/lodevd-reboot.path"))
    assert unit["Path"]["PathExists"] == request
    assert unit["Install"]["WantedBy"] == "paths.target"
    service = read_ini(path(root, "usr/lib/systemd/system/lodevd-reboot.service"))["Service"]
    assert service["ExecStart"] == "systemctl reboot --check-inhibitors=yes"
    # The lodevd service's runtime directory is where the request goes.
    lodevd = read_ini(path(root, "usr/lib/systemd/system/lodevd.service"))["Service"]
    assert os.path.dirname(request) == "/run/" + lodevd["RuntimeDirectory"]
    # Here no lodevd-reboot.path is active (no systemd manages this machine, or not
    # that unit): the request fails rather than vanish.
    r = run([path(root, helper.lstrip("/"))])
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "lodevd-reboot.path is not active" in r.stderr, r.stderr
    assert not os.path.exists(request)


def read_ini(p):
    # strict=False: unit files may repeat a key (SystemCallFilter=); the last one wins here.
    c = configparser.ConfigParser(interpolation=None, strict=False)
    c.optionxform = str
    with open(p) as f:
        c.read_file(f)
    return c


def test_dbus_files(root):
    policy = ET.parse(path(root, "usr/share/dbus-1/system.d/com.lifeomic.Device1.conf")).getroot()
    assert policy.tag == "busconfig"
    owners = [a.get("own") for p in policy.iter("policy") if p.get("user") == "root"
              for a in p.iter("allow")]
    assert "com.lifeomic.Device1" in owners
    assert any(p.get("group") == "lodev" for p in policy.iter("policy"))

    iface = ET.parse(path(root, "usr/share/dbus-1/interfaces/com.lifeomic.Device1.xml")).getroot()
    assert [i.get("name") for i in iface.iter("interface")] == ["com.lifeomic.Device1"]
    with open(path(root, "usr/share/dbus-1/interfaces/com.lifeomic.Device1.xml")) as a, \
            open(os.path.join(SOURCE_DIR, "daemon", "com.lifeomic.Device1.xml")) as b:
        assert a.read() == b.read()

    activation = read_ini(path(root, "usr/share/dbus-1/system-services/com.lifeomic.Device1.service"))
    service = activation["D-BUS Service"]
    assert service["Name"] == "com.lifeomic.Device1"
    alias = service["SystemdService"]
    unit = read_ini(path(root, "usr/lib/systemd/system/lodevd.service"))
    assert alias in unit["Install"]["Alias"].split(), \
        "activation names %s, which is not an alias of lodevd.service" % alias
    assert unit["Service"]["BusName"] == "com.lifeomic.Device1"


def test_sysusers_and_catalog(root):
    import shlex

    with open(path(root, "usr/lib/sysusers.d/lodevd.conf")) as f:
        lines = [shlex.split(l) for l in f if l.strip() and not l.startswith("#")]
    assert ["g", "lodev", "-"] in lines
    # The user the unit runs as exists, and the bus policy lets it own the name.
    unit = read_ini(path(root, "usr/lib/systemd/system/lodevd.service"))["Service"]
    user = unit["User"]
    users = [l for l in lines if l[0] == "u" and l[1] == user]
    assert users, "sysusers.d creates no user %s" % user
    assert unit.get("Group", user) == user
    policy = ET.parse(path(root, "usr/share/dbus-1/system.d/com.lifeomic.Device1.conf")).getroot()
    owners = [a.get("own") for p in policy.iter("policy") if p.get("user") == user
              for a in p.iter("allow")]
    assert "com.lifeomic.Device1" in owners, "the bus policy does not let %s own the name" % user
    activation = read_ini(path(root, "usr/share/dbus-1/system-services/"
                                     "com.lifeomic.Device1.service"))["D-BUS Service"]
    assert activation["User"] == user
    with open(path(root, "usr/lib/systemd/catalog/lodevd.catalog")) as f:
        ids = re.findall(r"^-- (\S+)", f.read(), re.M)
    assert ids and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), ids


def test_default_config_accepted(root):
    """The installed lodevd accepts the installed lodevd.conf: with the paths
    moved into a scratch directory it gets past the configuration and the
    start-up checks and stops only at the (absent) system bus."""
    conf = path(root, "etc/lodevd/lodevd.conf")
    with open(conf) as f:
        text = f.read()
    with open(os.path.join(SOURCE_DIR, "conf", "lodevd.conf")) as f:
        assert text == f.read(), "the installed lodevd.conf differs from conf/lodevd.conf"

    d = tempfile.mkdtemp(prefix="lodev-conf-")
    try:
        ca = os.path.join(d, "ca.pem")
        claim_cert = os.path.join(d, "claim.pem")
        claim_key = os.path.join(d, "claim.key")
        for p in (ca, claim_cert, claim_key):
            with open(p, "w") as f:
                f.write("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
        os.chmod(claim_key, 0o600)
        moved = {
            "ca_file": ca,
            "claim_cert": claim_cert,
            "claim_key": claim_key,
            "state_dir": os.path.join(d, "state"),
        }
        for key, value in moved.items():
            text, n = re.subn(r'^(\s*%s\s*=\s*)"[^"]*"' % key, r'\g<1>"%s"' % value, text,
                              flags=re.M)
            assert n == 1, "%s is set %d times in the default lodevd.conf" % (key, n)
        copy = os.path.join(d, "lodevd.conf")
        with open(copy, "w") as f:
            f.write(text)

        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")}
        env["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent/system_bus_socket"
        r = run([path(root, "usr/sbin/lodevd"), "--config", copy], env=env)
        assert r.returncode == 1, r.stderr
        assert "lodevd.conf:" not in r.stderr, r.stderr
        assert "Failed to connect to the system bus" in r.stderr, r.stderr
        assert stat.S_IMODE(os.stat(moved["state_dir"]).st_mode) == 0o700
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_installed_paths_compiled_in(root):
    r = run([path(root, "usr/sbin/lodevd"), "--help"])
    assert r.returncode == 0
    assert "/etc/lodevd/lodevd.conf" in r.stdout, r.stdout
    r = run([path(root, "usr/bin/lodevctl"), "--version"],
            env=dict(os.environ, LD_LIBRARY_PATH=libdir(root)))
    assert r.returncode == 0 and r.stdout.startswith("lodevctl "), r.stdout + r.stderr


PROGRAM = r"""
#include <errno.h>
#include <stdio.h>
#include <lodev.h>

int main(void) {
        lodev *l = NULL;
        int r = lodev_open(&l);

        /* No bus at this address: the call must fail cleanly. */
        if (r >= 0 || l) {
                lodev_close(l);
                return 2;
        }
        puts(lodev_strerror(-ENOSPC));
        return lodev_close(NULL) == NULL ? 0 : 3;
}
"""


def test_pkg_config_and_link(root):
    require_tool("pkg-config")
    require_tool("cc")
    d = libdir(root)
    env = dict(os.environ)
    env["PKG_CONFIG_PATH"] = os.path.join(d, "pkgconfig")
    r = run(["pkg-config", "--cflags", "--libs", "liblodev"], env=env)
    assert r.returncode == 0, r.stderr
    flags = r.stdout.split()
    assert "-llodev" in flags, flags
    r = run(["pkg-config", "--variable=libdir", "liblodev"], env=env)
    assert r.returncode == 0 and root + r.stdout.strip() == d, (r.stdout, d)

    work = tempfile.mkdtemp(prefix="lodev-link-")
    try:
        src = os.path.join(work, "app.c")
        exe = os.path.join(work, "app")
        with open(src, "w") as f:
            f.write(PROGRAM)
        # A sanitizer build's library needs the sanitizer runtimes in the program too.
        sanitize = build_option("b_sanitize")
        if isinstance(sanitize, list):
            sanitize = ",".join(sanitize)
        extra = [] if sanitize in ("none", "") else ["-fsanitize=" + sanitize]
        r = run(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-o", exe, src,
                 "-I" + path(root, "usr/include")] + flags + ["-L" + d] + extra)
        assert r.returncode == 0, r.stderr
        run_env = dict(os.environ, LD_LIBRARY_PATH=d,
                       DBUS_SYSTEM_BUS_ADDRESS="unix:path=/nonexistent/system_bus_socket")
        r = run([exe], env=run_env)
        assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
        assert r.stdout.strip() == "no space left on the device's file system"
        r = run(["ldd", exe], env=run_env)
        assert os.path.join(d, "liblodev.so.1") in r.stdout, r.stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)
