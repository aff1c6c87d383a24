"""The queue message, contract v1 (docs/design.md §4): decode a body, validate it, encode it back.

Decoding a body (raw JSON or base64 of it, anything else `InvalidMessage`) is `shared.contract.message_body`'s
job; this module checks the decoded object against the request's fields. `decode_body`, `body_id`,
`excerpt`, `InvalidMessage` and `MAX_EXCERPT_BYTES` are re-exported here, so callers keep one import.

Validation is strict (no coercion, unknown fields rejected) and every error names its field first,
in words a producer can act on; pydantic's own wording is replaced wherever it would be unclear.
Some rules depend on the model behind the deployments (`shared.contract.models`): the caller names
the models the request may be sent to (`models=`), as plain values, and the request must suit all.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

# Names imported `as` themselves are re-exported: callers keep importing them from the contract.
from shared.contract.message_body import MAX_EXCERPT_BYTES as MAX_EXCERPT_BYTES
from shared.contract.message_body import InvalidMessage as InvalidMessage
from shared.contract.message_body import body_id as body_id
from shared.contract.message_body import decode_body as decode_body
from shared.contract.message_body import decode_with_text, json_type, quote
from shared.contract.message_body import excerpt as excerpt
from shared.contract.models import (
    DEFAULT_MODELS,
    MAX_SIDE,
    ModelRules,
    background_problem,
    describe_sizes,
    fidelity_problem,
    rules_for,
    size_problem,
)

MAX_MESSAGE_BYTES = 65536  # Azure Storage queues and Azurite: UTF-8 size of the message text
MAX_ERRORS = 20  # a message with thousands of unknown fields still gets a readable error
DEFAULT_INPUT_CONTAINERS: tuple[str, ...] = ("inputs",)

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# Necessary, not sufficient: the loosest rule, every model's sizes match it (see `models`).
SIZE_PATTERN = r"^(auto|[1-9][0-9]{1,3}x[1-9][0-9]{1,3})$"
CONTAINER_PATTERN = r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}"
BLOB_PATH_PATTERN = rf"^{CONTAINER_PATTERN}/[^/\\\u0000-\u001f\u007f-\u009f]"
MASK_PATTERN = rf"{BLOB_PATH_PATTERN}.*\.[pP][nN][gG]$"
MIN_SIDE = 16  # no model takes a side under 16 pixels or over MAX_SIDE: checked for every model
MAX_BLOB_NAME = 1024  # Azure's limit on a blob name

_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_CONTAINER_RE = re.compile(CONTAINER_PATTERN)
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_TRACEPARENT_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
# Fields that say how a request is carried, not what it asks for: outside the request hash.
NOT_HASHED = frozenset({"traceparent"})

Operation = Literal["generate", "edit"]
Quality = Literal["low", "medium", "high", "auto"]
OutputFormat = Literal["png", "jpeg"]
Background = Literal["auto", "opaque", "transparent"]
Moderation = Literal["auto", "low"]
InputFidelity = Literal["low", "high"]


def _fail(reason: str) -> PydanticCustomError:
    # The template is only "{reason}": braces inside the reason are never re-formatted.
    return PydanticCustomError("contract", "{reason}", {"reason": reason})


def _surrogate(value: str) -> str | None:
    """Why a string is not valid Unicode, if it is not: a lone surrogate (JSON "\\ud800")."""
    found = _SURROGATE_RE.search(value)
    if found is None:
        return None
    return f"contains an unpaired UTF-16 surrogate (\\u{ord(found.group()):04x})"


def _check_text(value: str) -> str:
    # A lone surrogate cannot be encoded as UTF-8: it would crash every later write of the request.
    reason = _surrogate(value)
    if reason is not None:
        raise _fail(reason)
    return value


def _allowed_containers(info: ValidationInfo) -> tuple[str, ...]:
    context = info.context if isinstance(info.context, Mapping) else {}
    allowed = context.get("input_containers", DEFAULT_INPUT_CONTAINERS)
    return (allowed,) if isinstance(allowed, str) else tuple(allowed)


def _check_blob_path(value: str, info: ValidationInfo) -> str:
    """`container/name` inside an allowed input container: nothing else can be read."""
    if value == "":
        raise _fail("must not be empty; expected a blob path 'container/name'")
    if "://" in value or _URL_RE.match(value):
        raise _fail(f"expected a blob path 'container/name', not a URL: {quote(value)}")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in value):
        raise _fail(f"must not contain control characters, got {quote(value)}")
    _check_text(value)
    if "\\" in value:
        raise _fail(f"must not contain backslashes, got {quote(value)}")
    if value.startswith("/"):
        raise _fail(f"expected a blob path 'container/name', not an absolute path: {quote(value)}")
    container, _, name = value.partition("/")
    if not name:
        raise _fail(f"expected a blob path 'container/name', got {quote(value)}")
    if not _CONTAINER_RE.fullmatch(container):
        raise _fail(
            f"{quote(container)} is not a valid container name "
            "(3-63 lowercase letters, digits and single hyphens, starting and ending alphanumeric)"
        )
    segments = name.split("/")
    if "" in segments:
        raise _fail(f"empty path segment ('//' or a trailing '/') in {quote(value)}")
    if any(segment in (".", "..") for segment in segments):
        raise _fail(f"'.' and '..' path segments are not allowed, got {quote(value)}")
    if len(name) > MAX_BLOB_NAME:
        raise _fail(f"blob name is {len(name)} characters, over Azure's {MAX_BLOB_NAME}")
    allowed = _allowed_containers(info)
    if container not in allowed:
        raise _fail(
            f"container {container!r} is not an allowed input container "
            f"(allowed: {', '.join(allowed) or 'none'})"
        )
    return value


def _check_png(value: str) -> str:
    if not value.lower().endswith(".png"):
        raise _fail(f"must be a PNG blob (a name ending in .png), got {quote(value)}")
    return value


def _models(info: ValidationInfo) -> tuple[ModelRules, ...]:
    context = info.context if isinstance(info.context, Mapping) else {}
    models = context.get("models")
    return models if models is not None else rules_for(DEFAULT_MODELS)


def _refused(problems: Sequence[str | None]) -> None:
    """Raise with every model's reason, when at least one of the models refuses the value."""
    found = [problem for problem in problems if problem is not None]
    if found:
        raise _fail("; ".join(found))


def _check_size(value: str, info: ValidationInfo) -> str:
    if value == "auto":
        return value
    match = re.fullmatch(r"([0-9]+)x([0-9]+)", value)
    if match is None or any(len(side) > 1 and side[0] == "0" for side in match.groups()):
        raise _fail(f"expected 'auto' or 'WIDTHxHEIGHT' such as '1024x1024', got {quote(value)}")
    sides = match.groups()
    # int() refuses over 4300 digits; anything past 5 digits is out of range anyway.
    if any(len(side) > 5 for side in sides):
        raise _fail(f"each side must be {MIN_SIDE}..{MAX_SIDE} pixels, got {quote(value)}")
    width, height = int(sides[0]), int(sides[1])
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise _fail(f"each side must be {MIN_SIDE}..{MAX_SIDE} pixels, got {value}")
    _refused([size_problem(rules, value, width, height) for rules in _models(info)])
    return value


def _edit_only(value: Any, info: ValidationInfo) -> Any:
    operation = info.data.get("operation")
    if value is not None and operation is not None and operation != "edit":
        raise _fail(f"only allowed when operation is 'edit' (operation is {operation!r})")
    return value


Text = Annotated[str, AfterValidator(_check_text)]
BlobPath = Annotated[str, AfterValidator(_check_blob_path)]
MaskPath = Annotated[str, AfterValidator(_check_blob_path), AfterValidator(_check_png)]


class GenerationRequest(BaseModel):
    """One queue message, validated: what to generate (or edit) and where it goes (`images/{id}/`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    id: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="Names the output folder images/{id}/. Absent or null: the queue message id. "
        "An empty string is invalid, not absent.",
    )
    operation: Operation = Field(
        default="generate",
        description="generate: text to image. edit: change input_images (and an optional mask).",
    )
    prompt: Text = Field(
        min_length=1,
        max_length=32000,
        description="Required: 1..32000 characters (Unicode code points).",
    )
    size: Annotated[str, AfterValidator(_check_size)] = Field(
        default="auto", description=describe_sizes()
    )
    quality: Quality = Field(default="auto", description="Rendering quality.")
    n: int = Field(
        default=1,
        ge=1,
        le=10,
        description="Number of images, 1..10. Streaming allows one image per call: n images are n calls.",
    )
    output_format: OutputFormat = Field(
        default="png", description="png or jpeg (the Azure deployment rejects webp)."
    )
    output_compression: int | None = Field(
        default=None, ge=0, le=100, description="0..100; only with output_format 'jpeg'."
    )
    background: Background = Field(
        default="auto",
        description="'transparent' needs output_format 'png', and a model that supports it "
        "(gpt-image-2 does not).",
    )
    moderation: Moderation = Field(
        default="auto",
        description="Content moderation level, operation 'generate' only: /images/edits takes no "
        "moderation, so an edit accepts only 'auto' (the default, which it is not sent).",
    )
    partial_images: int = Field(
        default=0,
        ge=0,
        le=3,
        description="0..3 partial images the caller wants to see; the call always asks for at "
        "least the keep-alive minimum (IMAGE_MIN_PARTIAL_IMAGES).",
    )
    save_partials: bool = Field(
        default=False, description="Keep the partial images as blobs under images/{id}/partials/."
    )
    input_images: list[BlobPath] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        validate_default=True,  # so that "edit without input_images" is caught
        description="operation 'edit' only, and required there: 1..16 blob paths "
        "'container/name' in an allowed input container (IMAGE_INPUT_CONTAINERS). "
        "No URLs, absolute paths, backslashes, or '.'/'..'/empty segments.",
    )
    mask: MaskPath | None = Field(
        default=None,
        description="operation 'edit' only: one blob path 'container/name' of a PNG "
        "in an allowed input container.",
    )
    input_fidelity: InputFidelity | None = Field(
        default=None,
        description="operation 'edit' only; gpt-image-1 and gpt-image-1.5 take low or high, "
        "gpt-image-1-mini only low, gpt-image-2 none (omit it).",
    )
    user: Text | None = Field(
        default=None,
        max_length=256,
        description="End-user id passed to the service, <= 256 characters.",
    )
    metadata: dict[Text, Text] = Field(
        default_factory=dict,
        description="Flat object of string to string, echoed into the manifest.",
    )
    traceparent: str | None = Field(
        default=None,
        description="W3C trace context (version 00: '00-<32 hex trace id>-<16 hex span id>-<2 hex "
        "flags>') the request's spans join; continuations carry the last delivery's. Not part of "
        "the request: the request hash leaves it out.",
    )

    @model_validator(mode="before")
    @classmethod
    def _null_means_absent(cls, data: Any) -> Any:
        # Unknown fields keep their null so they are still reported as unknown.
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields}
        return data

    @field_validator("traceparent")
    @classmethod
    def _w3c_traceparent(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _TRACEPARENT_RE.fullmatch(value)
        if match is None:
            raise _fail(
                "expected a W3C traceparent '00-<32 hex>-<16 hex>-<2 hex>' (lowercase), "
                f"got {quote(value, 80)}"
            )
        if set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
            raise _fail("an all-zero trace id or parent id is invalid (W3C trace context)")
        return value

    @field_validator("output_format", mode="before")
    @classmethod
    def _no_webp(cls, value: Any) -> Any:
        if value == "webp":
            raise _fail(
                "'webp' is not supported: the Azure deployment rejects webp; use 'png' or 'jpeg'"
            )
        return value

    @field_validator("output_compression")
    @classmethod
    def _jpeg_only(cls, value: int | None, info: ValidationInfo) -> int | None:
        fmt = info.data.get("output_format")
        if value is not None and fmt is not None and fmt != "jpeg":
            raise _fail(f"only allowed with output_format 'jpeg' (output_format is {fmt!r})")
        return value

    @field_validator("background")
    @classmethod
    def _transparent_needs_png(cls, value: str, info: ValidationInfo) -> str:
        fmt = info.data.get("output_format")
        if value == "transparent" and fmt is not None and fmt != "png":
            raise _fail(f"'transparent' needs output_format 'png' (output_format is {fmt!r})")
        _refused([background_problem(rules, value) for rules in _models(info)])
        return value

    @field_validator("moderation")
    @classmethod
    def _moderation_for_generate(cls, value: str, info: ValidationInfo) -> str:
        # 'auto' is what the service does when the field is absent, so an edit loses nothing by not
        # sending it; any other value would be dropped, and that is refused instead.
        if value != "auto" and info.data.get("operation") == "edit":
            raise _fail(
                f"/images/edits takes no moderation: only 'auto' (the default) is accepted on an "
                f"edit, got {value!r}"
            )
        return value

    @field_validator("input_images")
    @classmethod
    def _inputs_for_edit(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        operation = info.data.get("operation")
        if operation == "edit" and value is None:
            raise _fail("required when operation is 'edit' (1..16 blob paths 'container/name')")
        return _edit_only(value, info)

    @field_validator("mask")
    @classmethod
    def _edit_only(cls, value: Any, info: ValidationInfo) -> Any:
        return _edit_only(value, info)

    @field_validator("input_fidelity")
    @classmethod
    def _fidelity(cls, value: str | None, info: ValidationInfo) -> str | None:
        _edit_only(value, info)
        if value is not None and info.data.get("operation") == "edit":
            _refused([fidelity_problem(rules, value) for rules in _models(info)])
        return value

    def request_hash(self) -> str:
        """sha256 of every validated field, defaults applied: tells "id reused" from a redelivery.

        `traceparent` is left out: a continuation carries a new one, and stays the same request.
        """
        canonical = json.dumps(
            self.model_dump(mode="json", exclude=NOT_HASHED),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def to_message(self) -> str:
        """Compact JSON of every field that is not None, for re-enqueueing (continuations).

        Defaults are written out so that a continuation keeps its request hash even if a later
        release changes a default.
        """
        text = json.dumps(
            self.model_dump(mode="json", exclude_none=True),
            separators=(",", ":"),
            ensure_ascii=False,
        )
        # U+FFFE/U+FFFF are not allowed in XML, which carries the queue message text.
        return text.replace("\ufffe", "\\ufffe").replace("\uffff", "\\uffff")

    def __hash__(self) -> int:
        # The generated hash would fail on the list and dict fields.
        return hash(self.request_hash())


FIELDS: tuple[str, ...] = tuple(GenerationRequest.model_fields)
_CHOICES: dict[str, tuple[str, ...]] = {
    name: tuple(get_args(alias))
    for name, alias in (
        ("operation", Operation),
        ("quality", Quality),
        ("output_format", OutputFormat),
        ("background", Background),
        ("moderation", Moderation),
        ("input_fidelity", InputFidelity),
    )
}
_RANGES: dict[str, tuple[int, int]] = {
    "n": (1, 10),
    "output_compression": (0, 100),
    "partial_images": (0, 3),
}
_EXPECTED = {
    "int_type": "an integer",
    "string_type": "a string",
    "bool_type": "a boolean (true or false)",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "a JSON object",
}


# --- error messages ------------------------------------------------------------------------------


def describe(value: Any) -> str:
    """A JSON value as an error message names it: `string '2'`, `number 2.0`, `boolean true`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {_integer(value)}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {quote(value)}"
    if isinstance(value, list | tuple):
        count = len(value)
        return f"array of {count} item{'' if count == 1 else 's'}" if count else "empty array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _integer(value: int) -> str:
    digits = str(value)
    return digits if len(digits) <= 20 else f"{digits[:12]}… ({len(digits.lstrip('-'))} digits)"


def _label(key: Any) -> str:
    text = str(key)
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        return text
    return quote(text, 40)


def _path(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "message"
    out = _label(loc[0])
    for i, part in enumerate(loc[1:], start=1):
        if part == "[key]" and i == len(loc) - 1:
            out += " (key)"
        elif isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f"[{json.dumps(str(part)[:40], ensure_ascii=False)}]"
    return out


def _explain_id(value: str) -> str:
    if value == "":
        return "must not be empty (omit it, or send null, to use the queue message id)"
    if len(value) > 128:
        return f"must be at most 128 characters, got {len(value)}"
    if value[0] not in _ID_CHARS or value[0] in "._-":
        return f"must start with a letter or digit (A-Z, a-z, 0-9), got {quote(value)}"
    bad = next((ch for ch in value if ch not in _ID_CHARS), "")
    return (
        f"may contain only letters, digits, '.', '_' and '-' (pattern {ID_PATTERN}), "
        f"got {quote(value)} (bad character {quote(bad)})"
    )


def _explain(error: Any) -> str:
    """One pydantic error as a field-first sentence."""
    loc: tuple[int | str, ...] = tuple(error["loc"])
    kind: str = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    field = str(loc[0]) if loc else ""
    where = _path(loc)
    if kind == "contract":
        reason = str(ctx.get("reason", error["msg"]))
    elif kind == "missing":
        reason = "required field is missing"
    elif kind == "extra_forbidden":
        close = difflib.get_close_matches(field, FIELDS, n=1, cutoff=0.7)
        reason = "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
    elif kind == "literal_error" and field in _CHOICES:
        choices = ", ".join(repr(c) for c in _CHOICES[field])
        reason = f"expected one of {choices}, got {describe(value)}"
    elif kind in _EXPECTED:
        reason = f"expected {_EXPECTED[kind]}, got {describe(value)}"
    elif kind in ("greater_than_equal", "less_than_equal") and field in _RANGES:
        lo, hi = _RANGES[field]
        reason = f"must be {lo}..{hi}, got {_integer(value) if isinstance(value, int) else value}"
    elif kind == "string_pattern_mismatch" and field == "id" and isinstance(value, str):
        reason = _explain_id(value)
    elif kind in ("string_too_short", "too_short") and isinstance(value, str):
        reason = "must not be empty"
    elif kind in ("string_too_long", "too_long") and isinstance(value, str):
        reason = f"must be at most {ctx.get('max_length')} characters, got {len(value)}"
    elif kind == "string_unicode":  # pydantic finds lone surrogates itself where it counts length
        reason = (isinstance(value, str) and _surrogate(value)) or "not valid Unicode text"
    elif kind == "too_short" and field == "input_images":
        reason = "must list 1..16 blob paths, got an empty array"
    elif kind == "too_long" and field == "input_images":
        reason = f"must list at most 16 blob paths, got {ctx.get('actual_length')}"
    else:  # a rule with no wording of ours yet: pydantic's is better than nothing
        reason = f"{error['msg']} (got {describe(value)})"
    return f"{where}: {reason}"


def _messages(exc: ValidationError) -> list[str]:
    order = {name: i for i, name in enumerate(FIELDS)}
    errors = sorted(
        exc.errors(include_url=False),
        key=lambda e: order.get(str(e["loc"][0]), len(order)) if e["loc"] else -1,
    )
    # Dedupe, keep order; whatever the input held, the lines must encode as UTF-8.
    lines = list(
        dict.fromkeys(
            _explain(e).encode("utf-8", "backslashreplace").decode("utf-8") for e in errors
        )
    )
    if len(lines) > MAX_ERRORS:
        lines = [*lines[:MAX_ERRORS], f"message: {len(lines) - MAX_ERRORS} more errors not shown"]
    return lines


# --- validation, encoding ------------------------------------------------------------------------


def validate_request(
    data: Mapping[str, Any],
    *,
    default_id: str | None = None,
    input_containers: Sequence[str] = DEFAULT_INPUT_CONTAINERS,
    models: Sequence[str] = DEFAULT_MODELS,
) -> GenerationRequest:
    """Validate a decoded message; `default_id` (the queue message id) fills an absent/null id.

    `models` are the models of every deployment the request may be sent to; it must suit each.
    An unknown model name is a ValueError (the caller's configuration), not an `InvalidMessage`.
    """
    return _validate(data, default_id, input_containers, models, quoted=None)


def _validate(
    data: Any,
    default_id: str | None,
    input_containers: Sequence[str],
    models: Sequence[str],
    quoted: str | None,
) -> GenerationRequest:
    rules = rules_for((models,) if isinstance(models, str) else models)
    if not isinstance(data, Mapping):
        raise InvalidMessage(
            f"message: expected a JSON object, got {json_type(data)}",
            input_excerpt=excerpt(data if quoted is None else quoted),
        )
    fields = dict(data)
    if fields.get("id") is None and default_id is not None:
        fields["id"] = default_id
    try:
        return GenerationRequest.model_validate(
            fields, strict=True, context={"input_containers": input_containers, "models": rules}
        )
    except ValidationError as exc:
        raise InvalidMessage(
            _messages(exc), input_excerpt=excerpt(data if quoted is None else quoted)
        ) from None


def parse_message(
    body: bytes | str,
    *,
    message_id: str,
    input_containers: Sequence[str] = DEFAULT_INPUT_CONTAINERS,
    models: Sequence[str] = DEFAULT_MODELS,
) -> GenerationRequest:
    """A queue message body to a request; the queue message id is the default `id`.

    `models`: as for `validate_request`, every model the request may be sent to.
    """
    data, text = decode_with_text(body)
    return _validate(data, message_id, input_containers, models, quoted=text)


def encode_message(request: GenerationRequest) -> str:
    """The message text to enqueue, refused here (not by the queue) when it is over 64 KiB."""
    text = request.to_message()
    size = len(text.encode("utf-8"))
    if size > MAX_MESSAGE_BYTES:
        raise InvalidMessage(
            f"message: {size} bytes is over the queue's 64 KiB limit ({MAX_MESSAGE_BYTES} bytes); "
            "shorten the prompt (non-ASCII characters take 2 to 4 bytes each)",
            input_excerpt=excerpt(text),
        )
    return text


# --- JSON Schema ---------------------------------------------------------------------------------


def _nullable(prop: dict[str, Any]) -> dict[str, Any]:
    outer = {k: prop.pop(k) for k in ("description", "default") if k in prop}
    inner = prop.pop("anyOf", None) or [prop]
    if {"type": "null"} not in inner:
        inner = [*inner, {"type": "null"}]
    return {"anyOf": inner, **outer}


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the message: pydantic's, refined to state every rule it can.

    Rules a schema cannot state (the size ratio and pixel cap, allowed containers, '..' segments) are
    in the descriptions; so are the rules that depend on the deployments' models, which the message
    does not name (size, background, input_fidelity): the size pattern is the loosest of them. The
    validator here is authoritative.
    """
    schema = GenerationRequest.model_json_schema(mode="validation")
    props: dict[str, Any] = schema["properties"]
    for prop in props.values():
        prop.pop("title", None)
        for option in prop.get("anyOf", []):
            option.pop("title", None)
    props["size"]["pattern"] = SIZE_PATTERN
    props["input_images"]["anyOf"][0]["items"] = {"type": "string", "pattern": BLOB_PATH_PATTERN}
    props["mask"]["anyOf"][0]["pattern"] = MASK_PATTERN
    props["metadata"]["additionalProperties"] = {"type": "string"}
    props["traceparent"]["anyOf"][0]["pattern"] = f"^{_TRACEPARENT_RE.pattern}$"
    for name in FIELDS:
        if name != "prompt":
            props[name] = _nullable(props[name])
    props["id"]["default"] = None
    props["metadata"]["default"] = {}
    schema["allOf"] = [
        _implies("output_compression", {"type": "integer"}, {"output_format": {"const": "jpeg"}}),
        _implies(
            "background",
            {"const": "transparent"},
            {"output_format": {"enum": ["png", None]}},
            present=False,
        ),
        _implies("operation", {"const": "edit"}, {"input_images": {"type": "array"}}),
        _implies("input_images", {"type": "array"}, {"operation": {"const": "edit"}}),
        _implies("mask", {"type": "string"}, {"operation": {"const": "edit"}}),
        _implies("input_fidelity", {"type": "string"}, {"operation": {"const": "edit"}}),
        _implies(
            "moderation",
            {"const": "low"},
            {"operation": {"enum": ["generate", None]}},
            present=False,
        ),
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "GenerationRequest",
        "description": "A message on the image-requests queue (contract v1), as JSON or base64 of "
        "JSON. Unknown fields and wrong types are errors (no coercion); null means absent. "
        "Generated by `python -m shared.contract`; shared/contract/request.py is authoritative.",
        "type": "object",
        "required": schema["required"],
        "additionalProperties": False,
        "properties": props,
        "allOf": schema["allOf"],
    }


def _implies(
    field: str, when: dict[str, Any], then: dict[str, Any], *, present: bool = True
) -> dict[str, Any]:
    """If `field` is there and matches `when`, the fields in `then` match (and, if `present`, exist)."""
    rule: dict[str, Any] = {"properties": then}
    if present:
        rule["required"] = list(then)
    return {"if": {"properties": {field: when}, "required": [field]}, "then": rule}


def schema_text() -> str:
    """The committed file's exact text (`python -m shared.contract > schemas/...`)."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
