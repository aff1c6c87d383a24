"""The one outcome table: what each way an attempt can end means for every decision.

For each `Outcome` it says once: the category (what the planner does next), whether the call may have
been billed (so counts toward `IMAGE_MAX_ATTEMPTS`), whether it never reached the service (so counts
toward the per-delivery connect cap instead), and what it tells the deployment's circuit breaker.
Everything that judges an attempt (planner, router, breaker, reports) reads it from here.
See docs/design.md §7.

Content filter: every shape of the safety system's refusal (Azure's content_policy_violation and
legacy contentFilter, OpenAI's moderation_blocked; `shared.azure_openai.errors`) is
`content_filter`: permanent, error.json kind `content_filter`, after exactly one call. Azure's 403
"resource temporarily blocked ... content policy" is the same outcome, not a bad key: it is a
refusal of service for content reasons, which no retry of this request can lift in time, while the
deployment's key and endpoint are fine. It never reached the model, so it is not billed, and it
counts as a failure for the deployment's breaker (the whole resource refuses for a while). A 403
block for "unusual behavior" names no content: it stays `auth_error`, configuration.

`x-should-retry` (`AttemptRecord.should_retry`) is obeyed as openai-python obeys it: "false" on an
outcome that would be retried or waited out makes it `final` (give up, error.json kind
`retries_exhausted`); "true" on a refusal (a 409, any other 4xx) makes it retryable and billed, so
the attempt cap bounds it. Configuration errors (401/403/404) stay configuration whatever it says:
the router takes the deployment out of rotation, and no header makes a wrong key right.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from shared.records.attempts import AttemptRecord, Outcome

__all__ = [
    "MAX_RETRY_AFTER_S",
    "Category",
    "Health",
    "Verdict",
    "billed_attempts",
    "describe",
    "judge",
]

# A Retry-After longer than this is not trusted: a misconfigured gateway's "come back next week" would
# park a request for days. An hour is longer than any quota period Azure documents.
MAX_RETRY_AFTER_S = 3600.0


class Category(StrEnum):
    SUCCESS = "success"
    RETRYABLE = "retryable"  # the same request may well succeed if sent again
    THROTTLED = "throttled"  # the quota said no; the service tells us when to come back
    PERMANENT = "permanent"  # the service refused this request; sending it again cannot help
    CONFIGURATION = "configuration"  # our credentials or endpoint are wrong; no request can succeed
    FINAL = "final"  # would be retried, but the service said not to (x-should-retry: false)


class Health(StrEnum):
    """What an attempt says about the deployment, for its circuit breaker."""

    HEALTHY = "healthy"  # it answered sensibly (a refusal is a sensible answer)
    FAILURE = "failure"  # it failed in a way a healthier deployment would not
    NEUTRAL = "neutral"  # says nothing about it: a short 429, our own client's failure
    DISABLE = "disable"  # it cannot serve us at all: take it out of rotation


@dataclass(frozen=True, slots=True)
class Verdict:
    category: Category
    billed: bool  # may have reached the model, so it counts toward the image's attempt cap
    unreachable: bool  # never reached the service: bounded per delivery by the connect cap
    health: Health


_SUCCESS = Verdict(Category.SUCCESS, billed=True, unreachable=False, health=Health.HEALTHY)
_RETRY = Verdict(Category.RETRYABLE, billed=True, unreachable=False, health=Health.FAILURE)
_REFUSED = Verdict(Category.PERMANENT, billed=True, unreachable=False, health=Health.HEALTHY)
_THROTTLED = Verdict(Category.THROTTLED, billed=False, unreachable=False, health=Health.NEUTRAL)
# 401/403/404 and redirects never reach the model; the host's maxDequeueCount bounds them instead.
_CONFIGURATION = Verdict(
    Category.CONFIGURATION, billed=False, unreachable=False, health=Health.DISABLE
)

_TABLE: dict[Outcome, Verdict] = {
    Outcome.SUCCEEDED: _SUCCESS,
    Outcome.SERVER_ERROR: _RETRY,
    # The gateway gave up after 60 s of silence, but the model may have worked on the image.
    Outcome.GATEWAY_TIMEOUT: _RETRY,
    Outcome.DROPPED: _RETRY,
    Outcome.TRUNCATED: _RETRY,
    Outcome.READ_TIMEOUT: _RETRY,
    # The service answered "completed" with bytes that are not the image asked for: billed, never
    # stored, and a sign the deployment is misbehaving.
    Outcome.INVALID_IMAGE: _RETRY,
    Outcome.CONNECT_ERROR: Verdict(
        Category.RETRYABLE, billed=False, unreachable=True, health=Health.FAILURE
    ),
    Outcome.RATE_LIMITED: _THROTTLED,
    Outcome.CONTENT_FILTER: _REFUSED,
    Outcome.INVALID_REQUEST: _REFUSED,
    Outcome.AUTH_ERROR: _CONFIGURATION,
}
# Our client failed while making or handling the call: billed once the request went out (an answer
# came back), never the deployment's fault.
_CLIENT_SENT = Verdict(Category.RETRYABLE, billed=True, unreachable=False, health=Health.NEUTRAL)
_CLIENT_UNSENT = Verdict(Category.RETRYABLE, billed=False, unreachable=True, health=Health.NEUTRAL)

_CONFIGURATION_STATUSES = frozenset({401, 403, 404})
# Azure's 403 blocking the resource for content policy: refused, not billed, the resource is unwell.
_BLOCKED = Verdict(Category.PERMANENT, billed=False, unreachable=False, health=Health.FAILURE)


def judge(record: AttemptRecord) -> Verdict:
    """The table's verdict on one attempt, with the service's `x-should-retry` applied.

    As in openai-python, the header counts on an error answer only, never on a 200 stream.
    """
    verdict = _by_outcome(record)
    if record.http_status is None or record.http_status < 300:
        return verdict
    if record.should_retry is False and verdict.category in (
        Category.RETRYABLE,
        Category.THROTTLED,
    ):
        return replace(verdict, category=Category.FINAL)
    if record.should_retry is True and verdict.category is Category.PERMANENT:
        return replace(verdict, category=Category.RETRYABLE, billed=True)
    return verdict


def _by_outcome(record: AttemptRecord) -> Verdict:
    """The table's verdict on one attempt, from its outcome and status.

    401/403/404 mean configuration whatever outcome the caller gave them: a wrong key, a missing role
    assignment or a wrong deployment name fails every request alike. An `http_error` is judged by its
    status: 5xx and 408 are transient, 429 is throttling, a 3xx means the endpoint URL is wrong (we do
    not follow redirects with a key attached), any other 4xx says this request is wrong and will be
    refused again. No status at all means we know nothing better than "try again".
    """
    if record.outcome is Outcome.SUCCEEDED:
        return _SUCCESS
    status = record.http_status
    if record.outcome is Outcome.CONTENT_FILTER and status == 403:
        return _BLOCKED
    if status in _CONFIGURATION_STATUSES:
        return _CONFIGURATION
    if record.outcome is Outcome.CLIENT_ERROR:
        return _CLIENT_UNSENT if status is None else _CLIENT_SENT
    if record.outcome is not Outcome.HTTP_ERROR:
        return _TABLE[record.outcome]
    if status is None or status >= 500 or status == 408:
        return _RETRY
    if status == 429:
        return _THROTTLED
    if 300 <= status < 400:
        return _CONFIGURATION
    return _REFUSED


def billed_attempts(history: list[AttemptRecord] | tuple[AttemptRecord, ...]) -> int:
    return sum(1 for record in history if judge(record).billed)


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
