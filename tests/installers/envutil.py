# SPDX-License-Identifier: MIT
"""Shared helpers of the installer test environments (rauc_env, swupdate_env).

  run(args, timeout=60, **kw)      subprocess.run with captured text output and a bound
  require_root(), require_tools(*names)
                                   outside CI a missing tool or privilege skips; under
                                   CI=true it fails, never a silent skip
  make_pki(directory, name)        a test CA and a signer it signed (the recipe's PKI):
                                   returns Pki(ca_cert, ca_key, cert, key)
  Process(args, log, env=None)     a daemon started with Popen, its own process group,
                                   stopped by PID with .stop() (SIGTERM, bounded wait,
                                   then SIGKILL); never by name
  wait_until(predicate, timeout, what)
                                   polls, bounded
  run_hook(hook, *args, env, timeout) -> HookResult
                                   runs an installer hook the way lodevd does (SPEC §6):
                                   its own process group, stdin /dev/null, no inherited
                                   descriptor but the progress pipe (LODEV_PROGRESS_FD),
                                   LODEV_* variables set, bounded; .code, .stdout,
                                   .stderr, .progress (ints read from the pipe), .last_error
                                   (last stderr line), .seconds
"""

import collections
import os
import shutil
import signal
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("LODEV_SOURCE_DIR", os.path.join(HERE, "..", ".."))
HOOKS_DIR = os.path.join(os.path.abspath(SOURCE_DIR), "conf", "hooks")

Pki = collections.namedtuple("Pki", "ca_cert ca_key cert key")


def _skip_or_fail(why):
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail("%s (required under CI)" % why)
    pytest.skip(why)


def require_tools(*names):
    missing = [n for n in names if not shutil.which(n)]
    if missing:
        _skip_or_fail("missing tools: %s" % " ".join(missing))


def require_root():
    if os.geteuid() != 0:
        _skip_or_fail("needs root (loop devices, mounts)")


def run(args, timeout=60, check=False, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s%s" % (args, r.returncode, r.stdout, r.stderr))
    return r


def make_pki(directory, name="dev", ca_name=None):
    """A CA (CA:true, keyCertSign) and a signer (CA:false, digitalSignature, no
    extendedKeyUsage) signed by it; both RAUC and SWUpdate accept the pair."""
    os.makedirs(directory, exist_ok=True)
    ca_name = ca_name or name + "-ca"
    p = lambda f: os.path.join(directory, f)  # noqa: E731
    ca_cert, ca_key = p(ca_name + ".pem"), p(ca_name + ".key")
    cert, key, csr = p(name + ".pem"), p(name + ".key"), p(name + ".csr")
    ext = p(name + ".ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:false\nkeyUsage=critical,digitalSignature\n"
                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key,
         "-out", ca_cert, "-subj", "/CN=%s" % ca_name, "-days", "30",
         "-addext", "basicConstraints=critical,CA:true",
         "-addext", "keyUsage=critical,keyCertSign"], check=True)
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=%s" % name], check=True)
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
         "-CAcreateserial", "-out", cert, "-days", "30", "-extfile", ext], check=True)
    return Pki(ca_cert, ca_key, cert, key)


def wait_until(predicate, timeout=10.0, what="condition", interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(interval)


class Process:
    """A background daemon, started without --fork (the recipe: PID 1 here may not
    reap orphans), in its own process group, stopped by its PID."""

    def __init__(self, args, log, env=None):
        self.args = list(args)
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def output(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, timeout=10.0):
        """SIGTERM to the PID, a bounded wait, SIGKILL to the PID if needed."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        self._log.close()
        return self.proc.returncode


class HookResult:
    def __init__(self, code, stdout, stderr, progress, seconds):
        self.code = code
        self.stdout = stdout
        self.stderr = stderr
        self.progress = progress
        self.seconds = seconds
        lines = [l for l in stderr.splitlines() if l.strip()]
        self.last_error = lines[-1] if lines else ""

    def __repr__(self):
        return "HookResult(code=%r, progress=%r, last_error=%r)\nstdout:\n%s\nstderr:\n%s" % (
            self.code, self.progress, self.last_error, self.stdout, self.stderr)


JOB_ENV = {
    "LODEV_JOB_ID": "job-1",
    "LODEV_FIRMWARE_ID": "fw-2.0",
    "LODEV_DEPLOYMENT_ID": "deploy-1",
    "LODEV_THING_NAME": "acct:0f0e0d0c-0b0a-4909-8807-060504030201",
}


def run_hook(hook, *args, env=None, timeout=120.0, user=None):
    """Runs HOOK ARGS as lodevd does (SPEC §6) and collects what lodevd would see; as
    USER (setpriv, no supplementary groups) when given, as lodevd runs as its own user."""
    e = dict(os.environ)
    e.update(JOB_ENV)
    if env:
        e.update(env)
    r, w = os.pipe()
    if user:
        # lodevd makes the pipe as the hook's user: so must the test, for the hook to open
        # /proc/self/fd/N.
        import pwd

        os.fchown(w, pwd.getpwnam(user).pw_uid, -1)
    e["LODEV_PROGRESS_FD"] = str(w)
    progress_lines = []

    def drain():
        with os.fdopen(r, "r", errors="replace") as f:
            for line in f:
                progress_lines.append(line.rstrip("\n"))

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    start = time.monotonic()
    try:
        prefix = (["setpriv", "--reuid=" + user, "--regid=nogroup", "--clear-groups"]
                  if user else [])
        p = subprocess.Popen(prefix + [hook] + list(args), env=e, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             pass_fds=(w,), close_fds=True, process_group=0)
    finally:
        os.close(w)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=10)
        raise AssertionError("hook %s %s timed out after %.0f s:\n%s" % (hook, args, timeout, err))
    seconds = time.monotonic() - start
    # The pipe's write end may be held by a straggler of the hook's group; bounded.
    t.join(10)
    progress = []
    for line in progress_lines:
        assert line.strip().isdigit(), "progress line %r is not a number" % line
        progress.append(int(line))
    code = p.returncode if p.returncode >= 0 else 128 - p.returncode
    return HookResult(code, out, err, progress, seconds)
