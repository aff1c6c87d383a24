"""The service's checks of an image request, written afresh for the emulator (not the product's).

JSON bodies are typed strictly, as the service does (`"2"` is not an integer); multipart form fields
are text and are converted. Sizes, transparent backgrounds and input fidelity follow the
deployment's model (`models`). A refusal raises `InvalidRequest` (400 invalid_request_error) or
`ModerationBlocked` (400 image_generation_user_error).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .models import DEFAULT_MODEL, ModelRules, quoted_list, rules_for, size_problem

MAX_PROMPT = 32_000
MAX_INPUT_IMAGES = 16
_SIZE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")

_CHOICES: dict[str, tuple[str, ...]] = {
    "quality": ("low", "medium", "high", "auto"),
    # webp is in OpenAI's API but an Azure deployment refuses it (Azure OpenAI REST reference:
    # output_format png or jpeg).
    "output_format": ("png", "jpeg"),
    "background": ("auto", "opaque", "transparent"),
    "moderation": ("auto", "low"),
    "input_fidelity": ("low", "high"),
}
# Azure OpenAI REST reference: the GPT image models always answer base64 and Azure refuses
# `response_format` as an unknown parameter; /images/edits takes no `moderation`. Both are left
# out of the accepted fields, so they get 400 unknown_parameter like any other stray field.
_COMMON = {"prompt", "model", "n", "size", "quality", "output_format", "output_compression"}
_COMMON |= {"background", "partial_images", "stream", "user", "safety_identifier"}
FIELDS = {
    "generations": frozenset(_COMMON | {"moderation"}),
    "edits": frozenset(_COMMON | {"input_fidelity"}),
}
_MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg", b"RIFF": "webp"}


class InvalidRequest(ValueError):
    def __init__(self, message: str, param: str | None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class ModerationBlocked(ValueError):
    """The prompt trips the safety system."""


@dataclass(frozen=True, slots=True)
class Upload:
    """A file part of an edit request."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(frozen=True, slots=True)
class ImageRequest:
    endpoint: str  # "generations" or "edits"
    prompt: str
    width: int
    height: int
    quality: str  # as asked; "auto" times like medium
    n: int
    output_format: str
    output_compression: int | None
    background: str
    partial_images: int
    stream: bool
    input_images: int = 0

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def long_side(self) -> int:
        return max(self.width, self.height)

    @property
    def reported_quality(self) -> str:
        return "medium" if self.quality == "auto" else self.quality

    @property
    def reported_background(self) -> str:
        return "opaque" if self.background == "auto" else self.background


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return names.get(type(value), "an array" if isinstance(value, list) else "an object")


class _Fields:
    """Typed access to the body: strict for JSON, converting for form text."""

    def __init__(self, values: Mapping[str, Any], from_form: bool) -> None:
        self.values, self.from_form = values, from_form

    def _wrong(self, name: str, value: object, expected: str) -> InvalidRequest:
        return InvalidRequest(
            f"Invalid type for '{name}': expected {expected}, but got {_type_name(value)} instead.",
            name,
            "invalid_type",
        )

    def text(self, name: str) -> str | None:
        value = self.values.get(name)
        if value is None or isinstance(value, str):
            return value
        raise self._wrong(name, value, "a string")

    def choice(self, name: str, default: str) -> str:
        value = self.text(name)
        if value is None:
            return default
        allowed = _CHOICES[name]
        if value not in allowed:
            listed = ", ".join(f"'{a}'" for a in allowed[:-1])
            supported = f"{listed}, and '{allowed[-1]}'" if listed else f"'{allowed[-1]}'"
            raise InvalidRequest(
                f"Invalid value: '{value}'. Supported values are: {supported}.", name
            )
        return value

    def integer(self, name: str, default: int | None, low: int, high: int) -> int | None:
        value = self.values.get(name)
        if value is None:
            return default
        if self.from_form and isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(name, value, "an integer")
        if value < low:
            raise InvalidRequest(
                f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {value} instead.",
                name,
                "integer_below_min_value",
            )
        if value > high:
            raise InvalidRequest(
                f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {value} instead.",
                name,
                "integer_above_max_value",
            )
        return value

    def boolean(self, name: str) -> bool:
        value = self.values.get(name)
        if value is None:
            return False
        if self.from_form and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise self._wrong(name, value, "a boolean")
        return value


def parse_size(text: str, rules: ModelRules | None = None) -> tuple[int, int]:
    """(width, height) of `text` ("auto" is 1024x1024), refused as the deployment's model would."""
    rules = rules or rules_for(DEFAULT_MODEL)
    match = _SIZE.match(text)
    width, height = (int(match[1]), int(match[2])) if match else (1024, 1024)
    if rules.sizes is None and text != "auto" and not match:
        raise InvalidRequest(f"Invalid size '{text}'. Use 'auto' or WIDTHxHEIGHT.", "size")
    problem = size_problem(rules, text, width, height)
    if problem:
        raise InvalidRequest(problem, "size")
    return width, height


def _unsupported_value(name: str, value: str, allowed: tuple[str, ...], model: str) -> InvalidRequest:  # fmt: skip
    return InvalidRequest(
        f"Unsupported value: '{name}' does not support '{value}' with model '{model}'. "
        f"Supported values are: {quoted_list(allowed)}.",
        name,
        "unsupported_value",
    )


def _check_model(rules: ModelRules, background: str, fidelity: str | None) -> None:
    if background == "transparent" and not rules.transparent:
        raise _unsupported_value("background", background, ("auto", "opaque"), rules.name)
    if fidelity is None:
        return
    if not rules.fidelities:
        raise InvalidRequest(
            f"Unsupported parameter: 'input_fidelity' is not supported with model '{rules.name}'.",
            "input_fidelity",
            "unsupported_parameter",
        )
    if fidelity not in rules.fidelities:
        raise _unsupported_value("input_fidelity", fidelity, rules.fidelities, rules.name)


def validate(
    endpoint: str,
    body: Mapping[str, Any],
    uploads: Sequence[Upload] = (),
    *,
    from_form: bool = False,
    blocked_phrase: str = "",
    model: str = DEFAULT_MODEL,
) -> ImageRequest:
    rules = rules_for(model)
    for name in body:
        if name not in FIELDS[endpoint]:
            raise InvalidRequest(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
    fields = _Fields(body, from_form)
    prompt = fields.text("prompt")
    if prompt is None:
        raise InvalidRequest(
            "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"
        )
    if not prompt:
        raise InvalidRequest(
            "Invalid 'prompt': empty string. Expected a string with minimum length 1, but got an empty string instead.",
            "prompt",
            "empty_string",
        )
    if len(prompt) > MAX_PROMPT:
        raise InvalidRequest(
            f"Invalid 'prompt': string too long. Expected a string with maximum length {MAX_PROMPT}, but got a string with length {len(prompt)} instead.",
            "prompt",
            "string_above_max_length",
        )
    fields.text("model")
    fields.text("safety_identifier")
    user = fields.text("user")
    if user is not None and len(user) > 256:
        raise InvalidRequest(
            "Invalid 'user': string too long (at most 256).", "user", "string_above_max_length"
        )
    width, height = parse_size(fields.text("size") or "auto", rules)
    quality = fields.choice("quality", "auto")
    n = fields.integer("n", 1, 1, 10) or 1
    output_format = fields.choice("output_format", "png")
    compression = fields.integer("output_compression", None, 0, 100)
    background = fields.choice("background", "auto")
    if endpoint == "generations":
        fields.choice("moderation", "auto")
    fidelity = (
        fields.choice("input_fidelity", "low") if body.get("input_fidelity") is not None else None
    )
    partial_images = fields.integer("partial_images", 0, 0, 3) or 0
    stream = fields.boolean("stream")
    if compression is not None and output_format != "jpeg":
        raise InvalidRequest(
            "output_compression is only supported with output_format 'jpeg'.", "output_compression"
        )
    if background == "transparent" and output_format != "png":
        raise InvalidRequest(
            "Transparent background is only supported with output_format 'png'.", "background"
        )
    if stream and n > 1:
        raise InvalidRequest("Streaming is only supported with n=1.", "n")
    _check_model(rules, background, fidelity)
    images = _check_uploads(uploads) if endpoint == "edits" else 0
    if blocked_phrase and blocked_phrase.lower() in prompt.lower():
        raise ModerationBlocked(
            "Your request was rejected by the safety system. If you believe this is an error, "
            "contact us at help.openai.com and include the request ID."
        )
    return ImageRequest(
        endpoint, prompt, width, height, quality, n, output_format, compression, background,
        partial_images, stream, images,
    )  # fmt: skip


def _check_uploads(uploads: Sequence[Upload]) -> int:
    images = [u for u in uploads if u.name in ("image", "image[]")]
    for upload in uploads:
        if upload.name not in ("image", "image[]", "mask"):
            raise InvalidRequest(
                f"Unknown parameter: '{upload.name}'.", upload.name, "unknown_parameter"
            )
    if not images:
        raise InvalidRequest(
            "Missing required parameter: 'image'.", "image", "missing_required_parameter"
        )
    if len(images) > MAX_INPUT_IMAGES:
        raise InvalidRequest(f"Too many images: at most {MAX_INPUT_IMAGES}.", "image")
    masks = [u for u in uploads if u.name == "mask"]
    if len(masks) > 1:
        raise InvalidRequest("Only one mask may be given.", "mask")
    for upload in uploads:
        kind = next((k for magic, k in _MAGIC.items() if upload.data.startswith(magic)), None)
        if kind is None or (upload.name == "mask" and kind != "png"):
            expected = "a PNG image" if upload.name == "mask" else "a PNG, JPEG or WEBP image"
            raise InvalidRequest(
                f"Invalid file for '{upload.name}': expected {expected}.",
                upload.name,
                "invalid_image_format",
            )
    return len(images)
