"""Fault switches: one-shot or counted misbehaviours armed through the control
API and consumed by the part of the emulator they concern."""

import threading

# Request kinds that reject_next() and ignore_next() know.
REQUEST_KINDS = (
    "create",           # $aws/certificates/create/json
    "create-from-csr",  # $aws/certificates/create-from-csr/json
    "register",         # $aws/provisioning-templates/<t>/provision/json
    "fhir",             # $aws/rules/FHIRIngest
    "upload-link",      # $aws/rules/CreateFileUploadLink
    "jobs-get",         # $aws/things/<t>/jobs/get
    "jobs-describe",    # $aws/things/<t>/jobs/<jobId>/get and $next/get
    "jobs-start-next",  # $aws/things/<t>/jobs/start-next
    "jobs-update",      # $aws/things/<t>/jobs/<jobId>/update
)


# The answers fail_next_puts() can give: S3's own status, code and message.
PUT_FAILURE_CODES = {
    "InvalidRequest": "The request was refused (fail_next_puts 400).",
    "RequestTimeout": "Your socket connection to the server was not read from or written to "
                      "within the timeout period. Idle connections will be closed.",
    "ExpiredToken": "The provided token has expired.",
    "EntityTooLarge": "Your proposed upload exceeds the maximum allowed size",
    "InvalidArgument": "Invalid Argument",
    "AccessDenied": "Access Denied",
    "InternalError": "We encountered an internal error. Please try again.",
    "SlowDown": "Please reduce your request rate.",
    "ServiceUnavailable": "Service is unable to handle request.",
    "PermanentRedirect": "The bucket you are attempting to access must be addressed using the "
                         "specified endpoint. Please send all future requests to this endpoint.",
    "TemporaryRedirect": "Please re-send this request to the specified temporary endpoint. "
                         "Continue to use the original request endpoint for future requests.",
}
DEFAULT_PUT_CODES = {301: "PermanentRedirect", 307: "TemporaryRedirect", 400: "InvalidRequest",
                     403: "AccessDenied", 500: "InternalError", 503: "SlowDown"}
PUT_FAILURE_STATUSES = frozenset(DEFAULT_PUT_CODES)


class Faults:
    def __init__(self):
        self._lock = threading.Lock()
        self._expire_urls = 0
        self._put_failures = []
        self._download_cuts = []
        self._put_cuts = []
        self._rejections = {k: [] for k in REQUEST_KINDS}
        self._ignores = {k: 0 for k in REQUEST_KINDS}
        self._lost_answers = {k: 0 for k in REQUEST_KINDS}

    @staticmethod
    def _check_kind(kind):
        if kind not in REQUEST_KINDS:
            raise ValueError(f"unknown request kind {kind!r}; one of {', '.join(REQUEST_KINDS)}")

    def expire_next_url(self, count=1):
        with self._lock:
            self._expire_urls += count

    def take_expire_url(self):
        with self._lock:
            if self._expire_urls:
                self._expire_urls -= 1
                return True
            return False

    def fail_next_puts(self, n, status, code=None, file_name=None):
        """Queues n answers (status, S3 code) for the next PUTs; with file_name,
        only for PUTs to links made for that file name."""
        if status not in PUT_FAILURE_STATUSES:
            raise ValueError("status must be one of %s"
                             % ", ".join(str(s) for s in sorted(PUT_FAILURE_STATUSES)))
        code = code or DEFAULT_PUT_CODES[status]
        if code not in PUT_FAILURE_CODES:
            raise ValueError(f"unknown S3 code {code!r}; one of {', '.join(PUT_FAILURE_CODES)}")
        with self._lock:
            self._put_failures.extend([(status, code, file_name)] * n)

    def take_put_failure(self, file_name):
        """The (status, code) this PUT gets, or None."""
        with self._lock:
            for i, (status, code, only) in enumerate(self._put_failures):
                if only is None or only == file_name:
                    del self._put_failures[i]
                    return status, code
            return None

    def cut_next_download(self, k_bytes, count=1):
        if k_bytes < 0:
            raise ValueError("k_bytes must be >= 0")
        with self._lock:
            self._download_cuts.extend([k_bytes] * count)

    def cut_next_put(self, k_bytes, count=1):
        if k_bytes < 0:
            raise ValueError("k_bytes must be >= 0")
        with self._lock:
            self._put_cuts.extend([k_bytes] * count)

    def take_put_cut(self):
        with self._lock:
            return self._put_cuts.pop(0) if self._put_cuts else None

    def take_download_cut(self):
        with self._lock:
            return self._download_cuts.pop(0) if self._download_cuts else None

    def reject_next(self, kind, error_code, status_code, message, count=1):
        self._check_kind(kind)
        with self._lock:
            self._rejections[kind].extend([(error_code, status_code, message)] * count)

    def take_rejection(self, kind):
        with self._lock:
            queue = self._rejections[kind]
            return queue.pop(0) if queue else None

    def ignore_next(self, kind, count=1):
        self._check_kind(kind)
        with self._lock:
            self._ignores[kind] += count

    def take_ignore(self, kind):
        with self._lock:
            if self._ignores[kind]:
                self._ignores[kind] -= 1
                return True
            return False

    def lose_next_answer(self, kind, count=1):
        self._check_kind(kind)
        with self._lock:
            self._lost_answers[kind] += count

    def take_lost_answer(self, kind):
        with self._lock:
            if self._lost_answers[kind]:
                self._lost_answers[kind] -= 1
                return True
            return False

    def pending(self):
        """What is still armed, for `status`."""
        with self._lock:
            return {
                "expire_next_url": self._expire_urls,
                "fail_next_puts": [list(f) for f in self._put_failures],
                "cut_next_download": list(self._download_cuts),
                "cut_next_put": list(self._put_cuts),
                "reject_next": {k: len(v) for k, v in self._rejections.items() if v},
                "ignore_next": {k: v for k, v in self._ignores.items() if v},
                "lose_next_answer": {k: v for k, v in self._lost_answers.items() if v},
            }
