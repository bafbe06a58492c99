"""AWS IoT Jobs, the device side (MQTT API), as a pure state machine.

Semantics kept from AWS: one execution per (job, thing) with an
executionNumber and a versionNumber that grows with every change; devices may
only set IN_PROGRESS, SUCCEEDED, FAILED or REJECTED; an execution in a
terminal state answers TerminalStateReached to updates; a status a device may
not set answers InvalidStateTransition; expectedVersion must match
(VersionMismatch); statusDetails is a map of strings (keys [a-zA-Z0-9:_-]+,
values 1 to 1024 printable characters), but numbers are accepted and stored as
text because the platform's samples send percentProgress as a number.

Every call returns plain dicts shaped as the MQTT API's payloads; errors raise
JobError carrying the AWS error code. Documents are rendered on every delivery
through `render` (the emulator puts a freshly signed firmwareUrl there, as
AWS's presigned-URL placeholders do).
"""

import re
import threading
import time

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED"})
ALL_STATUSES = TERMINAL | {"QUEUED", "IN_PROGRESS"}
DEVICE_SETTABLE = frozenset({"IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"})

_DETAIL_KEY = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
_JOB_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class JobError(Exception):
    """A rejection of the Jobs API: `code` is AWS's error code."""

    def __init__(self, code, message, execution_state=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.execution_state = execution_state


def _now():
    return int(time.time())


def normalize_status_details(details):
    """statusDetails as AWS stores it (a map of strings); raises JobError."""
    if details is None:
        return None
    if not isinstance(details, dict):
        raise JobError("InvalidRequest", "statusDetails must be an object of strings")
    if len(details) > 10:
        raise JobError("InvalidRequest", "statusDetails may have at most 10 entries")
    out = {}
    for key, value in details.items():
        if not _DETAIL_KEY.match(key):
            raise JobError("InvalidRequest",
                           f"statusDetails key {key!r} must match [a-zA-Z0-9:_-]+")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise JobError("InvalidRequest", f"statusDetails value of {key!r} must be a string")
        text = value if isinstance(value, str) else format(value, "g")
        if not 1 <= len(text) <= 1024 or not text.isprintable():
            raise JobError("InvalidRequest",
                           f"statusDetails value of {key!r} must be 1 to 1024 printable "
                           "characters")
        out[key] = text
    return out


class Execution:
    def __init__(self, job_id, thing, document, execution_number):
        now = _now()
        self.job_id = job_id
        self.thing = thing
        self.document = document
        self.status = "QUEUED"
        self.status_details = {}
        self.queued_at = now
        self.started_at = None
        self.last_updated_at = now
        self.version = 1
        self.execution_number = execution_number
        self.history = [self._history_entry("platform", None)]

    def _history_entry(self, source, raw_details):
        return {
            "status": self.status,
            "statusDetails": dict(self.status_details),
            "rawStatusDetails": raw_details,
            "versionNumber": self.version,
            "source": source,
            "time": time.time(),
        }

    def change(self, status, details, source, raw_details=None):
        now = _now()
        if status == "IN_PROGRESS" and self.started_at is None:
            self.started_at = now
        self.status = status
        if details is not None:
            self.status_details = details
        self.version += 1
        self.last_updated_at = now
        self.history.append(self._history_entry(source, raw_details))

    @property
    def terminal(self):
        return self.status in TERMINAL

    def state(self):
        """JobExecutionState."""
        out = {"status": self.status, "versionNumber": self.version}
        if self.status_details:
            out["statusDetails"] = dict(self.status_details)
        return out

    def summary(self):
        """JobExecutionSummary."""
        out = {
            "jobId": self.job_id,
            "queuedAt": self.queued_at,
            "lastUpdatedAt": self.last_updated_at,
            "versionNumber": self.version,
            "executionNumber": self.execution_number,
        }
        if self.started_at is not None:
            out["startedAt"] = self.started_at
        return out

    def execution(self, render, include_document=True):
        """JobExecution."""
        out = {
            "jobId": self.job_id,
            "thingName": self.thing,
            "status": self.status,
            "queuedAt": self.queued_at,
            "lastUpdatedAt": self.last_updated_at,
            "versionNumber": self.version,
            "executionNumber": self.execution_number,
        }
        if self.started_at is not None:
            out["startedAt"] = self.started_at
        if self.status_details:
            out["statusDetails"] = dict(self.status_details)
        if include_document:
            out["jobDocument"] = render(self.document)
        return out


class JobStore:
    """Job executions of every thing. Thread-safe."""

    def __init__(self, render=lambda document: document):
        self._render = render
        self._lock = threading.RLock()
        self._executions = {}  # thing -> {job_id: Execution}, in queue order
        self._counter = 0

    # -- operator side -------------------------------------------------------

    def queue(self, thing, job_id, document):
        if not _JOB_ID.match(job_id):
            raise ValueError(f"job id {job_id!r} must match [a-zA-Z0-9_-]{{1,64}}")
        with self._lock:
            jobs = self._executions.setdefault(thing, {})
            if job_id in jobs:
                raise ValueError(f"job {job_id} already exists for {thing}")
            jobs[job_id] = Execution(job_id, thing, document, 1)
            return jobs[job_id]

    def cancel(self, thing, job_id, force=False):
        with self._lock:
            ex = self._get(thing, job_id)
            if ex.terminal:
                raise ValueError(f"job {job_id} is already {ex.status}")
            if ex.status == "IN_PROGRESS" and not force:
                raise ValueError(f"job {job_id} is IN_PROGRESS: cancel with force")
            ex.change("CANCELED", None, "platform")
            return ex

    def execution_of(self, thing, job_id):
        with self._lock:
            ex = self._get(thing, job_id)
            return {
                "jobId": ex.job_id,
                "thingName": thing,
                "status": ex.status,
                "statusDetails": dict(ex.status_details),
                "versionNumber": ex.version,
                "executionNumber": ex.execution_number,
                "queuedAt": ex.queued_at,
                "startedAt": ex.started_at,
                "lastUpdatedAt": ex.last_updated_at,
                "document": ex.document,
            }

    def history_of(self, thing, job_id):
        with self._lock:
            return [dict(h) for h in self._get(thing, job_id).history]

    def list_all(self, thing=None):
        with self._lock:
            things = [thing] if thing else list(self._executions)
            return [
                {"thing": t, **ex.summary(), "status": ex.status}
                for t in things
                for ex in self._executions.get(t, {}).values()
            ]

    # -- device side (MQTT API) ----------------------------------------------

    def _get(self, thing, job_id):
        ex = self._executions.get(thing, {}).get(job_id)
        if ex is None:
            raise JobError("ResourceNotFound", f"Job execution {job_id} for {thing} not found")
        return ex

    def _pending(self, thing):
        jobs = self._executions.get(thing, {}).values()
        in_progress = [ex for ex in jobs if ex.status == "IN_PROGRESS"]
        queued = [ex for ex in jobs if ex.status == "QUEUED"]
        return in_progress, queued

    def next_pending(self, thing):
        in_progress, queued = self._pending(thing)
        return (in_progress + queued or [None])[0]

    def pending_ids(self, thing):
        with self._lock:
            in_progress, queued = self._pending(thing)
            return tuple(ex.job_id for ex in in_progress + queued)

    def get_pending(self, thing):
        """GetPendingJobExecutions."""
        with self._lock:
            in_progress, queued = self._pending(thing)
            return {
                "inProgressJobs": [ex.summary() for ex in in_progress],
                "queuedJobs": [ex.summary() for ex in queued],
            }

    def notify_payload(self, thing):
        """JobExecutionsChanged (the notify topic)."""
        with self._lock:
            in_progress, queued = self._pending(thing)
            jobs = {}
            if in_progress:
                jobs["IN_PROGRESS"] = [ex.summary() for ex in in_progress]
            if queued:
                jobs["QUEUED"] = [ex.summary() for ex in queued]
            return {"jobs": jobs}

    def next_payload(self, thing):
        """NextJobExecutionChanged (the notify-next topic)."""
        with self._lock:
            ex = self.next_pending(thing)
            return {"execution": ex.execution(self._render)} if ex else {}

    def describe(self, thing, job_id, request):
        """DescribeJobExecution for a job id or $next."""
        include_document = request.get("includeJobDocument", True)
        if not isinstance(include_document, bool):
            raise JobError("InvalidRequest", "includeJobDocument must be a boolean")
        number = request.get("executionNumber")
        if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
            raise JobError("InvalidRequest", "executionNumber must be an integer")
        with self._lock:
            if job_id == "$next":
                ex = self.next_pending(thing)
                return {"execution": ex.execution(self._render, include_document)} if ex else {}
            ex = self._get(thing, job_id)
            if number is not None and number != ex.execution_number:
                raise JobError("ResourceNotFound",
                               f"Execution {number} of job {job_id} not found")
            return {"execution": ex.execution(self._render, include_document)}

    def start_next(self, thing, request, source):
        """StartNextPendingJobExecution."""
        raw = request.get("statusDetails")
        details = normalize_status_details(raw)
        timeout = request.get("stepTimeoutInMinutes")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)):
            raise JobError("InvalidRequest", "stepTimeoutInMinutes must be an integer")
        with self._lock:
            in_progress, queued = self._pending(thing)
            if in_progress:
                return {"execution": in_progress[0].execution(self._render)}
            if not queued:
                return {}
            ex = queued[0]
            ex.change("IN_PROGRESS", details, source, raw)
            return {"execution": ex.execution(self._render)}

    def update(self, thing, job_id, request, source):
        """UpdateJobExecution."""
        status = request.get("status")
        if not isinstance(status, str):
            raise JobError("InvalidRequest", "status is required")
        if status not in ALL_STATUSES:
            raise JobError("InvalidRequest", f"status {status!r} is not a job execution status")
        raw = request.get("statusDetails")
        details = normalize_status_details(raw)
        expected = request.get("expectedVersion")
        if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
            raise JobError("InvalidRequest", "expectedVersion must be an integer")
        number = request.get("executionNumber")
        if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
            raise JobError("InvalidRequest", "executionNumber must be an integer")
        for flag in ("includeJobExecutionState", "includeJobDocument"):
            if not isinstance(request.get(flag, False), bool):
                raise JobError("InvalidRequest", f"{flag} must be a boolean")
        with self._lock:
            ex = self._get(thing, job_id)
            if number is not None and number != ex.execution_number:
                raise JobError("ResourceNotFound", f"Execution {number} of job {job_id} not found")
            if expected is not None and expected != ex.version:
                raise JobError("VersionMismatch",
                               f"expectedVersion {expected} does not match version {ex.version}",
                               ex.state())
            if ex.terminal:
                raise JobError("TerminalStateReached",
                               f"Job execution {job_id} is already {ex.status}", ex.state())
            if status not in DEVICE_SETTABLE:
                raise JobError("InvalidStateTransition",
                               f"Cannot change status from {ex.status} to {status}", ex.state())
            ex.change(status, details, source, raw)
            out = {}
            if request.get("includeJobExecutionState"):
                out["executionState"] = ex.state()
            if request.get("includeJobDocument"):
                out["jobDocument"] = self._render(ex.document)
            return out
