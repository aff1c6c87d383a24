"""A queue message body to the JSON object it carries, whatever the body holds (docs/design.md §4).

Producers put either raw JSON or base64 of it on the queue (host.json says `messageEncoding: none`),
so `decode_body` accepts both and turns every other body into `InvalidMessage` instead of a crash:
a malformed message must end as a `rejected` record, never loop into the poison queue unexplained.

This module knows bytes, text, JSON and base64, and nothing of the request's fields: those are
`shared.contract.request`'s job, which imports from here (never the other way, so there is no cycle).
`InvalidMessage` lives here because decoding is the first place that raises it; the contract
re-exports it with `decode_body`, `body_id` and `excerpt`, so callers import them from either.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable
from typing import Any

MAX_EXCERPT_BYTES = 1024  # a rejected record quotes at most this much of its input

_B64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_JSON_WHITESPACE = " \t\n\r"


class InvalidMessage(ValueError):
    """A queue message that breaks the contract; no retry can fix it.

    `errors` are field-first lines (`n: ...`); `message` joins them; `input_excerpt` quotes what was
    rejected (at most 1 KiB) for the `rejected` record.
    """

    def __init__(self, errors: str | Iterable[str], *, input_excerpt: str = "") -> None:
        self.errors: tuple[str, ...] = (errors,) if isinstance(errors, str) else tuple(errors)
        self.message: str = "; ".join(self.errors)
        self.input_excerpt: str = input_excerpt
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def quote(value: str, limit: int = 60) -> str:
    """A string quoted for an error message, cut short so one bad field cannot flood the record."""
    shown = repr(value if len(value) <= limit else value[:limit] + "…")
    return shown.encode("utf-8", "backslashreplace").decode("utf-8")


def excerpt(value: str | bytes | Any, limit: int = MAX_EXCERPT_BYTES) -> str:
    """What was rejected, quoted for a record: valid UTF-8, at most `limit` bytes with the marker."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "backslashreplace")
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=repr)
        except (ValueError, TypeError, RecursionError):
            text = f"<unprintable {type(value).__name__}>"
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return data.decode("utf-8")
    marker = f"…[truncated, {len(data)} bytes in all]"
    keep = limit - len(marker.encode("utf-8"))
    return data[:keep].decode("utf-8", "ignore") + marker


def json_type(value: Any) -> str:
    """The JSON name of a decoded value that is not an object, for "expected a JSON object"."""
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {quote(key, 40)}")
        out[key] = value
    return out


def _loads(text: str) -> tuple[Any, str | None]:
    """(value, None) or (None, why it is not JSON); never raises, however hostile the text."""
    try:
        return (
            json.loads(
                text,
                object_pairs_hook=_unique_keys,
                parse_constant=_no_constant,
                parse_float=_finite,
            ),
            None,
        )
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg.removesuffix(' at')}: line {exc.lineno} column {exc.colno}"
    except RecursionError:
        return None, "nested too deeply"
    except ValueError as exc:  # duplicate keys, NaN, over-long integers
        if "integer string conversion" in str(exc):
            return None, "an integer has more than 4300 digits"
        return None, str(exc).split("\n", 1)[0][:200]


def decode_with_text(body: bytes | str) -> tuple[dict[str, Any], str]:
    """The JSON object in a body and the text it came from (for quoting)."""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidMessage(
                f"body: not UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start})",
                input_excerpt=excerpt(body),
            ) from None
    else:
        text = body
    text = text.removeprefix("\ufeff")  # a BOM some Windows tools write
    if text.strip(_JSON_WHITESPACE) == "":
        raise InvalidMessage("body: empty", input_excerpt=excerpt(text))

    value, why = _loads(text)
    if why is None and isinstance(value, dict):
        return value, text
    # Not a JSON object as it stands: base64 of one (the Functions output binding's encoding)?
    b64 = "".join(text.split())
    if why is None and not _B64_RE.fullmatch(b64):
        raise InvalidMessage(
            f"body: expected a JSON object, got {json_type(value)}", input_excerpt=excerpt(text)
        )
    decoded, b64_why = _from_base64(b64)
    if decoded is not None:
        inner, inner_why = _loads(decoded)
        if inner_why is None and isinstance(inner, dict):
            return inner, decoded
        if inner_why is None:
            raise InvalidMessage(
                f"body: expected a JSON object, got {json_type(inner)} (after base64 decoding)",
                input_excerpt=excerpt(text),
            )
        b64_why = f"as base64 it decodes to text that is not JSON: {inner_why}"
    if why is None:
        raise InvalidMessage(
            f"body: expected a JSON object, got {json_type(value)}", input_excerpt=excerpt(text)
        )
    raise InvalidMessage(
        f"body: not JSON ({why}), nor base64 of a JSON object ({b64_why})",
        input_excerpt=excerpt(text),
    )


def _from_base64(text: str) -> tuple[str | None, str]:
    if not _B64_RE.fullmatch(text) or len(text.rstrip("=")) % 4 == 1 or not text.rstrip("="):
        return None, "not base64"
    padded = text.rstrip("=")
    padded += "=" * (-len(padded) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except binascii.Error:
        return None, "not base64"
    try:
        return raw.decode("utf-8").removeprefix("\ufeff"), ""
    except UnicodeDecodeError:
        return None, "as base64 it decodes to bytes that are not UTF-8"


def decode_body(body: bytes | str) -> dict[str, Any]:
    """The JSON object a queue message carries, raw or base64; anything else is `InvalidMessage`."""
    return decode_with_text(body)[0]


def body_id(body: bytes | str) -> str | None:
    """The `id` a message body names itself, valid or not; None when it names none or is unreadable.

    The poison handler and requeue-poison need it: a body without its own id took its first queue
    message id as its folder, which no later copy of the message can know.
    """
    try:
        candidate = decode_body(body).get("id")
    except InvalidMessage:
        return None
    return candidate if isinstance(candidate, str) and candidate else None
