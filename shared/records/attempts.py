"""One HTTP call to the image API, as recorded in status.json, manifest.json and error.json.

The record is produced by `image_api`, judged by `retry`, and stored by `store`; it is plain data
so that the history survives redeliveries and continuations as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """How an attempt ended (docs/design.md §5); what each means is `shared.policy.outcomes`."""

    SUCCEEDED = "succeeded"
    SERVER_ERROR = "server_error"  # an SSE `error` event, or a 5xx
    HTTP_ERROR = "http_error"  # any other non-2xx answer not named below
    GATEWAY_TIMEOUT = "gateway_timeout"  # 408 from the gateway: nothing was sent for 60 s
    RATE_LIMITED = "rate_limited"  # 429
    DROPPED = "dropped"  # the connection ended inside the stream
    TRUNCATED = "truncated"  # the stream ended cleanly without a completed event
    READ_TIMEOUT = "read_timeout"
    CONNECT_ERROR = "connect_error"
    # The service's safety system refused the prompt (Azure's content_policy_violation or legacy
    # contentFilter, OpenAI's moderation_blocked), or a 403 blocked the resource for content policy.
    CONTENT_FILTER = "content_filter"
    INVALID_REQUEST = "invalid_request"  # 400 to a request we thought valid
    AUTH_ERROR = "auth_error"  # 401 / 403
    # A completed event whose bytes are not a PNG/JPEG of the asked format (or not base64 at all).
    INVALID_IMAGE = "invalid_image"
    CLIENT_ERROR = "client_error"  # our client failed while making or handling the call


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """The service's error as recorded. `content_filter` is the safety system's verdict when it
    refused the prompt, so a producer can tell which category was hit: any of `shape` (the body's
    shape: azure, azure_legacy, openai, resource_blocked), `categories` (name to `filtered` and
    `severity`), `revised_prompt`, `moderation_details`, `inner_code`. None for every other error."""

    type: str | None
    code: str | None
    message: str
    content_filter: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type, "code": self.code, "message": self.message}
        if self.content_filter is not None:  # absent otherwise: records stay as they were
            data["content_filter"] = self.content_filter
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorInfo:
        verdict = data.get("content_filter")
        return cls(
            type=data.get("type"),
            code=data.get("code"),
            message=str(data.get("message", "")),
            content_filter=dict(verdict) if isinstance(verdict, dict) else None,
        )


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """Every field of `attempts[]` in docs/design.md §5, plus what the retry policy needs.

    `retry_after_s` is the wait the service asked for (429), already converted from
    `retry-after-ms` / `retry-after`; `ratelimit` keeps the x-ratelimit-* headers for quota tracking;
    `should_retry` is the `x-should-retry` header ("true" True, "false" False, else None), which the
    outcome table obeys as openai-python does.
    """

    attempt: int
    image_index: int
    deployment: str
    started_at: str
    elapsed_s: float
    first_event_s: float | None
    http_status: int | None
    apim_request_id: str | None
    x_request_id: str | None
    partial_images_sent: int
    partials_received: int
    outcome: Outcome
    error: ErrorInfo | None = None
    retry_after_s: float | None = None
    ratelimit: dict[str, str] = field(default_factory=dict)
    headers_s: float | None = None  # when the response headers arrived, from the start
    should_retry: bool | None = None

    @property
    def headers_age_s(self) -> float:
        """How old the rate-limit headers are by the end of the attempt.

        `x-ratelimit-reset-requests` and `retry-after` count from when the answer began; a stream
        that then ran for minutes must not hold the quota for that long again.
        """
        if self.headers_s is None:
            return 0.0
        return max(0.0, self.elapsed_s - self.headers_s)

    @property
    def succeeded(self) -> bool:
        return self.outcome is Outcome.SUCCEEDED

    def renumbered(self, attempt: int) -> AttemptRecord:
        return replace(self, attempt=attempt)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        data["error"] = self.error.to_json() if self.error else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttemptRecord:
        error = data.get("error")
        return cls(
            attempt=int(data["attempt"]),
            image_index=int(data["image_index"]),
            deployment=str(data["deployment"]),
            started_at=str(data["started_at"]),
            elapsed_s=float(data["elapsed_s"]),
            first_event_s=data.get("first_event_s"),
            http_status=data.get("http_status"),
            apim_request_id=data.get("apim_request_id"),
            x_request_id=data.get("x_request_id"),
            partial_images_sent=int(data.get("partial_images_sent", 0)),
            partials_received=int(data.get("partials_received", 0)),
            outcome=Outcome(data["outcome"]),
            error=ErrorInfo.from_json(error) if isinstance(error, dict) else None,
            retry_after_s=data.get("retry_after_s"),
            ratelimit=dict(data.get("ratelimit") or {}),
            headers_s=data.get("headers_s"),
            should_retry=_optional_bool(data.get("should_retry")),
        )


def _optional_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_utc(moment: datetime) -> str:
    """ISO 8601 UTC with a `Z`, millisecond precision: `2026-05-07T13:46:12.190Z`."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


def epoch_s(iso: str) -> float:
    """Epoch seconds of an `iso_utc` timestamp (attempt records carry wall-clock times as text)."""
    return datetime.fromisoformat(iso).timestamp()
