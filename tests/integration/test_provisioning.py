# SPDX-License-Identifier: MIT
"""Provisioning by claim, the certificate store and the persistent connection,
against the platform emulator (real mosquitto with mutual TLS, real bus)."""

import datetime
import os
import random
import signal
import socket
import ssl
import stat
import threading
import time

import pytest

import lodevtest
from lodevtest import wait_until


def identity_dir(workdir):
    return os.path.join(workdir, "state", "identity")


def stored_thing(workdir):
    with open(os.path.join(identity_dir(workdir), "thing-name")) as f:
        return f.read().strip()


@pytest.mark.parametrize("method", ["create", "csr"])
def test_first_boot_provisioning(bus, workdir, platform, method):
    config = os.path.join(workdir, "lodevd.conf")
    lodevtest.write_device_config(config, workdir, platform, provisioning={"method": method})
    d = lodevtest.Daemon(bus, workdir, config).start()
    try:
        d.wait_online()
        st = d.status()
        thing = st["thing_name"]
        assert thing.startswith(platform.account + ":")
        assert stored_thing(workdir) == thing
        key = os.path.join(identity_dir(workdir), "device.key")
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        # The platform registered it with the configured parameters, the
        # serial number read from its file.
        things = {t["thingName"]: t for t in platform.things()}
        assert thing in things
        params = things[thing]["parameters"]
        assert params["SerialNumber"] == "SN-%s" % os.path.basename(workdir)
        assert params["Manufacturer"] == "Acme" and params["Model"] == "GW-1"
        # lodevctl provision answers with the thing name at once.
        r = lodevtest.lodevctl(bus, "provision")
        assert r.returncode == 0 and r.stdout.strip() == thing
        if method == "csr":
            # The device made its key: the platform never sent one.
            with open(key) as f:
                assert "PRIVATE KEY" in f.read()
            certs = [c for c in platform.certificates() if c.get("thing") == thing]
            assert certs, platform.certificates()
            assert all(c["mode"] == "csr" for c in certs), certs
        out = d.output()
        assert "Provisioned as %s" % thing in out
        assert "Online as %s" % thing in out
    finally:
        assert d.stop() == 0


class FreshInstall:
    """A device as the package leaves it: lodevd.conf names claim files that are not there
    yet. put_claim() is what the operator does later."""

    def __init__(self, bus, workdir, platform):
        self.platform = platform
        self.cert = os.path.join(workdir, "etc", "claim.pem")
        self.key = os.path.join(workdir, "etc", "claim.key")
        os.makedirs(os.path.dirname(self.cert))
        self.config = os.path.join(workdir, "lodevd.conf")
        lodevtest.write_device_config(self.config, workdir, platform, provisioning={
            "claim_cert": self.cert, "claim_key": self.key})
        self.daemon = lodevtest.Daemon(bus, workdir, self.config)

    def put_claim(self, which):
        src = {"cert": self.platform.claim_cert, "key": self.platform.claim_key}[which]
        dst = {"cert": self.cert, "key": self.key}[which]
        with open(src, "rb") as f, open(dst + ".tmp", "wb") as g:
            g.write(f.read())
        os.chmod(dst + ".tmp", 0o600 if which == "key" else 0o644)
        os.rename(dst + ".tmp", dst)

    def missing(self, key, path):
        """The message naming a missing file: the config file, the key's line, the key."""
        with open(self.config) as f:
            line = next(n for n, l in enumerate(f, 1) if l.strip().startswith(key + " ="))
        return "%s:%d: provisioning.%s: %s: No such file or directory" % (
            self.config, line, key, path)


def assert_waits_for(dev, bus, key, path):
    """lodevd is up and unprovisioned, and names the missing file everywhere."""
    st = dev.daemon.status()
    assert st["state"] == "unprovisioned", st
    assert st["last_error"] == "cannot provision: " + dev.missing(key, path), st
    assert dev.daemon.proc.poll() is None
    r = lodevtest.lodevctl(bus, "status")
    assert path in r.stdout, r.stdout
    status = dev.daemon.notify.wait_for("STATUS=unprovisioned, cannot provision")
    assert path in status, status


def test_fresh_install_waits_for_the_claim_files(bus, workdir, platform):
    """No claim certificate yet: lodevd starts (READY=1, bus name owned), takes readings,
    stays unprovisioned naming the missing file, asks nothing of the platform, and
    provisions once the files are there and it is restarted."""
    dev = FreshInstall(bus, workdir, platform)
    certs_before = len(platform.certificates())
    dev.daemon.start()
    try:
        assert_waits_for(dev, bus, "claim_cert", dev.cert)
        out = dev.daemon.output()
        assert "Cannot provision: " + dev.missing("claim_cert", dev.cert) in out
        # Readings wait on disk meanwhile.
        r = lodevtest.lodevctl(bus, "observe", "--code", "8867-4", "--code-system",
                               "http://loinc.org", "--value", "72", "--unit", "/min")
        assert r.returncode == 0, r.stderr
        # Still there, still not provisioning: no crash, no retry loop.
        time.sleep(3)
        assert_waits_for(dev, bus, "claim_cert", dev.cert)
        assert "Provisioning with" not in dev.daemon.output()

        # The certificate alone: now the key is what is missing.
        dev.put_claim("cert")
        assert dev.daemon.stop() == 0
        dev.daemon.start()
        assert_waits_for(dev, bus, "claim_key", dev.key)

        dev.put_claim("key")
        assert dev.daemon.stop() == 0
        dev.daemon.start()
        dev.daemon.wait_online()
        st = dev.daemon.status()
        assert st["thing_name"] and st["last_error"] == "", st
        assert len(platform.certificates()) == certs_before + 1
        wait_until(lambda: platform.observation_count(st["thing_name"]) >= 1, 30,
                   what="the reading taken while unprovisioned")
    finally:
        dev.daemon.stop()


def test_provision_call_finds_claim_files_put_later(bus, workdir, platform):
    """lodevctl provision checks the files again: it names the missing one, and once they
    are there it provisions without a restart."""
    dev = FreshInstall(bus, workdir, platform)
    dev.daemon.start()
    try:
        assert_waits_for(dev, bus, "claim_cert", dev.cert)
        r = lodevtest.lodevctl(bus, "provision")
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert "cannot provision: " + dev.missing("claim_cert", dev.cert) in r.stderr, r.stderr
        assert dev.daemon.status()["state"] == "unprovisioned"
        dev.put_claim("cert")
        dev.put_claim("key")
        r = lodevtest.lodevctl(bus, "provision", timeout=90)
        assert r.returncode == 0, r.stderr
        thing = r.stdout.strip()
        assert thing.startswith(platform.account + ":")
        dev.daemon.wait_online()
        assert dev.daemon.status()["last_error"] == ""
    finally:
        dev.daemon.stop()


def test_restart_reuses_identity(bus, workdir, platform, basic_config):
    d = lodevtest.Daemon(bus, workdir, basic_config).start()
    d.wait_online()
    thing = d.status()["thing_name"]
    certs_before = len(platform.certificates())
    assert d.stop() == 0
    d.start()
    d.wait_online()
    assert d.status()["thing_name"] == thing
    assert len(platform.certificates()) == certs_before, "provisioned again"
    assert d.output().count("Provisioned as") == 1
    assert d.stop() == 0


def test_provision_force(bus, workdir, platform, basic_config):
    d = lodevtest.Daemon(bus, workdir, basic_config).start()
    try:
        d.wait_online()
        old_cert = open(os.path.join(identity_dir(workdir), "device.pem")).read()
        r = lodevtest.lodevctl(bus, "provision", "--force", timeout=120)
        assert r.returncode == 0, r.stderr
        thing = r.stdout.strip()
        assert thing == stored_thing(workdir)
        assert open(os.path.join(identity_dir(workdir), "device.pem")).read() != old_cert
        d.wait_online()
        # Exactly one identity directory remains.
        dirs = [n for n in os.listdir(os.path.join(workdir, "state")) if n.startswith("identity-")]
        assert len(dirs) == 1, dirs
    finally:
        d.stop()


def test_broker_restarts(bus, workdir, platform, basic_config):
    """The broker goes away and comes back 20 times; lodevd is back online
    each time within the reconnect backoff bound."""
    d = lodevtest.Daemon(bus, workdir, basic_config).start()
    try:
        d.wait_online()
        thing = d.status()["thing_name"]
        for i in range(20):
            platform.broker_stop()
            wait_until(lambda: d.status()["state"] in ("offline", "connecting"), 30,
                       what="offline after broker stop %d" % i)
            platform.broker_start()
            t0 = time.monotonic()
            # Backoff after a fresh outage: first retry within 2 s, the next
            # within 4 s, and a CONNECT at most once a second.
            d.wait_online(timeout=15)
            assert time.monotonic() - t0 < 15
        out = d.output()
        assert out.count("Online as %s" % thing) >= 21
        assert "Offline:" in out
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0


def test_register_rejected_then_retried(bus, workdir, platform, basic_config):
    platform.reject_next("register", error_code="InvalidParameters", status_code=400,
                         message="SerialNumber is not allowed")
    d = lodevtest.Daemon(bus, workdir, basic_config).start()
    try:
        wait_until(lambda: "SerialNumber is not allowed" in d.status()["last_error"], 30,
                   what="LastError with the rejection")
        err = d.status()["last_error"]
        assert "RegisterThing rejected: 400 InvalidParameters" in err
        assert "RegisterThing rejected: 400 InvalidParameters: SerialNumber is not allowed" in d.output()
        # It retries with backoff and gets through.
        d.wait_online(timeout=30)
        assert d.status()["last_error"] == ""
    finally:
        d.stop()


def test_expired_ownership_token_starts_over(bus, workdir, platform, basic_config):
    """A token that expired is never reused: a new certificate is asked for."""
    certs_before = len(platform.certificates())
    platform.set_ttl(token=0)
    d = lodevtest.Daemon(bus, workdir, basic_config).start()
    try:
        wait_until(lambda: "RegisterThing rejected" in d.status()["last_error"], 30,
                   what="the expired token rejection")
        platform.set_ttl(token=3600)
        d.wait_online(timeout=30)
        # At least two certificates: the first attempt's and the retry's.
        assert len(platform.certificates()) >= certs_before + 2
    finally:
        platform.set_ttl(token=3600)
        d.stop()


@pytest.mark.parametrize("stall", ["create", "register", None])
def test_sigkill_during_provisioning(bus, workdir, platform, basic_config, stall):
    """Killed with SIGKILL while provisioning, lodevd leaves no half
    identity and a restart provisions cleanly."""
    rounds = 3
    for i in range(rounds):
        if stall:
            platform.ignore_next(stall)
        d = lodevtest.Daemon(bus, workdir, basic_config)
        log_start = os.path.getsize(d.log_path) if os.path.exists(d.log_path) else 0
        d.start()
        if stall:
            # The request was sent and the platform keeps quiet: kill now.
            step = "creating the certificate" if stall == "create" else "registering the thing"
            wait_until(lambda: "Provisioning: %s" % step in d.output()[log_start:], 20,
                       what=step)
        else:
            time.sleep(random.uniform(0.0, 0.3))
        d.stop(signal.SIGKILL)
        ident = identity_dir(workdir)
        if os.path.lexists(ident):
            # Whatever exists is complete.
            for name in ("device.pem", "device.key", "thing-name"):
                assert os.path.exists(os.path.join(ident, name)), name
        assert not os.path.exists(os.path.join(workdir, "state", "identity.tmp"))
    d = lodevtest.Daemon(bus, workdir, basic_config).start()
    try:
        d.wait_online(timeout=60)
        assert d.status()["thing_name"] == stored_thing(workdir)
        dirs = [n for n in os.listdir(os.path.join(workdir, "state")) if n.startswith("identity-")]
        assert len(dirs) == 1, dirs
    finally:
        assert d.stop() == 0


def make_ca(cn):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_server_cert(ca_key, ca_cert, san_dns):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, san_dns)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(san_dns)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def pem(obj):
    from cryptography.hazmat.primitives import serialization

    if hasattr(obj, "private_bytes"):
        return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    return obj.public_bytes(serialization.Encoding.PEM).decode()


class TlsServer:
    """A TLS endpoint on 127.0.0.1 that completes handshakes when the client
    accepts its certificate, counting the handshakes that fail."""

    def __init__(self, workdir, key, cert):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        kp, cp = os.path.join(workdir, "srv.key"), os.path.join(workdir, "srv.pem")
        with open(kp, "w") as f:
            f.write(pem(key))
        with open(cp, "w") as f:
            f.write(pem(cert))
        self.ctx.load_cert_chain(cp, kp)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.failed = 0
        self.completed = 0
        self.stop_flag = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop_flag:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            conn.settimeout(5)
            try:
                s = self.ctx.wrap_socket(conn, server_side=True)
                self.completed += 1
                s.close()
            except (ssl.SSLError, OSError):
                self.failed += 1
                conn.close()

    def close(self):
        self.stop_flag = True
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("case", ["wrong-ca", "wrong-host"])
def test_server_certificate_refused(bus, workdir, platform, case):
    from cryptography import x509

    if case == "wrong-ca":
        # A certificate for the right name, from a CA lodevd does not trust.
        other_key, other_ca = make_ca("Some Other CA")
        key, cert = make_server_cert(other_key, other_ca, "localhost")
    else:
        # Signed by the trusted CA, but for another host name.
        with open(os.path.join(platform.workdir, "ca.key"), "rb") as f:
            from cryptography.hazmat.primitives import serialization
            ca_key = serialization.load_pem_private_key(f.read(), None)
        with open(platform.ca_file, "rb") as f:
            ca_cert = x509.load_pem_x509_certificate(f.read())
        key, cert = make_server_cert(ca_key, ca_cert, "other.example")
    server = TlsServer(workdir, key, cert)
    config = os.path.join(workdir, "lodevd.conf")
    lodevtest.write_device_config(config, workdir, platform,
                                  platform={"endpoint": "localhost", "port": server.port})
    d = lodevtest.Daemon(bus, workdir, config).start()
    try:
        wait_until(lambda: server.failed >= 2, 30, what="refused handshakes")
        st = d.status()
        assert st["state"] != "online"
        assert server.completed == 0
        assert "certificate verify failed" in st["last_error"], st["last_error"]
        assert not os.path.lexists(identity_dir(workdir))
    finally:
        d.stop()
        server.close()


def test_bad_payloads_dropped(bus, workdir, platform, basic_config):
    """Garbage on subscribed topics is logged and dropped, never a crash."""
    import subprocess

    d = lodevtest.Daemon(bus, workdir, basic_config).start()
    try:
        d.wait_online()
        thing = d.status()["thing_name"]
        ident = identity_dir(workdir)
        payloads = [b"\x00\xff garbage", b"{", b"[1,2,3]", b'{"errorCode": 5}',
                    b'{"uploadUrl": 42}', b"x" * 120000]
        topics = ["%s/FHIRIngest/rejected" % thing, thing, "%s/CreateFileUploadLink/rejected" % thing,
                  "$aws/things/%s/jobs/notify-next" % thing]
        # Publish as another connection of the same thing would be refused
        # (client id = thing name), so the emulator injects on the device's topics.
        for t in topics:
            for p in payloads:
                platform.inject(t, p)
        wait_until(lambda: d.output().count("malformed answer") >= len(payloads), 20,
                   what="every malformed FHIRIngest answer logged")
        assert d.proc.poll() is None
        assert d.status()["state"] == "online"
    finally:
        assert d.stop() == 0


def test_unresolvable_endpoint_does_not_block(bus, workdir, platform):
    """The endpoint's name is looked up off the loop: while DNS fails (or
    takes its time), lodevd keeps answering on the bus."""
    config = os.path.join(workdir, "lodevd.conf")
    lodevtest.write_device_config(config, workdir, platform,
                                  platform={"endpoint": "lodev-no-such-host.invalid"})
    d = lodevtest.Daemon(bus, workdir, config).start()
    try:
        deadline = time.monotonic() + 20
        slowest = 0.0
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            st = d.status()
            slowest = max(slowest, time.monotonic() - t0)
            if "cannot resolve lodev-no-such-host.invalid" in st["last_error"]:
                break
            time.sleep(0.1)
        assert "cannot resolve lodev-no-such-host.invalid" in st["last_error"], st
        assert st["state"] == "provisioning"
        assert slowest < 2.0, "a status call took %.1f s" % slowest
    finally:
        assert d.stop() == 0


def lodev_member_cmd(*args):
    """A command line that runs as user nobody in group lodev."""
    return lodevtest.member_cmd("nobody", *args)


def test_provision_force_is_root_only(bus, workdir, platform, basic_config):
    """The policy lets group lodev call methods; lodevd itself checks that a
    forced re-provisioning comes from root."""
    import shutil
    import subprocess
    d = lodevtest.Daemon(bus, workdir, basic_config).start()
    client = lodevtest.public_tempdir("lodevctl-")
    try:
        d.wait_online()
        thing = stored_thing(workdir)
        certs = len(platform.certificates())
        lib = os.path.join(lodevtest.BUILD_DIR, "lib")
        for name in os.listdir(lib):
            if name.startswith("liblodev.so") and not name.endswith(".p"):
                shutil.copy(os.path.join(lib, name), client, follow_symlinks=False)
        shutil.copy(lodevtest.LODEVCTL, client)
        env = bus.env()
        env["LD_LIBRARY_PATH"] = client
        r = subprocess.run(lodev_member_cmd(os.path.join(client, "lodevctl"), "provision",
                                            "--force"),
                           env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "root only" in r.stderr, r.stderr
        # Without force a member gets the current thing name, and nothing is asked.
        r = subprocess.run(lodev_member_cmd(os.path.join(client, "lodevctl"), "provision"),
                           env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == thing
        assert len(platform.certificates()) == certs
        assert stored_thing(workdir) == thing
    finally:
        shutil.rmtree(client, ignore_errors=True)
        d.stop()


def test_forced_provisioning_keeps_the_backoff(bus, workdir, platform, basic_config):
    """However often root asks, the claim certificate (shared by the fleet)
    never reaches the platform sooner than the backoff allows: the first
    boot, then two forced runs, each at least one backoff window after the
    one before (1-2 s, then 2-4 s)."""
    before = {c["certificateId"] for c in platform.certificates()}
    d = lodevtest.Daemon(bus, workdir, basic_config).start()
    try:
        d.wait_online()
        for _ in range(2):
            r = lodevtest.lodevctl(bus, "provision", "--force", timeout=120)
            assert r.returncode == 0, r.stderr
        certs = platform.certificates()
        issued = sorted(c["issuedAt"] for c in certs if c["certificateId"] not in before)
        assert len(issued) == 3, issued
        gaps = [b - a for a, b in zip(issued, issued[1:])]
        print("\ngaps between certificate requests: %s" % ["%.2f s" % g for g in gaps])
        # Attempt starts are 1 and 2 s apart at least; issue times carry some connect jitter.
        assert gaps[0] >= 0.7 and gaps[1] >= 1.7, gaps
    finally:
        d.stop()


FAULT_INJECT = os.path.join(lodevtest.BUILD_DIR, "tests", "liblodev-fault-inject.so")


def test_unreadable_identity_is_retried_not_replaced(bus, workdir, platform, basic_config):
    """An error that may pass (EIO) while reading the stored identity never
    gives the gateway a new thing name: lodevd says so, keeps the identity,
    contacts no one with the claim certificate, and reads it again."""
    d = lodevtest.Daemon(bus, workdir, basic_config).start()
    d.wait_online()
    thing = stored_thing(workdir)
    assert d.stop() == 0
    certs = len(platform.certificates())
    flag = os.path.join(workdir, "fault")
    open(flag, "w").close()
    env = {**lodevtest.preload_env(FAULT_INJECT), "LODEV_FAULT_PATH": "/identity/thing-name",
           "LODEV_FAULT_FLAG": flag, "LODEV_FAULT_ERRNO": "5"}
    try:
        seen = len(d.output())
        d.start(extra_env=env)
        wait_until(lambda: "cannot read the identity" in d.status()["last_error"], 20,
                   what="LastError to name the unreadable identity")
        time.sleep(3)  # several retries
        assert d.status()["state"] != "online"
        assert len(platform.certificates()) == certs, "provisioned a new identity"
        assert "Provisioning with claim" not in d.output()[seen:]
        os.unlink(flag)
        d.wait_online(timeout=30)
        assert d.status()["thing_name"] == thing
        assert stored_thing(workdir) == thing
        assert len(platform.certificates()) == certs
    finally:
        if os.path.exists(flag):
            os.unlink(flag)
        d.stop()


def test_no_platform_contact_when_identity_cannot_be_stored(bus, workdir, platform):
    """A state directory without room for an identity: the platform would
    issue a certificate and a thing for every attempt, so none is made."""
    import subprocess
    state = os.path.join(workdir, "state")
    os.makedirs(state, mode=0o700)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", state],
                       capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("CI") == "true":
            raise AssertionError("cannot mount a tmpfs: " + r.stderr)
        pytest.skip("cannot mount a tmpfs: " + r.stderr)
    config = os.path.join(workdir, "lodevd.conf")
    lodevtest.write_device_config(config, workdir, platform)
    certs = len(platform.certificates())
    d = lodevtest.Daemon(bus, workdir, config)
    try:
        d.start()
        wait_until(lambda: "cannot take a new identity" in d.status()["last_error"], 20,
                   what="LastError to say why")
        time.sleep(3)  # the first retries
        assert len(platform.certificates()) == certs
        assert d.status()["state"] == "provisioning"
    finally:
        d.stop()
        subprocess.run(["umount", "-l", state])
