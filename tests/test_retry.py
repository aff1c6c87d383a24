"""Unit tests of shared.retry: classification, the cap, backoff, Retry-After and decisions."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from shared.attempts import AttemptRecord, ErrorInfo, Outcome
from shared.retry import (
    Category,
    FailInvocation,
    GiveUp,
    Requeue,
    RetryNow,
    RetryPolicy,
    Succeeded,
    classify,
    counted_attempts,
    counts_toward_cap,
    full_jitter_backoff,
    parse_retry_after,
)
from shared.settings import Settings

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


class ZeroRandom(random.Random):
    """Chooses the top of every uniform interval, so backoff equals its ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


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
    ],
)
def test_classify(outcome: Outcome, status: int | None, category: Category) -> None:
    assert classify(record(outcome, status)) is category


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
    ],
)
def test_counts_toward_cap(attempt: AttemptRecord, counts: bool) -> None:
    assert counts_toward_cap(attempt) is counts


def test_full_jitter_backoff_grows_exponentially_up_to_the_cap() -> None:
    top = ZeroRandom()
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
    samples = [full_jitter_backoff(3, 2.0, 60.0, rng) for _ in range(2000)]
    assert all(0.0 <= s <= 8.0 for s in samples)
    assert min(samples) < 0.5 and max(samples) > 7.5
    assert random.Random(7).uniform(0, 8.0) == samples[0]  # the rng passed in is the only source


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


def test_from_settings_copies_every_field() -> None:
    settings = Settings.from_env(
        {
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:1",
            "AZURE_OPENAI_DEPLOYMENT": "gpt-image-2",
            "IMAGE_MAX_ATTEMPTS": "6",
            "IMAGE_BACKOFF_BASE_S": "0.5",
            "IMAGE_BACKOFF_MAX_S": "9",
            "IMAGE_INLINE_WAIT_MAX_S": "4",
            "IMAGE_MIN_PARTIAL_IMAGES": "2",
        }
    )
    assert RetryPolicy.from_settings(settings) == RetryPolicy(6, 0.5, 9.0, 4.0, 2)


def test_partial_images_applies_the_keep_alive_minimum() -> None:
    policy = RetryPolicy()
    assert policy.partial_images(0, []) == 1
    assert policy.partial_images(2, []) == 2
    assert policy.partial_images(3, []) == 3
    assert RetryPolicy(min_partial_images=0).partial_images(0, []) == 0


def test_partial_images_rises_by_one_after_each_408_up_to_three() -> None:
    policy = RetryPolicy()
    steps = []
    past: list[AttemptRecord] = []
    for _ in range(4):
        sent = policy.partial_images(0, past)
        steps.append(sent)
        past.append(replace(TIMEOUT_408, partial_images_sent=sent))
    assert steps == [1, 2, 3, 3]


def test_partial_images_follows_the_latest_408_not_other_failures() -> None:
    policy = RetryPolicy()
    past = history(
        replace(TIMEOUT_408, partial_images_sent=1), replace(SERVER_ERROR, partial_images_sent=2)
    )
    assert policy.partial_images(0, past) == 2
    assert policy.partial_images(0, history(SERVER_ERROR, THROTTLED)) == 1
    # A 408 reported as a plain http_error is the same gateway timeout.
    assert policy.partial_images(0, [record(Outcome.HTTP_ERROR, 408, partials=2)]) == 3


def test_decide_first_attempt_and_success() -> None:
    policy = RetryPolicy()
    assert policy.decide([], random.Random(1)) == RetryNow(0.0)
    assert policy.decide(history(SERVER_ERROR, OK), random.Random(1)) == Succeeded()


def test_decide_content_filter_gives_up_at_once() -> None:
    blocked = record(
        Outcome.CONTENT_FILTER,
        400,
        error=ErrorInfo("invalid_request_error", "moderation_blocked", "no"),
    )
    decision = RetryPolicy().decide([blocked], random.Random(1))
    assert isinstance(decision, GiveUp)
    assert decision.kind == "content_filter"
    assert "moderation_blocked" in decision.message and "apim-1" in decision.message


def test_decide_invalid_request_and_other_4xx_give_up_as_invalid_request() -> None:
    for attempt in (record(Outcome.INVALID_REQUEST, 400), record(Outcome.HTTP_ERROR, 413)):
        decision = RetryPolicy().decide([attempt], random.Random(1))
        assert isinstance(decision, GiveUp) and decision.kind == "invalid_request"


@pytest.mark.parametrize("status", [401, 403, 404])
def test_decide_configuration_errors_fail_the_invocation(status: int) -> None:
    past = history(*[record(Outcome.AUTH_ERROR, status)] * 10)  # never capped: the host bounds it
    decision = RetryPolicy().decide(past, random.Random(1))
    assert isinstance(decision, FailInvocation)
    assert f"HTTP {status}" in decision.message and "gpt-image-2" in decision.message


def test_decide_retryable_backs_off_with_jitter_inline() -> None:
    decision = RetryPolicy().decide([SERVER_ERROR], ZeroRandom())
    assert decision == RetryNow(2.0)
    second = RetryPolicy().decide(history(SERVER_ERROR, TIMEOUT_408), ZeroRandom())
    assert second == RetryNow(4.0)


def test_decide_long_backoff_requeues() -> None:
    policy = RetryPolicy(max_attempts=10)
    past = history(*[SERVER_ERROR] * 5)  # ceiling 2 * 2**4 = 32 s > 30 s inline maximum
    assert policy.decide(past, ZeroRandom()) == Requeue(32.0)
    assert policy.decide(history(*[SERVER_ERROR] * 8), ZeroRandom()) == Requeue(60.0)


def test_decide_stops_at_the_cap_counting_only_billable_attempts() -> None:
    policy = RetryPolicy(max_attempts=4)
    free = [THROTTLED, CONNECT, THROTTLED, CONNECT]
    past = history(SERVER_ERROR, *free, TIMEOUT_408, record(Outcome.DROPPED))
    assert counted_attempts(past) == 3
    assert isinstance(policy.decide(past, random.Random(1)), RetryNow | Requeue)
    past = history(*past, record(Outcome.READ_TIMEOUT))
    decision = policy.decide(past, random.Random(1))
    assert isinstance(decision, GiveUp)
    assert decision.kind == "retries_exhausted"
    assert "read_timeout" in decision.message and "4 attempts" in decision.message


def test_decide_cap_applies_even_when_the_last_attempt_was_throttled() -> None:
    past = history(*[SERVER_ERROR] * 4, THROTTLED)
    decision = RetryPolicy().decide(past, random.Random(1))
    assert isinstance(decision, GiveUp) and decision.kind == "retries_exhausted"


def test_decide_throttled_waits_what_the_service_asked() -> None:
    policy = RetryPolicy()
    assert policy.decide([replace(THROTTLED, retry_after_s=1.5)], ZeroRandom()) == RetryNow(1.5)
    assert policy.decide([replace(THROTTLED, retry_after_s=45.0)], ZeroRandom()) == Requeue(45.0)
    # The server's wait is honoured even when backoff would say otherwise.
    assert policy.decide([replace(THROTTLED, retry_after_s=0.0)], ZeroRandom()) == RetryNow(0.0)


def test_decide_throttled_without_retry_after_backs_off_on_throttles_only() -> None:
    policy = RetryPolicy()
    assert policy.decide([THROTTLED], ZeroRandom()) == RetryNow(2.0)
    assert policy.decide(history(SERVER_ERROR, SERVER_ERROR, THROTTLED), ZeroRandom()) == RetryNow(
        2.0
    )
    assert policy.decide(history(THROTTLED, THROTTLED, THROTTLED), ZeroRandom()) == RetryNow(8.0)


def test_decide_connect_errors_back_off_although_they_are_free() -> None:
    policy = RetryPolicy()
    past = history(*[CONNECT] * 6)
    assert counted_attempts(past) == 0
    assert policy.decide(past, ZeroRandom()) == Requeue(60.0)


def test_decide_server_retry_after_is_bounded_by_the_queue_visibility_limit() -> None:
    decision = RetryPolicy().decide([replace(THROTTLED, retry_after_s=1e9)], ZeroRandom())
    assert decision == Requeue(7 * 24 * 3600.0)


def test_decide_is_deterministic_for_a_seeded_rng() -> None:
    past = history(SERVER_ERROR, SERVER_ERROR)
    first = RetryPolicy().decide(past, random.Random(42))
    assert first == RetryPolicy().decide(past, random.Random(42))
    assert isinstance(first, RetryNow) and 0.0 <= first.delay_s <= 4.0
