"""lodev-platform: command line for the platform emulator.

Every command but `start` finds the running emulator through
WORKDIR/platform.json (--workdir, or $LODEV_PLATFORM_WORKDIR, or
./lodev-platform). Results are printed as JSON.
"""

import argparse
import json
import os
import sys

from .api import Platform, PlatformError
from .faults import REQUEST_KINDS

DEFAULT_WORKDIR = os.environ.get("LODEV_PLATFORM_WORKDIR", "lodev-platform")


def _print(obj):
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def cmd_start(args):
    if args.foreground:
        from .emulator import main as emulator_main

        argv = ["--workdir", args.workdir, "--mqtt-port", str(args.mqtt_port),
                "--http-port", str(args.http_port), "--control-port", str(args.control_port),
                "--log-stderr"]
        if args.account:
            argv += ["--account", args.account]
        if args.no_throttle:
            argv.append("--no-throttle")
        return emulator_main(argv)
    p = Platform.start(args.workdir, mqtt_port=args.mqtt_port, http_port=args.http_port,
                       control_port=args.control_port, account=args.account,
                       throttle=not args.no_throttle, detach=True)
    _print(p.status())
    return 0


def cmd_stop(args):
    Platform.attach(args.workdir).stop()
    return 0


def cmd_firmware_add(args):
    with open(args.file, "rb") as f:
        data = f.read()
    p = Platform.attach(args.workdir)
    _print({"firmware_id": args.firmware_id, "path": p.add_firmware(args.firmware_id, data),
            "size": len(data)})
    return 0


def cmd_jobs(args):
    p = Platform.attach(args.workdir)
    if args.jobs_cmd == "add":
        document = json.loads(args.document) if args.document else None
        _print({"job_id": p.queue_job(args.thing, job_id=args.job_id, document=document,
                                      firmware_id=args.firmware_id,
                                      deployment_id=args.deployment_id)})
    elif args.jobs_cmd == "list":
        _print(p.jobs(args.thing))
    elif args.jobs_cmd == "show":
        _print(p.job_execution(args.thing, args.job_id))
    elif args.jobs_cmd == "cancel":
        _print(p.cancel_job(args.thing, args.job_id, force=args.force))
    elif args.jobs_cmd == "history":
        _print(p.job_history(args.thing, args.job_id))
    return 0


def cmd_fault(args):
    p = Platform.attach(args.workdir)
    f = args.fault
    if f == "broker-stop":
        result = p.broker_stop()
    elif f == "broker-start":
        result = p.broker_start()
    elif f == "drop-client":
        result = p.drop_client(args.client_id)
    elif f == "expire-next-url":
        result = p.expire_next_url(args.count)
    elif f == "fail-next-puts":
        result = p.fail_next_puts(args.n, args.status, code=args.code,
                                  file_name=args.file_name)
    elif f == "cut-next-put":
        result = p.cut_next_put(args.k_bytes)
    elif f == "cut-next-download":
        result = p.cut_next_download(args.k_bytes)
    elif f == "reject-next":
        result = p.reject_next(args.kind, error_code=args.error_code,
                               status_code=args.status_code, message=args.message)
    elif f == "ignore-next":
        result = p.ignore_next(args.kind, args.count)
    elif f == "throttle":
        result = p.set_throttle(args.state == "on", rate=args.rate)
    elif f == "expire-tokens":
        result = p.expire_tokens()
    _print(result)
    return 0


def build_parser():
    ap = argparse.ArgumentParser(prog="lodev-platform",
                                 description="Local stand-in for the LifeOmic Platform.")
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR,
                    help="emulator working directory (default: %(default)s)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("start", help="start the emulator (detached unless --foreground)")
    s.add_argument("--foreground", action="store_true", help="run in this process until ^C")
    s.add_argument("--mqtt-port", type=int, default=0, help="default: a free port")
    s.add_argument("--http-port", type=int, default=0, help="default: a free port")
    s.add_argument("--control-port", type=int, default=0, help="default: a free port")
    s.add_argument("--account", help="ACCOUNT part of thing names (default lodevtest)")
    s.add_argument("--no-throttle", action="store_true",
                   help="do not drop publishes beyond 100/s per client")
    s.set_defaults(func=cmd_start)

    sub.add_parser("stop", help="stop the emulator").set_defaults(func=cmd_stop)
    for name, method, help_text in (
            ("status", "status", "ports, paths, broker state, armed faults"),
            ("observations", "observations", "FHIRIngest observations received"),
            ("uploads", "uploads", "files uploaded"),
            ("downloads", "downloads", "firmware downloads served"),
            ("things", "things", "registered things"),
            ("errors", "errors", "requests the platform rejected")):
        s = sub.add_parser(name, help=help_text)
        s.set_defaults(func=lambda a, m=method: _print(getattr(Platform.attach(a.workdir), m)())
                       or 0)
    s = sub.add_parser("publish-stats", help="publish counts of a client id")
    s.add_argument("client_id")
    s.set_defaults(func=lambda a: _print(Platform.attach(a.workdir).publish_stats(a.client_id))
                   or 0)

    s = sub.add_parser("firmware", help="firmware images")
    fs = s.add_subparsers(dest="firmware_cmd", required=True)
    s = fs.add_parser("add", help="store FILE as firmware FIRMWARE_ID")
    s.add_argument("firmware_id")
    s.add_argument("file")
    s.set_defaults(func=cmd_firmware_add)

    s = sub.add_parser("jobs", help="job executions")
    js = s.add_subparsers(dest="jobs_cmd", required=True)
    s = js.add_parser("add", help="queue a job for THING")
    s.add_argument("thing")
    s.add_argument("--firmware-id", help="firmware for the default firmware_update document")
    s.add_argument("--deployment-id")
    s.add_argument("--job-id")
    s.add_argument("--document", help="a JSON job document instead of the default")
    s = js.add_parser("list", help="jobs of THING (or of every thing)")
    s.add_argument("thing", nargs="?")
    for name in ("show", "cancel", "history"):
        s = js.add_parser(name, help=f"{name} a job execution")
        s.add_argument("thing")
        s.add_argument("job_id")
        if name == "cancel":
            s.add_argument("--force", action="store_true", help="cancel even if IN_PROGRESS")
    for p in js.choices.values():
        p.set_defaults(func=cmd_jobs)

    s = sub.add_parser("fault", help="inject a fault")
    fs = s.add_subparsers(dest="fault", required=True)
    fs.add_parser("broker-stop", help="stop the broker")
    fs.add_parser("broker-start", help="start the broker again, same port")
    fs.add_parser("drop-client", help="close a client's connection").add_argument("client_id")
    fs.add_parser("expire-next-url", help="next URL handed out is expired").add_argument(
        "--count", type=int, default=1)
    s = fs.add_parser("fail-next-puts", help="answer the next N PUTs with STATUS")
    s.add_argument("n", type=int)
    s.add_argument("status", type=int, choices=(301, 307, 400, 403, 500, 503))
    s.add_argument("--code", help="S3 error code (RequestTimeout, ExpiredToken, ...)")
    s.add_argument("--file-name", help="only for PUTs to links made for this file name")
    fs.add_parser("cut-next-put", help="cut the next upload after K bytes").add_argument(
        "k_bytes", type=int)
    fs.add_parser("cut-next-download", help="cut the next download after K bytes").add_argument(
        "k_bytes", type=int)
    s = fs.add_parser("reject-next", help="reject the next request of KIND")
    s.add_argument("kind", choices=REQUEST_KINDS)
    s.add_argument("--error-code", default="InternalError")
    s.add_argument("--status-code", type=int, default=500)
    s.add_argument("--message")
    s = fs.add_parser("ignore-next", help="leave the next request of KIND unanswered")
    s.add_argument("kind", choices=REQUEST_KINDS)
    s.add_argument("--count", type=int, default=1)
    s = fs.add_parser("throttle", help="per-client publish limit on or off")
    s.add_argument("state", choices=("on", "off"))
    s.add_argument("--rate", type=int, default=100)
    fs.add_parser("expire-tokens", help="make outstanding ownership tokens stale")
    for p in fs.choices.values():
        p.set_defaults(func=cmd_fault)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PlatformError as e:
        print(f"lodev-platform: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"lodev-platform: {e}", file=sys.stderr)
        return 1
