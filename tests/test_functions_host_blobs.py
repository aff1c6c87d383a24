"""Blob triggers in the host stand-in against real Azurite: both sources, receipts, poison, dead letter.

Each test has its own containers and host id (`AzureFunctionsWebHost__hostid`), so receipts, the
Event Grid subscription and its delivery queue are its own. Event Grid's schedule is scaled x0.1.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient
from test_functions_host import Harness, log_of

from devtools.services import wait_until
from emulators.functions_host.blob_receipts import HOSTS_CONTAINER


@pytest.fixture
def harness(tmp_path: Path, azurite_connection_string: str) -> Iterator[Harness]:
    h = Harness(tmp_path, azurite_connection_string)
    yield h
    for service in h.services:
        service.kill()


FAST = ("--blob-scan-interval-s", "0.2", "--eventgrid-time-scale", "0.1", "--lease-s", "10")


def _app(
    harness: Harness, unique_name: Callable[[str], str], **extra: str
) -> tuple[str, dict[str, str]]:
    values = {
        "MyStorage": harness.connection_string,
        "POLL_CONTAINER": unique_name("poll"),
        "GRID_CONTAINER": unique_name("grid"),
        "AzureFunctionsWebHost__hostid": unique_name("h"),
        **extra,
    }
    return str(harness.app("blobs", values, {"messageEncoding": "none"})), values


def _by_kind(harness: Harness, kind: str) -> list[dict[str, object]]:
    return [r for r in harness.records() if r["kind"] == kind]


def test_polling_fires_existing_blobs_once_across_a_restart(
    harness: Harness, unique_name: Callable[[str], str]
) -> None:
    app_dir, values = _app(harness, unique_name)
    blobs = BlobServiceClient.from_connection_string(harness.connection_string)
    container = blobs.create_container(values["POLL_CONTAINER"])
    for i in range(3):
        container.upload_blob(f"in/existing-{i}.txt", f"body-{i}".encode())
    container.upload_blob("in/other.json", b"not matching")
    container.upload_blob("out/x.txt", b"not matching either")

    first = harness.start_host(app_dir, *FAST)
    wait_until(lambda: len(_by_kind(harness, "polled")) == 3, 30, what="3 existing blobs")
    seen = {r["name"] for r in _by_kind(harness, "polled")}
    assert seen == {f"{values['POLL_CONTAINER']}/in/existing-{i}.txt" for i in range(3)}
    record = next(r for r in _by_kind(harness, "polled") if r["name"].endswith("existing-0.txt"))
    assert record["body"] == "body-0" and record["length"] == 6
    assert str(record["uri"]).endswith(f"/{values['POLL_CONTAINER']}/in/existing-0.txt")
    receipts = [
        b.name
        for b in blobs.get_container_client(HOSTS_CONTAINER).list_blobs(
            name_starts_with=f"blobreceipts/{values['AzureFunctionsWebHost__hostid']}/"
        )
    ]
    assert len(receipts) == 3 and all("Host.Functions.polled/" in r for r in receipts)
    first.stop()

    second = harness.start_host(app_dir, *FAST)
    container.upload_blob("in/existing-0.txt", b"overwritten", overwrite=True)  # a new version
    wait_until(lambda: len(_by_kind(harness, "polled")) == 4, 30, what="the overwritten blob")
    wait_until(lambda: log_of(second).count("Executed 'Functions.polled'") >= 1, 10, what="log")
    assert log_of(second).count("Executing 'Functions.polled'") == 1  # not the other two again
    assert "Reason='New blob detected(LogsAndContainerScan)" in log_of(second)


def test_polling_poisons_after_five_failures(
    harness: Harness, unique_name: Callable[[str], str]
) -> None:
    app_dir, values = _app(harness, unique_name, FAIL_NAMES="bad")
    blobs = BlobServiceClient.from_connection_string(harness.connection_string)
    container = blobs.create_container(values["POLL_CONTAINER"])
    poison = QueueClient.from_connection_string(
        harness.connection_string, "webjobs-blobtrigger-poison"
    )
    before = {m.id for m in poison.peek_messages(max_messages=32)} if _exists(poison) else set()
    host = harness.start_host(app_dir, *FAST)
    container.upload_blob("in/broken.txt", b"bad")
    etag = container.get_blob_client("in/broken.txt").get_blob_properties().etag

    def mine() -> list[dict[str, str]]:
        if not _exists(poison):
            return []
        bodies = [
            json.loads(m.content)
            for m in poison.peek_messages(max_messages=32)
            if m.id not in before
        ]
        return [b for b in bodies if b.get("ContainerName") == values["POLL_CONTAINER"]]

    wait_until(lambda: bool(mine()), 30, what="the poison message")
    assert len(_by_kind(harness, "polled")) == 5
    assert mine()[0] == {
        "Type": "BlobTrigger", "FunctionId": "Host.Functions.polled", "BlobType": "BlockBlob",
        "ContainerName": values["POLL_CONTAINER"], "BlobName": "in/broken.txt", "ETag": etag,
    }  # fmt: skip
    assert "MaxDequeueCount of 5" in log_of(host)


def _exists(queue: QueueClient) -> bool:
    try:
        queue.get_queue_properties()
        return True
    except Exception:
        return False


def test_event_grid_fires_new_and_overwritten_blobs_only(
    harness: Harness, unique_name: Callable[[str], str]
) -> None:
    app_dir, values = _app(harness, unique_name)
    blobs = BlobServiceClient.from_connection_string(harness.connection_string)
    container = blobs.create_container(values["GRID_CONTAINER"])
    container.upload_blob("old/manifest.json", b"before the subscription")
    host = harness.start_host(app_dir, *FAST)
    container.upload_blob("a/manifest.json", b"a1")
    container.upload_blob("a/status.json", b"no")
    container.upload_blob("a/0.png", b"no")
    wait_until(lambda: len(_by_kind(harness, "gridded")) == 1, 30, what="the new manifest")
    container.upload_blob("a/manifest.json", b"a2", overwrite=True)
    wait_until(lambda: len(_by_kind(harness, "gridded")) == 2, 30, what="the overwritten manifest")
    bodies = sorted(str(r["body"]) for r in _by_kind(harness, "gridded"))
    assert bodies == ["a1", "a2"]
    assert "Reason='New blob detected(EventGrid)" in log_of(host)
    assert "status.json" not in log_of(host) and "0.png" not in log_of(host)


def test_event_grid_retries_then_dead_letters(
    harness: Harness, unique_name: Callable[[str], str]
) -> None:
    app_dir, values = _app(harness, unique_name, FAIL_NAMES="doomed")
    dead = unique_name("dead")
    blobs = BlobServiceClient.from_connection_string(harness.connection_string)
    container = blobs.create_container(values["GRID_CONTAINER"])
    host = harness.start_host(
        app_dir, *FAST, "--eventgrid-max-attempts", "3", "--eventgrid-dead-letter-container", dead
    )
    container.upload_blob("x/manifest.json", b"doomed")
    letters = blobs.get_container_client(dead)

    def found() -> list[str]:
        try:
            return [b.name for b in letters.list_blobs()]
        except Exception:
            return []

    wait_until(lambda: bool(found()), 60, what="the dead-lettered event")
    assert len(_by_kind(harness, "gridded")) == 3
    name = found()[0]
    assert name.startswith("DEVSTOREACCOUNT1/GRIDDED/")
    [event] = json.loads(letters.download_blob(name).readall())
    assert event["eventType"] == "Microsoft.Storage.BlobCreated"
    assert event["subject"].endswith(
        f"/containers/{values['GRID_CONTAINER']}/blobs/x/manifest.json"
    )
    assert (event["deadLetterReason"], event["deliveryAttempts"]) == (
        "MaxDeliveryAttemptsExceeded",
        3,
    )
    assert log_of(host).count("retrying in") == 2


def test_event_grid_poison_queue_body_is_readable_by_a_queue_trigger() -> None:
    from emulators.functions_host.blob_polling import encode_for_queue

    assert base64.b64decode(encode_for_queue("{}", "base64")) == b"{}"
    assert encode_for_queue("{}", "none") == "{}"
