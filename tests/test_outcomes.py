"""Unit tests of the outcome table (shared.policy.outcomes), backoff arithmetic and Retry-After parsing.

The decisions built on them are tested in test_planner.py."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from shared.azure_openai.headers import parse_retry_after
from shared.policy.backoff import full_jitter_backoff, jitter_fraction
from shared.policy.outcomes import Category, Health, billed_attempts, judge
from shared.records.attempts import AttemptRecord, ErrorInfo, Outcome

NOW = datetime(2026, 5, 7, 13, 46, 12, tzinfo=UTC)


def record(
    outcome: Outcome,
    status: int | None = 200,
    *,
    attempt: int = 1,
    partials: int = 1,
    retry_after_s: float | None = None,
    error: ErrorInfo | None = None,
) -> AttemptRecord:
    return AttemptRecord(
        attempt=attempt,
        image_index=0,
        deployment="gpt-image-2",
        started_at="2026-05-07T13:46:12.190Z",
        elapsed_s=1.0,
        first_event_s=None,
        http_status=status,
        apim_request_id=f"apim-{attempt}",
        x_request_id=None,
        partial_images_sent=partials,
        partials_received=0,
        outcome=outcome,
        error=error,
        retry_after_s=retry_after_s,
    )


def history(*records: AttemptRecord) -> list[AttemptRecord]:
    return [r.renumbered(i + 1) for i, r in enumerate(records)]


OK = record(Outcome.SUCCEEDED)
SERVER_ERROR = record(
    Outcome.SERVER_ERROR,
    error=ErrorInfo("server_error", None, "An error occurred while processing the request."),
)
TIMEOUT_408 = record(Outcome.GATEWAY_TIMEOUT, 408)
THROTTLED = record(Outcome.RATE_LIMITED, 429)
CONNECT = record(Outcome.CONNECT_ERROR, None)


@pytest.mark.parametrize(
    ("outcome", "status", "category"),
    [
        (Outcome.SUCCEEDED, 200, Category.SUCCESS),
        (Outcome.SERVER_ERROR, 200, Category.RETRYABLE),
        (Outcome.SERVER_ERROR, 500, Category.RETRYABLE),
        (Outcome.GATEWAY_TIMEOUT, 408, Category.RETRYABLE),
        (Outcome.DROPPED, 200, Category.RETRYABLE),
        (Outcome.TRUNCATED, 200, Category.RETRYABLE),
        (Outcome.READ_TIMEOUT, 200, Category.RETRYABLE),
        (Outcome.CONNECT_ERROR, None, Category.RETRYABLE),
        (Outcome.RATE_LIMITED, 429, Category.THROTTLED),
        (Outcome.CONTENT_FILTER, 400, Category.PERMANENT),
        (Outcome.CONTENT_FILTER, 200, Category.PERMANENT),
        (Outcome.INVALID_REQUEST, 400, Category.PERMANENT),
        (Outcome.AUTH_ERROR, 401, Category.CONFIGURATION),
        (Outcome.AUTH_ERROR, 403, Category.CONFIGURATION),
        (Outcome.INVALID_REQUEST, 404, Category.CONFIGURATION),
        (Outcome.HTTP_ERROR, 404, Category.CONFIGURATION),
        (Outcome.HTTP_ERROR, 502, Category.RETRYABLE),
        (Outcome.HTTP_ERROR, 503, Category.RETRYABLE),
        (Outcome.HTTP_ERROR, 408, Category.RETRYABLE),
        (Outcome.HTTP_ERROR, 429, Category.THROTTLED),
        (Outcome.HTTP_ERROR, 409, Category.PERMANENT),
        (Outcome.HTTP_ERROR, 413, Category.PERMANENT),
        (Outcome.HTTP_ERROR, 415, Category.PERMANENT),
        (Outcome.HTTP_ERROR, 301, Category.CONFIGURATION),
        (Outcome.HTTP_ERROR, None, Category.RETRYABLE),
        (Outcome.INVALID_IMAGE, 200, Category.RETRYABLE),
        (Outcome.CLIENT_ERROR, 200, Category.RETRYABLE),
        (Outcome.CLIENT_ERROR, None, Category.RETRYABLE),
    ],
)
def test_classify(outcome: Outcome, status: int | None, category: Category) -> None:
    assert judge(record(outcome, status)).category is category


@pytest.mark.parametrize(
    ("attempt", "counts"),
    [
        (record(Outcome.RATE_LIMITED, 429), False),
        (record(Outcome.HTTP_ERROR, 429), False),
        (record(Outcome.CONNECT_ERROR, None), False),
        (record(Outcome.AUTH_ERROR, 401), False),
        (record(Outcome.HTTP_ERROR, 404), False),
        (record(Outcome.GATEWAY_TIMEOUT, 408), True),
        (record(Outcome.SERVER_ERROR), True),
        (record(Outcome.DROPPED), True),
        (record(Outcome.READ_TIMEOUT), True),
        (record(Outcome.CONTENT_FILTER, 400), True),
        (record(Outcome.SUCCEEDED), True),
        (record(Outcome.INVALID_IMAGE), True),
        (record(Outcome.CLIENT_ERROR), True),  # an answer came back: the request went out
        (record(Outcome.CLIENT_ERROR, None), False),  # failed before sending (a token error)
    ],
)
def test_billed_attempts_count_toward_the_cap(attempt: AttemptRecord, counts: bool) -> None:
    assert judge(attempt).billed is counts
    assert billed_attempts([attempt, attempt]) == (2 if counts else 0)


@pytest.mark.parametrize(
    ("attempt", "unreachable", "health"),
    [
        (record(Outcome.CONNECT_ERROR, None), True, Health.FAILURE),
        (record(Outcome.CLIENT_ERROR, None), True, Health.NEUTRAL),
        (record(Outcome.CLIENT_ERROR), False, Health.NEUTRAL),
        (record(Outcome.INVALID_IMAGE), False, Health.FAILURE),
        (record(Outcome.RATE_LIMITED, 429), False, Health.NEUTRAL),
        (record(Outcome.CONTENT_FILTER, 400), False, Health.HEALTHY),
        (record(Outcome.AUTH_ERROR, 401), False, Health.DISABLE),
        (record(Outcome.SERVER_ERROR), False, Health.FAILURE),
        (record(Outcome.SUCCEEDED), False, Health.HEALTHY),
    ],
)
def test_unreachable_and_breaker_health(
    attempt: AttemptRecord, unreachable: bool, health: Health
) -> None:
    verdict = judge(attempt)
    assert (verdict.unreachable, verdict.health) == (unreachable, health)


def test_every_outcome_has_a_verdict() -> None:
    for outcome in Outcome:
        for status in (None, 200, 400, 429, 500):
            judge(record(outcome, status))  # raises KeyError for an outcome the table forgot


def test_full_jitter_backoff_grows_exponentially_up_to_the_cap() -> None:
    top = 1.0
    assert [full_jitter_backoff(n, 2.0, 60.0, top) for n in range(1, 8)] == [
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        60.0,
        60.0,
    ]
    assert full_jitter_backoff(0, 2.0, 60.0, top) == 0.0
    assert full_jitter_backoff(5000, 2.0, 60.0, top) == 60.0  # no overflow


def test_full_jitter_backoff_is_spread_over_the_whole_interval() -> None:
    rng = random.Random(7)
    samples = [full_jitter_backoff(3, 2.0, 60.0, rng.random()) for _ in range(2000)]
    assert all(0.0 <= s <= 8.0 for s in samples)
    assert min(samples) < 0.5 and max(samples) > 7.5


def test_jitter_is_a_fact_of_the_attempt_and_differs_between_attempts() -> None:
    first = record(Outcome.SERVER_ERROR)
    assert jitter_fraction(first) == jitter_fraction(replace(first, elapsed_s=9.0))
    fractions = {jitter_fraction(replace(first, attempt=n)) for n in range(1, 200)}
    assert len(fractions) == 199 and all(0.0 <= f < 1.0 for f in fractions)
    assert min(fractions) < 0.05 and max(fractions) > 0.95


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"Retry-After-Ms": "250.5"}, 0.2505),
        ({"RETRY-AFTER": "7"}, 7.0),
        ({"retry-after": " 2.5 "}, 2.5),
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),
        ({"retry-after": "Thu, 07 May 2026 13:46:42 GMT"}, 30.0),
        ({"retry-after": "Thu, 07 May 2026 13:40:00 GMT"}, 0.0),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after-ms": "-5"}, 0.0),
        ({"retry-after": "tomorrow"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after-ms": "inf"}, None),
        ({"content-type": "application/json"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected


def test_parse_retry_after_date_with_naive_now_is_read_as_utc() -> None:
    headers = {"retry-after": "Thu, 07 May 2026 13:47:12 GMT"}
    assert parse_retry_after(headers, now=NOW.replace(tzinfo=None)) == 60.0
