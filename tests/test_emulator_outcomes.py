"""The stricter emulator over real HTTP: per-model refusals with the service's error bodies, the
three content-filter shapes and the 403 block, fewer or late partial images, and the bad payloads
the product's robustness tests need. Each call is in the request log with its apim-request-id."""

from __future__ import annotations

import base64
import binascii
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from emulator_calls import edit, post
from PIL import Image, UnidentifiedImageError

SMALL = {"prompt": "a pear", "size": "1024x1024", "quality": "low", "stream": True}
ERROR_KEYS = {"code", "message", "param", "type"}


def sse_events(text: str) -> list[dict[str, Any]]:
    found = []
    for block in text.split("\n\n"):
        data = [ln[5:].strip() for ln in block.strip().split("\n") if ln.startswith("data:")]
        if data:
            found.append(json.loads("\n".join(data)))
    return found


def iter_events(response: requests.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data:"):
            yield json.loads(line[5:])


def logged(emulator: Any, response: requests.Response) -> dict[str, Any]:
    """The request log's record of `response`, found by its apim-request-id."""
    rid = response.headers["apim-request-id"]
    [record] = [r for r in emulator.requests_log() if r["apim_request_id"] == rid]
    return record


def refused(response: requests.Response, param: str, code: str) -> str:
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    return str(error["message"])


# --- per-model refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"prompt": "x", "size": "1008x640"}, "size", "invalid_value"),
        ({"prompt": "x", "size": "3856x1296"}, "size", "invalid_value"),
        ({"prompt": "x", "size": "3840x1264"}, "size", "invalid_value"),
        ({"prompt": "x", "size": "1000x1000"}, "size", "invalid_value"),
        ({"prompt": "x", "background": "transparent"}, "background", "unsupported_value"),
        ({"prompt": "x", "response_format": "b64_json"}, "response_format", "unknown_parameter"),
        ({"prompt": "x", "output_format": "webp"}, "output_format", "invalid_value"),
    ],
)
def test_gpt_image_2_refusals_are_the_services_400s(
    emulator: Any, body: dict[str, Any], param: str, code: str
) -> None:
    r = post(emulator, body)
    message = refused(r, param, code)
    if code == "unknown_parameter":
        assert message == f"Unknown parameter: '{param}'."
    record = logged(emulator, r)
    assert (record["status"], record["outcome"]) == (400, "invalid_request")


def test_gpt_image_2_sizes_at_the_limits_are_served(emulator: Any) -> None:
    r = post(emulator, {"prompt": "x", "size": "1024x640", "quality": "low"})
    assert r.status_code == 200 and r.json()["size"] == "1024x640"


def test_edits_refuse_moderation_and_gpt_image_2_refuses_input_fidelity(emulator: Any) -> None:
    base = {"prompt": "x", "size": "1024x1024", "quality": "low"}
    moderation = edit(emulator, base | {"moderation": "low"})
    assert refused(moderation, "moderation", "unknown_parameter") == (
        "Unknown parameter: 'moderation'."
    )
    fidelity = edit(emulator, base | {"input_fidelity": "high"})
    assert "gpt-image-2" in refused(fidelity, "input_fidelity", "unsupported_parameter")
    assert edit(emulator, base).status_code == 200


@pytest.fixture(scope="module")
def family_1(emulator_factory: Any) -> Any:
    """`--model` for every deployment, and one deployment naming its own."""
    extra = ("--model", "gpt-image-1", "--deployment", "old", "--deployment", "new:model=gpt-image-2")  # fmt: skip
    return emulator_factory(extra_args=extra)


def test_model_flag_gives_each_deployment_its_rules(family_1: Any) -> None:
    family_1.reset()
    config = requests.get(family_1.url("/_emulator/config"), timeout=5).json()
    assert [(d["name"], d["model"]) for d in config["deployments"]] == [
        ("old", "gpt-image-1"), ("new", "gpt-image-2"),
    ]  # fmt: skip
    wide = {"prompt": "x", "size": "2048x1152", "quality": "low"}
    message = refused(post(family_1, wide, "old"), "size", "invalid_value")
    assert message == (
        "Invalid value: '2048x1152'. Supported values are: '1024x1024', '1024x1536', "
        "'1536x1024', and 'auto'."
    )
    assert post(family_1, wide, "new").status_code == 200
    clear = {"prompt": "x", "size": "1024x1024", "quality": "low", "background": "transparent"}
    assert post(family_1, clear, "old").status_code == 200
    fields = {"prompt": "x", "size": "1024x1024", "quality": "low", "input_fidelity": "high"}
    assert edit(family_1, fields, "old").status_code == 200


def test_runtime_config_sets_a_deployments_model_until_reset(emulator: Any) -> None:
    name = emulator.deployment
    r = requests.post(
        emulator.url("/_emulator/config"),
        json={"deployments": [f"{name}:model=gpt-image-1.5"]},
        timeout=5,
    )
    assert r.status_code == 200 and r.json()["deployments"][0]["model"] == "gpt-image-1.5"
    wide = {"prompt": "x", "size": "1024x640", "quality": "low"}
    refused(post(emulator, wide), "size", "invalid_value")
    bad = requests.post(emulator.url("/_emulator/config"), json={"model": "dall-e-3"}, timeout=5)
    assert bad.status_code == 400 and "--model" in bad.json()["error"]["message"]
    emulator.reset()
    assert post(emulator, wide).status_code == 200


# --- content filter and the 403 -------------------------------------------------------------------


def test_content_filter_azure_shape_with_the_verdict(emulator: Any) -> None:
    emulator.script({"outcome": "content_filter", "category": "violence", "severity": "medium"})
    r = post(emulator, SMALL | {"prompt": "a fight"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == ERROR_KEYS | {"inner_error"}
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error", "content_policy_violation", None,
    )  # fmt: skip
    inner = error["inner_error"]
    assert inner["code"] == "ResponsibleAIPolicyViolation"
    assert inner["revised_prompt"] == "a fight"
    assert inner["content_filter_results"] == {
        "hate": {"filtered": False, "severity": "safe"},
        "self_harm": {"filtered": False, "severity": "safe"},
        "sexual": {"filtered": False, "severity": "safe"},
        "violence": {"filtered": True, "severity": "medium"},
        "jailbreak": {"filtered": False, "detected": False},
    }
    record = logged(emulator, r)
    assert (record["status"], record["outcome"]) == (400, "content_filter")
    assert record["scripted"]["shape"] == "azure"


def test_content_filter_azure_legacy_shape(emulator: Any) -> None:
    emulator.script({"outcome": "content_filter", "shape": "azure_legacy"})
    r = post(emulator, SMALL)
    assert r.status_code == 400
    body = r.json()
    assert abs(body["created"] - time.time()) < 600
    assert body["error"] == {
        "code": "contentFilter",
        "message": "Your task failed as a result of our safety system.",
        "status": 400,
    }
    assert logged(emulator, r)["outcome"] == "content_filter"


def test_content_filter_openai_shape(emulator: Any) -> None:
    emulator.script({"outcome": "content_filter", "shape": "openai", "category": "self_harm"})
    r = post(emulator, SMALL)
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "image_generation_user_error", "moderation_blocked", None,
    )  # fmt: skip
    assert error["moderation_details"] == {"moderation_stage": "input", "categories": ["self_harm"]}
    assert error["message"].startswith("Your request was rejected by the safety system.")


def test_resource_blocked_is_azures_403(emulator: Any) -> None:
    emulator.script({"outcome": "resource_blocked"}, {"outcome": "resource_blocked", "reason": "unusual_behavior"})  # fmt: skip
    policy, unusual = post(emulator, SMALL), post(emulator, SMALL)
    assert (policy.status_code, unusual.status_code) == (403, 403)
    assert policy.json()["error"]["code"] == "Forbidden"
    assert "may violate our content policy" in policy.json()["error"]["message"]
    assert unusual.json() == {
        "error": {
            "code": "Forbidden",
            "message": "Your resource has been temporarily blocked because we detected unusual "
            "behavior.",
        }
    }
    assert logged(emulator, policy)["outcome"] == "resource_blocked"


# --- partial images --------------------------------------------------------------------------------


def test_fewer_partials_than_asked_then_completed(emulator: Any) -> None:
    emulator.script({"outcome": "fewer_partials", "partials": 1})
    r = post(emulator, SMALL | {"partial_images": 3})
    found = sse_events(r.text)
    assert [e["type"] for e in found] == [
        "image_generation.partial_image", "image_generation.completed",
    ]  # fmt: skip
    assert found[-1]["usage"]["output_tokens"] == 272 + 100  # billed for the one partial sent
    record = logged(emulator, r)
    assert (record["status"], record["outcome"], record["partials_sent"]) == (200, "succeeded", 1)


def test_fewer_partials_with_none_sent_still_completes(emulator: Any) -> None:
    emulator.script({"outcome": "fewer_partials"})
    r = post(emulator, SMALL | {"partial_images": 2})
    assert [e["type"] for e in sse_events(r.text)] == ["image_generation.completed"]


def test_late_first_partial_comes_late(emulator: Any) -> None:
    emulator.script({"outcome": "late_first_partial", "seconds": 40})
    started = time.monotonic()
    with post(emulator, SMALL | {"partial_images": 1}, stream=True) as r:
        stream = iter_events(r)
        first = next(stream)
        first_at = time.monotonic() - started
        rest = [e["type"] for e in stream]
    assert first["type"] == "image_generation.partial_image"
    assert first_at >= 40 * emulator.time_scale
    assert rest == ["image_generation.completed"]


def test_late_first_partial_past_the_gateway_is_the_408(emulator: Any) -> None:
    emulator.script({"outcome": "late_first_partial", "seconds": 75})
    started = time.monotonic()
    r = post(emulator, SMALL | {"partial_images": 2})
    assert r.status_code == 408 and r.json()["error"]["code"] == "Timeout"
    assert time.monotonic() - started >= 60 * emulator.time_scale
    record = logged(emulator, r)
    assert (record["outcome"], record["scripted"]) == (
        "gateway_timeout", {"outcome": "late_first_partial", "seconds": 75.0},
    )  # fmt: skip


# --- bad payloads (issue 10's robustness tests) ------------------------------------------------------


def _completed(emulator: Any, payload: str, **more: Any) -> tuple[dict[str, Any], requests.Response]:  # fmt: skip
    emulator.script({"outcome": "bad_completed", "payload": payload})
    r = post(emulator, SMALL | {"partial_images": 1} | more)
    assert r.status_code == 200
    found = sse_events(r.text)
    assert [e["type"] for e in found] == [
        "image_generation.partial_image", "image_generation.completed",
    ]  # fmt: skip
    record = logged(emulator, r)
    assert (record["status"], record["outcome"]) == (200, "bad_completed")
    assert record["scripted"] == {"outcome": "bad_completed", "payload": payload}
    return found[-1], r


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_bad_completed_broken_base64_fails_strict_and_lenient_decoding(emulator: Any) -> None:
    done, _ = _completed(emulator, "broken_base64")
    with pytest.raises(binascii.Error):
        base64.b64decode(done["b64_json"], validate=True)
    with pytest.raises(binascii.Error):
        base64.b64decode(done["b64_json"])


def test_bad_completed_not_an_image_is_valid_base64_of_other_bytes(emulator: Any) -> None:
    done, _ = _completed(emulator, "not_an_image")
    data = base64.b64decode(done["b64_json"], validate=True)
    assert data and not data.startswith((b"\x89PNG", b"\xff\xd8\xff"))
    with pytest.raises(UnidentifiedImageError):
        _open(data)


@pytest.mark.parametrize(("asked", "sent"), [("png", "JPEG"), ("jpeg", "PNG")])
def test_bad_completed_wrong_format(emulator: Any, asked: str, sent: str) -> None:
    done, _ = _completed(emulator, "wrong_format", output_format=asked)
    assert done["output_format"] == asked  # the event claims what was asked
    image = _open(base64.b64decode(done["b64_json"], validate=True))
    assert (image.format, image.size) == (sent, (1024, 1024))


def test_bad_completed_no_image(emulator: Any) -> None:
    done, _ = _completed(emulator, "no_image")
    assert "b64_json" not in done and done["usage"]["output_tokens"] > 0


def test_bad_completed_in_a_json_answer(emulator: Any) -> None:
    emulator.script({"outcome": "bad_completed", "payload": "no_image"})
    r = post(emulator, {"prompt": "x", "size": "1024x1024", "quality": "low"})
    assert r.status_code == 200 and r.json()["data"] == [{}]
    assert logged(emulator, r)["outcome"] == "bad_completed"


def test_bad_partial_index(emulator: Any) -> None:
    emulator.script({"outcome": "bad_partial_index"})
    r = post(emulator, SMALL | {"partial_images": 2})
    found = sse_events(r.text)
    assert [e.get("partial_image_index") for e in found] == ["x", 1, None]
    assert found[-1]["type"] == "image_generation.completed"
    record = logged(emulator, r)
    assert (record["status"], record["outcome"], record["partials_sent"]) == (
        200, "bad_partial_index", 2,
    )  # fmt: skip
