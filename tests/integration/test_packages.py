# SPDX-License-Identifier: MIT
"""The Debian packages, built from the tree with scripts/build-debs.sh as a developer and
the system test build them: lintian has no error and no warning, the packages hold every
file meson installs (each in one package), the binaries link only what the README lists,
debian/liblodev1.symbols is exactly what the library exports, and the maintainer
scripts do what Debian policy asks (the postrm runs for real in a private mount
namespace: remove keeps /var/lib/lodevd, purge removes it).

The packages are built without their unit tests (DEB_BUILD_OPTIONS=nocheck): the unit
suite runs in the same meson test run. Needs what debian/control declares and lintian
(scripts/setup.sh installs them)."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

import lodevtest

BUILD_DIR = os.path.abspath(lodevtest.BUILD_DIR)
SOURCE_DIR = os.path.abspath(lodevtest.SOURCE_DIR)
PACKAGES = ("lodevd", "liblodev1", "liblodev-dev")

# What the binaries may link (README, "Dependencies"): libmosquitto, OpenSSL, json-c,
# libsystemd, libconfig, and the C library; libcurl and libseccomp only in the transfer helper.
ALLOWED_NEEDED = {
    "usr/sbin/lodevd": {"libmosquitto.so.1", "libcrypto.so.3", "libssl.so.3",
                        "libjson-c.so.5", "libsystemd.so.0", "libconfig.so.9", "libc.so.6",
                        "libm.so.6"},
    "usr/libexec/lodevd/lodevd-transfer": {"libcurl.so.4", "libseccomp.so.2", "libcrypto.so.3",
                                           "libssl.so.3", "libjson-c.so.5", "libsystemd.so.0",
                                           "libconfig.so.9", "libc.so.6", "libm.so.6"},
    "usr/bin/lodevctl": {"liblodev.so.1", "libjson-c.so.5", "libsystemd.so.0", "libc.so.6",
                         "libm.so.6"},
}

require_tool = lodevtest.require_tool


def run(args, timeout=120, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)


def git_status():
    """What git sees changed or new in the source tree; None outside a git checkout."""
    if not shutil.which("git"):
        return None
    r = run(["git", "-C", SOURCE_DIR, "status", "--porcelain", "--untracked-files=all"])
    return r.stdout if r.returncode == 0 else None


class Debs:
    def __init__(self, out):
        self.out = out
        self.version = None
        for p in PACKAGES:
            self.path(p)

    def path(self, package):
        found = [n for n in os.listdir(self.out)
                 if n.startswith(package + "_") and n.endswith(".deb")]
        assert len(found) == 1, "%s: %s" % (package, sorted(os.listdir(self.out)))
        return os.path.join(self.out, found[0])

    def changes(self):
        (found,) = [n for n in os.listdir(self.out) if n.endswith(".changes")]
        return os.path.join(self.out, found)

    def field(self, package, name):
        r = run(["dpkg-deb", "-f", self.path(package), name])
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def files(self, package):
        """Paths (no leading ./) of files and symlinks in the package."""
        r = run(["dpkg-deb", "-c", self.path(package)])
        assert r.returncode == 0, r.stderr
        names = []
        for line in r.stdout.splitlines():
            if line.startswith("d"):
                continue
            name = line.split(None, 5)[5].split(" -> ")[0]
            names.append(name[2:] if name.startswith("./") else name)
        return names

    def extract(self, package, dest):
        r = run(["dpkg-deb", "-x", self.path(package), dest])
        assert r.returncode == 0, r.stderr
        r = run(["dpkg-deb", "-e", self.path(package), os.path.join(dest, "DEBIAN")])
        assert r.returncode == 0, r.stderr
        return dest


BUILD_FAILED = []


@pytest.fixture(scope="module")
def debs():
    # pytest sets a module fixture up again for each test after a failure: build once.
    if BUILD_FAILED:
        pytest.fail(BUILD_FAILED[0])
    for tool in ("dpkg-buildpackage", "dpkg-checkbuilddeps", "dh", "lintian", "readelf", "nm"):
        require_tool(tool)
    r = run(["dpkg-checkbuilddeps"], cwd=SOURCE_DIR)
    if r.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("build dependencies missing under CI: %s" % r.stderr)
        pytest.skip("build dependencies missing: %s" % r.stderr.strip())
    before = git_status()
    out = tempfile.mkdtemp(prefix="lodev-debs-")
    env = dict(os.environ, DEB_BUILD_OPTIONS="nocheck")
    t0 = time.monotonic()
    r = run(["bash", os.path.join(SOURCE_DIR, "scripts", "build-debs.sh"), out], timeout=1200,
            env=env)
    print("\nscripts/build-debs.sh took %.0f s" % (time.monotonic() - t0))
    # It prints what it made, in OUTDIR only, and nothing else.
    made = r.stdout.split()
    if r.returncode != 0 or not made or \
            not all(os.path.dirname(p) == out and os.path.exists(p) for p in made):
        BUILD_FAILED.append("build-debs.sh failed (%d):\n%s\n%s" % (
            r.returncode, r.stdout[-2000:], r.stderr[-6000:]))
        shutil.rmtree(out, ignore_errors=True)
        pytest.fail(BUILD_FAILED[0])
    d = Debs(out)
    d.checkout_before = before
    yield d
    shutil.rmtree(out, ignore_errors=True)


def test_checkout_left_clean(debs):
    """The build ran on a copy: nothing new or changed in the source tree."""
    if debs.checkout_before is None:
        pytest.skip("the source tree is not a git checkout")
    assert git_status() == debs.checkout_before


def test_lintian_clean(debs):
    t0 = time.monotonic()
    r = run(["lintian", "--pedantic", "--display-info", "--tag-display-limit", "0",
             debs.changes()], timeout=600)
    took = time.monotonic() - t0
    out = "\n".join(l for l in (r.stdout + r.stderr).splitlines()
                    if "running with root privileges" not in l)
    print("\nlintian (%.0f s):\n%s" % (took, out or "(nothing)"))
    bad = [l for l in out.splitlines()
           if re.match(r"[EW]: ", l) or "unused-override" in l or "mismatched-override" in l]
    assert not bad, out
    # Exit status 0 unless something at error level (or a lintian failure) was found.
    assert r.returncode == 0, out


def meson_installed():
    """Files meson installs from the build directory, as paths under / (no leading /)."""
    with open(os.path.join(BUILD_DIR, "meson-info", "intro-installed.json")) as f:
        installed = json.load(f).values()
    with open(os.path.join(BUILD_DIR, "meson-info", "intro-buildoptions.json")) as f:
        options = {o["name"]: o["value"] for o in json.load(f)}
    if options["prefix"] != "/usr":
        pytest.skip("the build is configured with --prefix=%s, not /usr" % options["prefix"])
    files = set()
    for p in installed:
        rel = p.lstrip("/")
        # The package puts the units where Debian 12's dh_installsystemd looks.
        rel = re.sub(r"^usr/lib/systemd/system/", "lib/systemd/system/", rel)
        files.add(rel)
    return files


def test_packages_hold_what_meson_installs(debs):
    contents = {p: debs.files(p) for p in PACKAGES}
    owner = {}
    for p, names in contents.items():
        for n in names:
            assert n not in owner, "%s is in %s and %s" % (n, owner[n], p)
            owner[n] = p
    packaged = {re.sub(r"\.gz$", "", n) if n.startswith("usr/share/man/") else n
                for n in owner}
    missing = sorted(meson_installed() - packaged)
    assert not missing, "installed by meson, in no package: %s" % missing

    lib = [n for n in contents["liblodev1"] if not n.startswith("usr/share/doc/")]
    assert sorted(os.path.basename(n) for n in lib) == ["liblodev.so.1", "liblodev.so.1.0.0"], lib
    dev = contents["liblodev-dev"]
    for want in ("usr/include/lodev.h", "usr/share/man/man3/liblodev.3.gz"):
        assert want in dev, dev
    assert any(n.endswith("/liblodev.so") for n in dev) and \
        any(n.endswith("/pkgconfig/liblodev.pc") for n in dev), dev
    assert any(n.startswith("usr/share/doc/liblodev-dev/examples/") and n.endswith(".c")
               for n in dev), dev
    daemon = contents["lodevd"]
    for want in ("usr/sbin/lodevd", "usr/bin/lodevctl", "lib/systemd/system/lodevd.service",
                 "lib/systemd/system/lodevd-reboot.path", "usr/lib/sysusers.d/lodevd.conf",
                 "lib/systemd/system/lodevd-swupdate.path",
                 "lib/systemd/system/lodevd-swupdate.service",
                 "usr/share/dbus-1/system.d/com.lifeomic.Device1.conf",
                 "usr/share/dbus-1/system-services/com.lifeomic.Device1.service",
                 "usr/share/dbus-1/interfaces/com.lifeomic.Device1.xml",
                 "usr/share/polkit-1/rules.d/lodevd.rules",
                 "usr/lib/systemd/catalog/lodevd.catalog", "etc/lodevd/lodevd.conf",
                 "usr/libexec/lodevd/request-reboot", "usr/libexec/lodevd/lodevd-transfer",
                 "usr/share/man/man8/lodevd.8.gz",
                 "usr/share/bash-completion/completions/lodevctl"):
        assert want in daemon, (want, daemon)


def test_relationships(debs):
    depends = [d.strip() for d in debs.field("lodevd", "Depends").split(",")]
    # procps: /bin/kill, the unit's ExecReload=.
    for want in ("ca-certificates", "default-dbus-system-bus | dbus-system-bus", "procps",
                 "systemd"):
        assert want in depends, depends
    assert any(d.startswith("liblodev1 ") for d in depends), depends
    assert "media-types" in debs.field("lodevd", "Recommends")
    version = debs.field("lodevd", "Version")
    dev = [d.strip() for d in debs.field("liblodev-dev", "Depends").split(",")]
    assert "liblodev1 (= %s)" % version in dev and "libsystemd-dev" in dev, dev
    for p in ("liblodev1", "liblodev-dev"):
        assert debs.field(p, "Multi-Arch") == "same"


def test_binaries(debs, tmp_path):
    root = str(tmp_path)
    for p in ("lodevd", "liblodev1"):
        debs.extract(p, root)
    for rel, allowed in ALLOWED_NEEDED.items():
        r = run(["readelf", "-d", os.path.join(root, rel)])
        assert r.returncode == 0, r.stderr
        needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", r.stdout))
        assert needed and needed <= allowed, "%s links %s" % (rel, sorted(needed - allowed))
        # Debian's hardening flags: full RELRO, position independent.
        assert "BIND_NOW" in r.stdout and "PIE" in r.stdout, r.stdout


def test_symbols_file_is_the_library(debs, tmp_path):
    """debian/liblodev1.symbols lists exactly what liblodev.so.1 exports, each symbol in
    its version node: a symbol added to lib/liblodev.sym without it fails here (the build
    only warns), one removed fails the build."""
    root = debs.extract("liblodev1", str(tmp_path))
    with open(os.path.join(root, "DEBIAN", "symbols")) as f:
        lines = f.read().splitlines()
    assert lines[0] == "liblodev.so.1 liblodev1 #MINVER#", lines[0]
    listed = {l.split()[0] for l in lines[1:] if l.startswith(" ")}
    (so,) = [os.path.join(dp, n) for dp, _, names in os.walk(root) for n in names
             if re.fullmatch(r"liblodev\.so\.1\.\d+\.\d+", n)]
    r = run(["nm", "-D", "--defined-only", so])
    assert r.returncode == 0, r.stderr
    # A version node itself shows as its bare name; dpkg-gensymbols writes NODE@NODE.
    exported = {n.replace("@@", "@") if "@" in n else "%s@%s" % (n, n)
                for n in (l.split()[-1] for l in r.stdout.splitlines())}
    assert listed == exported, ("only in the symbols file: %s; only in the library: %s"
                                % (sorted(listed - exported), sorted(exported - listed)))


def test_maintainer_scripts(debs, tmp_path):
    root = debs.extract("lodevd", str(tmp_path))
    ctl = os.path.join(root, "DEBIAN")
    with open(os.path.join(ctl, "conffiles")) as f:
        assert f.read().split() == ["/etc/lodevd/lodevd.conf"]
    scripts = {}
    for name in ("postinst", "prerm", "postrm"):
        with open(os.path.join(ctl, name)) as f:
            scripts[name] = f.read()
    assert re.search(r"^\s*systemd-sysusers .*lodevd\.conf", scripts["postinst"], re.M)
    for unit in ("lodevd.service", "lodevd-reboot.path", "lodevd-swupdate.path"):
        assert "deb-systemd-helper enable '%s'" % unit in scripts["postinst"], unit
    # The reboot and the SWUpdate services are never started, restarted or stopped by the
    # package.
    for name, text in scripts.items():
        assert "lodevd-reboot.service" not in text, name
        assert "lodevd-swupdate.service" not in text, name

    # The postrm for real, in a mount namespace of its own with empty /var/lib and /run.
    require_tool("unshare")
    postrm = os.path.join(ctl, "postrm")
    r = run(["unshare", "-m", "--propagation", "private", "sh", "-euc", """
mount -t tmpfs tmpfs /var/lib
mount -t tmpfs tmpfs /run
mkdir -p /var/lib/lodevd/identity
echo thing > /var/lib/lodevd/identity/thing-name
sh "$0" remove
test -f /var/lib/lodevd/identity/thing-name && echo kept-on-remove
sh "$0" purge
test ! -e /var/lib/lodevd && echo gone-on-purge
""", postrm])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["kept-on-remove", "gone-on-purge"], r.stdout + r.stderr
