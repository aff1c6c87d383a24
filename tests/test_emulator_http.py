"""The emulator over real HTTP: the ticket's two cases, the stream, JSON results, auth, routing,
validation, headers, edits, the request log and reset. Clock x0.01 (the `emulator` fixture)."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
import uuid
from typing import Any

import pytest
import requests
from PIL import Image

API_VERSION = "2025-04-01-preview"
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def api_url(emulator: Any, endpoint: str = "generations", deployment: str | None = None) -> str:
    name = deployment or emulator.deployment
    return emulator.url(f"/openai/deployments/{name}/images/{endpoint}?api-version={API_VERSION}")


def generate(emulator: Any, body: dict[str, Any], **kwargs: Any) -> requests.Response:
    headers = kwargs.pop("headers", {"api-key": emulator.api_key})
    return requests.post(api_url(emulator), json=body, headers=headers, timeout=30, **kwargs)


def sse_events(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        events.append((name, json.loads("\n".join(data))))
    return events


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def raw_post(emulator: Any, body: dict[str, Any]) -> socket.socket:
    """A POST on a plain socket, so the test sees exactly when the first byte comes."""
    host, port = emulator.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    payload = json.dumps(body).encode()
    path = f"/openai/deployments/{emulator.deployment}/images/generations?api-version={API_VERSION}"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\napi-key: {emulator.api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        if b"\r\n\r\n" in data and _complete(data):
            break
    return data


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
    if lengths:
        return len(body) >= int(lengths[0].split(b":")[1])
    return body.endswith(b"0\r\n\r\n")


def chunk_sizes(body: bytes) -> list[int]:
    sizes, rest = [], body
    while rest:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line, 16)
        sizes.append(size)
        rest = rest[size + 2 :]
        if size == 0:
            break
    return sizes


TICKET = {"prompt": "a red apple on a white background", "n": 1, "size": "2048x2048"}
TICKET |= {"quality": "high", "stream": True}


def test_ticket_408_at_the_scaled_gateway_timeout_with_no_byte_before(emulator: Any) -> None:
    gateway_s = 60 * emulator.time_scale
    started = time.monotonic()
    sock = raw_post(emulator, TICKET | {"partial_images": 0})
    with sock:
        sock.settimeout(gateway_s * 0.6)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # not even the status line before the timeout
        sock.settimeout(10)
        response = read_all(sock)
    assert time.monotonic() - started >= gateway_s
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body) == {
        "error": {"code": "Timeout", "message": "The operation was timeout."}
    }
    [record] = emulator.requests_log()
    assert (record["status"], record["outcome"]) == (408, "gateway_timeout")


@pytest.mark.parametrize("partials", [1, 2])
def test_ticket_succeeds_with_partial_images(emulator: Any, partials: int) -> None:
    r = generate(emulator, TICKET | {"partial_images": partials})
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(r.text)
    names = [name for name, _ in events]
    assert names == ["image_generation.partial_image"] * partials + ["image_generation.completed"]
    assert "[DONE]" not in r.text
    assert [d["partial_image_index"] for _, d in events[:-1]] == list(range(partials))
    for _, data in events:
        assert decode(data["b64_json"]).size == (2048, 2048)
    done = events[-1][1]
    assert (done["size"], done["quality"], done["output_format"]) == ("2048x2048", "high", "png")
    assert done["usage"]["output_tokens"] == 4160 * 4 + 100 * partials


def test_stream_fields_and_16_kib_chunks(emulator: Any) -> None:
    body = {"prompt": "a lighthouse", "size": "1024x1536", "quality": "medium", "stream": True}
    body |= {"partial_images": 3, "output_format": "jpeg", "output_compression": 80}
    sock = raw_post(emulator, body)
    with sock:
        response = read_all(sock)
    head, _, raw = response.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    sizes = chunk_sizes(raw)
    assert sizes[-1] == 0 and len(sizes) > 4 and max(sizes) <= 16 * 1024
    text = b"".join(_unchunk(raw)).decode()
    events = sse_events(text)
    assert [d["type"] for _, d in events] == [name for name, _ in events]
    partial = events[0][1]
    assert set(partial) == {
        "type", "b64_json", "created_at", "size", "quality", "background", "output_format",
        "partial_image_index",
    }  # fmt: skip
    done = events[-1][1]
    assert (done["background"], done["output_format"], done["quality"]) == (
        "opaque",
        "jpeg",
        "medium",
    )
    assert abs(done["created_at"] - time.time()) < 60
    usage = done["usage"]
    assert usage["input_tokens_details"]["text_tokens"] == usage["input_tokens"] == 3
    assert usage["output_tokens"] == 1584 + 300
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    final = decode(done["b64_json"])
    assert (final.format, final.size) == ("JPEG", (1024, 1536))


def _unchunk(raw: bytes) -> list[bytes]:
    pieces, rest = [], raw
    while rest:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line, 16)
        if size == 0:
            break
        pieces.append(rest[:size])
        rest = rest[size + 2 :]
    return pieces


def test_non_streaming_answers_json_when_done_or_408(emulator: Any) -> None:
    r = generate(emulator, {"prompt": "two cats", "size": "1024x1024", "quality": "low", "n": 2})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    result = r.json()
    assert len(result["data"]) == 2
    images = [decode(d["b64_json"]) for d in result["data"]]
    assert all(i.size == (1024, 1024) for i in images)
    assert images[0].tobytes() != images[1].tobytes()
    assert result["usage"]["output_tokens"] == 2 * 272
    slow = generate(emulator, {"prompt": "a cat", "size": "1024x1024", "quality": "high"})
    assert slow.status_code == 408  # 90 s of work, nothing to send before the gateway gives up
    assert slow.json()["error"]["code"] == "Timeout"


def test_auto_size_is_1024_square(emulator: Any) -> None:
    r = generate(emulator, {"prompt": "x", "quality": "low"})
    assert decode(r.json()["data"][0]["b64_json"]).size == (1024, 1024)
    assert r.json()["size"] == "1024x1024"


@pytest.mark.parametrize(
    ("headers", "status", "auth"),
    [
        ({}, 401, "none"),
        ({"api-key": "wrong"}, 401, "api-key"),
        ({"Authorization": "Bearer "}, 401, "bearer"),
        ({"Authorization": "Bearer some.entra.token"}, 200, "bearer"),
        ({"API-KEY": "test-emulator-key"}, 200, "api-key"),
    ],
)
def test_auth(emulator: Any, headers: dict[str, str], status: int, auth: str) -> None:
    r = generate(
        emulator, {"prompt": "tiny", "size": "1024x640", "quality": "low"}, headers=headers
    )
    assert r.status_code == status
    if status == 401:
        assert r.json()["error"]["code"] == "401"
    [record] = emulator.requests_log()
    assert record["auth"] == auth


def test_unknown_deployment_and_missing_api_version_are_404(emulator: Any) -> None:
    headers = {"api-key": emulator.api_key}
    body = {"prompt": "x", "size": "1024x640"}
    missing = requests.post(
        api_url(emulator, deployment="nope"), json=body, headers=headers, timeout=10
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "DeploymentNotFound"
    no_version = api_url(emulator).split("?")[0]
    r = requests.post(no_version, json=body, headers=headers, timeout=10)
    assert r.status_code == 404 and "error" in r.json()
    other = requests.get(emulator.url("/openai/models"), timeout=10)
    assert other.status_code == 404


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"prompt": "x", "size": "1000x1000"}, "size", "invalid_value"),
        ({"prompt": "x", "quality": "ultra"}, "quality", "invalid_value"),
        ({"prompt": "x", "n": 0}, "n", "integer_below_min_value"),
        ({"prompt": "x", "output_format": "webp"}, "output_format", "invalid_value"),
        ({"prompt": "x", "output_compression": 10}, "output_compression", "invalid_value"),
        ({"prompt": "x", "background": "transparent", "output_format": "jpeg"}, "background", "invalid_value"),
        ({"prompt": "x", "partial_images": 4}, "partial_images", "integer_above_max_value"),
        ({"prompt": "x" * 32001}, "prompt", "string_above_max_length"),
    ],
)  # fmt: skip
def test_validation_400(emulator: Any, body: dict[str, Any], param: str, code: str) -> None:
    r = generate(emulator, body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert error["message"]


def test_streaming_needs_n_1_and_bad_json_is_400(emulator: Any) -> None:
    r = generate(emulator, {"prompt": "x", "n": 2, "stream": True})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "Streaming is only supported with n=1."
    bad = requests.post(
        api_url(emulator), data=b"{not json", headers={"api-key": emulator.api_key}, timeout=10
    )
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_blocked_phrase_is_moderation_blocked(emulator: Any) -> None:
    r = generate(emulator, {"prompt": "draw forbidden-content please", "stream": True})
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["code"], error["type"]) == ("moderation_blocked", "image_generation_user_error")


def _uuid(text: str) -> uuid.UUID:
    return uuid.UUID(text)


def test_every_response_carries_ids_region_and_ratelimit_headers(sliding_emulator: Any) -> None:
    emulator = sliding_emulator
    answers = [
        generate(emulator, {"prompt": "x", "size": "1024x640"}, headers={}),
        generate(emulator, {"prompt": "x", "size": "17x16"}),
        generate(emulator, {"prompt": "x", "size": "1024x640", "quality": "low"}),
    ]
    seen = set()
    for r in answers:
        ids = (_uuid(r.headers["apim-request-id"]), _uuid(r.headers["x-request-id"]))
        seen.update(ids)
        assert r.headers["x-ms-region"]
        assert r.headers["x-ratelimit-limit-requests"] == "10"
        assert int(r.headers["x-ratelimit-remaining-requests"]) >= 0
        assert r.headers["x-ratelimit-reset-requests"]
    assert len(seen) == 6
    assert answers[-1].headers["x-ratelimit-remaining-requests"] == "9"
    logged = [rec["apim_request_id"] for rec in emulator.requests_log()]
    assert logged == [r.headers["apim-request-id"] for r in answers]


def test_edits_stream_multipart_and_log_parts_not_data(emulator: Any) -> None:
    files = [
        ("image[]", ("a.png", PNG_BYTES, "image/png")),
        ("image[]", ("b.jpg", b"\xff\xd8\xff\xe0" + b"\0" * 40, "image/jpeg")),
        ("mask", ("m.png", PNG_BYTES, "image/png")),
    ]
    fields = {"prompt": "make it blue", "size": "1024x1024", "quality": "low", "stream": "true"}
    # (input_fidelity is refused by gpt-image-2: test_emulator_models covers it per model)
    fields |= {"partial_images": "1", "background": "opaque"}
    r = requests.post(
        api_url(emulator, "edits"), data=fields, files=files,
        headers={"api-key": emulator.api_key}, timeout=30,
    )  # fmt: skip
    assert r.status_code == 200
    events = sse_events(r.text)
    assert [n for n, _ in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert events[-1][1]["type"] == "image_edit.completed"
    assert events[-1][1]["usage"]["input_tokens_details"]["image_tokens"] > 0
    [record] = emulator.requests_log()
    assert record["endpoint"] == "edits"
    assert record["body"] == fields
    assert record["parts"] == [
        {"name": "image[]", "filename": "a.png", "bytes": len(PNG_BYTES)},
        {"name": "image[]", "filename": "b.jpg", "bytes": 44},
        {"name": "mask", "filename": "m.png", "bytes": len(PNG_BYTES)},
    ]


def test_edits_need_an_image(emulator: Any) -> None:
    r = requests.post(
        api_url(emulator, "edits"), data={"prompt": "x"},
        files=[("mask", ("m.png", PNG_BYTES, "image/png"))],
        headers={"api-key": emulator.api_key}, timeout=10,
    )  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "image"


def test_request_log_never_holds_the_secret(emulator: Any) -> None:
    generate(emulator, {"prompt": "x", "size": "1024x640", "quality": "low"})
    token = "eyJ0eXAiOiJKV1Qi.secret-bearer-token"
    generate(
        emulator,
        {"prompt": "y", "size": "1024x640", "quality": "low"},
        headers={"Authorization": f"Bearer {token}"},
    )
    log = emulator.requests_log()
    text = json.dumps(log)
    assert emulator.api_key not in text and token not in text
    first = log[0]
    assert {"time", "deployment", "endpoint", "auth", "body", "parts", "status", "outcome"} <= set(
        first
    )
    assert (first["endpoint"], first["status"], first["outcome"]) == (
        "generations",
        200,
        "succeeded",
    )
    assert first["time"].endswith("Z")
    assert [r["auth"] for r in log] == ["api-key", "bearer"]


def test_reset_clears_log_script_and_windows(sliding_emulator: Any) -> None:
    emulator = sliding_emulator
    emulator.script({"outcome": "http_error", "status": 503})
    generate(emulator, {"prompt": "x", "size": "1024x640", "quality": "low"}, headers={})
    assert emulator.requests_log()
    emulator.reset()
    assert emulator.requests_log() == []
    assert requests.get(emulator.url("/_emulator/script"), timeout=5).json()["pending"] == []
    r = generate(emulator, {"prompt": "x", "size": "1024x640", "quality": "low"})
    assert r.status_code == 200 and r.headers["x-ratelimit-remaining-requests"] == "9"


def test_each_call_draws_images_naming_its_apim_request_id(emulator: Any) -> None:
    """Two calls with the same body send different bytes, each naming its call, partials too; the
    log says when each call ended, after it arrived."""
    from emulators.image_deployment.stamp import embedded_id

    body = {"prompt": "same", "size": "1024x1024", "quality": "low", "stream": True}
    body |= {"partial_images": 1}
    seen = []
    for _ in range(2):
        r = generate(emulator, body)
        assert r.status_code == 200
        images = [base64.b64decode(d["b64_json"]) for _, d in sse_events(r.text)]
        assert [embedded_id(i) for i in images] == [r.headers["apim-request-id"]] * 2
        seen.append(images[-1])
    assert seen[0] != seen[1]
    for record in emulator.requests_log():
        assert record["ended"] is not None and record["ended"] >= record["time"]
