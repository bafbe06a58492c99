# SPDX-License-Identifier: MIT
"""daemon/http.c through tests/tools/lodev-http against small HTTP(S) servers on
127.0.0.1 that record what arrives: presigned-URL style PUTs, resumed GETs,
error answers, broken and stalled connections, TLS verification, rate caps and
proxies. Every server is stopped at the end of its test, every run is bounded."""

import hashlib
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from http.server import ThreadingHTTPServer

import pytest

import lodevtest

LODEV_HTTP = os.path.join(lodevtest.BUILD_DIR, "tests", "lodev-http")
MiB = 1024 * 1024

S3_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message>"
    b"<RequestId>4442587FB7D0A2F9</RequestId></Error>"
)


class Handler(lodevtest.AppHandler):
    def read_body(self, limit=None):
        """Reads the request body (Content-Length), at most limit bytes."""
        n = int(self.headers.get("Content-Length", "0"))
        if limit is not None:
            n = min(n, limit)
        h = hashlib.sha256()
        got = 0
        while got < n:
            chunk = self.rfile.read(min(65536, n - got))
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
        return got, h.hexdigest()

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server:
    """A threaded HTTP(S) server on 127.0.0.1 with one behaviour per path."""

    def __init__(self, tls=None):
        self.requests = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.blob = os.urandom(MiB + 12345)
        self.honour_range = True
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.app = self
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls["cert"], tls["key"])
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1})
        self.thread.start()

    def url(self, path, scheme="http"):
        return "%s://127.0.0.1:%d%s" % (scheme, self.port, path)

    def stop(self):
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)

    def record(self, h, **kw):
        r = {
            "method": h.command,
            "path": h.path,
            "headers": {k.lower(): v for k, v in h.headers.items()},
        }
        r.update(kw)
        with self.lock:
            self.requests.append(r)
        return r

    def handle(self, h):
        path = h.path
        if h.command == "PUT":
            if path == "/put-close":
                # Take a part of the body, then drop the connection.
                got, _ = h.read_body(limit=256 * 1024)
                self.record(h, body_len=got)
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
                return
            got, digest = h.read_body()
            self.record(h, body_len=got, sha256=digest)
            if path == "/s3-403":
                h.answer(403, S3_DENIED, [("Content-Type", "application/xml")])
            elif path == "/error-500":
                h.answer(500, b"internal error", [("Content-Type", "text/plain")])
            else:
                h.answer(200, headers=[("ETag", '"%s"' % digest[:32])])
            return

        self.record(h)
        if path == "/get-close":
            h.send_response(200)
            h.send_header("Content-Length", str(MiB))
            h.end_headers()
            h.wfile.write(self.blob[: 64 * 1024])
            h.wfile.flush()
            h.close_connection = True
        elif path == "/stall":
            h.send_response(200)
            h.send_header("Content-Length", str(MiB))
            h.end_headers()
            h.wfile.write(self.blob[:1024])
            h.wfile.flush()
            self.stopping.wait(60)
            h.close_connection = True
        elif path == "/wrong-range":
            # A 206, but for the whole resource rather than the tail asked for.
            h.answer(
                206,
                self.blob,
                [("Content-Range", "bytes 0-%d/%d" % (len(self.blob) - 1, len(self.blob)))],
            )
        elif path == "/blob":
            rng = h.headers.get("Range")
            if rng and self.honour_range:
                assert rng.startswith("bytes=") and rng.endswith("-")
                start = int(rng[len("bytes=") : -1])
                body = self.blob[start:]
                h.answer(
                    206,
                    body,
                    [
                        ("Content-Range", "bytes %d-%d/%d" % (start, len(self.blob) - 1, len(self.blob))),
                        ("Content-Type", "application/octet-stream"),
                    ],
                )
            else:
                h.answer(200, self.blob, [("Content-Type", "application/octet-stream")])
        else:
            h.answer(404, b"not found")


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A private CA and a certificate for 127.0.0.1 signed by it."""
    lodevtest.require_tool("openssl")
    d = tmp_path_factory.mktemp("tls")
    ca_cnf = d / "ca.cnf"
    ca_cnf.write_text(
        "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\nprompt = no\n"
        "[dn]\nCN = lodev test CA\n"
        "[v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\n"
    )
    ext = d / "server.ext"
    ext.write_text(
        "basicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\n"
    )

    def run(*args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True, timeout=60, cwd=d)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-config", "ca.cnf")
    run("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "server.ext", "-out", "server.pem",
    )
    return {"ca": str(d / "ca.pem"), "cert": str(d / "server.pem"), "key": str(d / "server.key")}


def lodev_http(*args, timeout=60, env=None):
    """Runs the tool; returns (result dict, wall-clock seconds, exit status)."""
    start = time.monotonic()
    p = subprocess.run(
        [LODEV_HTTP] + [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    elapsed = time.monotonic() - start
    # Under ASan/UBSan a finding may share the exit status of a failed transfer.
    for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
        assert marker not in p.stderr, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, "stdout: %r, stderr: %r" % (p.stdout, p.stderr)
    return json.loads(lines[0]), elapsed, p.returncode


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_put_arrives_intact(server, tmp_path):
    f = tmp_path / "upload.bin"
    f.write_bytes(os.urandom(5 * MiB))
    ctype = "application/vnd.lifeomic.test+octet-stream; charset=binary"
    r, _, rc = lodev_http("--allow-http", "put", server.url("/upload/file.bin?X-Amz-Signature=abc"), f, ctype)
    assert rc == 0, r
    assert r["error"] == 0 and r["status"] == 200 and r["body"] is None
    assert r["bytes"] == 5 * MiB
    assert r["progress_calls"] > 0
    # Every socket of the process, libcurl's internal ones included.
    assert r["sockets_seen"] > 0 and r["sockets_cloexec"], r

    (req,) = server.requests
    assert req["method"] == "PUT"
    assert req["path"] == "/upload/file.bin?X-Amz-Signature=abc"
    assert req["headers"]["content-type"] == ctype
    assert req["headers"]["content-length"] == str(5 * MiB)
    assert "transfer-encoding" not in req["headers"]
    assert "expect" not in req["headers"]
    assert req["headers"]["user-agent"].startswith("lodevd/")
    # The tool moves the fd's offset half-way first: the body still starts at 0.
    assert req["body_len"] == 5 * MiB
    assert req["sha256"] == sha256_file(f)


def test_put_empty_file(server, tmp_path):
    f = tmp_path / "empty"
    f.write_bytes(b"")
    r, _, rc = lodev_http("--allow-http", "put", server.url("/upload/empty"), f, "text/plain")
    assert rc == 0 and r["status"] == 200 and r["bytes"] == 0
    (req,) = server.requests
    assert req["headers"]["content-length"] == "0"
    assert "transfer-encoding" not in req["headers"]


def test_put_403_returns_s3_body(server, tmp_path):
    f = tmp_path / "upload.bin"
    f.write_bytes(os.urandom(100000))
    r, _, rc = lodev_http("--allow-http", "put", server.url("/s3-403"), f, "text/csv")
    assert rc == 1
    assert r["error"] == 0 and r["status"] == 403
    assert r["body"] == S3_DENIED.decode()
    assert "<Code>AccessDenied</Code>" in r["body"]


def test_put_500(server, tmp_path):
    f = tmp_path / "upload.bin"
    f.write_bytes(os.urandom(1000))
    r, _, rc = lodev_http("--allow-http", "put", server.url("/error-500"), f, "text/plain")
    assert rc == 1
    assert r["error"] == 0 and r["status"] == 500 and r["body"] == "internal error"


def test_put_connection_closed_mid_body(server, tmp_path):
    f = tmp_path / "upload.bin"
    f.write_bytes(os.urandom(4 * MiB))
    r, _, rc = lodev_http("--allow-http", "put", server.url("/put-close"), f, "text/plain")
    assert rc == 1
    assert r["error"] < 0 and r["error_name"] in ("ECONNRESET", "EPIPE"), r
    assert r["error_text"]
    assert r["status"] == 0


def test_get_connection_closed_mid_body(server, tmp_path):
    out = tmp_path / "out"
    r, _, rc = lodev_http("--allow-http", "get", server.url("/get-close"), out)
    assert rc == 1
    assert r["error_name"] == "ECONNRESET", r
    assert r["status"] == 200
    assert r["bytes"] == 64 * 1024
    assert "remaining" in r["error_text"]


def test_get_stalled_times_out(server, tmp_path):
    out = tmp_path / "out"
    r, elapsed, rc = lodev_http("--allow-http", "--low-speed-time", 2, "get", server.url("/stall"), out, timeout=30)
    assert rc == 1
    assert r["error_name"] == "ETIMEDOUT", r
    assert r["bytes"] == 1024
    assert 1.5 < elapsed < 15


def test_connection_refused(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r, _, rc = lodev_http("--allow-http", "get", "http://127.0.0.1:%d/x" % port, tmp_path / "out")
    assert rc == 1
    assert r["error_name"] == "ECONNREFUSED" and r["status"] == 0


def test_get_resumes_with_range(server, tmp_path):
    out = tmp_path / "out"
    offset = 300000
    out.write_bytes(server.blob[:offset])
    r, _, rc = lodev_http("--allow-http", "--offset", offset, "get", server.url("/blob"), out)
    assert rc == 0, r
    assert r["status"] == 206 and r["range_honoured"] is True
    assert r["first_data_offset"] == offset
    assert r["bytes"] == len(server.blob) - offset
    assert out.read_bytes() == server.blob
    (req,) = server.requests
    assert req["headers"]["range"] == "bytes=%d-" % offset


def test_get_range_ignored_restarts_from_zero(server, tmp_path):
    server.honour_range = False
    out = tmp_path / "out"
    offset = 300000
    out.write_bytes(b"\0" * offset)  # stale: must be replaced, not kept
    r, _, rc = lodev_http("--allow-http", "--offset", offset, "get", server.url("/blob"), out)
    assert rc == 0, r
    assert r["status"] == 200 and r["range_honoured"] is False
    assert r["first_data_offset"] == 0
    assert r["bytes"] == len(server.blob)
    assert out.read_bytes() == server.blob


def test_get_206_for_another_range_is_refused(server, tmp_path):
    out = tmp_path / "out"
    out.write_bytes(server.blob[:1000])
    r, _, rc = lodev_http("--allow-http", "--offset", 1000, "get", server.url("/wrong-range"), out)
    assert rc == 1
    assert r["error_name"] == "EBADMSG", r
    assert r["bytes"] == 0 and r["first_data_offset"] is None


def test_get_whole_and_404(server, tmp_path):
    out = tmp_path / "out"
    r, _, rc = lodev_http("--allow-http", "get", server.url("/blob"), out)
    assert rc == 0 and r["status"] == 200 and r["range_honoured"] is False
    assert out.read_bytes() == server.blob
    assert r["progress_calls"] > 0
    r, _, rc = lodev_http("--allow-http", "get", server.url("/missing"), tmp_path / "out2")
    assert rc == 1 and r["error"] == 0 and r["status"] == 404 and r["body"] == "not found"
    assert r["bytes"] == 0 and r["progress_calls"] == 0


def test_plain_http_refused_by_default(server, tmp_path):
    f = tmp_path / "upload.bin"
    f.write_bytes(b"x" * 1000)
    r, _, rc = lodev_http("put", server.url("/upload/x"), f, "text/plain")
    assert rc == 1
    assert r["started"] is False and r["error_name"] == "EPROTONOSUPPORT", r
    r, _, rc = lodev_http("get", server.url("/blob"), tmp_path / "out")
    assert r["started"] is False and r["error_name"] == "EPROTONOSUPPORT", r
    r, _, rc = lodev_http("--allow-http", "get", "ftp://127.0.0.1:%d/blob" % server.port, tmp_path / "out")
    assert r["started"] is False and r["error_name"] == "EPROTONOSUPPORT", r
    assert server.requests == []


def test_https_with_private_ca(tls, tmp_path):
    s = Server(tls=tls)
    try:
        f = tmp_path / "upload.bin"
        f.write_bytes(os.urandom(200000))
        r, _, rc = lodev_http("--ca", tls["ca"], "put", s.url("/upload/x", "https"), f, "text/plain")
        assert rc == 0, r
        assert r["status"] == 200
        assert s.requests[0]["sha256"] == sha256_file(f)

        out = tmp_path / "out"
        r, _, rc = lodev_http("--ca", tls["ca"], "get", s.url("/blob", "https"), out)
        assert rc == 0 and out.read_bytes() == s.blob

        # Without the CA the server is not trusted, and nothing is sent.
        n = len(s.requests)
        r, _, rc = lodev_http("put", s.url("/upload/y", "https"), f, "text/plain")
        assert rc == 1
        assert r["error_name"] == "EPROTO", r
        assert "certificate" in r["error_text"].lower()
        assert len(s.requests) == n
    finally:
        s.stop()


def test_max_rate_limits_put(server, tmp_path):
    f = tmp_path / "upload.bin"
    f.write_bytes(os.urandom(MiB))
    rate = 256 * 1024
    r, elapsed, rc = lodev_http("--allow-http", "--max-rate", rate, "put", server.url("/upload/slow"), f, "text/plain")
    assert rc == 0, r
    assert server.requests[0]["sha256"] == sha256_file(f)
    # A lower bound only: a slow machine may take longer, never shorter.
    assert elapsed >= 0.7 * MiB / rate, elapsed


def test_cancel_inside_callbacks(server, tmp_path):
    # From data(): the transfer stops, no callback follows.
    r, _, rc = lodev_http("--allow-http", "--max-rate", 4 * MiB, "--cancel-after", 65536, "get", server.url("/blob"), tmp_path / "out")
    assert rc == 0, r
    assert r["canceled"] is True and r["finished"] is False
    # From progress() of a PUT.
    f = tmp_path / "upload.bin"
    f.write_bytes(os.urandom(5 * MiB))
    r, _, rc = lodev_http(
        "--allow-http", "--max-rate", 4 * MiB, "--cancel-after", MiB, "put", server.url("/upload/c"), f, "text/plain"
    )
    assert rc == 0, r
    assert r["canceled"] is True and r["finished"] is False


def test_proxy_used_when_configured(server, tmp_path):
    proxy = Server()
    try:
        out = tmp_path / "out"
        r, _, rc = lodev_http("--allow-http", "--proxy", proxy.url(""), "get", server.url("/blob"), out)
        # The proxy answers itself (404): the request went there, in absolute form.
        assert r["status"] == 404, r
        (req,) = proxy.requests
        assert req["path"] == server.url("/blob")
        assert server.requests == []
    finally:
        proxy.stop()


def test_proxy_environment_ignored(server, tmp_path):
    proxy = Server()
    try:
        env = dict(os.environ)
        for k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            env[k] = proxy.url("")
        env.pop("no_proxy", None)
        env.pop("NO_PROXY", None)
        r, _, rc = lodev_http("--allow-http", "get", server.url("/blob"), tmp_path / "out", env=env)
        assert rc == 0 and r["status"] == 200, r
        assert proxy.requests == []
        assert len(server.requests) == 1
    finally:
        proxy.stop()


# --- The transfer helper misbehaving: each is a network error of that attempt, and the
# helper's whole process group is gone afterwards. ---


def process_gone(pid):
    """The helper was reaped: no process, not even a zombie, under that id."""
    return not os.path.exists("/proc/%d" % pid)


def test_helper_killed_mid_transfer(server, tmp_path):
    out = tmp_path / "out"
    # SIGABRT, as an assertion or abort() would end it (a sanitizer build would report a
    # SIGSEGV sent from outside as a finding of its own).
    r, _, rc = lodev_http("--allow-http", "--max-rate", 256 * 1024, "--signal-helper", "ABRT",
                          "--signal-after", 100000, "get", server.url("/blob"), out)
    assert rc == 1
    assert r["error_name"] == "ECONNABORTED", r
    assert "killed by signal ABRT" in r["error_text"]
    assert r["finished"] and process_gone(r["helper_pid"])


def test_helper_hung_past_its_timeout(server, tmp_path):
    out = tmp_path / "out"
    # Stopped, it reports nothing: after 2 s of silence it is killed.
    r, elapsed, rc = lodev_http("--allow-http", "--max-rate", 256 * 1024, "--silence-timeout", 2,
                                "--signal-helper", "STOP", "--signal-after", 100000,
                                "get", server.url("/blob"), out, timeout=30)
    assert rc == 1
    assert r["error_name"] == "ETIMEDOUT", r
    assert "stopped reporting" in r["error_text"]
    assert 1.5 < elapsed < 15
    assert process_gone(r["helper_pid"])


@pytest.mark.parametrize("garbage", [
    "printf 'answer 200 0 0\\nthis is not a report\\n' >&3; sleep 30",
    "printf 'progress 1 2\\n\\177ELF\\002\\n' >&3; sleep 30",
    "head -c 20000 /dev/zero | tr '\\0' x >&3; sleep 30",  # a line that never ends
    "printf 'done 0 0\\nprogress 1 1\\n' >&3; sleep 30",  # something after done
    "printf 'answer 200 0 0\\nprogress 5' >&3",  # cut in the middle of a report
    "exit 0",  # nothing at all
])
def test_helper_writing_garbage(tmp_path, garbage):
    fake = tmp_path / "fake-helper"
    fake.write_text("#!/bin/sh\n" + garbage + "\n")
    fake.chmod(0o755)
    r, elapsed, rc = lodev_http("--allow-http", "--helper", fake, "get", "http://127.0.0.1:9/x",
                                tmp_path / "out", timeout=30)
    assert rc == 1
    assert r["error_name"] == "ECONNABORTED", r
    assert elapsed < 10  # killed at once, not left to sleep
    assert process_gone(r["helper_pid"])


def test_cancel_kills_the_helper(server, tmp_path):
    r, _, rc = lodev_http("--allow-http", "--max-rate", MiB, "--cancel-after", 65536,
                          "get", server.url("/blob"), tmp_path / "out")
    assert rc == 0, r
    assert r["canceled"] is True and r["finished"] is False
    assert process_gone(r["helper_pid"])


def test_download_hashed_and_synced_through_the_helper(server, tmp_path):
    out = tmp_path / "out"
    offset = 300000
    out.write_bytes(server.blob[:offset])
    r, _, rc = lodev_http("--allow-http", "--sha256", "--sync-bytes", 256 * 1024, "--max-rate", 2 * MiB,
                          "--offset", offset, "get", server.url("/blob"), out)
    assert rc == 0, r
    assert r["sha256"] == hashlib.sha256(server.blob).hexdigest()
    assert r["synced"] == len(server.blob) and r["synced_calls"] >= 1
