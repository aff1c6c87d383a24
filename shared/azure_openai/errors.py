"""The service's error answers, in every shape it sends, turned into `ErrorInfo` and an `Outcome`.

Bodies and stream `error` events come in several shapes, and the content filter's alone in three:

- Azure: `{"error": {"code": "content_policy_violation", "type": "invalid_request_error",
  "inner_error": {"code": "ResponsibleAIPolicyViolation", "content_filter_results": {...},
  "revised_prompt": "..."}}}` (the image API says `inner_error`; the chat API's `innererror` is
  accepted too);
- Azure, older deployments: `{"error": {"code": "contentFilter", "message": ..., "status": 400}}`;
- OpenAI: `{"error": {"code": "moderation_blocked", "type": "image_generation_user_error",
  "moderation_details": {...}}}`, also flat in a stream event (`{"type": "error", "code": ...}`).

The verdict (categories and severities, the revised prompt, the moderation details) is kept in
`ErrorInfo.content_filter` so a producer can tell which category was hit. A 403 whose message says
the resource was "temporarily blocked" for content policy is the content filter too, not a bad key;
a block for "unusual behavior" stays a 403 the outcome table calls configuration. Pure functions:
no I/O, so every shape is a unit test.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from shared.records.attempts import ErrorInfo, Outcome

CONTENT_FILTER_CODES = frozenset(
    {
        "moderation_blocked",
        "content_filter",
        "contentFilter",
        "content_policy_violation",
        "ResponsibleAIPolicyViolation",
    }
)
_BLOCKED_PHRASE = "temporarily blocked"
_CONTENT_POLICY_PHRASE = "content policy"
MAX_TEXT = 32_000  # a revised prompt is at most a prompt's length; nothing longer is kept
_RESULT_KEYS = ("filtered", "severity", "detected")


def _text(value: Any) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) else None


def _inner(error: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for key in ("inner_error", "innererror"):
        inner = error.get(key)
        if isinstance(inner, Mapping):
            return inner
    return None


def _categories(results: Any) -> dict[str, dict[str, Any]] | None:
    """`content_filter_results`, each category reduced to filtered / severity / detected."""
    if not isinstance(results, Mapping):
        return None
    out: dict[str, dict[str, Any]] = {}
    for name, result in results.items():
        if isinstance(name, str) and isinstance(result, Mapping):
            kept = {k: result[k] for k in _RESULT_KEYS if isinstance(result.get(k), bool | str)}
            if kept:
                out[name] = kept
    return out


def _plain(value: Any, depth: int = 0) -> Any:
    """A JSON value copied with only strings, numbers, booleans, lists and objects, bounded."""
    if depth > 4:
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, list):
        return [_plain(v, depth + 1) for v in value[:50]]
    if isinstance(value, str):
        return value[:1000]
    return value if isinstance(value, int | float | bool) or value is None else str(value)[:200]


def _filter_code(value: Any) -> bool:
    return isinstance(value, str) and value in CONTENT_FILTER_CODES


def is_content_filter(error: Mapping[str, Any]) -> bool:
    inner = _inner(error)
    return (
        _filter_code(error.get("code"))
        or error.get("type") == "content_filter"
        or (inner is not None and _filter_code(inner.get("code")))
        or isinstance(error.get("moderation_details"), Mapping)
    )


def verdict(error: Mapping[str, Any]) -> dict[str, Any]:
    """What the safety system said, from a content-filter error object (any of the three shapes)."""
    inner = _inner(error)
    code = error.get("code")
    if code == "contentFilter":
        shape = "azure_legacy"
    elif code == "moderation_blocked" or "moderation_details" in error:
        shape = "openai"
    else:
        shape = "azure"
    found: dict[str, Any] = {"shape": shape}
    source = inner if inner is not None else error
    categories = _categories(source.get("content_filter_results"))
    if categories is None:
        categories = _categories(error.get("content_filter_results"))
    if categories is not None:
        found["categories"] = categories
        found["filtered"] = sorted(n for n, r in categories.items() if r.get("filtered") is True)
    revised = _text(source.get("revised_prompt"))
    if revised is not None:
        found["revised_prompt"] = revised
    if inner is not None and isinstance(inner.get("code"), str):
        found["inner_code"] = inner["code"]
    details = error.get("moderation_details")
    if isinstance(details, Mapping):
        found["moderation_details"] = _plain(details)
    return found


def error_info(error: Mapping[str, Any], fallback: str) -> ErrorInfo:
    """An error object (`body["error"]`, or a flat stream event) as recorded."""
    kind = error.get("type")
    code = error.get("code")
    return ErrorInfo(
        type=str(kind) if kind is not None else None,
        code=str(code) if code is not None else None,
        message=str(error.get("message") or fallback),
        content_filter=verdict(error) if is_content_filter(error) else None,
    )


def from_body(status: int, body: Any, text: str) -> ErrorInfo:
    """A non-200 answer's body (`body` parsed from JSON, or None when it was not) as recorded."""
    if body is None:
        return ErrorInfo(None, None, text[:300].strip() or f"HTTP {status}")
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ErrorInfo(None, None, json.dumps(body)[:300])
    info = error_info(error, f"HTTP {status}")
    if status == 403 and resource_blocked_for_content(info):
        blocked = {"shape": "resource_blocked", "reason": "content_policy"}
        return ErrorInfo(info.type, info.code, info.message, content_filter=blocked)
    return info


def from_event(payload: Mapping[str, Any]) -> ErrorInfo:
    """Both event shapes: nested `{"type":"error","error":{...}}` (Azure) and flat (Responses API)."""
    inner = payload.get("error")
    if isinstance(inner, dict):
        return error_info(inner, "error event without a message")
    flat = {k: v for k, v in payload.items() if not (k == "type" and v == "error")}
    return error_info(flat, "error event without a message")


def resource_blocked_for_content(error: ErrorInfo) -> bool:
    """Azure's 403 "Your resource has been temporarily blocked ... content policy"."""
    message = error.message.lower()
    return _BLOCKED_PHRASE in message and _CONTENT_POLICY_PHRASE in message


def status_outcome(status: int, error: ErrorInfo) -> Outcome:
    if error.content_filter is not None and status in (400, 403):
        return Outcome.CONTENT_FILTER
    if status == 408:
        return Outcome.GATEWAY_TIMEOUT
    if status == 429:
        return Outcome.RATE_LIMITED
    if status in (401, 403):
        return Outcome.AUTH_ERROR
    if status == 400:
        return Outcome.INVALID_REQUEST
    if status >= 500:
        return Outcome.SERVER_ERROR
    return Outcome.HTTP_ERROR


def event_outcome(error: ErrorInfo) -> Outcome:
    return Outcome.CONTENT_FILTER if error.content_filter is not None else Outcome.SERVER_ERROR
