"""The official `openai` package as a witness of the emulator's wire shapes.

Every event of a generate or edit stream (partials and completed) and every JSON result is validated
with the SDK's own types (`ImageGenStreamEvent`, `ImageEditStreamEvent`, `ImagesResponse`) in strict
mode, and a field the SDK does not know is an error here (the SDK itself allows extras, so a field we
invented would otherwise pass unseen). A field we dropped fails the SDK's validation."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
import requests
from openai.types import ImageEditStreamEvent, ImageGenStreamEvent, ImagesResponse
from pydantic import BaseModel, TypeAdapter, ValidationError

API_VERSION = "2025-04-01-preview"
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
GEN_EVENT: TypeAdapter[Any] = TypeAdapter(ImageGenStreamEvent)
EDIT_EVENT: TypeAdapter[Any] = TypeAdapter(ImageEditStreamEvent)


class Invented(AssertionError):
    """The emulator sent a field the SDK's type does not declare."""


def no_extras(model: BaseModel, where: str = "") -> None:
    """Walks the parsed model: every field the wire carried must be one the SDK declares."""
    name = where or type(model).__name__
    if model.model_extra:
        raise Invented(f"{name}: fields the SDK does not declare: {sorted(model.model_extra)}")
    for field in type(model).model_fields:
        value = getattr(model, field)
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, BaseModel):
                no_extras(item, f"{name}.{field}")


def witness(adapter: TypeAdapter[Any], data: dict[str, Any]) -> BaseModel:
    model = adapter.validate_python(data, strict=True)
    no_extras(model)
    return model


def url(emulator: Any, endpoint: str) -> str:
    path = f"/openai/deployments/{emulator.deployment}/images/{endpoint}?api-version={API_VERSION}"
    return emulator.url(path)


def stream_events(response: requests.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text[:300]
    found = []
    for block in response.text.split("\n\n"):
        data = [ln[5:].strip() for ln in block.strip().split("\n") if ln.startswith("data:")]
        if data:
            found.append(json.loads("\n".join(data)))
    return found


def generate(emulator: Any, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        url(emulator, "generations"), json=body, headers={"api-key": emulator.api_key}, timeout=30
    )


def edit(emulator: Any, fields: dict[str, str]) -> requests.Response:
    return requests.post(
        url(emulator, "edits"), data=fields, files=[("image[]", ("a.png", PNG_BYTES, "image/png"))],
        headers={"api-key": emulator.api_key}, timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [
        {"output_format": "png", "quality": "low"},
        {"output_format": "jpeg", "output_compression": 70, "quality": "medium"},
        {"size": "1536x1024", "background": "opaque", "quality": "auto"},
        {"size": "1024x640", "quality": "low", "partial_images": 1},
    ],
)
def test_every_generate_event_is_an_sdk_event(emulator: Any, extra: dict[str, Any]) -> None:
    body = {"prompt": "a lighthouse", "size": "1024x1024", "stream": True, "partial_images": 3}
    found = stream_events(generate(emulator, body | extra))
    models = [witness(GEN_EVENT, data) for data in found]
    asked = (body | extra)["partial_images"]
    assert [type(m).__name__ for m in models] == ["ImageGenPartialImageEvent"] * asked + [
        "ImageGenCompletedEvent"
    ]
    assert [d["partial_image_index"] for d in found[:-1]] == list(range(asked))


def test_every_edit_event_is_an_sdk_event(emulator: Any) -> None:
    fields = {"prompt": "paint it blue", "size": "1024x1536", "quality": "low", "stream": "true"}
    found = stream_events(edit(emulator, fields | {"partial_images": "2"}))
    models = [witness(EDIT_EVENT, data) for data in found]
    assert [type(m).__name__ for m in models] == [
        "ImageEditPartialImageEvent", "ImageEditPartialImageEvent", "ImageEditCompletedEvent",
    ]  # fmt: skip
    # A generate event is not an edit event: the `type` discriminates.
    with pytest.raises(ValidationError):
        GEN_EVENT.validate_python(found[0], strict=True)


def test_streams_varied_by_the_script_are_still_sdk_events(emulator: Any) -> None:
    emulator.script(
        {"outcome": "fewer_partials", "partials": 1},
        {"outcome": "late_first_partial", "seconds": 30},
    )
    body = {"prompt": "x", "size": "1024x1024", "quality": "low", "stream": True}
    for _ in range(2):
        found = stream_events(generate(emulator, body | {"partial_images": 2}))
        assert [witness(GEN_EVENT, data).type for data in found][-1] == "image_generation.completed"


def test_json_results_are_an_sdk_images_response(emulator: Any) -> None:
    body = {"prompt": "two pears", "size": "1024x1024", "quality": "low", "n": 2}
    r = generate(emulator, body)
    assert r.status_code == 200
    result = witness(TypeAdapter(ImagesResponse), r.json())
    assert isinstance(result, ImagesResponse) and result.data and len(result.data) == 2


def test_the_sdk_client_parses_the_stream_without_extras(emulator: Any) -> None:
    client = openai.AzureOpenAI(
        azure_endpoint=emulator.base_url, api_key=emulator.api_key, api_version=API_VERSION,
        max_retries=0, timeout=30,
    )  # fmt: skip
    stream = client.images.generate(
        model=emulator.deployment, prompt="a kite", size="1024x1024", quality="low", stream=True,
        partial_images=2,
    )  # fmt: skip
    events = list(stream)
    for event in events:
        no_extras(event)
    assert [e.type for e in events][-1] == "image_generation.completed"


# --- the witness can fail: it sees a field invented, dropped or mistyped ---------------------------


def test_the_witness_sees_an_invented_a_dropped_and_a_mistyped_field(emulator: Any) -> None:
    body = {"prompt": "x", "size": "1024x1024", "quality": "low", "stream": True}
    partial, completed = stream_events(generate(emulator, body | {"partial_images": 1}))
    witness(GEN_EVENT, partial)
    with pytest.raises(Invented, match="revised_prompt"):
        witness(GEN_EVENT, partial | {"revised_prompt": "x"})
    with pytest.raises(Invented, match="usage"):
        witness(GEN_EVENT, completed | {"usage": completed["usage"] | {"cached_tokens": 0}})
    with pytest.raises(ValidationError):
        witness(GEN_EVENT, {k: v for k, v in completed.items() if k != "usage"})
    with pytest.raises(ValidationError):
        witness(GEN_EVENT, partial | {"created_at": str(partial["created_at"])})


def test_the_scripted_bad_payloads_fail_the_witness(emulator: Any) -> None:
    emulator.script({"outcome": "bad_partial_index"}, {"outcome": "bad_completed", "payload": "no_image"})  # fmt: skip
    body = {"prompt": "x", "size": "1024x1024", "quality": "low", "stream": True}
    bad_index = stream_events(generate(emulator, body | {"partial_images": 1}))[0]
    with pytest.raises(ValidationError, match="partial_image_index"):
        witness(GEN_EVENT, bad_index)
    no_image = stream_events(generate(emulator, body | {"partial_images": 1}))[-1]
    with pytest.raises(ValidationError, match="b64_json"):
        witness(GEN_EVENT, no_image)
