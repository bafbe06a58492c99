"""The Jobs API over MQTT with AWS semantics, and the state machine alone."""

import pytest

from helpers import Client, provision
from lodev_platform.jobs import JobError, JobStore


@pytest.fixture
def device(platform, tmp_path):
    return provision(platform, tmp_path)


@pytest.fixture
def jobs_client(platform, device):
    c = Client(platform, device).wait_connected()
    assert c.subscribe(f"$aws/things/{device.thing}/jobs/#") == (1,)
    yield c
    c.close()


def request(c, thing, op, payload):
    """Publishes a Jobs request and returns (outcome, payload) of its answer,
    skipping notifications."""
    base = f"$aws/things/{thing}/jobs/{op}"
    c.publish(base, payload)
    while True:
        topic, answer = c.next_message()
        if topic in (base + "/accepted", base + "/rejected"):
            return topic.rsplit("/", 1)[1], answer


def next_notification(c, thing, kind="notify-next"):
    want = f"$aws/things/{thing}/jobs/{kind}"
    while True:
        topic, payload = c.next_message()
        if topic == want:
            return payload


def test_firmware_job_lifecycle(platform, device, jobs_client):
    c, t = jobs_client, device.thing
    platform.add_firmware("fw-2.0", b"image")
    job = platform.queue_job(t, firmware_id="fw-2.0", deployment_id="dep-1")
    pushed = next_notification(c, t)["execution"]
    assert (pushed["jobId"], pushed["status"]) == (job, "QUEUED")

    outcome, listed = request(c, t, "get", {"clientToken": "ct-1"})
    assert outcome == "accepted" and listed["clientToken"] == "ct-1"
    assert [j["jobId"] for j in listed["queuedJobs"]] == [job] and listed["inProgressJobs"] == []
    assert {"queuedAt", "lastUpdatedAt", "versionNumber", "executionNumber"} <= \
        set(listed["queuedJobs"][0])

    outcome, described = request(c, t, f"{job}/get", {})
    doc = described["execution"]["jobDocument"]
    assert doc["operation"] == "firmware_update" and doc["deploymentId"] == "dep-1"
    assert doc["firmwareId"] == "fw-2.0"
    assert doc["firmwareUrl"].startswith(f"http://127.0.0.1:{platform.http_port}/firmware/fw-2.0?")

    outcome, started = request(c, t, "start-next", {"statusDetails": {"percentProgress": "0"}})
    ex = started["execution"]
    assert (ex["jobId"], ex["status"], ex["versionNumber"]) == (job, "IN_PROGRESS", 2)

    # Numbers in statusDetails are accepted (the samples send them), kept as text.
    outcome, updated = request(c, t, f"{job}/update", {
        "status": "IN_PROGRESS", "statusDetails": {"percentProgress": 50},
        "expectedVersion": 2, "includeJobExecutionState": True})
    assert outcome == "accepted"
    assert updated["executionState"] == {"status": "IN_PROGRESS", "versionNumber": 3,
                                         "statusDetails": {"percentProgress": "50"}}

    outcome, err = request(c, t, f"{job}/update", {"status": "IN_PROGRESS", "expectedVersion": 2})
    assert outcome == "rejected" and err["code"] == "VersionMismatch"
    assert err["executionState"]["versionNumber"] == 3

    outcome, err = request(c, t, f"{job}/update", {"status": "QUEUED"})
    assert outcome == "rejected" and err["code"] == "InvalidStateTransition"

    outcome, _ = request(c, t, f"{job}/update", {"status": "SUCCEEDED",
                                                  "statusDetails": {"percentProgress": "100"}})
    assert outcome == "accepted"
    assert "execution" not in next_notification(c, t)  # nothing pending any more
    outcome, err = request(c, t, f"{job}/update", {"status": "FAILED"})
    assert outcome == "rejected" and err["code"] == "TerminalStateReached"

    assert platform.job_execution(t, job)["status"] == "SUCCEEDED"
    history = platform.job_history(t, job)
    assert [(h["status"], h["versionNumber"], h["statusDetails"].get("percentProgress"))
            for h in history] == [("QUEUED", 1, None), ("IN_PROGRESS", 2, "0"),
                                  ("IN_PROGRESS", 3, "50"), ("SUCCEEDED", 4, "100")]
    assert history[2]["rawStatusDetails"] == {"percentProgress": 50}


def test_notify_next_follows_the_queue(platform, device, jobs_client):
    c, t = jobs_client, device.thing
    first = platform.queue_job(t, document={"operation": "noop"})
    assert next_notification(c, t)["execution"]["jobId"] == first
    second = platform.queue_job(t, document={"operation": "noop"})
    # The next job did not change, so only the list notification comes.
    listed = next_notification(c, t, "notify")
    assert [j["jobId"] for j in listed["jobs"]["QUEUED"]] == [first, second]
    platform.cancel_job(t, first)
    assert next_notification(c, t)["execution"]["jobId"] == second
    assert platform.job_execution(t, first)["status"] == "CANCELED"
    outcome, err = request(c, t, f"{first}/update", {"status": "IN_PROGRESS"})
    assert outcome == "rejected" and err["code"] == "TerminalStateReached"
    assert err["executionState"]["status"] == "CANCELED"

    outcome, _ = request(c, t, "start-next", {})
    with pytest.raises(Exception, match="force"):
        platform.cancel_job(t, second)
    platform.cancel_job(t, second, force=True)
    assert "execution" not in next_notification(c, t)
    outcome, nothing = request(c, t, "$next/get", {})
    assert outcome == "accepted" and "execution" not in nothing


def test_jobs_errors(platform, device, jobs_client):
    c, t = jobs_client, device.thing
    outcome, err = request(c, t, "no-such-job/get", {"clientToken": "x"})
    assert outcome == "rejected" and err["code"] == "ResourceNotFound" and err["clientToken"] == "x"
    job = platform.queue_job(t, document={"operation": "noop"})
    for payload, code in (("{bad", "InvalidJson"), ({}, "InvalidRequest"),
                          ({"status": "DONE"}, "InvalidRequest"),
                          ({"status": "IN_PROGRESS", "statusDetails": {"bad key": "1"}},
                           "InvalidRequest"),
                          ({"status": "IN_PROGRESS", "statusDetails": {"k": ""}},
                           "InvalidRequest"),
                          ({"status": "IN_PROGRESS", "statusDetails": {"k": True}},
                           "InvalidRequest")):
        outcome, err = request(c, t, f"{job}/update", payload)
        assert (outcome, err["code"]) == ("rejected", code), payload
        assert err["message"]
    outcome, err = request(c, t, "bogus/op/here", {})
    assert outcome == "rejected" and err["code"] == "InvalidTopic"


def test_store_alone():
    store = JobStore(render=lambda d: {**d, "rendered": True})
    store.queue("t", "a", {"op": 1})
    with pytest.raises(ValueError):
        store.queue("t", "a", {})
    with pytest.raises(ValueError):
        store.queue("t", "bad id", {})
    assert store.describe("t", "a", {})["execution"]["jobDocument"] == {"op": 1, "rendered": True}
    assert "jobDocument" not in store.describe("t", "a", {"includeJobDocument": False})["execution"]
    assert store.start_next("t", {}, "dev")["execution"]["versionNumber"] == 2
    assert store.start_next("t", {}, "dev")["execution"]["versionNumber"] == 2  # unchanged
    with pytest.raises(JobError) as e:
        store.update("t", "a", {"status": "SUCCEEDED", "executionNumber": 2}, "dev")
    assert e.value.code == "ResourceNotFound"
    store.update("t", "a", {"status": "REJECTED"}, "dev")
    assert store.start_next("t", {}, "dev") == {}
    assert store.get_pending("t") == {"inProgressJobs": [], "queuedJobs": []}
