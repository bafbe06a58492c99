# SPDX-License-Identifier: MIT
"""lodevd-transfer, the transfer helper, run on its own as lodevd runs it: a clean environment,
its request on fd 3 (a socket), the file on fd 4, its reports read back and parsed. Against a
small HTTP(S) server on 127.0.0.1 that can lie about Content-Length, redirect to a refused
scheme, cut the connection mid-body or ignore ranges. Every server stops with its test; every
run is bounded in time."""

import hashlib
import os
import socket
import struct
import subprocess
import threading
import time
from http.server import ThreadingHTTPServer

import pytest

import lodevtest

HELPER = os.path.join(lodevtest.BUILD_DIR, "daemon", "lodevd-transfer")
MiB = 1024 * 1024


def sanitized_build():
    """A build with AddressSanitizer: the helper has no seccomp filter there (see
    daemon/transfer-sandbox.h)."""
    import json

    with open(os.path.join(lodevtest.BUILD_DIR, "meson-info", "intro-buildoptions.json")) as f:
        options = {o["name"]: o["value"] for o in json.load(f)}
    return "address" in str(options.get("b_sanitize", ""))


class Handler(lodevtest.AppHandler):
    def head(self, status, length, extra=()):
        self.send_response(status)
        for k, v in extra:
            self.send_header(k, v)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def reset(self):
        """Closes with an RST: the connection is cut, not ended."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


class Server:
    def __init__(self):
        self.blob = os.urandom(3 * MiB + 4321)
        self.requests = []
        self.honour_range = True
        self.stopping = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.app = self
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1})
        self.thread.start()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def stop(self):
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)

    def handle(self, h):
        req = {"method": h.command, "path": h.path, "headers": {k.lower(): v for k, v in h.headers.items()}}
        self.requests.append(req)
        blob, path = self.blob, h.path
        if h.command == "PUT":
            n = int(h.headers.get("Content-Length", "0"))
            body = h.rfile.read(n)
            req["sha256"], req["body_len"] = hashlib.sha256(body).hexdigest(), len(body)
            if path == "/denied":
                err = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
                h.head(403, len(err), [("Content-Type", "application/xml")])
                h.wfile.write(err)
            else:
                h.head(200, 0)
            return
        if path == "/blob":
            rng = h.headers.get("Range")
            if rng and self.honour_range:
                start = int(rng[len("bytes="):-1])
                h.head(206, len(blob) - start, [("Content-Range", "bytes %d-%d/%d" % (start, len(blob) - 1, len(blob)))])
                h.wfile.write(blob[start:])
            else:
                h.head(200, len(blob))
                h.wfile.write(blob)
        elif path == "/claims-more":
            # Content-Length promises more than comes, then the server closes.
            h.head(200, len(blob))
            h.wfile.write(blob[: MiB])
            h.wfile.flush()
            h.close_connection = True
        elif path == "/claims-less":
            # Content-Length says 1 MiB, the server sends the whole blob after it.
            h.head(200, MiB)
            h.wfile.write(blob)
            h.wfile.flush()
            h.close_connection = True
        elif path == "/cut":
            h.head(200, len(blob))
            h.wfile.write(blob[: 2 * MiB])
            h.wfile.flush()
            time.sleep(0.2)
            h.reset()
        elif path.startswith("/redirect-"):
            target = {"/redirect-file": "file:///etc/passwd", "/redirect-ftp": "ftp://127.0.0.1/x",
                      "/redirect-ok": "/blob"}[path]
            h.head(302, 0, [("Location", target)])
        elif path == "/wrong-range":
            h.head(206, len(blob), [("Content-Range", "bytes 0-%d/%d" % (len(blob) - 1, len(blob)))])
            h.wfile.write(blob)
        elif path == "/stall":
            h.head(200, len(blob))
            h.wfile.write(blob[:1024])
            h.wfile.flush()
            self.stopping.wait(30)
            h.close_connection = True
        else:
            h.head(404, 9)
            h.wfile.write(b"not found")


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def unescape(s):
    out, i = bytearray(), 0
    while i < len(s):
        if s[i] == "%":
            out.append(int(s[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(s[i]))
            i += 1
    return out.decode()


def escape(s):
    return "".join(c if 0x21 <= ord(c) <= 0x7E and c != "%" else "%%%02X" % ord(c) for c in s)


class Run:
    """One helper run: its reports, exit status and what it was while it ran."""

    def __init__(self, request, path, write=True, env=None, raw=None, watch=None, timeout=60):
        t0 = time.monotonic()
        self.proc, a = lodevtest.spawn_transfer_helper(path, writable=write, env=env, helper=HELPER)
        if raw is None:
            raw = "".join("%s %s\n" % (k, escape(str(v))) for k, v in request.items()) + "end\n"
        a.sendall(raw.encode())
        a.shutdown(socket.SHUT_WR)
        a.settimeout(timeout)
        data = b""
        watched = False
        while True:
            d = a.recv(65536)
            if not d:
                break
            data += d
            if watch and not watched and b"answer" in data:
                watch(self.proc.pid)
                watched = True
        a.close()
        self.elapsed = time.monotonic() - t0
        out, err = self.proc.communicate(timeout=timeout)
        self.stderr = err.decode()
        for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            assert marker not in self.stderr, self.stderr
        self.status = self.proc.returncode
        self.lines = data.decode().splitlines()
        self.reports = [l.split(" ") for l in self.lines]
        assert self.reports and self.reports[-1][0] == "done", self.lines
        done = self.reports[-1]
        self.error = int(done[1])
        self.bytes = int(done[2])
        self.text = unescape(done[3]) if len(done) > 3 else None

    def first(self, kind):
        for r in self.reports:
            if r[0] == kind:
                return r
        return None

    def all(self, kind):
        return [r for r in self.reports if r[0] == kind]

    def synced(self):
        s = self.all("synced")
        return int(s[-1][1]) if s else None


def get(server, path, out, **kw):
    req = {"method": "GET", "url": server.url(path), "allow-http": 1, "sync-bytes": MiB, "sync-ms": 1000}
    req.update({k.replace("_", "-"): v for k, v in kw.items() if k not in ("env", "watch", "timeout")})
    return Run(req, out, env=kw.get("env"), watch=kw.get("watch"), timeout=kw.get("timeout", 60))


def test_download_hashes_and_syncs(server, tmp_path):
    out = tmp_path / "fw"
    # Paced, so that the syncs have the time to come between the bytes.
    r = get(server, "/blob", out, sha256=1, max_size=len(server.blob), max_rate=4 * MiB)
    assert r.status == 0 and r.error == 0, r.lines
    assert r.first("answer") == ["answer", "200", "0", str(len(server.blob))]
    assert out.read_bytes() == server.blob
    assert r.bytes == len(server.blob)
    # Synced more than once (every MiB), going up, ending at the whole file.
    offsets = [int(s[1]) for s in r.all("synced")]
    assert len(offsets) >= 2 and offsets == sorted(offsets) and offsets[-1] == len(server.blob)
    assert r.first("sha256") == ["sha256", sha256(server.blob)]
    assert r.all("progress")[-1] == ["progress", str(len(server.blob)), str(len(server.blob))]
    assert server.requests[0]["headers"]["user-agent"].startswith("lodevd/")


def test_resume_rehashes_the_prefix(server, tmp_path):
    out = tmp_path / "fw"
    offset = 1234567
    out.write_bytes(server.blob[:offset])
    r = get(server, "/blob", out, sha256=1, offset=offset)
    assert r.error == 0, r.lines
    assert server.requests[0]["headers"]["range"] == "bytes=%d-" % offset
    assert r.first("answer") == ["answer", "206", str(offset), str(len(server.blob))]
    assert r.bytes == len(server.blob) - offset
    assert out.read_bytes() == server.blob
    # The digest covers the whole file, the prefix hashed by the helper itself.
    assert r.first("sha256")[1] == sha256(server.blob)


def test_digest_mismatch_is_reported_as_found(server, tmp_path):
    """A prefix on disk that is not the server's: the helper hashes what the file holds, so
    lodevd sees the mismatch (the decision is lodevd's)."""
    out = tmp_path / "fw"
    offset = MiB
    prefix = bytearray(server.blob[:offset])
    prefix[1000] ^= 0xFF
    out.write_bytes(bytes(prefix))
    r = get(server, "/blob", out, sha256=1, offset=offset)
    assert r.error == 0, r.lines
    whole = out.read_bytes()
    assert len(whole) == len(server.blob) and whole != server.blob
    assert r.first("sha256")[1] == sha256(whole)
    assert r.first("sha256")[1] != sha256(server.blob)


def test_range_ignored_starts_over(server, tmp_path):
    server.honour_range = False
    out = tmp_path / "fw"
    out.write_bytes(b"\0" * 500000)  # stale: must be replaced, and not hashed
    r = get(server, "/blob", out, sha256=1, offset=500000)
    assert r.error == 0, r.lines
    assert r.first("answer") == ["answer", "200", "0", str(len(server.blob))]
    assert out.read_bytes() == server.blob
    assert r.first("sha256")[1] == sha256(server.blob)
    assert r.synced() == len(server.blob)


def test_206_for_another_range_is_refused(server, tmp_path):
    out = tmp_path / "fw"
    out.write_bytes(server.blob[:1000])
    r = get(server, "/wrong-range", out, offset=1000)
    assert r.error == 74, r.lines  # EBADMSG
    assert out.read_bytes() == server.blob[:1000]


def test_server_claims_more_than_it_sends(server, tmp_path):
    """Content-Length promises the whole blob, the connection ends after 1 MiB: a broken
    connection, with what came synced so that the next attempt resumes there."""
    out = tmp_path / "fw"
    r = get(server, "/claims-more", out, sha256=1)
    assert r.error == 104, r.lines  # ECONNRESET
    assert r.bytes == MiB
    assert r.synced() == MiB
    assert out.read_bytes() == server.blob[:MiB]
    assert r.first("sha256") is None  # no digest for an incomplete file


def test_server_sends_more_than_it_claims(server, tmp_path):
    """Content-Length says 1 MiB: exactly 1 MiB is taken, the rest never reaches the file."""
    out = tmp_path / "fw"
    r = get(server, "/claims-less", out, sha256=1)
    assert r.error == 0, r.lines
    assert r.bytes == MiB and out.read_bytes() == server.blob[:MiB]
    assert r.first("sha256")[1] == sha256(server.blob[:MiB])


def test_more_than_max_size_is_refused(server, tmp_path):
    out = tmp_path / "fw"
    # From the Content-Length, before any byte is written.
    r = get(server, "/blob", out, max_size=MiB)
    assert r.error == 27, r.lines  # EFBIG
    assert out.read_bytes() == b""
    # A server whose Content-Length fits but sends more: cut exactly at the cap.
    r = get(server, "/claims-less", out, max_size=MiB - 1)
    assert r.error == 27, r.lines


def test_cut_connection_mid_body_then_resume(server, tmp_path):
    out = tmp_path / "fw"
    r = get(server, "/cut", out, sha256=1)
    assert r.error == 104, r.lines  # ECONNRESET
    got = r.synced()
    assert 0 < got <= 2 * MiB and got == r.bytes
    assert out.read_bytes() == server.blob[:got]
    # The next attempt starts at the synced offset and ends with the right digest.
    r = get(server, "/blob", out, sha256=1, offset=got)
    assert r.error == 0, r.lines
    assert out.read_bytes() == server.blob
    assert r.first("sha256")[1] == sha256(server.blob)


@pytest.mark.parametrize("path", ["/redirect-file", "/redirect-ftp"])
def test_redirect_to_refused_scheme(server, tmp_path, path):
    out = tmp_path / "fw"
    r = get(server, path, out)
    assert r.error == 93, r.lines  # EPROTONOSUPPORT
    assert out.read_bytes() == b""
    assert len(server.requests) == 1


def test_redirect_followed_for_get(server, tmp_path):
    out = tmp_path / "fw"
    r = get(server, "/redirect-ok", out, sha256=1)
    assert r.error == 0 and out.read_bytes() == server.blob, r.lines
    assert [q["path"] for q in server.requests] == ["/redirect-ok", "/blob"]


def test_plain_http_refused_unless_allowed(server, tmp_path):
    out = tmp_path / "fw"
    r = get(server, "/blob", out, allow_http=0)
    assert r.error == 93 and server.requests == [], r.lines


def test_error_answer_and_its_body(server, tmp_path):
    out = tmp_path / "fw"
    r = get(server, "/missing", out)
    assert r.error == 0 and r.first("answer")[1] == "404", r.lines
    assert unescape(r.first("body")[1]) == "not found"
    assert out.read_bytes() == b"" and r.first("synced") is None


def test_put_reads_the_file_it_is_given(server, tmp_path):
    f = tmp_path / "up"
    data = os.urandom(2 * MiB + 7)
    f.write_bytes(data)
    ctype = "text/csv; charset=utf-8"
    req = {"method": "PUT", "url": server.url("/upload/x?X-Amz-Signature=s"), "content-type": ctype,
           "size": len(data), "allow-http": 1}
    r = Run(req, f, write=False)
    assert r.error == 0 and r.first("answer")[1] == "200", r.lines
    assert r.bytes == len(data)
    (q,) = server.requests
    assert q["headers"]["content-type"] == ctype
    assert q["headers"]["content-length"] == str(len(data))
    assert "expect" not in q["headers"] and "transfer-encoding" not in q["headers"]
    assert q["sha256"] == sha256(data)
    assert r.all("progress")[-1] == ["progress", str(len(data)), str(len(data))]

    # 403 with S3's error body, handed back for lodevd to read.
    req["url"] = server.url("/denied")
    r = Run(req, f, write=False)
    assert r.error == 0 and r.first("answer")[1] == "403", r.lines
    assert "<Code>AccessDenied</Code>" in unescape(r.first("body")[1])

    # A file shorter than the size promised is never sent short.
    req["url"], req["size"] = server.url("/upload/y"), len(data) + 100
    r = Run(req, f, write=False)
    assert r.error == 5, r.lines  # EIO


def test_rate_cap(server, tmp_path):
    out = tmp_path / "fw"
    rate = MiB
    r = get(server, "/blob", out, max_rate=rate)
    assert r.error == 0 and out.read_bytes() == server.blob, r.lines
    # A lower bound only: a loaded machine may take longer, never shorter. libcurl lets the
    # first second's bytes through at once (loopback: several MiB in flight), then holds the
    # average to the cap.
    print("3 MiB at 1 MiB/s: %.2f s" % r.elapsed)
    assert r.elapsed >= 0.5 * len(server.blob) / rate, r.elapsed


def test_environment_proxy_ignored(server, tmp_path):
    proxy = Server()
    try:
        env = {k: proxy.url("") for k in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")}
        r = get(server, "/blob", tmp_path / "fw", env=env)
        assert r.error == 0 and proxy.requests == [], r.lines
        r = get(server, "/blob", tmp_path / "fw", proxy=proxy.url(""))
        assert r.first("answer")[1] == "404" and len(proxy.requests) == 1
    finally:
        proxy.stop()


def test_sandboxed_while_it_runs(server, tmp_path):
    seen = {}

    def watch(pid):
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                seen[k] = v.strip()
        seen["fds"] = sorted(int(x) for x in os.listdir("/proc/%d/fd" % pid))
        seen["pgid"] = os.getpgid(pid)
        with open("/proc/%d/stat" % pid) as f:
            seen["nice"] = int(f.read().rsplit(")", 1)[1].split()[16])

    r = get(server, "/stall", tmp_path / "fw", low_speed_time=2, watch=watch, timeout=30)
    assert r.error == 110, r.lines  # ETIMEDOUT: the stall
    assert seen["NoNewPrivs"] == "1"
    assert seen["Seccomp"] == ("0" if sanitized_build() else "2")  # a filter
    assert seen["nice"] == 10  # background work: lodevd's loop goes first
    # stdin, stdout, stderr, the socket, the file, the connection; nothing else inherited.
    assert seen["fds"][:5] == [0, 1, 2, 3, 4] and len(seen["fds"]) <= 8, seen["fds"]


def test_malformed_requests(tmp_path):
    f = tmp_path / "fw"
    for raw in ["method GET\nurl http://127.0.0.1:1/x\n",  # no end
                "method GET\ncolour blue\nend\n",
                "method GET\nurl a b\nend\n",
                "method PUT\nurl http://127.0.0.1:1/x\nend\n",  # no content type
                "method GET\nurl http://127.0.0.1:1/x\nend\nextra\n"]:
        r = Run(None, f, raw=raw)
        assert r.status == 1 and r.error in (22, 74), (raw, r.lines)  # EINVAL, EBADMSG
        assert r.bytes == 0


def test_refuses_to_run_by_hand():
    p = subprocess.run([HELPER], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and "lodevd(8)" in p.stderr
