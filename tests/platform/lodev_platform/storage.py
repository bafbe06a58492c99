"""The emulated S3: presigned upload links and firmware downloads over HTTP.

URLs carry an expiry and an HMAC signature over the method, the path and, for
uploads, the Content-Type, in S3's query-string style. Like S3, a PUT needs a
Content-Length (chunked transfer encoding is answered 501), a Content-Type
equal to the signed one, and an unexpired signature (otherwise 403); errors
are S3's XML bodies. Downloads support single byte ranges.
"""

import datetime
import hashlib
import hmac
import logging
import os
import re
import secrets
import socket
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .faults import PUT_FAILURE_CODES
from .util import safe_name, write_file_atomic

log = logging.getLogger("lodev.storage")

UPLOAD_TTL = 900.0
FIRMWARE_TTL = 900.0
# One S3 PUT carries at most 5 GiB.
MAX_UPLOAD_BYTES = 5 * 1024 * 1024 * 1024
_CHUNK = 64 * 1024
_FIRMWARE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_DATE_FORMAT = "%Y%m%dT%H%M%SZ"


class HttpError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Storage:
    def __init__(self, directory, faults, host="127.0.0.1"):
        self.directory = directory
        self.faults = faults
        self.host = host
        self.port = None
        self.upload_ttl = UPLOAD_TTL
        self.firmware_ttl = FIRMWARE_TTL
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._links = {}       # link id -> {"thing", "client_id", "file_name", "content_type"}
        self._uploads = []
        self._downloads = []
        self._server = None
        self.upload_dir = os.path.join(directory, "uploads")
        self.firmware_dir = os.path.join(directory, "firmware")
        os.makedirs(self.upload_dir, exist_ok=True)
        os.makedirs(self.firmware_dir, exist_ok=True)

    # -- server --------------------------------------------------------------

    def start(self, port):
        storage = self

        class Handler(_Handler):
            pass

        Handler.storage = storage
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="storage-http",
                         daemon=True).start()

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- signing -------------------------------------------------------------

    def _signature(self, method, path, date, expires, content_type):
        msg = "\n".join([method, path, date, str(expires), content_type or ""])
        return hmac.new(self._secret, msg.encode(), hashlib.sha256).hexdigest()

    def _sign(self, method, path, ttl, content_type=None):
        now = time.time()
        if self.faults.take_expire_url():
            now -= ttl + 60  # signed correctly, but already past its expiry
        date = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime(_DATE_FORMAT)
        expires = max(1, int(ttl))
        query = urllib.parse.urlencode({
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Date": date,
            "X-Amz-Expires": expires,
            "X-Amz-SignedHeaders": "content-type;host" if content_type is not None else "host",
            "X-Amz-Signature": self._signature(method, path, date, expires, content_type),
        })
        return f"http://{self.host}:{self.port}{path}?{query}"

    def verify(self, method, path, query, content_type=None):
        """Raises HttpError unless the URL is signed for this request and alive."""
        params = dict(urllib.parse.parse_qsl(query))
        try:
            date, expires, signature = (params["X-Amz-Date"], int(params["X-Amz-Expires"]),
                                        params["X-Amz-Signature"])
            issued = datetime.datetime.strptime(date, _DATE_FORMAT).replace(
                tzinfo=datetime.timezone.utc).timestamp()
        except (KeyError, ValueError):
            raise HttpError(403, "AccessDenied",
                            "Query-string authentication requires X-Amz-Date, X-Amz-Expires "
                            "and X-Amz-Signature") from None
        # The Content-Type is part of what an upload link signs, so a PUT with
        # another type fails here, as it does on S3.
        expected = self._signature(method, path, date, expires, content_type)
        if not hmac.compare_digest(expected, signature):
            raise HttpError(403, "SignatureDoesNotMatch",
                            "The request signature we calculated does not match the signature "
                            "you provided. Check your key and signing method.")
        if time.time() > issued + expires:
            raise HttpError(403, "AccessDenied", "Request has expired")

    # -- uploads -------------------------------------------------------------

    def create_upload_link(self, thing, client_id, file_name, content_type):
        link_id = secrets.token_hex(8)
        with self._lock:
            self._links[link_id] = {"thing": thing, "client_id": client_id,
                                    "file_name": file_name, "content_type": content_type}
        path = f"/uploads/{link_id}/{urllib.parse.quote(file_name, safe='')}"
        return self._sign("PUT", path, self.upload_ttl, content_type)

    def link_for(self, path):
        m = re.match(r"^/uploads/([0-9a-f]{16})/[^/]+$", path)
        if not m:
            return None
        with self._lock:
            return self._links.get(m.group(1))

    def record_upload(self, link, tmp_path, size, sha256):
        with self._lock:
            n = len(self._uploads) + 1
            dest = os.path.join(self.upload_dir, f"{n:04d}-{safe_name(link['file_name'])}")
            os.replace(tmp_path, dest)
            entry = {
                "thing": link["thing"],
                "client_id": link["client_id"],
                "file_name": link["file_name"],
                "content_type": link["content_type"],
                "size": size,
                "sha256": sha256,
                "path": dest,
                "time": time.time(),
            }
            self._uploads.append(entry)
        log.info("upload %s from %s: %d bytes", link["file_name"], link["thing"], size)
        return entry

    def uploads(self):
        with self._lock:
            return [dict(u) for u in self._uploads]

    # -- firmware ------------------------------------------------------------

    def add_firmware(self, firmware_id, data):
        if not _FIRMWARE_ID.match(firmware_id):
            raise ValueError(f"firmware id {firmware_id!r} must match [A-Za-z0-9._-]{{1,128}}")
        write_file_atomic(os.path.join(self.firmware_dir, firmware_id), data, 0o644)
        return f"/firmware/{firmware_id}"

    def firmware_path(self, firmware_id):
        if not _FIRMWARE_ID.match(firmware_id):
            return None
        path = os.path.join(self.firmware_dir, firmware_id)
        return path if os.path.isfile(path) else None

    def firmware_url(self, firmware_id):
        return self._sign("GET", f"/firmware/{firmware_id}", self.firmware_ttl)

    def record_download(self, entry):
        with self._lock:
            self._downloads.append(entry)

    def downloads(self):
        with self._lock:
            return [dict(d) for d in self._downloads]


def _parse_range(header, size):
    """(start, end) inclusive for a single `bytes=` range, None to send the
    whole body (absent or multi-range header, as S3 does), or raises 416."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not m:
        return None
    first, last = m.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        n = int(last)
        if n == 0:
            raise HttpError(416, "InvalidRange", "The requested range is not satisfiable")
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise HttpError(416, "InvalidRange", "The requested range is not satisfiable")
    return start, end


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AmazonS3"
    sys_version = ""
    storage = None  # set on the subclass made by Storage.start

    def log_message(self, fmt, *args):
        log.info("%s %s", self.address_string(), fmt % args)

    def _send_error(self, err, extra_headers=()):
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{err.code}</Code><Message>{err.message}</Message></Error>\n").encode()
        self.send_response(err.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra_headers:
            self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    # -- PUT -----------------------------------------------------------------

    def _check_put(self):
        """The error this PUT gets, or None; decided once per request."""
        if hasattr(self, "_put_verdict"):
            return self._put_verdict
        self._put_verdict = self._put_verdict_compute()
        return self._put_verdict

    def _put_verdict_compute(self):
        url = urllib.parse.urlsplit(self.path)
        link = self.storage.link_for(url.path)
        failure = self.storage.faults.take_put_failure(link["file_name"] if link else None)
        if failure:
            status, code = failure
            return HttpError(status, code, PUT_FAILURE_CODES[code])
        if self.headers.get("Transfer-Encoding"):
            return HttpError(501, "NotImplemented",
                             "A header you provided implies functionality that is not "
                             "implemented (Transfer-Encoding)")
        length = self.headers.get("Content-Length")
        if length is None:
            return HttpError(411, "MissingContentLength",
                             "You must provide the Content-Length HTTP header.")
        if not length.isdigit():
            return HttpError(400, "InvalidArgument", "Content-Length is not a number")
        if self.storage.link_for(url.path) is None:
            return HttpError(403, "AccessDenied", "Access Denied")
        try:
            self.storage.verify("PUT", url.path, url.query, self.headers.get("Content-Type", ""))
        except HttpError as e:
            return e
        if int(length) > MAX_UPLOAD_BYTES:
            return HttpError(400, "EntityTooLarge",
                             "Your proposed upload exceeds the maximum allowed size")
        return None

    def _redirect_headers(self, err):
        """A redirect names another endpoint, as S3's do (here: the same one)."""
        if err.status not in (301, 307):
            return ()
        return [("Location", f"http://{self.storage.host}:{self.storage.port}{self.path}")]

    def handle_expect_100(self):
        # Answer a doomed upload before the client sends its body.
        if self.command == "PUT":
            err = self._check_put()
            if err:
                self._send_error(err, self._redirect_headers(err))
                return False
        return super().handle_expect_100()

    def _drain(self, length):
        while length > 0:
            chunk = self.rfile.read(min(_CHUNK, length))
            if not chunk:
                break
            length -= len(chunk)

    def do_PUT(self):
        err = self._check_put()
        if err:
            length = self.headers.get("Content-Length", "")
            # Read what the client sends anyway, so it sees the answer rather
            # than a reset; not for chunked bodies or absurd sizes.
            if err.status != 501 and length.isdigit() and int(length) <= MAX_UPLOAD_BYTES \
                    and not self.headers.get("Transfer-Encoding") \
                    and self.headers.get("Expect", "").lower() != "100-continue":
                self._drain(int(length))
            self._send_error(err, self._redirect_headers(err))
            return
        url = urllib.parse.urlsplit(self.path)
        link = self.storage.link_for(url.path)
        remaining = int(self.headers["Content-Length"])
        size = remaining
        digest = hashlib.sha256()
        md5 = hashlib.md5()
        cut = self.storage.faults.take_put_cut()
        fd, tmp = tempfile.mkstemp(dir=self.storage.upload_dir, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as f:
                while remaining > 0:
                    if cut is not None and size - remaining >= cut:
                        log.info("upload of %s cut after %d of %d bytes (fault)",
                                 link["file_name"], size - remaining, size)
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    n = min(_CHUNK, remaining)
                    if cut is not None:
                        n = max(1, min(n, cut - (size - remaining)))
                    chunk = self.rfile.read(n)
                    if not chunk:
                        log.warning("upload of %s cut after %d of %d bytes", link["file_name"],
                                    size - remaining, size)
                        self.close_connection = True
                        return
                    f.write(chunk)
                    digest.update(chunk)
                    md5.update(chunk)
                    remaining -= len(chunk)
            self.storage.record_upload(link, tmp, size, digest.hexdigest())
            tmp = None
        finally:
            if tmp:
                os.unlink(tmp)
        self.send_response(200)
        self.send_header("ETag", f'"{md5.hexdigest()}"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    # -- GET -----------------------------------------------------------------

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        try:
            if not url.path.startswith("/firmware/"):
                raise HttpError(404, "NoSuchKey", "The specified key does not exist.")
            self.storage.verify("GET", url.path, url.query)
            path = self.storage.firmware_path(url.path[len("/firmware/"):])
            if path is None:
                raise HttpError(404, "NoSuchKey", "The specified key does not exist.")
            size = os.path.getsize(path)
            try:
                rng = _parse_range(self.headers.get("Range"), size)
            except HttpError as e:
                self._send_error(e, [("Content-Range", f"bytes */{size}")])
                return
        except HttpError as e:
            self._send_error(e)
            return
        start, end = rng if rng else (0, size - 1)
        length = end - start + 1 if size else 0
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        cut = self.storage.faults.take_download_cut()
        sent = 0
        with open(path, "rb") as f:
            f.seek(start)
            while sent < length:
                n = min(_CHUNK, length - sent)
                if cut is not None:
                    n = min(n, cut - sent)
                    if n <= 0:
                        break
                chunk = f.read(n)
                if not chunk:
                    break
                self.wfile.write(chunk)
                sent += len(chunk)
        self.wfile.flush()
        self.storage.record_download({
            "path": url.path, "range": self.headers.get("Range"), "status": 206 if rng else 200,
            "sent": sent, "length": length, "cut": cut is not None, "time": time.time(),
        })
        if sent < length:
            log.info("download of %s cut after %d of %d bytes (fault)", url.path, sent, length)
            self.close_connection = True
