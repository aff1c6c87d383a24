"""The model's rules and the service's refusals end to end: host stand-in, Azurite, the emulator.

What a deployment's model refuses is rejected before any call (the emulator's log stays empty);
every shape of the content filter's answer ends as `content_filter` after one call with the
verdict in error.json; short or late partial images are coped with.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Emulator, EmulatorFactory
from product_stack import Product

pytestmark = pytest.mark.slow


def prompt(tag: str) -> str:
    return f"{tag} {uuid.uuid4().hex[:8]}"


def _rejections(product: Product, cases: dict[str, tuple[dict[str, Any], str]]) -> None:
    """Send each case raw (no client-side check) and wait for its rejection, naming the field."""
    for rid, (fields, _) in cases.items():
        product.send_raw(json.dumps({"id": rid, "prompt": prompt(rid), **fields}))
    for rid, (_, message) in cases.items():
        record = product.wait_record(rid, "error.json")
        assert record["status"] == "rejected", (rid, record)
        assert record["error"]["kind"] == "invalid_request", rid
        assert record["error"]["message"] == message, rid
        assert record["attempts"] == [], rid


def test_what_gpt_image_2_refuses_is_rejected_before_any_call(
    product: Product, emulator: Emulator
) -> None:
    inputs = [f"{product.settings['IMAGE_INPUT_CONTAINERS']}/a.png"]
    edit = {"operation": "edit", "input_images": inputs}
    pixels = "gpt-image-2 takes 655,360 to 8,294,400 pixels"
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "small-16": ({"size": "16x16"}, f"size: {pixels}; got 16x16 (256 pixels)"),
        "small-1024x512": (
            {"size": "1024x512"},
            f"size: {pixels}; got 1024x512 (524,288 pixels)",
        ),
        "large": ({"size": "3840x2176"}, f"size: {pixels}; got 3840x2176 (8,355,840 pixels)"),
        "side-3856": ({"size": "3856x1024"}, "size: each side must be 16..3840 pixels, got 3856x1024"),
        "ratio": (
            {"size": "3840x1264"},
            "size: gpt-image-2 takes a long side at most 3 times the short side; "
            "got 3840x1264 (ratio 3.04)",
        ),
        "transparent": (
            {"background": "transparent"},
            "background: gpt-image-2 does not support 'transparent'; use 'auto' or 'opaque'",
        ),
        "fidelity": (
            {**edit, "input_fidelity": "low"},
            "input_fidelity: gpt-image-2 takes no input_fidelity; omit the field",
        ),
        "edit-moderation": (
            {**edit, "moderation": "low"},
            "moderation: /images/edits takes no moderation: only 'auto' (the default) is "
            "accepted on an edit, got 'low'",
        ),
    }  # fmt: skip
    _rejections(product, cases)
    assert emulator.requests_log() == []


def test_a_gpt_image_1_deployment_rejects_2048_before_any_call(
    product_factory: Callable[..., Product], emulator_factory: EmulatorFactory
) -> None:
    one = emulator_factory(extra_args=("--deployment", "image-one:model=gpt-image-1"))
    product = product_factory(
        overrides={
            "AZURE_OPENAI_ENDPOINT": one.base_url,
            "AZURE_OPENAI_DEPLOYMENT": "image-one",
            "AZURE_OPENAI_MODEL": "gpt-image-1",
        }
    )
    cases = {
        "big": (
            {"size": "2048x2048"},
            "size: gpt-image-1 accepts 1024x1024, 1536x1024, 1024x1536 or auto; got 2048x2048",
        )
    }
    _rejections(product, cases)
    assert one.requests_log() == []
    # What gpt-image-1 takes (and gpt-image-2 would refuse) goes through, in one call.
    text = prompt("transparent one")
    rid = f"ok-{uuid.uuid4().hex[:8]}"
    product.send_raw(
        json.dumps({"id": rid, "prompt": text, "size": "1536x1024", "background": "transparent"})
    )
    manifest = product.wait_terminal(rid)
    assert manifest["status"] == "succeeded", manifest
    (call,) = one.calls_for(text)
    assert call["body"]["background"] == "transparent" and call["body"]["size"] == "1536x1024"


@pytest.mark.parametrize(
    ("script", "status", "expected"),
    [
        (
            {"outcome": "content_filter", "shape": "azure", "category": "violence", "severity": "medium"},
            400,
            {"shape": "azure", "filtered": ["violence"], "inner_code": "ResponsibleAIPolicyViolation"},
        ),
        ({"outcome": "content_filter", "shape": "azure_legacy"}, 400, {"shape": "azure_legacy"}),
        (
            {"outcome": "content_filter", "shape": "openai", "category": "hate"},
            400,
            {"shape": "openai", "moderation_details": {"moderation_stage": "input", "categories": ["hate"]}},
        ),
        (
            {"outcome": "resource_blocked", "reason": "content_policy"},
            403,
            {"shape": "resource_blocked", "reason": "content_policy"},
        ),
    ],
    ids=["azure", "azure_legacy", "openai", "resource_blocked"],
)  # fmt: skip
def test_each_content_filter_shape_ends_after_one_call_with_the_verdict(
    product: Product,
    emulator: Emulator,
    script: dict[str, Any],
    status: int,
    expected: dict[str, Any],
) -> None:
    text = prompt("filtered")
    emulator.script({**script, "prompt_contains": text})
    rid = product.client.submit({"prompt": text, "size": "1024x1024", "quality": "low"})
    record = product.wait_terminal(rid)
    assert record["status"] == "failed", record
    assert record["error"]["kind"] == "content_filter"
    (call,) = emulator.calls_for(text)
    assert call["status"] == status
    verdict = record["error"]["content_filter"]
    assert {k: verdict.get(k) for k in expected} == expected, verdict
    if script.get("shape") == "azure":
        assert verdict["categories"]["violence"] == {"filtered": True, "severity": "medium"}
        assert verdict["revised_prompt"] == text
    (attempt,) = record["attempts"]
    assert attempt["outcome"] == "content_filter"
    assert attempt["error"]["content_filter"] == verdict
    assert product.read_json(rid, "manifest.json") is None


def test_a_stream_with_fewer_partials_than_asked_succeeds(
    product: Product, emulator: Emulator
) -> None:
    text = prompt("few partials")
    emulator.script({"outcome": "fewer_partials", "partials": 0, "prompt_contains": text})
    rid = product.client.submit(
        {"prompt": text, "size": "1024x1024", "quality": "low", "partial_images": 2}
    )
    manifest = product.wait_terminal(rid)
    assert manifest["status"] == "succeeded", manifest
    (call,) = emulator.calls_for(text)
    assert call["partials_sent"] == 0
    (attempt,) = manifest["attempts"]
    assert (attempt["partial_images_sent"], attempt["partials_received"]) == (2, 0)


def test_a_late_first_partial_gets_the_408_and_the_retry_asks_for_more_partials(
    product: Product, emulator: Emulator
) -> None:
    text = prompt("late partial")
    emulator.script({"outcome": "late_first_partial", "seconds": 90, "prompt_contains": text})
    rid = product.client.submit(
        {"prompt": text, "size": "1024x1024", "quality": "low", "partial_images": 1}
    )
    manifest = product.wait_terminal(rid)
    assert manifest["status"] == "succeeded", manifest
    first, second = emulator.calls_for(text)
    assert first["status"] == 408
    assert second["body"]["partial_images"] == first["body"]["partial_images"] + 1
    assert [a["outcome"] for a in manifest["attempts"]] == ["gateway_timeout", "succeeded"]
