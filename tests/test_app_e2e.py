"""function_app.py end to end: the host stand-in, Azurite and the emulator over real HTTP.

Each test uses its own queue and container; prompts are unique so scripted outcomes hit only them.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from typing import Any

import pytest
from conftest import Emulator
from PIL import Image
from product_stack import Product

from devtools.services import wait_until
from shared.records.models import Manifest, Status, StatusDoc

pytestmark = pytest.mark.slow


def prompt(tag: str) -> str:
    return f"{tag} {uuid.uuid4().hex[:8]}"


def attempts(record: dict[str, Any]) -> list[dict[str, Any]]:
    return record["attempts"]


def test_partial_images_zero_is_raised_and_2048_high_succeeds(
    product: Product, emulator: Emulator
) -> None:
    text = prompt("an apple")
    rid = product.client.submit(
        {"prompt": text, "size": "2048x2048", "quality": "high", "partial_images": 0}
    )
    manifest = product.wait_terminal(rid)
    assert manifest["status"] == "succeeded", manifest
    (call,) = emulator.calls_for(text)
    assert call["body"]["partial_images"] >= 1
    assert call["body"]["stream"] in (True, "true")
    (image,) = manifest["images"]
    assert (image["width"], image["height"]) == (2048, 2048)
    assert image["blob"] == f"{rid}/0.png"
    data = product.container.download_blob(image["blob"]).readall()
    assert Image.open(io.BytesIO(data)).size == (2048, 2048)
    blob = product.container.get_blob_client(image["blob"]).get_blob_properties()
    assert blob.content_settings.content_type == "image/png"
    assert blob.metadata["request_id"] == rid
    assert manifest["schema"] == "imagegen.manifest/1"
    assert manifest["attempts"][0]["apim_request_id"] == call["apim_request_id"]
    assert product.read_json(rid, "status.json")["status"] == "succeeded"


def test_the_client_returns_the_stored_documents_as_their_models(product: Product) -> None:
    rid = product.client.submit({"prompt": prompt("typed"), "size": "1024x1024", "quality": "low"})
    manifest = product.client.wait(rid, timeout=60, poll_s=0.1)
    assert isinstance(manifest, Manifest) and manifest.succeeded
    # What the pipeline stored reads back to the same JSON, field for field.
    assert manifest.model_dump(mode="json") == product.read_json(rid, "manifest.json")
    assert manifest.images[0].blob == f"{rid}/0.png" and manifest.request["id"] == rid
    data = product.container.download_blob(manifest.images[0].blob).readall()
    assert hashlib.sha256(data).hexdigest() == manifest.images[0].sha256
    assert product.client.status(rid) == manifest  # the terminal record wins over status.json
    stored_status = product.read_json(rid, "status.json")
    assert stored_status is not None and stored_status["schema"] == "imagegen.status/1"
    status = StatusDoc.model_validate(stored_status)
    assert status.status is Status.SUCCEEDED and status.finished
    assert status.model_dump(mode="json") == stored_status


def test_gateway_timeout_is_retried_with_one_more_partial(
    product: Product, emulator: Emulator
) -> None:
    text = prompt("gateway")
    emulator.script({"outcome": "gateway_timeout", "prompt_contains": text})
    rid = product.client.submit(
        {"prompt": text, "size": "1024x1024", "quality": "low", "partial_images": 1}
    )
    manifest = product.wait_terminal(rid)
    assert manifest["status"] == "succeeded"
    first, second = emulator.calls_for(text)
    assert first["status"] == 408
    assert second["body"]["partial_images"] == first["body"]["partial_images"] + 1
    assert [a["outcome"] for a in attempts(manifest)] == ["gateway_timeout", "succeeded"]
    assert [a["partial_images_sent"] for a in attempts(manifest)] == [1, 2]


def test_mid_stream_server_error_is_retried_and_both_attempts_recorded(
    product: Product, emulator: Emulator
) -> None:
    text = prompt("crash")
    emulator.script({"outcome": "server_error", "after_partials": 1, "prompt_contains": text})
    rid = product.client.submit({"prompt": text, "size": "1536x1024", "output_format": "jpeg"})
    manifest = product.wait_terminal(rid)
    assert manifest["status"] == "succeeded"
    calls = emulator.calls_for(text)
    assert len(calls) == 2
    recorded = attempts(manifest)
    assert [a["outcome"] for a in recorded] == ["server_error", "succeeded"]
    assert [a["attempt"] for a in recorded] == [1, 2]
    assert [a["apim_request_id"] for a in recorded] == [c["apim_request_id"] for c in calls]
    assert recorded[0]["error"]["type"] == "server_error"
    assert recorded[0]["partials_received"] == 1
    assert manifest["images"][0]["blob"] == f"{rid}/0.jpg"
    assert manifest["images"][0]["content_type"] == "image/jpeg"


def test_rate_limited_call_waits_out_retry_after_ms(product: Product, emulator: Emulator) -> None:
    text = prompt("busy")
    # Emulated time: 150 s at the x0.01 clock is a retry-after-ms of 1500 on the wire.
    emulator.script({"outcome": "rate_limited", "retry_after_ms": 150_000, "prompt_contains": text})
    rid = product.client.submit({"prompt": text, "size": "1024x1024", "quality": "low"})
    manifest = product.wait_terminal(rid)
    assert manifest["status"] == "succeeded"
    first, second = attempts(manifest)
    assert first["outcome"] == "rate_limited" and first["http_status"] == 429
    assert first["retry_after_s"] == pytest.approx(1.5)
    waited = _seconds_between(first["started_at"], second["started_at"]) - first["elapsed_s"]
    assert waited >= 1.5 - 0.05, f"waited only {waited:.3f}s of the 1.5 s asked"


def _seconds_between(a: str, b: str) -> float:
    from datetime import datetime

    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(b) - parse(a)).total_seconds()


def test_content_filter_fails_after_exactly_one_call(product: Product, emulator: Emulator) -> None:
    text = prompt("filtered")
    emulator.script({"outcome": "content_filter", "prompt_contains": text})
    rid = product.client.submit({"prompt": text, "size": "1024x1024"})
    record = product.wait_terminal(rid)
    assert record["status"] == "failed"
    assert record["error"]["kind"] == "content_filter"
    assert len(emulator.calls_for(text)) == 1
    assert product.read_json(rid, "manifest.json") is None


def test_dropped_connection_is_retried(product: Product, emulator: Emulator) -> None:
    text = prompt("drop")
    emulator.script({"outcome": "drop", "after_partials": 1, "prompt_contains": text})
    rid = product.client.submit({"prompt": text, "size": "1024x1024", "quality": "low"})
    manifest = product.wait_terminal(rid)
    assert manifest["status"] == "succeeded"
    assert [a["outcome"] for a in attempts(manifest)] == ["dropped", "succeeded"]


def test_attempts_stop_at_the_cap(product: Product, emulator: Emulator) -> None:
    text = prompt("doomed")
    emulator.script(*[{"outcome": "http_error", "status": 503, "prompt_contains": text}] * 6)
    rid = product.client.submit({"prompt": text, "size": "1024x1024", "quality": "low"})
    record = product.wait_terminal(rid)
    assert record["status"] == "failed"
    assert record["error"]["kind"] == "retries_exhausted"
    assert len(emulator.calls_for(text)) == 4
    assert [a["attempt"] for a in attempts(record)] == [1, 2, 3, 4]


def test_same_id_twice_generates_once(product: Product, emulator: Emulator) -> None:
    text = prompt("twice")
    request = {
        "id": f"twice-{uuid.uuid4().hex[:6]}",
        "prompt": text,
        "size": "1024x1024",
        "quality": "low",
    }
    product.client.submit(request)
    product.client.submit(request)
    manifest = product.wait_terminal(request["id"])
    assert manifest["status"] == "succeeded"
    product.wait_until_queue_empty()
    assert len(emulator.calls_for(text)) == 1


def test_n_three_makes_three_calls_and_images(product: Product, emulator: Emulator) -> None:
    text = prompt("three")
    rid = product.client.submit({"prompt": text, "size": "1024x1024", "quality": "low", "n": 3})
    manifest = product.wait_terminal(rid)
    assert manifest["status"] == "succeeded"
    assert len(emulator.calls_for(text)) == 3
    assert [i["index"] for i in manifest["images"]] == [0, 1, 2]
    assert {f"{rid}/{k}.png" for k in range(3)} <= set(product.blob_names(rid))
    for image in manifest["images"]:
        data = product.container.download_blob(image["blob"]).readall()
        assert image["sha256"] == hashlib.sha256(data).hexdigest(), image


def _png(size: tuple[int, int], colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", size, colour).save(out, "PNG")
    return out.getvalue()


def test_edit_with_two_input_images(product: Product, emulator: Emulator) -> None:
    sources = [
        product.upload_input("a.png", _png((64, 64), "red")),
        product.upload_input("b.png", _png((64, 64), "blue")),
    ]
    text = prompt("combine")
    rid = product.client.submit(
        {"operation": "edit", "prompt": text, "size": "1024x1024", "input_images": sources}
    )
    manifest = product.wait_terminal(rid)
    assert manifest["status"] == "succeeded", manifest
    (call,) = emulator.calls_for(text)
    assert call["endpoint"] == "edits"
    image_parts = [p for p in call["parts"] if p["name"] in ("image", "image[]")]
    assert len(image_parts) == 2


def test_edit_naming_another_container_is_rejected(product: Product, emulator: Emulator) -> None:
    message_id = product.send_raw(
        json.dumps(
            {
                "id": "edit-other",
                "operation": "edit",
                "prompt": "x",
                "input_images": ["secrets/a.png"],
            }
        )
    )
    record = product.wait_record("edit-other", "error.json")
    assert record["status"] == "rejected"
    assert record["error"]["kind"] == "invalid_request"
    assert record["error"]["message"].startswith("input_images[0]:")
    assert record["queue_message_id"] == message_id
    assert emulator.requests_log() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("{not json", "body"),
        (json.dumps({"prompt": "x", "colour": "red"}), "colour"),
        (json.dumps({"prompt": "x", "size": "1000x1000"}), "size"),
        (json.dumps({"prompt": "x", "output_format": "webp"}), "output_format"),
        (json.dumps({"id": "../x", "prompt": "x"}), "id"),
        (json.dumps({"prompt": "x" * 40_000}), "prompt"),
    ],
)
def test_invalid_messages_get_specific_error_records(
    product: Product, emulator: Emulator, body: str, field: str
) -> None:
    message_id = product.send_raw(body)
    record = product.wait_record(message_id, "error.json")
    assert record["status"] == "rejected"
    assert record["error"]["kind"] == "invalid_request"
    assert record["error"]["message"].startswith(f"{field}:"), record["error"]["message"]
    assert record["input"][:20] == body[:20]
    assert len(record["input"].encode()) <= 1100
    assert emulator.requests_log() == []


@pytest.mark.parametrize("as_base64", [False, True])
def test_raw_and_base64_bodies_both_work(
    product: Product, emulator: Emulator, as_base64: bool
) -> None:
    rid = f"enc-{uuid.uuid4().hex[:8]}"
    product.send_raw(
        json.dumps({"id": rid, "prompt": prompt("enc"), "quality": "low"}), as_base64=as_base64
    )
    assert product.wait_terminal(rid)["status"] == "succeeded"


def test_auth_failure_ends_poisoned_never_deleted(product_factory, emulator: Emulator) -> None:  # type: ignore[no-untyped-def]
    product = product_factory(api_key="wrong-key")
    rid = product.client.submit({"prompt": prompt("locked out"), "quality": "low"})
    record = product.wait_record(rid, "error.json", timeout=90)
    assert record["status"] == "failed"
    assert record["error"]["kind"] == "poisoned"
    assert json.loads(record["input"])["id"] == rid  # the whole body, for requeue-poison
    assert record["attempts"] and {a["outcome"] for a in record["attempts"]} == {"auth_error"}
    assert all(a["http_status"] == 401 for a in record["attempts"])
    assert "wrong-key" not in json.dumps(record)


def test_a_long_request_continues_in_fresh_invocations_without_regenerating(
    product_factory,  # type: ignore[no-untyped-def]
    emulator: Emulator,
) -> None:
    # 1 RPM over the scaled 0.6 s minute: one send per 0.61 s, so the third image's send falls
    # after the 1 s budget; 2048x2048 medium (about 1.2 s at x0.01) outlasts the budget too.
    overrides = {"IMAGE_INVOCATION_BUDGET_S": "1", "AZURE_OPENAI_RPM": "1"}
    product = product_factory(overrides=overrides)
    text = prompt("budget")
    rid = product.client.submit({"prompt": text, "size": "2048x2048", "quality": "medium", "n": 3})
    manifest = product.wait_terminal(rid)
    assert manifest["status"] == "succeeded"
    assert len(emulator.calls_for(text)) == 3
    assert sorted(a["image_index"] for a in manifest["attempts"]) == [0, 1, 2]
    invocations = product.host.log_tail(500).count("Executing 'Functions.process_image_request'")
    assert invocations >= 2


def test_a_redelivery_repairs_a_status_left_running_beside_a_manifest(product: Product) -> None:
    """A delivery killed between manifest.json and its last status write leaves `running`."""
    request = {"id": f"stale-{uuid.uuid4().hex[:6]}", "prompt": prompt("stale"), "quality": "low"}
    product.client.submit(request)
    assert product.wait_terminal(request["id"])["status"] == "succeeded"
    product.wait_until_queue_empty()
    status = product.read_json(request["id"], "status.json")
    assert status is not None
    product.container.upload_blob(
        f"{request['id']}/status.json", json.dumps({**status, "status": "running"}), overwrite=True
    )
    product.client.submit(request)  # the redelivery: same body, same id
    wait_until(
        lambda: (
            (product.read_json(request["id"], "status.json") or {}).get("status") == "succeeded"
        ),
        30,
        interval=0.1,
        what="status.json repaired",
    )
    assert "already has manifest.json" in product.host.log_tail(200)
