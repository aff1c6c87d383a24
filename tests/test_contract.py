"""The queue message contract (docs/design.md §4): every rule, with the exact field-first message."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from shared.contract.request import (
    BLOB_PATH_PATTERN,
    FIELDS,
    ID_PATTERN,
    MASK_PATTERN,
    MAX_ERRORS,
    MAX_EXCERPT_BYTES,
    MAX_MESSAGE_BYTES,
    SIZE_PATTERN,
    GenerationRequest,
    InvalidMessage,
    decode_body,
    encode_message,
    excerpt,
    json_schema,
    parse_message,
    schema_text,
    validate_request,
)

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "schemas" / "generation-request.schema.json"
EDIT = {"operation": "edit", "input_images": ["inputs/a.png"]}


def ok(**fields: Any) -> GenerationRequest:
    return validate_request({"prompt": "a red fox", **fields})


def ok_on(model: str, **fields: Any) -> GenerationRequest:
    """Valid for a deployment of `model` (for the rules gpt-image-2, the default, refuses)."""
    return validate_request({"prompt": "a red fox", **fields}, models=(model,))


def errors(data: dict[str, Any], **kwargs: Any) -> tuple[str, ...]:
    with pytest.raises(InvalidMessage) as info:
        validate_request(data, **kwargs)
    assert str(info.value) == info.value.message == "; ".join(info.value.errors)
    return info.value.errors


def error(**fields: Any) -> str:
    """The single error of a message that is valid except for `fields`."""
    found = errors({"prompt": "a red fox", **fields})
    assert len(found) == 1, found
    return found[0]


# --- defaults and null ---------------------------------------------------------------------------


def test_minimal_message_takes_every_default() -> None:
    request = validate_request({"prompt": "a red fox"})
    assert request.model_dump() == {
        "id": None,
        "operation": "generate",
        "prompt": "a red fox",
        "size": "auto",
        "quality": "auto",
        "n": 1,
        "output_format": "png",
        "output_compression": None,
        "background": "auto",
        "moderation": "auto",
        "partial_images": 0,
        "save_partials": False,
        "input_images": None,
        "mask": None,
        "input_fidelity": None,
        "user": None,
        "metadata": {},
        "traceparent": None,
    }


def test_default_id_fills_an_absent_or_null_id_but_not_a_given_one() -> None:
    assert validate_request({"prompt": "x"}, default_id="msg-1").id == "msg-1"
    assert validate_request({"prompt": "x", "id": None}, default_id="msg-1").id == "msg-1"
    assert validate_request({"prompt": "x", "id": "mine"}, default_id="msg-1").id == "mine"


@pytest.mark.parametrize(
    ("field", "default"),
    [
        ("id", None),
        ("operation", "generate"),
        ("size", "auto"),
        ("quality", "auto"),
        ("n", 1),
        ("output_format", "png"),
        ("output_compression", None),
        ("background", "auto"),
        ("moderation", "auto"),
        ("partial_images", 0),
        ("save_partials", False),
        ("input_images", None),
        ("mask", None),
        ("input_fidelity", None),
        ("user", None),
        ("metadata", {}),
        ("traceparent", None),
    ],
)
def test_null_means_absent_and_the_default_applies(field: str, default: Any) -> None:
    assert getattr(ok(**{field: None}), field) == default


def test_every_optional_field_is_covered_by_the_null_test() -> None:
    # The parametrize list above must not fall behind the model.
    assert set(FIELDS) - {"prompt"} == {
        "id", "operation", "size", "quality", "n", "output_format", "output_compression",
        "background", "moderation", "partial_images", "save_partials", "input_images", "mask",
        "input_fidelity", "user", "metadata", "traceparent",
    }  # fmt: skip


def test_null_prompt_is_a_missing_prompt() -> None:
    assert errors({"prompt": None}) == ("prompt: required field is missing",)
    assert errors({}) == ("prompt: required field is missing",)


def test_empty_id_is_invalid_not_absent_even_with_a_default_id() -> None:
    assert errors({"prompt": "x", "id": ""}, default_id="msg-1") == (
        "id: must not be empty (omit it, or send null, to use the queue message id)",
    )


def test_null_in_an_unknown_field_is_still_unknown() -> None:
    assert error(colour=None) == "colour: unknown field"


def test_edit_without_input_images_is_an_error_even_when_null() -> None:
    assert error(operation="edit", input_images=None) == (
        "input_images: required when operation is 'edit' (1..16 blob paths 'container/name')"
    )


# --- unknown fields and wrong types --------------------------------------------------------------


def test_unknown_fields_are_errors_with_a_suggestion() -> None:
    assert error(promt="x") == "promt: unknown field (did you mean 'prompt'?)"
    assert error(partial_image=1) == "partial_image: unknown field (did you mean 'partial_images'?)"
    assert error(stream=True) == "stream: unknown field"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"id": 123}, "id: expected a string, got integer 123"),
        ({"operation": 1}, "operation: expected one of 'generate', 'edit', got integer 1"),
        ({"prompt": ["x"]}, "prompt: expected a string, got array of 1 item"),
        ({"prompt": 5}, "prompt: expected a string, got integer 5"),
        ({"size": 1024}, "size: expected a string, got integer 1024"),
        ({"size": [1024, 1024]}, "size: expected a string, got array of 2 items"),
        (
            {"quality": True},
            "quality: expected one of 'low', 'medium', 'high', 'auto', got boolean true",
        ),
        ({"n": "2"}, "n: expected an integer, got string '2'"),
        ({"n": 2.0}, "n: expected an integer, got number 2.0"),
        ({"n": 2.5}, "n: expected an integer, got number 2.5"),
        ({"n": True}, "n: expected an integer, got boolean true"),
        ({"n": []}, "n: expected an integer, got empty array"),
        ({"n": {}}, "n: expected an integer, got object"),
        ({"output_format": 1}, "output_format: expected one of 'png', 'jpeg', got integer 1"),
        (
            {"output_format": "jpeg", "output_compression": "50"},
            "output_compression: expected an integer, got string '50'",
        ),
        (
            {"output_format": "jpeg", "output_compression": 50.0},
            "output_compression: expected an integer, got number 50.0",
        ),
        (
            {"background": False},
            "background: expected one of 'auto', 'opaque', 'transparent', got boolean false",
        ),
        ({"moderation": 0}, "moderation: expected one of 'auto', 'low', got integer 0"),
        ({"partial_images": 1.0}, "partial_images: expected an integer, got number 1.0"),
        ({"partial_images": "1"}, "partial_images: expected an integer, got string '1'"),
        ({"save_partials": 1}, "save_partials: expected a boolean (true or false), got integer 1"),
        (
            {"save_partials": "true"},
            "save_partials: expected a boolean (true or false), got string 'true'",
        ),
        (
            {"operation": "edit", "input_images": "inputs/a.png"},
            "input_images: expected an array, got string 'inputs/a.png'",
        ),
        (
            {"operation": "edit", "input_images": [7]},
            "input_images[0]: expected a string, got integer 7",
        ),
        ({**EDIT, "mask": 5}, "mask: expected a string, got integer 5"),
        (
            {**EDIT, "input_fidelity": True},
            "input_fidelity: expected one of 'low', 'high', got boolean true",
        ),
        ({"user": 42}, "user: expected a string, got integer 42"),
        ({"metadata": []}, "metadata: expected an object, got empty array"),
        ({"metadata": "k=v"}, "metadata: expected an object, got string 'k=v'"),
        ({"metadata": {"k": 1}}, 'metadata["k"]: expected a string, got integer 1'),
        ({"metadata": {"k": None}}, 'metadata["k"]: expected a string, got null'),
        ({"metadata": {"k": True}}, 'metadata["k"]: expected a string, got boolean true'),
        ({"metadata": {"k": {"a": "b"}}}, 'metadata["k"]: expected a string, got object'),
        ({"metadata": {"k": ["v"]}}, 'metadata["k"]: expected a string, got array of 1 item'),
    ],
)
def test_wrong_types_are_not_coerced(fields: dict[str, Any], message: str) -> None:
    assert error(**fields) == message


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("operation", "Generate", "operation: expected one of 'generate', 'edit', got string 'Generate'"),
        ("quality", "hd", "quality: expected one of 'low', 'medium', 'high', 'auto', got string 'hd'"),
        ("output_format", "PNG", "output_format: expected one of 'png', 'jpeg', got string 'PNG'"),
        ("output_format", "jpg", "output_format: expected one of 'png', 'jpeg', got string 'jpg'"),
        ("background", "white", "background: expected one of 'auto', 'opaque', 'transparent', got string 'white'"),
        ("moderation", "high", "moderation: expected one of 'auto', 'low', got string 'high'"),
    ],
)  # fmt: skip
def test_enums_are_exact(field: str, value: str, message: str) -> None:
    assert error(**{field: value}) == message


def test_input_fidelity_enum() -> None:
    assert error(**EDIT, input_fidelity="medium") == (
        "input_fidelity: expected one of 'low', 'high', got string 'medium'"
    )
    # gpt-image-2 (the default) takes no input_fidelity at all: see test_contract_models.py.
    assert ok_on("gpt-image-1", **EDIT, input_fidelity="high").input_fidelity == "high"


def test_webp_is_rejected_because_azure_rejects_it() -> None:
    assert error(output_format="webp") == (
        "output_format: 'webp' is not supported: the Azure deployment rejects webp; "
        "use 'png' or 'jpeg'"
    )


@pytest.mark.parametrize("value", ["low", "medium", "high", "auto"])
def test_every_quality_is_accepted(value: str) -> None:
    assert ok(quality=value).quality == value


# --- numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n": 0}, "n: must be 1..10, got 0"),
        ({"n": -1}, "n: must be 1..10, got -1"),
        ({"n": 11}, "n: must be 1..10, got 11"),
        ({"n": 10**19}, "n: must be 1..10, got 10000000000000000000"),
        ({"n": 10**30}, "n: must be 1..10, got 100000000000… (31 digits)"),
        ({"partial_images": -1}, "partial_images: must be 0..3, got -1"),
        ({"partial_images": 4}, "partial_images: must be 0..3, got 4"),
        (
            {"output_format": "jpeg", "output_compression": -1},
            "output_compression: must be 0..100, got -1",
        ),
        (
            {"output_format": "jpeg", "output_compression": 101},
            "output_compression: must be 0..100, got 101",
        ),
    ],
)
def test_integer_ranges(fields: dict[str, Any], message: str) -> None:
    assert error(**fields) == message


@pytest.mark.parametrize(
    "fields",
    [
        {"n": 1},
        {"n": 10},
        {"partial_images": 0},
        {"partial_images": 3},
        {"output_format": "jpeg", "output_compression": 0},
        {"output_format": "jpeg", "output_compression": 100},
        {"save_partials": True},
    ],
)
def test_integer_bounds_are_inclusive(fields: dict[str, Any]) -> None:
    request = ok(**fields)
    for name, value in fields.items():
        assert getattr(request, name) == value


# --- size ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    ["auto", "1024x1024", "1536x1024", "1024x1536", "2048x2048", "3840x2160", "2160x3840",
     "3840x1280", "1280x3840", "2880x2880", "1024x640"],
)  # fmt: skip
def test_valid_sizes(size: str) -> None:
    assert ok(size=size).size == size
    assert re.fullmatch(SIZE_PATTERN, size), "the schema's pattern must accept every valid size"


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("1000x1000", "size: gpt-image-2 needs width and height in multiples of 16; got 1000x1000"),
        ("1024x1000", "size: gpt-image-2 needs width and height in multiples of 16; got 1024x1000"),
        ("4096x1024", "size: each side must be 16..3840 pixels, got 4096x1024"),
        ("3856x2160", "size: each side must be 16..3840 pixels, got 3856x2160"),
        ("0x1024", "size: each side must be 16..3840 pixels, got 0x1024"),
        ("1024x8", "size: each side must be 16..3840 pixels, got 1024x8"),
        ("3840x1264", "size: gpt-image-2 takes a long side at most 3 times the short side; got 3840x1264 (ratio 3.04)"),
        ("64x16", "size: gpt-image-2 takes a long side at most 3 times the short side; got 64x16 (ratio 4.00)"),
        ("3840x3840", "size: gpt-image-2 takes 655,360 to 8,294,400 pixels; got 3840x3840 (14,745,600 pixels)"),
        ("2896x2896", "size: gpt-image-2 takes 655,360 to 8,294,400 pixels; got 2896x2896 (8,386,816 pixels)"),
        # Accepted before the model rules: gpt-image-2 needs 655,360 pixels at least.
        ("16x16", "size: gpt-image-2 takes 655,360 to 8,294,400 pixels; got 16x16 (256 pixels)"),
        ("1024x512", "size: gpt-image-2 takes 655,360 to 8,294,400 pixels; got 1024x512 (524,288 pixels)"),
        ("1024X1024", "size: expected 'auto' or 'WIDTHxHEIGHT' such as '1024x1024', got '1024X1024'"),
        ("1024 x 1024", "size: expected 'auto' or 'WIDTHxHEIGHT' such as '1024x1024', got '1024 x 1024'"),
        ("1024x1024 ", "size: expected 'auto' or 'WIDTHxHEIGHT' such as '1024x1024', got '1024x1024 '"),
        ("01024x1024", "size: expected 'auto' or 'WIDTHxHEIGHT' such as '1024x1024', got '01024x1024'"),
        ("-16x16", "size: expected 'auto' or 'WIDTHxHEIGHT' such as '1024x1024', got '-16x16'"),
        ("1024x", "size: expected 'auto' or 'WIDTHxHEIGHT' such as '1024x1024', got '1024x'"),
        ("1024", "size: expected 'auto' or 'WIDTHxHEIGHT' such as '1024x1024', got '1024'"),
        ("", "size: expected 'auto' or 'WIDTHxHEIGHT' such as '1024x1024', got ''"),
        ("AUTO", "size: expected 'auto' or 'WIDTHxHEIGHT' such as '1024x1024', got 'AUTO'"),
        ("１０２４x1024", "size: expected 'auto' or 'WIDTHxHEIGHT' such as '1024x1024', got '１０２４x1024'"),
    ],
)  # fmt: skip
def test_invalid_sizes(size: str, message: str) -> None:
    assert error(size=size) == message


def test_a_size_with_thousands_of_digits_is_an_error_not_a_crash() -> None:
    message = error(size="9" * 5000 + "x16")
    assert message.startswith("size: each side must be 16..3840 pixels, got '9999")
    assert len(message) < 200


# --- text lengths (code points) ------------------------------------------------------------------


def test_prompt_length_counts_code_points() -> None:
    assert ok(prompt="x" * 32000).prompt == "x" * 32000
    assert ok(prompt="😀" * 32000).prompt == "😀" * 32000  # 128,000 UTF-8 bytes, 32000 characters
    assert error(prompt="😀" * 32001) == "prompt: must be at most 32000 characters, got 32001"
    assert error(prompt="x" * 40000) == "prompt: must be at most 32000 characters, got 40000"
    assert error(prompt="") == "prompt: must not be empty"


def test_an_escaped_surrogate_pair_is_one_code_point() -> None:
    body = '{"prompt": "' + "\\ud83d\\ude00" * 32000 + '"}'
    assert parse_message(body, message_id="m").prompt == "😀" * 32000


def test_user_length() -> None:
    assert ok(user="u" * 256).user == "u" * 256
    assert ok(user="é" * 256).user == "é" * 256
    assert error(user="u" * 257) == "user: must be at most 256 characters, got 257"
    assert error(user="😀" * 257) == "user: must be at most 256 characters, got 257"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": "fox \ud800"}, "prompt: contains an unpaired UTF-16 surrogate (\\ud800)"),
        ({"user": "\udfff"}, "user: contains an unpaired UTF-16 surrogate (\\udfff)"),
        ({"metadata": {"k": "\ud800"}}, 'metadata["k"]: contains an unpaired UTF-16 surrogate (\\ud800)'),
    ],
)  # fmt: skip
def test_lone_surrogates_are_rejected_because_they_cannot_be_written(
    fields: dict[str, Any], message: str
) -> None:
    assert error(**fields) == message


def test_lone_surrogate_in_a_body_is_an_invalid_message() -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_message('{"prompt": "fox \\ud800"}', message_id="m")
    assert info.value.errors == ("prompt: contains an unpaired UTF-16 surrogate (\\ud800)",)
    info.value.input_excerpt.encode("utf-8")  # the record can be written


# --- id ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["a", "A", "0", "req-1", "a.b_c-d", "9f1c2c9e-3c6a-4b59-8a0e-2d0c5d8e0b1a", "a" * 128]
)
def test_valid_ids(value: str) -> None:
    assert ok(id=value).id == value
    assert re.fullmatch(ID_PATTERN, value)


ONLY = "may contain only letters, digits, '.', '_' and '-' (pattern ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$)"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "id: must not be empty (omit it, or send null, to use the queue message id)"),
        ("../x", "id: must start with a letter or digit (A-Z, a-z, 0-9), got '../x'"),
        (".", "id: must start with a letter or digit (A-Z, a-z, 0-9), got '.'"),
        ("..", "id: must start with a letter or digit (A-Z, a-z, 0-9), got '..'"),
        ("-a", "id: must start with a letter or digit (A-Z, a-z, 0-9), got '-a'"),
        ("_a", "id: must start with a letter or digit (A-Z, a-z, 0-9), got '_a'"),
        ("/a", "id: must start with a letter or digit (A-Z, a-z, 0-9), got '/a'"),
        ("éa", "id: must start with a letter or digit (A-Z, a-z, 0-9), got 'éa'"),
        ("a/b", f"id: {ONLY}, got 'a/b' (bad character '/')"),
        ("a\\b", f"id: {ONLY}, got 'a\\\\b' (bad character '\\\\')"),
        ("a b", f"id: {ONLY}, got 'a b' (bad character ' ')"),
        ("aé", f"id: {ONLY}, got 'aé' (bad character 'é')"),
        ("a\n", f"id: {ONLY}, got 'a\\n' (bad character '\\n')"),
        ("a" * 129, "id: must be at most 128 characters, got 129"),
    ],
)
def test_invalid_ids(value: str, message: str) -> None:
    assert error(id=value) == message


# --- blob paths: input_images and mask -----------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["inputs/a.png", "inputs/dir/sub/a.png", "inputs/a b.png", "inputs/é.png", "inputs/a..b.png",
     "inputs/.hidden.png", "inputs/a"],
)  # fmt: skip
def test_valid_input_paths(path: str) -> None:
    assert ok(operation="edit", input_images=[path]).input_images == [path]
    assert re.match(BLOB_PATH_PATTERN, path), "the schema's pattern must accept every valid path"


ALLOWED = "(allowed: inputs)"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("other/a.png", f"container 'other' is not an allowed input container {ALLOWED}"),
        ("images/x/0.png", f"container 'images' is not an allowed input container {ALLOWED}"),
        ("http://example.com/a.png", "expected a blob path 'container/name', not a URL: 'http://example.com/a.png'"),
        ("https://acct.blob.core.windows.net/inputs/a.png", "expected a blob path 'container/name', not a URL: 'https://acct.blob.core.windows.net/inputs/a.png'"),
        ("file:///etc/passwd", "expected a blob path 'container/name', not a URL: 'file:///etc/passwd'"),
        ("data:image/png;base64,AAAA", "expected a blob path 'container/name', not a URL: 'data:image/png;base64,AAAA'"),
        ("/inputs/a.png", "expected a blob path 'container/name', not an absolute path: '/inputs/a.png'"),
        ("inputs\\a.png", "must not contain backslashes, got 'inputs\\\\a.png'"),
        ("inputs/../secret.png", "'.' and '..' path segments are not allowed, got 'inputs/../secret.png'"),
        ("inputs/a/../../x.png", "'.' and '..' path segments are not allowed, got 'inputs/a/../../x.png'"),
        ("inputs/./a.png", "'.' and '..' path segments are not allowed, got 'inputs/./a.png'"),
        ("inputs/..", "'.' and '..' path segments are not allowed, got 'inputs/..'"),
        ("../inputs/a.png", "'..' is not a valid container name (3-63 lowercase letters, digits and single hyphens, starting and ending alphanumeric)"),
        ("inputs//a.png", "empty path segment ('//' or a trailing '/') in 'inputs//a.png'"),
        ("inputs/a/", "empty path segment ('//' or a trailing '/') in 'inputs/a/'"),
        ("inputs/", "expected a blob path 'container/name', got 'inputs/'"),
        ("inputs", "expected a blob path 'container/name', got 'inputs'"),
        ("", "must not be empty; expected a blob path 'container/name'"),
        ("Inputs/a.png", "'Inputs' is not a valid container name (3-63 lowercase letters, digits and single hyphens, starting and ending alphanumeric)"),
        ("in/a.png", "'in' is not a valid container name (3-63 lowercase letters, digits and single hyphens, starting and ending alphanumeric)"),
        ("in--puts/a.png", "'in--puts' is not a valid container name (3-63 lowercase letters, digits and single hyphens, starting and ending alphanumeric)"),
        ("inputs-/a.png", "'inputs-' is not a valid container name (3-63 lowercase letters, digits and single hyphens, starting and ending alphanumeric)"),
        ("a" * 64 + "/a.png", "'" + "a" * 60 + "…' is not a valid container name (3-63 lowercase letters, digits and single hyphens, starting and ending alphanumeric)"),
        ("inputs/a\x00.png", "must not contain control characters, got 'inputs/a\\x00.png'"),
        ("inputs/a\n.png", "must not contain control characters, got 'inputs/a\\n.png'"),
        ("inputs/a\x7f.png", "must not contain control characters, got 'inputs/a\\x7f.png'"),
        ("inputs/" + "a" * 1025, "blob name is 1025 characters, over Azure's 1024"),
    ],
)  # fmt: skip
def test_invalid_input_paths(path: str, reason: str) -> None:
    assert error(operation="edit", input_images=[path]) == f"input_images[0]: {reason}"


def test_each_bad_input_image_is_named_by_its_index() -> None:
    assert errors(
        {
            "prompt": "x",
            "operation": "edit",
            "input_images": ["inputs/a.png", "other/b.png", "inputs/../c.png"],
        }
    ) == (
        f"input_images[1]: container 'other' is not an allowed input container {ALLOWED}",
        "input_images[2]: '.' and '..' path segments are not allowed, got 'inputs/../c.png'",
    )


def test_allowed_containers_are_a_setting() -> None:
    data = {"prompt": "x", "operation": "edit", "input_images": ["refs/a.png", "other/b.png"]}
    assert errors(data, input_containers=("inputs", "refs")) == (
        "input_images[1]: container 'other' is not an allowed input container "
        "(allowed: inputs, refs)",
    )
    data["input_images"] = ["refs/a.png"]
    assert validate_request(data, input_containers=["refs"]).input_images == ["refs/a.png"]
    assert validate_request(data, input_containers="refs").input_images == ["refs/a.png"]
    assert errors(data) == (
        f"input_images[0]: container 'refs' is not an allowed input container {ALLOWED}",
    )


def test_model_validate_reads_allowed_containers_from_the_context() -> None:
    data = {"prompt": "x", "operation": "edit", "input_images": ["refs/a.png"]}
    request = GenerationRequest.model_validate(data, context={"input_containers": ("refs",)})
    assert request.input_images == ["refs/a.png"]
    with pytest.raises(ValidationError, match="not an allowed input container"):
        GenerationRequest.model_validate(data)  # no context: ("inputs",)


def test_input_images_count() -> None:
    assert (
        ok(operation="edit", input_images=["inputs/a.png"] * 16).input_images
        == ["inputs/a.png"] * 16
    )
    assert error(operation="edit", input_images=["inputs/a.png"] * 17) == (
        "input_images: must list at most 16 blob paths, got 17"
    )
    assert error(operation="edit", input_images=[]) == (
        "input_images: must list 1..16 blob paths, got an empty array"
    )


@pytest.mark.parametrize("mask", ["inputs/mask.png", "inputs/dir/Mask.PNG"])
def test_valid_masks(mask: str) -> None:
    assert ok(**EDIT, mask=mask).mask == mask
    assert re.match(MASK_PATTERN, mask)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        ("inputs/mask.jpg", "mask: must be a PNG blob (a name ending in .png), got 'inputs/mask.jpg'"),
        ("inputs/mask.png.jpg", "mask: must be a PNG blob (a name ending in .png), got 'inputs/mask.png.jpg'"),
        ("inputs/png", "mask: must be a PNG blob (a name ending in .png), got 'inputs/png'"),
        ("other/mask.png", f"mask: container 'other' is not an allowed input container {ALLOWED}"),
        ("https://x.example/m.png", "mask: expected a blob path 'container/name', not a URL: 'https://x.example/m.png'"),
        ("/inputs/m.png", "mask: expected a blob path 'container/name', not an absolute path: '/inputs/m.png'"),
        ("inputs/../m.png", "mask: '.' and '..' path segments are not allowed, got 'inputs/../m.png'"),
        ("m.png", "mask: expected a blob path 'container/name', got 'm.png'"),
    ],
)  # fmt: skip
def test_invalid_masks(mask: str, message: str) -> None:
    assert error(**EDIT, mask=mask) == message


# --- rules between fields ------------------------------------------------------------------------


def test_output_compression_is_for_jpeg_only() -> None:
    assert ok(output_format="jpeg", output_compression=80).output_compression == 80
    assert error(output_compression=80) == (
        "output_compression: only allowed with output_format 'jpeg' (output_format is 'png')"
    )
    assert error(output_format="png", output_compression=0) == (
        "output_compression: only allowed with output_format 'jpeg' (output_format is 'png')"
    )


def test_transparent_background_needs_png() -> None:
    # gpt-image-2 (the default) refuses transparent at all: see test_contract_models.py.
    assert ok_on("gpt-image-1", background="transparent").background == "transparent"
    assert (
        ok_on("gpt-image-1", background="transparent", output_format="png").background
        == "transparent"
    )
    assert ok(background="opaque", output_format="jpeg").background == "opaque"
    assert error(background="transparent", output_format="jpeg") == (
        "background: 'transparent' needs output_format 'png' (output_format is 'jpeg')"
    )


def test_edit_fields_are_for_edit_only() -> None:
    assert errors(
        {
            "prompt": "x",
            "input_images": ["inputs/a.png"],
            "mask": "inputs/m.png",
            "input_fidelity": "high",
        }
    ) == (
        "input_images: only allowed when operation is 'edit' (operation is 'generate')",
        "mask: only allowed when operation is 'edit' (operation is 'generate')",
        "input_fidelity: only allowed when operation is 'edit' (operation is 'generate')",
    )


def test_a_full_edit_request() -> None:
    request = ok_on(
        "gpt-image-1",
        operation="edit",
        input_images=["inputs/a.png", "inputs/b.jpg"],
        mask="inputs/m.png",
        input_fidelity="low",
        size="1536x1024",
        quality="high",
        n=2,
        output_format="jpeg",
        output_compression=85,
        background="opaque",
        moderation="auto",  # an edit takes no other (/images/edits has no moderation)
        partial_images=2,
        save_partials=True,
        user="user-7",
        metadata={"job": "j1", "ключ": "значение"},
    )
    assert request.operation == "edit"
    assert request.input_images == ["inputs/a.png", "inputs/b.jpg"]
    assert request.metadata == {"job": "j1", "ключ": "значение"}


# --- messages: field first, first field first, bounded -------------------------------------------


def test_errors_come_in_field_order_whatever_the_input_order() -> None:
    assert errors({"metadata": 1, "zzz": 1, "n": 0, "id": "../x", "size": "7x7"}) == (
        "id: must start with a letter or digit (A-Z, a-z, 0-9), got '../x'",
        "prompt: required field is missing",
        "size: each side must be 16..3840 pixels, got 7x7",
        "n: must be 1..10, got 0",
        "metadata: expected an object, got integer 1",
        "zzz: unknown field",
    )


def test_every_error_names_a_field_first() -> None:
    data = {name: 12.5 for name in FIELDS} | {"extra": 1}
    found = errors(data)
    assert len(found) == len(FIELDS) + 1
    for line, name in zip(found, [*FIELDS, "extra"], strict=True):
        assert line.startswith(f"{name}: "), line


def test_thousands_of_errors_are_capped() -> None:
    found = errors({"prompt": "x", **{f"f{i}": i for i in range(5000)}})
    assert len(found) == MAX_ERRORS + 1
    assert found[0] == "f0: unknown field"
    assert found[-1] == f"message: {5000 - MAX_ERRORS} more errors not shown"


def test_odd_unknown_field_names_are_quoted() -> None:
    assert error(**{"": 1}) == "'': unknown field"
    assert error(**{"a b": 1}) == "'a b': unknown field"
    assert error(**{"x" * 100: 1}) == "'" + "x" * 40 + "…': unknown field"


def test_long_values_are_cut_short_in_messages() -> None:
    message = error(quality="q" * 10_000)
    assert message == (
        "quality: expected one of 'low', 'medium', 'high', 'auto', got string '" + "q" * 60 + "…'"
    )


def test_validate_request_refuses_a_non_object() -> None:
    with pytest.raises(InvalidMessage) as info:
        validate_request([1, 2])  # type: ignore[arg-type]
    assert info.value.errors == ("message: expected a JSON object, got array",)
    assert info.value.input_excerpt == "[1, 2]"


# --- InvalidMessage and excerpts -----------------------------------------------------------------


def test_invalid_message_is_a_value_error_with_its_parts() -> None:
    exc = InvalidMessage(["n: a", "size: b"], input_excerpt="{}")
    assert isinstance(exc, ValueError)
    assert exc.errors == ("n: a", "size: b")
    assert exc.message == str(exc) == "n: a; size: b"
    assert exc.input_excerpt == "{}"
    assert InvalidMessage("body: empty").errors == ("body: empty",)


def test_excerpt_is_at_most_1_kib_valid_utf8_with_a_marker() -> None:
    assert excerpt('{"a": 1}') == '{"a": 1}'
    for text in ["x" * 5000, "é" * 5000, "😀" * 5000, "x" + "😀" * 5000]:
        quoted = excerpt(text)
        data = quoted.encode("utf-8")
        assert len(data) <= MAX_EXCERPT_BYTES
        assert quoted.endswith(f"…[truncated, {len(text.encode())} bytes in all]")
        assert text.startswith(quoted[: quoted.index("…[truncated")])
    assert excerpt("x" * MAX_EXCERPT_BYTES) == "x" * MAX_EXCERPT_BYTES


def test_excerpt_of_bytes_and_odd_values_is_always_writable() -> None:
    assert excerpt(b"ab\xffcd") == "ab\\xffcd"
    assert excerpt("a\ud800b").encode("utf-8") == b"a\\ud800b"
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    assert excerpt(deep) == "<unprintable list>"


def test_validation_errors_quote_the_input() -> None:
    with pytest.raises(InvalidMessage) as info:
        validate_request({"prompt": "x", "n": 0})
    assert json.loads(info.value.input_excerpt) == {"prompt": "x", "n": 0}
    with pytest.raises(InvalidMessage) as info:
        parse_message('{"prompt": "' + "x" * 40_000 + '"}', message_id="m")
    assert info.value.errors == ("prompt: must be at most 32000 characters, got 40000",)
    assert len(info.value.input_excerpt.encode()) <= MAX_EXCERPT_BYTES
    assert info.value.input_excerpt.startswith('{"prompt": "xxx')


# --- decode_body ---------------------------------------------------------------------------------

BODY = {"id": "req-1", "prompt": "a red fox", "size": "1024x1024"}
BODY_TEXT = json.dumps(BODY)
BODY_B64 = base64.b64encode(BODY_TEXT.encode()).decode()


@pytest.mark.parametrize(
    "body",
    [
        BODY_TEXT,
        BODY_TEXT.encode(),
        "\n  " + BODY_TEXT + "\r\n",
        "\ufeff" + BODY_TEXT,  # a BOM some Windows tools write
        BODY_B64,
        BODY_B64.encode(),
        BODY_B64.rstrip("="),  # padding tolerant
        base64.b64encode(json.dumps({**BODY, "prompt": "fox"}).encode()).decode().rstrip("="),
        "\n".join(BODY_B64[i : i + 20] for i in range(0, len(BODY_B64), 20)) + "\n",  # wrapped
        base64.b64encode(("\ufeff" + BODY_TEXT).encode()).decode(),
    ],
)
def test_bodies_raw_or_base64(body: str | bytes) -> None:
    decoded = decode_body(body)
    assert decoded["id"] == "req-1"
    assert decoded["size"] == "1024x1024"


def test_a_json_object_as_it_stands_is_never_base64_decoded() -> None:
    text = '{"prompt": "eyJpZCI6ICJ4In0="}'
    assert decode_body(text) == {"prompt": "eyJpZCI6ICJ4In0="}


def test_an_emoji_body_round_trips_as_raw_and_base64() -> None:
    text = json.dumps({"prompt": "😀 fox"}, ensure_ascii=False)
    assert decode_body(text.encode()) == {"prompt": "😀 fox"}
    assert decode_body(base64.b64encode(text.encode())) == {"prompt": "😀 fox"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe{}", "body: not UTF-8 (byte 0xff at offset 0)"),
        (b'{"prompt": "\xe9"}', "body: not UTF-8 (byte 0xe9 at offset 12)"),
        (b"", "body: empty"),
        (" \r\n\t", "body: empty"),
        ("[1, 2]", "body: expected a JSON object, got array"),
        ('"text"', "body: expected a JSON object, got string"),
        ("12", "body: expected a JSON object, got number"),
        ("true", "body: expected a JSON object, got boolean"),
        ("null", "body: expected a JSON object, got null"),
        (base64.b64encode(b"[1, 2]"), "body: expected a JSON object, got array (after base64 decoding)"),
        ("{'prompt': 'x'}", "body: not JSON (Expecting property name enclosed in double quotes: line 1 column 2), nor base64 of a JSON object (not base64)"),
        ('{"prompt" "x"}', "body: not JSON (Expecting ':' delimiter: line 1 column 11), nor base64 of a JSON object (not base64)"),
        ("abc$", "body: not JSON (Expecting value: line 1 column 1), nor base64 of a JSON object (not base64)"),
        ("a", "body: not JSON (Expecting value: line 1 column 1), nor base64 of a JSON object (not base64)"),
        ("ab=c", "body: not JSON (Expecting value: line 1 column 1), nor base64 of a JSON object (not base64)"),
        ("abc===", "body: not JSON (Expecting value: line 1 column 1), nor base64 of a JSON object (not base64)"),
        ("eyJh-_8", "body: not JSON (Expecting value: line 1 column 1), nor base64 of a JSON object (not base64)"),
        ("////", "body: not JSON (Expecting value: line 1 column 1), nor base64 of a JSON object (as base64 it decodes to bytes that are not UTF-8)"),
        (base64.b64encode(b"not json"), "body: not JSON (Expecting value: line 1 column 1), nor base64 of a JSON object (as base64 it decodes to text that is not JSON: Expecting value: line 1 column 1)"),
        (b"\x00", "body: not JSON (Expecting value: line 1 column 1), nor base64 of a JSON object (not base64)"),
        (b"\x00" * 100, "body: not JSON (Expecting value: line 1 column 1), nor base64 of a JSON object (not base64)"),
        (b'{"prompt": "a\x00b"}', "body: not JSON (Invalid control character: line 1 column 14), nor base64 of a JSON object (not base64)"),
        (b'{"prompt": "x"}\x00', "body: not JSON (Extra data: line 1 column 16), nor base64 of a JSON object (not base64)"),
        (b"[" * 100_000, "body: not JSON (nested too deeply), nor base64 of a JSON object (not base64)"),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "body: not JSON (nested too deeply), nor base64 of a JSON object (not base64)"),
        (b'{"a": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001, "body: not JSON (nested too deeply), nor base64 of a JSON object (not base64)"),
        ('{"n": NaN}', "body: not JSON (NaN is not valid JSON), nor base64 of a JSON object (not base64)"),
        ('{"n": -Infinity}', "body: not JSON (-Infinity is not valid JSON), nor base64 of a JSON object (not base64)"),
        ('{"n": 1e999}', "body: not JSON (number 1e999 is out of range), nor base64 of a JSON object (not base64)"),
        ('{"n": ' + "1" * 5000 + "}", "body: not JSON (an integer has more than 4300 digits), nor base64 of a JSON object (not base64)"),
        ('{"n": 1, "n": 2}', "body: not JSON (duplicate key 'n'), nor base64 of a JSON object (not base64)"),
        ('{"metadata": {"k": "a", "k": "b"}, "prompt": "x"}', "body: not JSON (duplicate key 'k'), nor base64 of a JSON object (not base64)"),
    ],
)  # fmt: skip
def test_bad_bodies(body: str | bytes, message: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_body(body)
    assert info.value.errors == (message,)
    assert len(info.value.input_excerpt.encode("utf-8")) <= MAX_EXCERPT_BYTES


def test_bad_bodies_are_quoted() -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_body(b"oops\xff")
    assert info.value.input_excerpt == "oops\\xff"
    with pytest.raises(InvalidMessage) as info:
        decode_body("[" * 100_000)
    assert info.value.input_excerpt.startswith("[[[[")
    assert info.value.input_excerpt.endswith("…[truncated, 100000 bytes in all]")


def test_64_kib_of_junk_is_an_invalid_message() -> None:
    rng = random.Random(4)
    junk = [
        bytes(rng.getrandbits(8) for _ in range(MAX_MESSAGE_BYTES)),
        bytes(
            rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ+/0123456789") for _ in range(MAX_MESSAGE_BYTES)
        ),
        "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(MAX_MESSAGE_BYTES // 3)).encode(),
        b"{" * MAX_MESSAGE_BYTES,
        b'{"prompt":' * (MAX_MESSAGE_BYTES // 10),
    ]
    for body in junk:
        with pytest.raises(InvalidMessage) as info:
            decode_body(body)
        assert info.value.message.startswith("body: ")
        assert len(info.value.input_excerpt.encode("utf-8")) <= MAX_EXCERPT_BYTES


def test_random_bodies_never_crash() -> None:
    """Every body gives a dict or InvalidMessage, never another exception."""
    rng = random.Random(1234)
    alphabet = b'{}[]":,0123456789.eE+-\\u tfnrl\x00\xff\xc3\xa9AZaz/=\n'
    for _ in range(2000):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        try:
            result = parse_message(body, message_id="m")
        except InvalidMessage as exc:
            assert exc.message and exc.errors
            exc.input_excerpt.encode("utf-8")
        else:
            assert isinstance(result, GenerationRequest)


# --- parse_message -------------------------------------------------------------------------------


def test_raw_and_base64_bodies_give_the_same_request() -> None:
    raw = parse_message(BODY_TEXT, message_id="m-1")
    assert raw == parse_message(BODY_B64, message_id="m-2")
    assert raw == parse_message(BODY_TEXT.encode(), message_id="m-3")
    assert raw.id == "req-1"


def test_the_queue_message_id_is_the_default_id() -> None:
    body = json.dumps({"prompt": "x"})
    assert parse_message(body, message_id="4f5c6d7e-aaaa-bbbb-cccc-0123456789ab").id == (
        "4f5c6d7e-aaaa-bbbb-cccc-0123456789ab"
    )
    assert parse_message('{"prompt": "x", "id": null}', message_id="m-9").id == "m-9"


def test_parse_message_checks_input_containers() -> None:
    body = json.dumps({"prompt": "x", "operation": "edit", "input_images": ["refs/a.png"]})
    assert parse_message(body, message_id="m", input_containers=("refs",)).input_images == [
        "refs/a.png"
    ]
    with pytest.raises(InvalidMessage) as info:
        parse_message(body, message_id="m")
    assert info.value.errors == (
        f"input_images[0]: container 'refs' is not an allowed input container {ALLOWED}",
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"prompt": "x", "colour": "red"}', "colour: unknown field"),
        ('{"prompt": "x", "size": "1000x1000"}', "size: gpt-image-2 needs width and height in multiples of 16; got 1000x1000"),
        ('{"prompt": "x", "output_format": "webp"}', "output_format: 'webp' is not supported: the Azure deployment rejects webp; use 'png' or 'jpeg'"),
        ('{"prompt": "x", "id": "../x"}', "id: must start with a letter or digit (A-Z, a-z, 0-9), got '../x'"),
        ('{"prompt": "x", "n": "2"}', "n: expected an integer, got string '2'"),
    ],
)  # fmt: skip
def test_parse_message_reports_the_field(body: str, message: str) -> None:
    for encoded in (body, base64.b64encode(body.encode())):
        with pytest.raises(InvalidMessage) as info:
            parse_message(encoded, message_id="m")
        assert info.value.errors == (message,)
        assert info.value.input_excerpt == body  # the decoded text, even from base64


# --- to_message round trip and request_hash ------------------------------------------------------

ROUND_TRIP = [
    {"prompt": "x", "id": "r1"},
    {"prompt": 'a red fox\n"quoted" \\ back', "id": "r2", "n": 3, "size": "2048x2048"},
    {"prompt": "😀 ключ 中文 \u2028 \ufffe \uffff", "id": "r3", "metadata": {"é": "ü", "": ""}},
    {"prompt": "x", "id": "r4", **EDIT, "mask": "inputs/m.png"},
    {"prompt": "x", "id": "r5", "output_format": "jpeg", "output_compression": 0, "user": "u"},
]


@pytest.mark.parametrize("data", ROUND_TRIP)
def test_to_message_round_trips(data: dict[str, Any]) -> None:
    request = validate_request(data)
    text = request.to_message()
    assert parse_message(text, message_id="another") == request
    assert parse_message(base64.b64encode(text.encode()), message_id="another") == request
    compact = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    assert text == compact.replace("\ufffe", "\\ufffe").replace("\uffff", "\\uffff")
    assert "null" not in text  # absent, not null


def test_to_message_keeps_xml_safe() -> None:
    # U+FFFE/U+FFFF may not appear in the XML that carries a queue message.
    text = validate_request({"prompt": "a\ufffeb\uffff", "id": "r"}).to_message()
    assert "\ufffe" not in text and "\uffff" not in text
    assert "\\ufffe" in text and "\\uffff" in text


def test_to_message_writes_the_id_it_was_given_by_the_queue() -> None:
    request = parse_message('{"prompt": "x"}', message_id="m-1")
    assert json.loads(request.to_message())["id"] == "m-1"
    assert parse_message(request.to_message(), message_id="m-2").id == "m-1"


def test_request_hash_is_equal_for_equal_requests() -> None:
    a = validate_request({"prompt": "x", "id": "r", "n": 2, "metadata": {"a": "1", "b": "2"}})
    same = [
        validate_request({"metadata": {"b": "2", "a": "1"}, "n": 2, "id": "r", "prompt": "x"}),
        validate_request(
            {"prompt": "x", "id": "r", "n": 2, "metadata": {"a": "1", "b": "2"}, "size": None}
        ),
        validate_request(
            {"prompt": "x", "n": 2, "metadata": {"a": "1", "b": "2"}, "quality": "auto"},
            default_id="r",
        ),
        parse_message(base64.b64encode(a.to_message().encode()), message_id="other"),
    ]
    for other in same:
        assert other == a
        assert other.request_hash() == a.request_hash()
        assert hash(other) == hash(a)
    assert re.fullmatch(r"[0-9a-f]{64}", a.request_hash())
    assert len({a, *same}) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"id": "r2"},
        {"prompt": "y"},
        {"prompt": "x "},
        {"size": "1024x1024"},
        {"quality": "low"},
        {"n": 3},
        {"output_format": "jpeg"},
        {"output_format": "jpeg", "output_compression": 50},
        {"background": "opaque"},
        {"moderation": "low"},
        {"partial_images": 1},
        {"save_partials": True},
        {**EDIT},
        {**EDIT, "mask": "inputs/m.png"},
        {**EDIT, "input_fidelity": "low"},
        {"user": "u"},
        {"metadata": {"a": "1"}},
    ],
)
def test_request_hash_differs_when_any_field_differs(change: dict[str, Any]) -> None:
    base = {"prompt": "x", "id": "r"}
    models = ("gpt-image-1",)  # takes input_fidelity, which gpt-image-2 refuses
    assert validate_request({**base, **change}, models=models).request_hash() != (
        validate_request(base, models=models).request_hash()
    )


def test_request_hash_is_sha256_of_the_canonical_json_of_every_field() -> None:
    request = validate_request({"prompt": "😀", "metadata": {"b": "1", "a": "2"}}, default_id="r")
    dumped = request.model_dump(mode="json", exclude={"traceparent"})
    # None fields and defaults included; only how the request travels (its trace) is not.
    assert set(dumped) == set(FIELDS) - {"traceparent"}
    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert request.request_hash() == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- encode_message and the 64 KiB queue limit ---------------------------------------------------


def _request_of_bytes(size: int, filler: str = "é") -> GenerationRequest:
    """A request whose message text is exactly `size` UTF-8 bytes (metadata pads it)."""
    base = validate_request({"prompt": filler * 100, "id": "big", "metadata": {"pad": ""}})
    pad = size - len(base.to_message().encode())
    request = validate_request(
        {"prompt": filler * 100, "id": "big", "metadata": {"pad": "p" * pad}}
    )
    assert len(request.to_message().encode()) == size
    return request


def test_encode_message_allows_up_to_64_kib() -> None:
    assert encode_message(ok(prompt="x" * 32000)) == ok(prompt="x" * 32000).to_message()
    request = _request_of_bytes(MAX_MESSAGE_BYTES)
    assert encode_message(request) == request.to_message()


def test_encode_message_refuses_over_64_kib() -> None:
    with pytest.raises(InvalidMessage) as info:
        encode_message(_request_of_bytes(MAX_MESSAGE_BYTES + 1))
    assert info.value.message == (
        "message: 65537 bytes is over the queue's 64 KiB limit (65536 bytes); "
        "shorten the prompt (non-ASCII characters take 2 to 4 bytes each)"
    )
    assert len(info.value.input_excerpt.encode()) <= MAX_EXCERPT_BYTES


def test_a_valid_non_ascii_prompt_may_not_fit_the_queue() -> None:
    request = ok(prompt="€" * 32000)  # valid: 32000 characters, but 96,000 bytes
    with pytest.raises(InvalidMessage, match=r"^message: \d+ bytes is over the queue's 64 KiB"):
        encode_message(request)


def test_the_limit_is_the_queues_own(azurite_connection_string: str, unique_name: Any) -> None:
    """Azurite (like Azure) takes exactly MAX_MESSAGE_BYTES of UTF-8 and refuses one more."""
    from azure.core.exceptions import HttpResponseError
    from azure.storage.queue import QueueClient

    queue = QueueClient.from_connection_string(azurite_connection_string, unique_name("contract"))
    queue.create_queue()
    try:
        text = encode_message(_request_of_bytes(MAX_MESSAGE_BYTES))
        queue.send_message(text)
        received = next(iter(queue.receive_messages()))
        assert parse_message(received.content, message_id=received.id) == parse_message(
            text, message_id="x"
        )
        with pytest.raises(HttpResponseError):
            queue.send_message(_request_of_bytes(MAX_MESSAGE_BYTES + 1).to_message())
    finally:
        queue.delete_queue()


# --- the model itself ----------------------------------------------------------------------------


def test_the_model_is_frozen_and_strict() -> None:
    request = ok()
    with pytest.raises(ValidationError):
        request.n = 2  # type: ignore[misc]
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate({"prompt": "x", "n": "2"})
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate({"prompt": "x", "extra": 1})
    assert GenerationRequest(prompt="x", n=2).n == 2


# --- JSON Schema ---------------------------------------------------------------------------------


def test_the_committed_schema_is_current() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "schemas/generation-request.schema.json is stale: "
        "run `.venv/bin/python -m shared.contract > schemas/generation-request.schema.json`"
    )


def test_python_m_shared_contract_prints_the_schema() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shared.contract"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.decode("utf-8") == SCHEMA_FILE.read_text(encoding="utf-8")


def test_the_schema_states_the_rules() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["prompt"]
    props = schema["properties"]
    assert list(props) == list(FIELDS)
    for name, prop in props.items():
        assert prop.get("description"), name

    def option(name: str) -> dict[str, Any]:
        return props[name]["anyOf"][0] if "anyOf" in props[name] else props[name]

    assert option("id")["pattern"] == ID_PATTERN
    assert option("operation")["enum"] == ["generate", "edit"]
    assert option("quality")["enum"] == ["low", "medium", "high", "auto"]
    assert option("output_format")["enum"] == ["png", "jpeg"]
    assert option("background")["enum"] == ["auto", "opaque", "transparent"]
    assert option("moderation")["enum"] == ["auto", "low"]
    assert option("input_fidelity")["enum"] == ["low", "high"]
    assert (option("n")["minimum"], option("n")["maximum"]) == (1, 10)
    assert (option("partial_images")["minimum"], option("partial_images")["maximum"]) == (0, 3)
    assert option("output_compression")["minimum"] == 0
    assert option("output_compression")["maximum"] == 100
    assert (props["prompt"]["minLength"], props["prompt"]["maxLength"]) == (1, 32000)
    assert option("user")["maxLength"] == 256
    assert option("input_images")["minItems"] == 1
    assert option("input_images")["maxItems"] == 16
    assert option("metadata")["additionalProperties"] == {"type": "string"}
    assert option("size")["pattern"] == SIZE_PATTERN
    assert option("mask")["pattern"] == MASK_PATTERN
    # null means absent: every optional field accepts it, the required prompt does not
    for name in FIELDS:
        nullable = {"type": "null"} in props[name].get("anyOf", [])
        assert nullable == (name != "prompt"), name
    assert props["n"]["default"] == 1 and props["metadata"]["default"] == {}
    for pattern in (ID_PATTERN, SIZE_PATTERN, BLOB_PATH_PATTERN, MASK_PATTERN):
        re.compile(pattern)


def test_the_schema_patterns_reject_what_the_validator_rejects() -> None:
    for size in ("1024X1024", "01024x1024", "x", "99999x16", "1024x1024 "):
        assert not re.fullmatch(SIZE_PATTERN.strip("^$"), size), size
    for path in (
        "/inputs/a.png",
        "http://x/a.png",
        "Inputs/a.png",
        "inputs\\a",
        "in/a",
        "inputs//a",
    ):
        assert not re.match(BLOB_PATH_PATTERN, path), path
    assert not re.match(MASK_PATTERN, "inputs/m.jpg")


# --- traceparent ---------------------------------------------------------------------------------

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_traceparent_is_carried_and_left_out_of_the_request_hash() -> None:
    traced = ok(traceparent=TRACEPARENT)
    assert traced.traceparent == TRACEPARENT
    assert json.loads(traced.to_message())["traceparent"] == TRACEPARENT
    assert traced.request_hash() == ok().request_hash()
    assert traced.request_hash() != ok(n=2, traceparent=TRACEPARENT).request_hash()


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ],
)
def test_traceparent_must_be_w3c_version_00(value: str) -> None:
    assert error(traceparent=value).startswith(
        "traceparent: expected a W3C traceparent '00-<32 hex>-<16 hex>-<2 hex>' (lowercase), got "
    )


def test_all_zero_trace_ids_are_refused() -> None:
    zero_trace = f"00-{'0' * 32}-b7ad6b7169203331-01"
    zero_span = f"00-0af7651916cd43dd8448eb211c80319c-{'0' * 16}-01"
    for value in (zero_trace, zero_span):
        assert error(traceparent=value) == (
            "traceparent: an all-zero trace id or parent id is invalid (W3C trace context)"
        )
    assert error(traceparent=5) == "traceparent: expected a string, got integer 5"
