"""What to do after an attempt (DESIGN.md section 7): a pure policy over the attempt history.

No I/O, no clock, no global randomness: the caller passes the history of one image (all its
attempts so far, across deliveries, in order) and an RNG, and gets a `Decision` back. Sleeping,
re-enqueueing and writing error.json are the pipeline's job. This keeps every branch testable with
plain values, unlike urllib3's `Retry`, which calls `time.sleep` itself.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from shared.attempts import AttemptRecord, Outcome

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = [
    "MAX_PARTIAL_IMAGES",
    "MAX_REQUEUE_DELAY_S",
    "Category",
    "Decision",
    "FailInvocation",
    "GiveUp",
    "Requeue",
    "RetryNow",
    "RetryPolicy",
    "Succeeded",
    "classify",
    "counted_attempts",
    "counts_toward_cap",
    "describe",
    "full_jitter_backoff",
    "parse_retry_after",
]

MAX_PARTIAL_IMAGES = 3  # the API accepts 0..3
# A queue message cannot be hidden for longer than 7 days; a longer Retry-After would fail the put.
MAX_REQUEUE_DELAY_S = 7 * 24 * 3600.0

_CONFIGURATION_STATUSES = frozenset({401, 403, 404})


class Category(StrEnum):
    SUCCESS = "success"
    RETRYABLE = "retryable"  # the same request may well succeed if sent again
    THROTTLED = "throttled"  # the quota said no; the service tells us when to come back
    PERMANENT = "permanent"  # the service refused this request; sending it again cannot help
    CONFIGURATION = "configuration"  # our credentials or endpoint are wrong; no request can succeed


_BY_OUTCOME: dict[Outcome, Category] = {
    Outcome.SUCCEEDED: Category.SUCCESS,
    Outcome.SERVER_ERROR: Category.RETRYABLE,
    Outcome.GATEWAY_TIMEOUT: Category.RETRYABLE,
    Outcome.DROPPED: Category.RETRYABLE,
    Outcome.TRUNCATED: Category.RETRYABLE,
    Outcome.READ_TIMEOUT: Category.RETRYABLE,
    Outcome.CONNECT_ERROR: Category.RETRYABLE,
    Outcome.RATE_LIMITED: Category.THROTTLED,
    Outcome.CONTENT_FILTER: Category.PERMANENT,
    Outcome.INVALID_REQUEST: Category.PERMANENT,
    Outcome.AUTH_ERROR: Category.CONFIGURATION,
}


def classify(record: AttemptRecord) -> Category:
    """Sort an attempt into the five categories of section 7.

    401/403/404 mean configuration whatever outcome the caller gave them: a wrong key, a missing
    role assignment or a wrong deployment name will fail every request alike. An `http_error` is
    judged by its status: 5xx and 408 are transient; 429 is throttling; any other 4xx says this
    request is wrong (409, 413, 415, ...) and will be refused again. A 3xx means the endpoint URL is
    wrong (we do not follow redirects with a key attached), so it is configuration too. No status at
    all means we know nothing better than "try again".
    """
    if record.outcome is Outcome.SUCCEEDED:
        return Category.SUCCESS
    status = record.http_status
    if status in _CONFIGURATION_STATUSES:
        return Category.CONFIGURATION
    if record.outcome is not Outcome.HTTP_ERROR:
        return _BY_OUTCOME[record.outcome]
    if status is None or status >= 500 or status == 408:
        return Category.RETRYABLE
    if status == 429:
        return Category.THROTTLED
    if 300 <= status < 400:
        return Category.CONFIGURATION
    return Category.PERMANENT


def counts_toward_cap(record: AttemptRecord) -> bool:
    """Whether the attempt may have been billed, and so is limited by `max_attempts`.

    A 429 and a failed connection cannot have reached the model, so they cost nothing and do not use
    up the image's attempts. Configuration errors never reach it either; they are bounded by the
    host's `maxDequeueCount` instead, which sends the message to the poison queue. Everything else
    counts, a 408 included: the gateway gave up, but the model may have worked on the image.
    """
    if record.outcome in (Outcome.RATE_LIMITED, Outcome.CONNECT_ERROR):
        return False
    return classify(record) not in (Category.THROTTLED, Category.CONFIGURATION)


def counted_attempts(image_history: Sequence[AttemptRecord]) -> int:
    return sum(1 for record in image_history if counts_toward_cap(record))


def full_jitter_backoff(failures: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Uniform in [0, min(max_s, base_s * 2 ** (failures - 1))]: AWS's "full jitter".

    Full jitter spreads clients that failed together (a worker crash fails every stream on it)
    over the whole interval instead of sending them back in a synchronised wave.
    """
    if failures <= 0 or max_s <= 0 or base_s <= 0:
        return 0.0
    exponent = min(failures - 1, 64)  # 2.0 ** 1100 overflows; the cap is reached long before
    return rng.uniform(0.0, min(max_s, base_s * 2.0**exponent))


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds the service asks us to wait: `retry-after-ms` first, then `retry-after`.

    `retry-after` may be seconds or an HTTP-date (relative to `now`, default the current time).
    Header names are matched case-insensitively, whatever mapping the caller has. Returns None when
    neither header is present or parses; a wait in the past is 0, never negative.
    """
    folded = {name.lower(): value for name, value in headers.items()}
    millis = _number(folded.get("retry-after-ms"))
    if millis is not None:
        return max(0.0, millis / 1000.0)
    raw = folded.get("retry-after")
    if raw is None:
        return None
    seconds = _number(raw)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # RFC 9110 dates are GMT
    moment = now if now is not None else datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (when - moment).total_seconds())


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class Succeeded:
    """The last attempt produced the image."""


@dataclass(frozen=True, slots=True)
class RetryNow:
    """Sleep `delay_s` in this invocation, then send the next attempt."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class Requeue:
    """The wait is too long to hold a worker thread: re-enqueue with this visibility delay."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop for good and write error.json. `kind`: content_filter, invalid_request, retries_exhausted."""

    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class FailInvocation:
    """Raise out of the function: the host redelivers, and after maxDequeueCount it poisons.

    Used for configuration errors. Giving up would delete a request that is perfectly good and only
    needs the operator to fix a key or a role; the poison queue keeps it for `requeue-poison`.
    """

    message: str


Decision = Succeeded | RetryNow | Requeue | GiveUp | FailInvocation


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Section 7's retry rules as a value; `decide` is a pure function of the image's history."""

    max_attempts: int = 4
    backoff_base_s: float = 2.0
    backoff_max_s: float = 60.0
    inline_wait_max_s: float = 30.0
    min_partial_images: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            backoff_base_s=settings.backoff_base_s,
            backoff_max_s=settings.backoff_max_s,
            inline_wait_max_s=settings.inline_wait_max_s,
            min_partial_images=settings.min_partial_images,
        )

    def partial_images(self, requested: int, image_history: Sequence[AttemptRecord]) -> int:
        """`partial_images` for the next attempt: at least the keep-alive minimum, at most 3.

        The gateway answers 408 when no byte has flowed for 60 s. A partial image is what keeps the
        stream alive, so after a 408 the next attempt asks for one more than the one that timed
        out, to make the first partial arrive sooner.
        """
        wanted = max(requested, self.min_partial_images)
        for record in reversed(image_history):
            if _is_gateway_timeout(record):
                wanted = max(wanted, record.partial_images_sent + 1)
                break
        return max(0, min(MAX_PARTIAL_IMAGES, wanted))

    def decide(self, image_history: Sequence[AttemptRecord], rng: random.Random) -> Decision:
        """Judge the last attempt of one image, given every attempt before it."""
        if not image_history:
            return RetryNow(0.0)
        last = image_history[-1]
        category = classify(last)
        if category is Category.SUCCESS:
            return Succeeded()
        if category is Category.PERMANENT:
            kind = "content_filter" if last.outcome is Outcome.CONTENT_FILTER else "invalid_request"
            return GiveUp(kind, f"the service refused the request: {describe(last)}")
        if category is Category.CONFIGURATION:
            return FailInvocation(
                f"deployment {last.deployment!r} cannot serve requests (check endpoint, "
                f"deployment name, key or role assignment): {describe(last)}"
            )
        counted = counted_attempts(image_history)
        if counted >= self.max_attempts:
            return GiveUp(
                "retries_exhausted",
                f"gave up after {counted} attempts (cap {self.max_attempts}); "
                f"last: {describe(last)}",
            )
        if category is Category.THROTTLED and last.retry_after_s is not None:
            wait = max(0.0, last.retry_after_s)
        else:
            wait = full_jitter_backoff(
                _trailing_failures(image_history, throttled=category is Category.THROTTLED),
                self.backoff_base_s,
                self.backoff_max_s,
                rng,
            )
        if wait <= self.inline_wait_max_s:
            return RetryNow(wait)
        return Requeue(min(wait, MAX_REQUEUE_DELAY_S))


def _is_gateway_timeout(record: AttemptRecord) -> bool:
    return record.outcome is Outcome.GATEWAY_TIMEOUT or record.http_status == 408


def _trailing_failures(image_history: Sequence[AttemptRecord], *, throttled: bool) -> int:
    """The backoff exponent: how many failures of this kind the image has had since a success.

    Throttles and other failures back off separately: a run of 429s answered by their own
    Retry-After should not stretch the wait after a server error, and vice versa. Connection errors
    count here although they do not count toward the cap, so an unreachable endpoint backs off
    exponentially instead of being hammered every couple of seconds. At least 1.
    """
    count = 0
    for record in reversed(image_history):
        category = classify(record)
        if category is Category.SUCCESS:
            break
        if (category is Category.THROTTLED) == throttled:
            count += 1
    return max(1, count)


def describe(record: AttemptRecord) -> str:
    """One line naming an attempt's error for error.json and logs; support asks for apim-request-id."""
    parts = [record.outcome.value]
    if record.http_status is not None:
        parts.append(f"HTTP {record.http_status}")
    if record.error is not None:
        detail = record.error.code or record.error.type
        parts.append(f"{detail}: {record.error.message}" if detail else record.error.message)
    if record.apim_request_id:
        parts.append(f"apim-request-id {record.apim_request_id}")
    return f"attempt {record.attempt} on {record.deployment}: " + ", ".join(parts)
