"""The emulator driven by the official `openai.AzureOpenAI` client: if the real client parses what
the emulator sends, the product's own parser is tested against the real shapes."""

from __future__ import annotations

import base64
import io
from typing import Any

import openai
import pytest
from PIL import Image

API_VERSION = "2025-04-01-preview"
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@pytest.fixture
def client(emulator: Any) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=emulator.base_url, api_key=emulator.api_key, api_version=API_VERSION,
        max_retries=0, timeout=30,
    )  # fmt: skip


def _size(b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def test_streamed_generation(client: openai.AzureOpenAI, emulator: Any) -> None:
    stream = client.images.generate(
        model=emulator.deployment, prompt="a red apple", size="1024x1536", quality="low",
        stream=True, partial_images=2,
    )  # fmt: skip
    events = list(stream)
    assert [e.type for e in events] == [
        "image_generation.partial_image", "image_generation.partial_image",
        "image_generation.completed",
    ]  # fmt: skip
    done = events[-1]
    assert done.type == "image_generation.completed"
    assert _size(done.b64_json) == (1024, 1536)
    assert done.usage.output_tokens > 200


def test_json_generation(client: openai.AzureOpenAI, emulator: Any) -> None:
    result = client.images.generate(
        model=emulator.deployment, prompt="a pear", size="1024x1024", quality="low"
    )
    assert result.data and _size(result.data[0].b64_json or "") == (1024, 1024)


def test_streamed_edit(client: openai.AzureOpenAI, emulator: Any) -> None:
    stream = client.images.edit(
        model=emulator.deployment, image=[("a.png", PNG_BYTES, "image/png")],
        prompt="paint it blue", size="1024x1024", quality="low", stream=True, partial_images=1,
    )  # fmt: skip
    assert [e.type for e in stream] == ["image_edit.partial_image", "image_edit.completed"]
    assert emulator.requests_log()[0]["parts"][0]["bytes"] == len(PNG_BYTES)


def test_mid_stream_error_raises_in_the_client(client: openai.AzureOpenAI, emulator: Any) -> None:
    emulator.script({"outcome": "server_error", "after_partials": 1})
    stream = client.images.generate(
        model=emulator.deployment, prompt="x", size="1024x1024", quality="low", stream=True,
        partial_images=2,
    )  # fmt: skip
    seen = []
    with pytest.raises(openai.APIError, match="An error occurred"):
        for event in stream:
            seen.append(event.type)
    assert seen == ["image_generation.partial_image"]


def test_gateway_408_reaches_the_client_as_a_status_error(
    client: openai.AzureOpenAI, emulator: Any
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.images.generate(
            model=emulator.deployment, prompt="a red apple on a white background",
            size="2048x2048", quality="high", stream=True, partial_images=0,
        )  # fmt: skip
    assert caught.value.status_code == 408
    assert caught.value.response.headers["apim-request-id"]


def test_rate_limit_429_reaches_the_client(client: openai.AzureOpenAI, emulator: Any) -> None:
    emulator.script({"outcome": "rate_limited", "retry_after_ms": 3000})
    with pytest.raises(openai.RateLimitError) as caught:
        client.images.generate(model=emulator.deployment, prompt="x", size="1024x1024")
    assert caught.value.response.headers["retry-after-ms"] == "30"
