"""The request blob layout against a real Azurite: images, status, records, the lease lock, inputs."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.storage.blob import BlobLeaseClient, BlobServiceClient, ContainerClient
from PIL import Image

from devtools.services import wait_until
from shared.records.imageinfo import UnknownImageFormat
from shared.storage.store import (
    ImageInfo,
    InputNotFound,
    LeaseLost,
    LockHeld,
    RequestLock,
    RequestStore,
    StoreError,
    dumps,
)

USAGE = {"input_tokens": 12, "output_tokens": 4160, "total_tokens": 4172}


def encode(size: tuple[int, int], fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color=(200, 30, 30)).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def service(azurite_connection_string: str) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azurite_connection_string)


@pytest.fixture
def container(
    service: BlobServiceClient, unique_name: Callable[[str], str]
) -> Iterator[ContainerClient]:
    client = service.get_container_client(unique_name("images"))
    yield client
    client.delete_container()


@pytest.fixture
def store(service: BlobServiceClient, container: ContainerClient) -> RequestStore:
    store = RequestStore(service, container.container_name)
    store.ensure_container()
    return store


def test_ensure_container_is_idempotent(store: RequestStore, container: ContainerClient) -> None:
    store.ensure_container()
    assert container.exists()


# -- status.json ------------------------------------------------------------------------------


def test_status_is_overwritten_as_compact_utf8_json(
    store: RequestStore, container: ContainerClient
) -> None:
    assert store.read_json("req-1", "status.json") is None
    store.write_status("req-1", {"id": "req-1", "status": "queued", "prompt": "café ☕"})
    store.write_status("req-1", {"id": "req-1", "status": "running", "prompt": "café ☕"})

    assert store.read_json("req-1", "status.json") == {
        "id": "req-1",
        "status": "running",
        "prompt": "café ☕",
    }
    blob = container.get_blob_client("req-1/status.json")
    raw = blob.download_blob().readall()
    assert raw == '{"id":"req-1","status":"running","prompt":"café ☕"}'.encode()
    assert blob.get_blob_properties().content_settings.content_type == "application/json"


def test_lone_surrogate_is_kept_escaped() -> None:
    doc = {"prompt": "a\ud800b", "other": "é"}
    assert json.loads(dumps(doc)) == doc


def test_read_json_refuses_a_non_object(store: RequestStore, container: ContainerClient) -> None:
    container.upload_blob("req-1/status.json", b"[1, 2]")
    with pytest.raises(StoreError, match=r"req-1/status\.json"):
        store.read_json("req-1", "status.json")


def test_ids_that_would_leave_the_folder_are_refused(store: RequestStore) -> None:
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError, match="id"):
            store.write_status(bad, {})


# -- images -----------------------------------------------------------------------------------


def test_png_image_round_trips_through_its_metadata(
    store: RequestStore, container: ContainerClient
) -> None:
    data = encode((64, 48), "PNG")
    info = store.write_image("req-1", 0, data, "png", request_id="req-1", usage=USAGE)

    assert info == ImageInfo(
        index=0,
        blob="req-1/0.png",
        content_type="image/png",
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        width=64,
        height=48,
        usage=USAGE,
    )
    blob = container.get_blob_client("req-1/0.png")
    props = blob.get_blob_properties()
    assert props.content_settings.content_type == "image/png"
    assert props.metadata["request_id"] == "req-1"
    assert props.metadata["image_index"] == "0"
    assert blob.download_blob().readall() == data

    assert store.existing_image("req-1", 0, "png") == info
    assert store.existing_image("req-1", 1, "png") is None
    assert store.existing_image("req-2", 0, "png") is None


def test_jpeg_is_stored_as_jpg(store: RequestStore, container: ContainerClient) -> None:
    data = encode((160, 96), "JPEG")
    info = store.write_image("req-1", 2, data, "jpeg", request_id="req-1", usage=None)

    assert info.blob == "req-1/2.jpg"
    assert (info.width, info.height, info.usage) == (160, 96, None)
    props = container.get_blob_client("req-1/2.jpg").get_blob_properties()
    assert props.content_settings.content_type == "image/jpeg"
    assert props.metadata["image_index"] == "2"
    assert store.existing_image("req-1", 2, "jpeg") == info
    assert store.existing_image("req-1", 2, "png") is None


def test_rewritten_image_replaces_the_first(store: RequestStore) -> None:
    store.write_image("req-1", 0, encode((32, 32), "PNG"), "png", request_id="req-1", usage=None)
    second = encode((48, 16), "PNG")
    store.write_image("req-1", 0, second, "png", request_id="req-1", usage=USAGE)

    found = store.existing_image("req-1", 0, "png")
    assert found is not None
    assert (found.sha256, found.width, found.height, found.usage) == (
        hashlib.sha256(second).hexdigest(),
        48,
        16,
        USAGE,
    )


def test_image_of_another_format_or_none_is_refused(
    store: RequestStore, container: ContainerClient
) -> None:
    with pytest.raises(StoreError, match="png, not the requested jpeg"):
        store.write_image("req-1", 0, encode((16, 16), "PNG"), "jpeg", request_id="r", usage=None)
    with pytest.raises(UnknownImageFormat):
        store.write_image("req-1", 0, b"not an image", "png", request_id="r", usage=None)
    assert list(container.list_blob_names()) == []


def test_blob_without_our_metadata_is_not_a_finished_image(
    store: RequestStore, container: ContainerClient
) -> None:
    container.upload_blob("req-1/0.png", encode((16, 16), "PNG"))
    assert store.existing_image("req-1", 0, "png") is None


def test_image_info_json_is_the_manifest_entry() -> None:
    info = ImageInfo(0, "r/0.png", "image/png", 10, "ab" * 32, 1024, 1536, USAGE)
    doc = json.loads(json.dumps(info.to_json()))
    assert list(doc) == [
        "index",
        "blob",
        "content_type",
        "bytes",
        "sha256",
        "width",
        "height",
        "usage",
    ]
    assert ImageInfo.from_json(doc) == info


def test_partials_are_named_by_image_and_partial(
    store: RequestStore, container: ContainerClient
) -> None:
    data = encode((16, 16), "JPEG")
    name = store.write_partial("req-1", 1, 2, data, "jpeg")

    assert name == "req-1/partials/1-2.jpg"
    blob = container.get_blob_client(name)
    assert blob.download_blob().readall() == data
    props = blob.get_blob_properties()
    assert props.content_settings.content_type == "image/jpeg"
    assert props.metadata["partial_index"] == "2"
    assert store.write_partial("req-1", 0, 0, data, "png") == "req-1/partials/0-0.png"


# -- manifest.json / error.json ---------------------------------------------------------------


def test_records_are_create_only(store: RequestStore) -> None:
    assert store.terminal("req-1") is None
    assert store.create_record("req-1", "error.json", {"status": "failed", "n": 1}) is True
    assert store.create_record("req-1", "error.json", {"status": "failed", "n": 2}) is False
    assert store.read_json("req-1", "error.json") == {"status": "failed", "n": 1}
    assert store.terminal("req-1") == "error"

    assert store.create_record("req-1", "manifest.json", {"status": "succeeded"}) is True
    assert store.create_record("req-1", "manifest.json", {"status": "other"}) is False
    assert store.read_json("req-1", "manifest.json") == {"status": "succeeded"}
    assert store.terminal("req-1") == "manifest"


def test_only_manifest_and_error_are_records(store: RequestStore) -> None:
    with pytest.raises(ValueError, match=r"status\.json"):
        store.create_record("req-1", "status.json", {})  # type: ignore[arg-type]


def test_delete_record_tolerates_a_missing_one(store: RequestStore) -> None:
    store.create_record("req-1", "error.json", {"status": "failed"})
    store.delete_record("req-1", "error.json")
    store.delete_record("req-1", "error.json")
    assert store.terminal("req-1") is None
    assert store.create_record("req-1", "error.json", {"status": "failed", "again": True})


# -- the lock ---------------------------------------------------------------------------------


def test_second_lock_waits_for_the_first_to_release(store: RequestStore) -> None:
    with store.lock("req-1", lease_s=15):
        with pytest.raises(LockHeld, match=r"req-1/status\.json"):
            store.lock("req-1", lease_s=15)
        with store.lock("req-2", lease_s=15):
            pass  # other requests are not affected
    with store.lock("req-1", lease_s=15) as again:
        assert not again.lost


def test_lock_keeps_an_existing_status(store: RequestStore) -> None:
    queued = {"id": "req-1", "status": "queued", "attempts": []}
    store.write_status("req-1", queued)
    with store.lock("req-1", lease_s=15):
        assert store.read_json("req-1", "status.json") == queued
    assert store.read_json("req-1", "status.json") == queued


def test_lock_creates_a_placeholder_status_when_none_exists(store: RequestStore) -> None:
    with store.lock("req-1", lease_s=15):
        assert store.read_json("req-1", "status.json") == {}


def test_only_one_of_many_racing_deliveries_gets_the_lock(store: RequestStore) -> None:
    contenders = 6
    barrier = threading.Barrier(contenders)
    won: list[RequestLock] = []
    refused: list[LockHeld] = []
    other: list[BaseException] = []

    def contend() -> None:
        barrier.wait()
        try:
            won.append(store.lock("race", lease_s=15))
        except LockHeld as exc:
            refused.append(exc)
        except BaseException as exc:
            other.append(exc)

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for lock in won:
        lock.release()
    assert other == []
    assert (len(won), len(refused)) == (1, contenders - 1)


def test_status_writes_under_the_lease(store: RequestStore) -> None:
    with store.lock("req-1", lease_s=15) as lock:
        store.write_status("req-1", {"status": "running"}, lease=lock)
        assert store.read_json("req-1", "status.json") == {"status": "running"}
        # Anyone else (a delivery that has not got the lock) is refused.
        with pytest.raises(LockHeld):
            store.write_status("req-1", {"status": "queued"})
    assert store.read_json("req-1", "status.json") == {"status": "running"}


def test_broken_lease_is_reported_lost(store: RequestStore, container: ContainerClient) -> None:
    with store.lock("req-1", lease_s=15, renew_every_s=0.1) as lock:
        BlobLeaseClient(container.get_blob_client("req-1/status.json")).break_lease(0)
        wait_until(lambda: lock.lost, timeout=10, what="the renewal to notice the break")
        with pytest.raises(LeaseLost):
            lock.ensure_held()
        with pytest.raises(LeaseLost):
            store.write_status("req-1", {"status": "running"}, lease=lock)
    # Released (as far as it could be): the request can be locked again.
    with store.lock("req-1", lease_s=15):
        pass


def test_lease_outside_what_storage_accepts_is_refused(store: RequestStore) -> None:
    for lease_s in (14, 61, -1):
        with pytest.raises(ValueError, match="lease_s"):
            store.lock("req-1", lease_s=lease_s)


def test_renewals_happen_while_held_and_stop_on_release(store: RequestStore) -> None:
    lock = store.lock("req-1", lease_s=15, renew_every_s=0.1)
    with lock:
        wait_until(lambda: lock.renewals >= 3, timeout=10, what="three renewals")
        assert not lock.lost
    count = lock.renewals
    with store.lock("req-1", lease_s=15):
        assert lock.renewals == count


@pytest.mark.slow
def test_renewal_keeps_the_lock_past_the_lease_duration(
    store: RequestStore, container: ContainerClient
) -> None:
    # A control lease taken at the same time and never renewed shows Azurite enforces the duration.
    store.write_status("control", {})
    control = container.get_blob_client("control/status.json")
    BlobLeaseClient(control).acquire(lease_duration=15)
    started = time.monotonic()
    with store.lock("req-1", lease_s=15) as lock:  # renews every 5 s
        wait_until(
            lambda: time.monotonic() - started > 17 and lock.renewals >= 3,
            timeout=30,
            interval=0.25,
            what="the lease's duration to pass",
        )
        assert control.get_blob_properties().lease.state == "expired"
        assert not lock.lost
        with pytest.raises(LockHeld):
            store.lock("req-1", lease_s=15)
        store.write_status("req-1", {"status": "running"}, lease=lock)
    assert store.read_json("req-1", "status.json") == {"status": "running"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FlakyLease:
    """A lease whose renewals fail `failures` times with a network error, each taking 25 s."""

    id = "fake-lease"

    def __init__(self, clock: FakeClock, failures: int, release_error: bool = False) -> None:
        self.clock = clock
        self.failures = failures
        self.release_error = release_error
        self.renew_calls = 0
        self.released = False

    def renew(self, **kwargs: Any) -> None:
        self.renew_calls += 1
        self.clock.now += 25
        if self.renew_calls <= self.failures:
            raise ServiceRequestError("connection reset")

    def release(self, **kwargs: Any) -> None:
        self.released = True
        if self.release_error:
            raise ServiceRequestError("connection reset")


def test_transient_renewal_failures_within_the_lease_are_survived() -> None:
    clock = FakeClock()
    lease = FlakyLease(clock, failures=2)  # fails at t=25 and t=50, renews at t=75 (sent at 50)
    with RequestLock(lease, "r/status.json", 60, renew_every_s=0.01, clock=clock).start() as lock:
        wait_until(lambda: lock.renewals >= 1, timeout=10, what="a renewal")
        assert not lock.lost
    assert lease.released


def test_renewals_failing_for_a_whole_lease_lose_it(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    lease = FlakyLease(clock, failures=10**6, release_error=True)
    with (
        caplog.at_level(logging.WARNING, logger="shared.storage.store"),
        RequestLock(lease, "r/status.json", 60, renew_every_s=0.01, clock=clock).start() as lock,
    ):
        wait_until(lambda: lease.renew_calls >= 3, timeout=10, what="three failed renewals")
        assert lock.lost
    # Losing the lease and failing to release it are logged, never raised.
    assert lease.released
    assert "lost" in caplog.text
    assert "could not release" in caplog.text


# -- inputs -----------------------------------------------------------------------------------


def test_read_input_from_another_container(
    store: RequestStore, service: BlobServiceClient, unique_name: Callable[[str], str]
) -> None:
    inputs = service.get_container_client(unique_name("inputs"))
    inputs.create_container()
    try:
        data = encode((16, 16), "PNG")
        inputs.upload_blob("cats/tabby.png", data)
        assert store.read_input(f"{inputs.container_name}/cats/tabby.png") == ("tabby.png", data)

        missing = f"{inputs.container_name}/cats/none.png"
        with pytest.raises(InputNotFound, match=re.escape(missing)):
            store.read_input(missing)
    finally:
        inputs.delete_container()
    with pytest.raises(InputNotFound, match=r"no-such-container-x/a\.png"):
        store.read_input("no-such-container-x/a.png")
    with pytest.raises(ValueError, match="container/name"):
        store.read_input("just-a-name")
