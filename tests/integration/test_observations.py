# SPDX-License-Identifier: MIT
"""Observations: durable, in-order delivery through the spool to FHIRIngest,
with the real lodevd, bus, broker and emulator."""

import json
import os
import random
import re
import signal
import subprocess
import time

import pytest

import lodevtest
from lodevtest import wait_until

SUBMIT = os.path.join(lodevtest.BUILD_DIR, "tests", "lodev-submit")


def submit(bus, *args, timeout=300):
    return subprocess.run([SUBMIT] + list(args), env=bus.env(), capture_output=True, text=True,
                          timeout=timeout)


def accepted(stdout):
    """(id, value) of every accepted submission, in reply order."""
    out = []
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] != "DELIVERED":
            out.append((parts[0], float(parts[1])))
    return out


def values_of(platform, thing):
    return [o["payload"]["value"] for o in platform.observations() if o["thing"] == thing]


def start_online(bus, workdir, emulator, **overrides):
    config = os.path.join(workdir, "lodevd.conf")
    lodevtest.write_device_config(config, workdir, emulator, **overrides)
    d = lodevtest.Daemon(bus, workdir, config).start()
    d.wait_online()
    return d, d.status()["thing_name"]


def wait_drained(d, timeout=120):
    wait_until(lambda: d.status()["queued_observations"] == 0, timeout, interval=0.2,
               what="the queue to drain")


@pytest.fixture
def unthrottled(platform):
    """For loads above the platform's 100 messages/s (publish_rate = 0)."""
    platform.set_throttle(False)
    yield platform
    platform.set_throttle(True)


def test_exact_payload_and_delivered_signal(bus, workdir, platform):
    d, thing = start_online(bus, workdir, platform)
    try:
        r = submit(bus, "--count", "1", "--value", "72.5", "--display", "Heart rate",
                   "--patient-id", "patient-7", "--wait-delivered", timeout=60)
        assert r.returncode == 0, r.stderr
        (obs_id, value), = accepted(r.stdout)
        assert "DELIVERED %s " % obs_id in r.stdout
        # PUBACK comes from the broker; the platform's service records it a moment later.
        wait_until(lambda: len(values_of(platform, thing)) >= 1, 20, what="the observation")
        recorded = [o for o in platform.observations() if o["thing"] == thing]
        assert len(recorded) == 1
        assert recorded[0]["client_id"] == thing
        assert recorded[0]["raw"] == (
            '{"value":72.5,"unit":"/min","coding":[{"code":"8867-4",'
            '"system":"http://loinc.org","display":"Heart rate"}],"patientId":"patient-7"}')
        # lodevctl observe prints the id; without a patient the field is left out.
        r = lodevtest.lodevctl(bus, "observe", "--code", "9750d5e5-d766-4793-a97d-16179578cc4d",
                               "--code-system", "http://lifeomic.com/fhir/devices",
                               "--code-display", "Battery Percentage", "--value", "100",
                               "--unit", "%")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().isdigit() and int(r.stdout) > int(obs_id)
        wait_until(lambda: len(values_of(platform, thing)) == 2, 20, what="second observation")
        last = [o for o in platform.observations() if o["thing"] == thing][-1]
        assert json.loads(last["raw"]) == {
            "value": 100, "unit": "%",
            "coding": [{"code": "9750d5e5-d766-4793-a97d-16179578cc4d",
                        "system": "http://lifeomic.com/fhir/devices",
                        "display": "Battery Percentage"}]}
    finally:
        assert d.stop() == 0


def test_offline_backlog_survives_restart(bus, workdir, platform):
    """1,000 observations while the broker is down, lodevd stopped and
    started, the broker restored: each delivered once, in order."""
    d, thing = start_online(bus, workdir, platform, platform={"publish_rate": 0})
    platform.set_throttle(False)
    try:
        platform.broker_stop()
        wait_until(lambda: d.status()["state"] != "online", 20, what="offline")
        r = submit(bus, "--count", "1000", "--start", "0")
        assert r.returncode == 0, r.stderr
        assert len(accepted(r.stdout)) == 1000
        assert d.status()["queued_observations"] == 1000
        assert d.stop() == 0
        d.start()
        assert d.status()["queued_observations"] == 1000
        platform.broker_start()
        d.wait_online()
        wait_drained(d)
        wait_until(lambda: len(values_of(platform, thing)) >= 1000, 30, what="1000 recorded")
        assert values_of(platform, thing) == [float(i) for i in range(1000)]
        assert "1000 observations queued from before" in d.output()
    finally:
        if not platform.status()["broker_running"]:
            platform.broker_start()
        platform.set_throttle(True)
        d.stop()


def test_sigkill_during_load(bus, workdir, unthrottled):
    """SIGKILL at random points of a 5,000-observation load, 10 rounds:
    every id that was returned is delivered."""
    platform = unthrottled
    d, thing = start_online(bus, workdir, platform, platform={"publish_rate": 0})
    returned = []
    rng = random.Random(1234)
    rounds = 10
    for i in range(rounds):
        if d.proc.poll() is not None:
            d.start()
        client = subprocess.Popen([SUBMIT, "--count", "5000", "--start", str(i * 10000)],
                                  env=bus.env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.05, 1.5))
        d.stop(signal.SIGKILL)
        out, _ = client.communicate(timeout=60)
        returned += accepted(out)
    assert len(returned) > 0
    d.start()
    try:
        d.wait_online()
        wait_drained(d, timeout=300)
        want = {v for _, v in returned}
        got = values_of(platform, thing)
        try:
            wait_until(lambda: want <= set(values_of(platform, thing)), 60,
                       what="every returned id delivered")
        except AssertionError:
            missing = sorted(want - set(values_of(platform, thing)))
            raise AssertionError("%d of %d returned ids not delivered, first %s"
                                 % (len(missing), len(want), missing[:20]))
        got = values_of(platform, thing)
        # Nothing that was not submitted, and each round's values in order.
        assert all(v % 10000 < 5000 for v in got)
        dupes = len(got) - len(set(got))
        print("\n%d rounds: %d ids returned, %d delivered, %d duplicates (at least once)"
              % (rounds, len(want), len(got), dupes))
        firsts = {}
        for v in got:
            firsts.setdefault(v, len(firsts))
        order = sorted(firsts, key=firsts.get)
        assert order == sorted(order), "first deliveries out of order"
    finally:
        assert d.stop() == 0


def test_queue_full_then_drains(bus, workdir, unthrottled):
    platform = unthrottled
    d, thing = start_online(bus, workdir, platform,
                            spool={"max_bytes": 65536}, platform={"publish_rate": 0})
    try:
        platform.broker_stop()
        wait_until(lambda: d.status()["state"] != "online", 20, what="offline")
        r = submit(bus, "--count", "3000", "--start", "0", "--window", "1")
        assert r.returncode == 1
        assert "queue is full" in r.stderr
        ok = accepted(r.stdout)
        assert 100 < len(ok) < 3000
        # Never a silent drop: the first refusal ends the accepted run, and
        # everything accepted is queued.
        assert [v for _, v in ok] == [float(i) for i in range(len(ok))]
        assert d.status()["queued_observations"] == len(ok)
        platform.broker_start()
        d.wait_online()
        wait_drained(d)
        wait_until(lambda: len(values_of(platform, thing)) >= len(ok), 30, what="delivery")
        assert values_of(platform, thing) == [float(i) for i in range(len(ok))]
        # Space came back.
        r = submit(bus, "--count", "100", "--start", "5000")
        assert r.returncode == 0, r.stderr
    finally:
        if not platform.status()["broker_running"]:
            platform.broker_start()
        d.stop()


@pytest.mark.parametrize("args,field", [
    (["--value", "nan"], "value"),
    (["--value", "inf"], "value"),
    (["--code", ""], "code"),
    (["--system", ""], "system"),
    (["--code-size", str(1024 * 1024)], "code"),
    (["--display", "d" * 5000], "display"),
])
def test_bad_arguments(bus, daemon, args, field):
    daemon.start()
    r = submit(bus, "--count", "1", *args)
    assert r.returncode == 1
    assert "Invalid argument: %s:" % field in r.stderr, r.stderr
    assert daemon.status()["queued_observations"] == 0
    assert daemon.proc.poll() is None


def test_bad_arguments_on_the_bus(bus, daemon):
    daemon.start()

    def call(*args):
        return subprocess.run(["busctl", "--address=" + bus.address, "call",
                               "com.lifeomic.Device1", "/com/lifeomic/Device1",
                               "com.lifeomic.Device1", "SubmitObservation"] + list(args),
                              capture_output=True, text=True, timeout=30)

    r = call("a(sss)dsa{sv}", "0", "1", "%", "0")
    assert r.returncode != 0 and "coding: exactly one" in r.stderr, r.stderr
    r = call("a(sss)dsa{sv}", "2", "s", "c", "d", "s", "c", "d", "1", "%", "0")
    assert r.returncode != 0 and "coding: exactly one" in r.stderr
    r = call("a(sss)dsa{sv}", "1", "s", "c", "d", "1", "%", "1", "colour", "s", "red")
    assert r.returncode != 0 and "unknown key 'colour'" in r.stderr
    r = call("a(sss)dsa{sv}", "1", "s", "c", "d", "1", "%", "1", "patientId", "u", "5")
    assert r.returncode != 0 and "'patientId' must be a string" in r.stderr
    # Invalid UTF-8 never reaches lodevd: the client library refuses to send it.
    r = submit(bus, "--count", "1", "--invalid-utf8")
    assert r.returncode == 1 and "not sent" in r.stderr
    # The same call, well formed, is taken and answered with an id.
    r = call("a(sss)dsa{sv}", "1", "s", "c", "d", "1", "%", "0")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r's "\d+"\n', r.stdout), r.stdout


def test_pacing(bus, workdir, platform):
    """A 1,000-message backlog with publish_rate = 100 never goes over 100
    publishes in any one-second window, as the emulator counts them."""
    d, thing = start_online(bus, workdir, platform, platform={"publish_rate": 100})
    try:
        platform.broker_stop()
        wait_until(lambda: d.status()["state"] != "online", 20, what="offline")
        r = submit(bus, "--count", "1000", "--start", "0")
        assert r.returncode == 0, r.stderr
        platform.broker_start()
        d.wait_online()
        t0 = time.monotonic()
        wait_drained(d, timeout=60)
        elapsed = time.monotonic() - t0
        wait_until(lambda: len(values_of(platform, thing)) >= 1000, 30, what="delivery")
        stats = platform.publish_stats(thing)
        # The rate of the backlog as the platform received it, from its first to its last
        # observation: the connection's other publishes (the job list asked for at every
        # connect) would stretch the broker's first-to-last window.
        times = [o["time"] for o in platform.observations() if o["thing"] == thing]
        rate = (len(times) - 1) / (max(times) - min(times))
        print("\npacing: %d publishes, max %d in one second, %d throttled, %.1f/s at the "
              "broker, drained in %.1f s"
              % (stats["total"], stats["max_per_second"], stats["throttled"], rate, elapsed))
        assert stats["max_per_second"] <= 100
        assert rate >= 90, "a backlog drains at no less than 90% of publish_rate"
        assert stats["throttled"] == 0
        assert values_of(platform, thing) == [float(i) for i in range(1000)]
        assert elapsed > 9  # paced, not dumped
    finally:
        if not platform.status()["broker_running"]:
            platform.broker_start()
        d.stop()


def test_submit_before_provisioning(bus, workdir, platform, basic_config):
    """Readings are taken before the device has an identity and delivered
    once it has one."""
    platform.broker_stop()
    d = lodevtest.Daemon(bus, workdir, basic_config).start()
    try:
        st = d.status()
        assert st["state"] in ("unprovisioned", "provisioning")
        r = submit(bus, "--count", "20", "--start", "500")
        assert r.returncode == 0, r.stderr
        assert d.status()["queued_observations"] == 20
        platform.broker_start()
        d.wait_online(timeout=60)
        thing = d.status()["thing_name"]
        wait_drained(d)
        wait_until(lambda: len(values_of(platform, thing)) >= 20, 30, what="delivery")
        assert values_of(platform, thing) == [float(500 + i) for i in range(20)]
    finally:
        if not platform.status()["broker_running"]:
            platform.broker_start()
        assert d.stop() == 0


def test_fhir_rejection_logged(bus, workdir, platform):
    d, thing = start_online(bus, workdir, platform)
    try:
        platform.reject_next("fhir", error_code="InvalidObservation", status_code=400,
                             message="unknown code system")
        r = submit(bus, "--count", "1", "--wait-delivered", timeout=60)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: "unknown code system" in d.status()["last_error"], 20,
                   what="the rejection in LastError")
        assert ("FHIRIngest rejected an observation: 400 InvalidObservation: "
                "unknown code system") in d.output()
        # It was delivered (PUBACK) and is not retried: the platform said no.
        assert d.status()["queued_observations"] == 0
    finally:
        assert d.stop() == 0


def test_damaged_spool_record_skipped_not_the_rest(bus, workdir, platform):
    """A byte of one queued observation changes on disk while lodevd is
    stopped: at the next start that one is reported lost by its id and every
    other observation, before and after it, is still delivered in order."""
    d, thing = start_online(bus, workdir, platform, platform={"publish_rate": 0})
    platform.set_throttle(False)
    try:
        platform.broker_stop()
        wait_until(lambda: d.status()["state"] != "online", 20, what="offline")
        r = submit(bus, "--count", "200", "--start", "0")
        assert r.returncode == 0, r.stderr
        ids = dict((v, i) for i, v in accepted(r.stdout))
        assert d.stop() == 0
        spool = os.path.join(workdir, "state", "spool")
        seg = sorted(n for n in os.listdir(spool) if n.endswith(".seg"))[0]
        path = os.path.join(spool, seg)
        data = bytearray(open(path, "rb").read())
        at = data.index(b'"value":100,')
        data[at + len(b'"value":1')] ^= 0x01  # "100" becomes "110": the checksum fails
        open(path, "wb").write(bytes(data))

        d.start()
        platform.broker_start()
        d.wait_online()
        wait_drained(d)
        expected = [float(i) for i in range(200) if i != 100]
        wait_until(lambda: len(values_of(platform, thing)) >= 199, 30, what="199 recorded")
        assert values_of(platform, thing) == expected
        out = d.output()
        lost = ids[100.0]
        assert re.search(r"observation %s is lost|Observation %s .*checksum" % (lost, lost), out), \
            out[-2000:]
        assert d.status()["queued_observations"] == 0
    finally:
        if not platform.status()["broker_running"]:
            platform.broker_start()
        platform.set_throttle(True)
        d.stop()
