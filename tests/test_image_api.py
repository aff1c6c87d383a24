"""One attempt against the emulator over real HTTP: every outcome classified into a record."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass

import pytest
from conftest import Emulator
from PIL import Image

from devtools.services import free_port
from shared.azure_openai.image_api import (
    EntraTokenCache,
    ImageApi,
    ImageCall,
    InputFile,
    _handle_event,
    _Trace,
)
from shared.azure_openai.sse import Event
from shared.records.attempts import Outcome
from shared.settings import DeploymentConfig


def api(read_timeout_s: float = 6.0, tokens: EntraTokenCache | None = None) -> ImageApi:
    return ImageApi(
        api_version="2025-04-01-preview",
        connect_timeout_s=2.0,
        read_timeout_s=read_timeout_s,
        tokens=tokens,
    )


def deployment(emulator: Emulator, **changes: object) -> DeploymentConfig:
    values: dict[str, object] = {
        "name": "primary",
        "endpoint": emulator.base_url,
        "deployment": emulator.deployment,
        "api_key": emulator.api_key,
    }
    values.update(changes)
    return DeploymentConfig(**values)  # type: ignore[arg-type]


def generate(
    prompt: str, partial_images: int = 1, size: str = "1024x1024", **fields: object
) -> ImageCall:
    return ImageCall(
        operation="generate",
        fields={"prompt": prompt, "size": size, "quality": "low", **fields},
        partial_images=partial_images,
    )


def test_success_returns_the_image_and_a_full_record(emulator: Emulator) -> None:
    partials: list[tuple[int, int]] = []
    result = api().attempt(
        deployment(emulator),
        generate("success", partial_images=2),
        attempt_no=3,
        image_index=1,
        on_partial=lambda i, data: partials.append((i, len(data))),
    )
    record = result.record
    assert record.outcome is Outcome.SUCCEEDED
    assert (record.attempt, record.image_index, record.deployment) == (3, 1, "primary")
    assert record.http_status == 200
    assert record.partial_images_sent == 2 and record.partials_received == 2
    assert [i for i, _ in partials] == [0, 1] and all(n > 0 for _, n in partials)
    assert record.first_event_s is not None and 0 < record.first_event_s <= record.elapsed_s
    assert record.started_at.endswith("Z")
    (call,) = emulator.requests_log()
    assert record.apim_request_id == call["apim_request_id"]
    assert record.x_request_id and record.ratelimit["x-ratelimit-limit-requests"]
    assert result.image is not None and Image.open(io.BytesIO(result.image)).size == (1024, 1024)
    assert result.usage and result.usage["total_tokens"] > 0
    assert call["body"]["stream"] is True and call["body"]["partial_images"] == 2
    assert call["auth"] == "api-key"


@pytest.mark.parametrize(
    ("script", "outcome", "status"),
    [
        ({"outcome": "gateway_timeout"}, Outcome.GATEWAY_TIMEOUT, 408),
        ({"outcome": "http_error", "status": 503}, Outcome.SERVER_ERROR, 503),
        ({"outcome": "http_error", "status": 500}, Outcome.SERVER_ERROR, 500),
        ({"outcome": "content_filter"}, Outcome.CONTENT_FILTER, 400),
        ({"outcome": "server_error", "after_partials": 1}, Outcome.SERVER_ERROR, 200),
        ({"outcome": "drop", "after_partials": 1}, Outcome.DROPPED, 200),
    ],
)
def test_scripted_failures_are_classified(
    emulator: Emulator, script: dict[str, object], outcome: Outcome, status: int
) -> None:
    emulator.script(script)
    result = api().attempt(deployment(emulator), generate("fault"), attempt_no=1, image_index=0)
    assert result.image is None
    assert result.record.outcome is outcome
    assert result.record.http_status == status
    assert result.record.error is not None and result.record.error.message
    assert result.record.apim_request_id == emulator.requests_log()[0]["apim_request_id"]


def test_mid_stream_server_error_keeps_the_ticket_error_fields(emulator: Emulator) -> None:
    emulator.script({"outcome": "server_error", "after_partials": 1})
    record = (
        api().attempt(deployment(emulator), generate("crash"), attempt_no=1, image_index=0).record
    )
    assert record.partials_received == 1
    assert record.error is not None
    assert (record.error.type, record.error.code) == ("server_error", None)
    assert record.error.message == "An error occurred while processing the request."


def test_rate_limited_reads_retry_after_ms(emulator: Emulator) -> None:
    emulator.script({"outcome": "rate_limited", "retry_after_ms": 150_000})  # emulated time
    record = (
        api().attempt(deployment(emulator), generate("busy"), attempt_no=1, image_index=0).record
    )
    assert record.outcome is Outcome.RATE_LIMITED and record.http_status == 429
    assert record.retry_after_s == pytest.approx(1.5)


def test_stall_past_the_read_timeout(emulator: Emulator) -> None:
    emulator.script({"outcome": "stall", "after_partials": 1, "seconds": 400})  # 4 s on the wire
    record = (
        api(read_timeout_s=0.5)
        .attempt(deployment(emulator), generate("stall"), attempt_no=1, image_index=0)
        .record
    )
    assert record.outcome is Outcome.READ_TIMEOUT
    assert record.partials_received == 1


def test_wrong_key_is_an_auth_error_and_unknown_deployment_a_404(emulator: Emulator) -> None:
    wrong_key = (
        api()
        .attempt(
            deployment(emulator, api_key="not-the-key"), generate("k"), attempt_no=1, image_index=0
        )
        .record
    )
    assert wrong_key.outcome is Outcome.AUTH_ERROR and wrong_key.http_status == 401
    missing = (
        api()
        .attempt(
            deployment(emulator, deployment="nope"), generate("d"), attempt_no=1, image_index=0
        )
        .record
    )
    assert missing.outcome is Outcome.HTTP_ERROR and missing.http_status == 404
    assert missing.error is not None and missing.error.code == "DeploymentNotFound"
    assert "not-the-key" not in json.dumps(wrong_key.to_json())


def test_nothing_listening_is_a_connect_error(emulator: Emulator) -> None:
    closed = deployment(emulator, endpoint=f"http://127.0.0.1:{free_port()}")
    record = api().attempt(closed, generate("x"), attempt_no=1, image_index=0).record
    assert record.outcome is Outcome.CONNECT_ERROR
    assert record.http_status is None


def test_service_validation_error_is_invalid_request(emulator: Emulator) -> None:
    call = generate("x", size="1000x1000")  # not a multiple of 16: the service answers 400
    record = api().attempt(deployment(emulator), call, attempt_no=1, image_index=0).record
    assert record.outcome is Outcome.INVALID_REQUEST and record.http_status == 400


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "green").save(out, "PNG")
    return out.getvalue()


def test_edit_is_multipart_with_each_image_and_the_mask(emulator: Emulator) -> None:
    call = ImageCall(
        operation="edit",
        fields={"prompt": "edit me", "size": "1024x1024", "background": "opaque", "user": None},
        partial_images=1,
        images=(InputFile("a.png", _png(), "image/png"), InputFile("b.png", _png(), "image/png")),
        mask=InputFile("m.png", _png(), "image/png"),
    )
    result = api().attempt(deployment(emulator), call, attempt_no=1, image_index=0)
    assert result.record.outcome is Outcome.SUCCEEDED
    (logged,) = emulator.requests_log()
    assert logged["endpoint"] == "edits"
    names = sorted(p["name"] for p in logged["parts"])
    assert names == ["image[]", "image[]", "mask"]
    assert logged["body"]["background"] == "opaque"
    assert "user" not in logged["body"]


@dataclass
class _Token:
    token: str
    expires_on: int


class _Credential:
    def __init__(self) -> None:
        self.calls = 0

    def get_token(self, *scopes: str) -> _Token:
        assert scopes == ("https://cognitiveservices.azure.com/.default",)
        self.calls += 1
        return _Token(f"token-{self.calls}", expires_on=1_000 + 3_600)


def test_entra_id_bearer_token_is_cached_until_near_expiry(emulator: Emulator) -> None:
    credential = _Credential()
    now = [1_000.0]
    tokens = EntraTokenCache(lambda: credential, wall_clock=lambda: now[0])
    client = api(tokens=tokens)
    entra = deployment(emulator, api_key=None)
    for _ in range(2):
        assert client.attempt(
            entra, generate("entra"), attempt_no=1, image_index=0
        ).record.succeeded
    assert credential.calls == 1
    now[0] = 1_000 + 3_600 - 60  # within the refresh margin: a new token
    assert client.attempt(entra, generate("entra"), attempt_no=1, image_index=0).record.succeeded
    assert credential.calls == 2
    assert {r["auth"] for r in emulator.requests_log()} == {"bearer"}
    assert "token-1" not in json.dumps(emulator.requests_log())


def _trace() -> _Trace:
    return _Trace(
        attempt=1, image_index=0, deployment="d", started_at="t", start=0.0,
        partial_images_sent=1, monotonic=lambda: 1.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    "payload",
    [
        {
            "type": "error",
            "error": {"type": "server_error", "code": None, "message": "m", "param": None},
        },
        {
            "type": "error",
            "code": "server_error",
            "message": "m",
            "param": None,
            "sequence_number": 2,
        },
        {
            "type": "error",
            "error": {
                "type": "image_generation_server_error",
                "code": "image_generation_failed",
                "message": "m",
            },
        },
    ],
)
def test_both_error_event_shapes_are_server_errors_whatever_the_event_name(
    payload: dict[str, object],
) -> None:
    for name in ("error", "message", "image_generation.partial_image"):
        result = _handle_event(Event(event=name, data=json.dumps(payload)), _trace(), "png", None)
        assert result is not None and result.record.outcome is Outcome.SERVER_ERROR
        assert result.record.error is not None and result.record.error.message == "m"


def test_flat_moderation_error_event_is_a_content_filter() -> None:
    payload = {"type": "error", "code": "moderation_blocked", "message": "blocked", "param": None}
    result = _handle_event(Event(event="error", data=json.dumps(payload)), _trace(), "png", None)
    assert result is not None and result.record.outcome is Outcome.CONTENT_FILTER


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(out, "JPEG")
    return out.getvalue()


def _completed(b64: object) -> Event:
    payload: dict[str, object] = {
        "type": "image_generation.completed",
        "usage": {"total_tokens": 1},
    }
    if b64 is not None:
        payload["b64_json"] = b64
    return Event(event="image_generation.completed", data=json.dumps(payload))


@pytest.mark.parametrize(
    ("b64", "expected", "code"),
    [
        ("!!not base64!!", "png", "invalid_base64"),
        (base64.b64encode(_png()).decode()[:-3] + "%%%", "png", "invalid_base64"),
        (base64.b64encode(b"just some text, not an image").decode(), "png", "not_an_image"),
        (base64.b64encode(_jpeg()).decode(), "png", "wrong_format"),
        (base64.b64encode(_png()).decode(), "jpeg", "wrong_format"),
        (None, "png", "no_image"),
        ("", "png", "no_image"),
    ],
)
def test_a_completed_event_without_a_valid_image_of_the_asked_format_is_invalid_image(
    b64: object, expected: str, code: str
) -> None:
    result = _handle_event(_completed(b64), _trace(), expected, None)
    assert result is not None and result.image is None
    assert result.record.outcome is Outcome.INVALID_IMAGE
    assert result.record.error is not None and result.record.error.code == code


def test_a_completed_image_of_the_asked_format_succeeds() -> None:
    for data, fmt in ((_png(), "png"), (_jpeg(), "jpeg")):
        result = _handle_event(_completed(base64.b64encode(data).decode()), _trace(), fmt, None)
        assert result is not None and result.record.succeeded and result.image == data


def test_a_partial_with_a_garbage_index_is_stored_under_its_arrival_number() -> None:
    seen: list[tuple[int, bytes]] = []
    trace = _trace()
    for index in ("x", -1, 1.5, True, 0):
        payload = {
            "type": "image_generation.partial_image",
            "partial_image_index": index,
            "b64_json": base64.b64encode(_png()).decode(),
        }
        event = Event(event="image_generation.partial_image", data=json.dumps(payload))
        assert _handle_event(event, trace, "png", lambda i, d: seen.append((i, d))) is None
    assert [i for i, _ in seen] == [0, 1, 2, 3, 0]
    assert trace.partials_received == 5


def test_a_failing_token_request_is_a_client_error_record_not_an_exception(
    emulator: Emulator,
) -> None:
    class Broken:
        def get_token(self, *scopes: str) -> _Token:
            raise RuntimeError("ManagedIdentityCredential: no identity endpoint")

    client = api(tokens=EntraTokenCache(lambda: Broken()))
    result = client.attempt(
        deployment(emulator, api_key=None), generate("token"), attempt_no=3, image_index=1
    )
    record = result.record
    assert record.outcome is Outcome.CLIENT_ERROR and record.http_status is None
    assert (record.attempt, record.image_index) == (3, 1)
    assert record.error is not None and "no identity endpoint" in record.error.message
    assert emulator.calls_for("token") == []  # nothing was sent


def test_a_failing_partial_write_is_a_client_error_after_the_call_was_answered(
    emulator: Emulator,
) -> None:
    def on_partial(index: int, data: bytes) -> None:
        raise OSError("storage is down")

    result = api().attempt(
        deployment(emulator), generate("partial-write"), attempt_no=1, image_index=0,
        on_partial=on_partial,
    )  # fmt: skip
    record = result.record
    assert record.outcome is Outcome.CLIENT_ERROR and record.http_status == 200
    assert record.apim_request_id == emulator.calls_for("partial-write")[0]["apim_request_id"]
    assert result.image is None
