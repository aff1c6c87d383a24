"""Every call recorded, every request bounded (issue 10), end to end through the host stand-in,
Azurite and the emulator: a call whose handling raised is in the records with its apim-request-id,
the request then succeeds or ends by the cap; an unreachable endpoint ends within the deadline; a
flood of 429s keeps status.json at a fixed size."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from conftest import Emulator
from managed_identity import ManagedIdentityEndpoint
from product_stack import Product

from devtools.services import free_port, wait_until
from shared.records.history import KEEP_FREE_ATTEMPTS

pytestmark = pytest.mark.slow


def prompt(tag: str) -> str:
    return f"{tag} {uuid.uuid4().hex[:8]}"


def outcomes(record: dict[str, Any]) -> list[str]:
    return [a["outcome"] for a in record["attempts"]]


def _status_has(product: Product, rid: str, outcome: str) -> Callable[[], bool]:
    def check() -> bool:
        status = product.read_json(rid, "status.json") or {"attempts": []}
        return outcome in outcomes(status)

    return check


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("broken_base64", "invalid_base64"),
        ("not_an_image", "not_an_image"),
        ("wrong_format", "wrong_format"),
        ("no_image", "no_image"),
    ],
)
def test_a_completed_event_without_a_proper_image_is_retried_never_stored(
    product: Product, emulator: Emulator, payload: str, code: str
) -> None:
    text = prompt(f"payload {payload}")
    emulator.script({"outcome": "bad_completed", "payload": payload, "prompt_contains": text})
    rid = product.client.submit({"prompt": text, "size": "1024x1024", "quality": "low"})
    manifest = product.wait_terminal(rid)
    assert manifest["status"] == "succeeded", manifest
    bad, good = emulator.calls_for(text)
    first, second = manifest["attempts"]
    assert (first["outcome"], first["error"]["code"]) == ("invalid_image", code)
    assert first["apim_request_id"] == bad["apim_request_id"]
    assert second["apim_request_id"] == good["apim_request_id"]
    (image,) = manifest["images"]
    stored = product.container.download_blob(image["blob"]).readall()
    assert stored.startswith(b"\x89PNG\r\n\x1a\n") and len(stored) == image["bytes"]


def test_bad_images_every_time_end_by_the_cap(product: Product, emulator: Emulator) -> None:
    text = prompt("always not an image")
    emulator.script(
        *[{"outcome": "bad_completed", "payload": "not_an_image", "prompt_contains": text}] * 4
    )
    rid = product.client.submit({"prompt": text, "size": "1024x1024", "quality": "low"})
    record = product.wait_terminal(rid)
    assert record["error"]["kind"] == "retries_exhausted"
    assert outcomes(record) == ["invalid_image"] * 4
    assert len(emulator.calls_for(text)) == 4
    assert product.blob_names(rid) == [f"{rid}/error.json", f"{rid}/status.json"]


def test_a_partial_with_a_garbage_index_still_succeeds(
    product: Product, emulator: Emulator
) -> None:
    text = prompt("partial index")
    emulator.script({"outcome": "bad_partial_index", "prompt_contains": text})
    rid = product.client.submit(
        {"prompt": text, "size": "1024x1024", "partial_images": 2, "save_partials": True}
    )
    manifest = product.wait_terminal(rid)
    assert manifest["status"] == "succeeded"
    (call,) = emulator.calls_for(text)
    assert manifest["attempts"][0]["apim_request_id"] == call["apim_request_id"]
    partials = [n for n in product.blob_names(rid) if "/partials/" in n]
    assert partials == [f"{rid}/partials/0-0.png", f"{rid}/partials/0-1.png"]


def test_a_storage_error_in_a_partial_write_is_a_recorded_billed_call(
    product: Product, emulator: Emulator
) -> None:
    text = prompt("partial write")
    rid = f"partial-write-{uuid.uuid4().hex[:8]}"
    with contextlib.suppress(ResourceExistsError):
        product.container.create_container()
    blocker = product.container.get_blob_client(f"{rid}/partials/0-0.png")
    blocker.upload_blob(b"held")
    lease = blocker.acquire_lease(lease_duration=-1)  # the app's write now fails: LeaseIdMissing
    product.client.submit(
        {"id": rid, "prompt": text, "size": "1024x1024", "partial_images": 1, "save_partials": True}
    )
    wait_until(_status_has(product, rid, "client_error"), 60, interval=0.1, what="a client_error")
    lease.break_lease(lease_break_period=0)
    manifest = product.wait_terminal(rid)
    assert manifest["status"] == "succeeded", manifest
    calls = emulator.calls_for(text)
    failed = [a for a in manifest["attempts"] if a["outcome"] == "client_error"]
    assert failed and all(a["http_status"] == 200 for a in failed)
    logged = {c["apim_request_id"] for c in calls}
    assert {a["apim_request_id"] for a in manifest["attempts"]} == logged
    assert len(manifest["attempts"]) == len(calls)


def test_a_token_error_is_recorded_then_the_request_succeeds(
    product_factory: Callable[..., Product], emulator: Emulator
) -> None:
    header = f"identity-header-{uuid.uuid4().hex}"
    # azure-identity retries a 500 itself; enough failures that the first token request fails.
    identity = ManagedIdentityEndpoint(f"token-{uuid.uuid4().hex}", header, fail_first=8)
    try:
        product = product_factory(
            overrides={
                "AZURE_OPENAI_API_KEY": "",
                "IDENTITY_ENDPOINT": identity.url,
                "IDENTITY_HEADER": header,
                "IMAGE_MAX_CONNECT_ERRORS": "20",
            },
        )
        text = prompt("token")
        rid = product.client.submit({"prompt": text, "size": "1024x1024", "quality": "low"})
        manifest = product.wait_terminal(rid, timeout=120)
    finally:
        identity.stop()
    assert manifest["status"] == "succeeded", manifest
    recorded = manifest["attempts"]
    assert recorded[0]["outcome"] == "client_error"
    assert recorded[0]["http_status"] is None and recorded[0]["apim_request_id"] is None
    assert recorded[-1]["outcome"] == "succeeded"
    (call,) = emulator.calls_for(text)  # the failed token requests sent nothing to the service
    assert recorded[-1]["apim_request_id"] == call["apim_request_id"]
    assert header not in json.dumps(manifest)


def _terminal(product: Product, rid: str) -> dict[str, Any] | None:
    try:
        return json.loads(product.container.download_blob(f"{rid}/error.json").readall())
    except ResourceNotFoundError:
        return None


def test_an_endpoint_that_refuses_connections_is_poisoned_not_looped(
    product_factory: Callable[..., Product],
) -> None:
    product = product_factory(
        overrides={"AZURE_OPENAI_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    )
    rid = product.client.submit({"prompt": prompt("refused"), "size": "1024x1024"})
    record = product.wait_record(rid, "error.json", timeout=120)
    assert (record["status"], record["error"]["kind"]) == ("failed", "poisoned")
    assert set(outcomes(record)) == {"connect_error"}
    # maxDequeueCount deliveries of IMAGE_MAX_CONNECT_ERRORS (5) calls each, then the poison record.
    assert record["outcome_counts"] == {"connect_error": 25}
    assert "AZURE_OPENAI_ENDPOINT" in product.host.log_tail(400)


def test_the_deadline_ends_a_request_that_cannot_connect(
    product_factory: Callable[..., Product],
) -> None:
    product = product_factory(
        overrides={
            "AZURE_OPENAI_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "IMAGE_REQUEST_DEADLINE_S": "20",
            "IMAGE_MAX_CONNECT_ERRORS": "50",
            "IMAGE_BACKOFF_MAX_S": "2",
        }
    )
    rid = product.client.submit({"prompt": prompt("deadline"), "size": "1024x1024"})
    record = product.wait_record(rid, "error.json", timeout=60)
    assert (record["status"], record["error"]["kind"]) == ("failed", "deadline_exceeded")
    assert "IMAGE_REQUEST_DEADLINE_S" in record["error"]["message"]
    assert set(outcomes(record)) == {"connect_error"}
    assert record["calls"] == sum(record["outcome_counts"].values()) >= 2
    status = product.read_json(rid, "status.json")
    assert status is not None and status["status"] == "failed"
    assert status["first_delivery_at"] <= record["attempts"][0]["started_at"]


def test_two_hundred_429s_keep_status_json_at_a_fixed_size(
    product: Product, emulator: Emulator
) -> None:
    text = prompt("flood")
    emulator.script(
        *[{"outcome": "rate_limited", "retry_after_ms": 1, "prompt_contains": text}] * 200
    )
    rid = product.client.submit({"prompt": text, "size": "1024x1024", "quality": "low"})
    sizes: list[int] = []

    def watch() -> bool:
        blob = product.container.get_blob_client(f"{rid}/status.json")
        try:
            sizes.append(len(blob.download_blob().readall()))
        except ResourceNotFoundError:
            pass
        return (
            _terminal(product, rid) is not None
            or product.read_json(rid, "manifest.json") is not None
        )

    wait_until(watch, 180, interval=0.2, what="the flooded request to finish")
    manifest = product.wait_terminal(rid)
    assert manifest["status"] == "succeeded", manifest
    # The 200 scripted 429s, and any the emulator's own limit added while the pace adapted.
    calls = len(emulator.calls_for(text))
    assert calls >= 201
    assert manifest["outcome_counts"] == {"rate_limited": calls - 1, "succeeded": 1}
    assert manifest["calls"] == calls
    assert len(manifest["attempts"]) == KEEP_FREE_ATTEMPTS + 1
    assert manifest["attempts"][-1]["attempt"] == calls
    status = product.read_json(rid, "status.json")
    assert status is not None and len(status["attempts"]) == KEEP_FREE_ATTEMPTS + 1
    # Fixed size: it grows until KEEP_FREE_ATTEMPTS free calls are kept, then stays there although
    # 140 more 429s came (records differ by a few bytes: numbers, ids).
    final = len(product.container.download_blob(f"{rid}/status.json").readall())
    assert len(sizes) > 20 and max(sizes) < 1.1 * final
