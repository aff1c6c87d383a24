"""Unit tests of shared.policy.planner with plain values: every outcome, one or several
deployments, the invocation's budget and the request's deadline. No Azurite, no clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shared.policy.backoff import jitter_fraction
from shared.policy.planner import (
    MAX_REQUEUE_DELAY_S,
    DeploymentView,
    Done,
    FailInvocation,
    GiveUp,
    Planner,
    Requeue,
    Send,
    Situation,
    Wait,
)
from shared.records.attempts import AttemptRecord, ErrorInfo, Outcome, epoch_s
from shared.records.documents import ErrorKind
from shared.settings import Settings

T0 = "2026-05-07T13:46:12.190Z"
START = epoch_s(T0)
DAY = 86400.0
A = DeploymentView("pool-a")
B = DeploymentView("pool-b")
TOP = Planner(jitter=lambda _: 1.0)  # every backoff at the top of its interval


def record(
    outcome: Outcome,
    status: int | None = 200,
    *,
    deployment: str = "pool-a",
    partials: int = 1,
    retry_after_s: float | None = None,
    error: ErrorInfo | None = None,
    elapsed_s: float = 1.0,
) -> AttemptRecord:
    return AttemptRecord(
        attempt=1,
        image_index=0,
        deployment=deployment,
        started_at=T0,
        elapsed_s=elapsed_s,
        first_event_s=None,
        http_status=status,
        apim_request_id="apim-1",
        x_request_id=None,
        partial_images_sent=partials,
        partials_received=0,
        outcome=outcome,
        error=error,
        retry_after_s=retry_after_s,
        headers_s=0.5 if status is not None else None,
    )


def history(*records: AttemptRecord) -> tuple[AttemptRecord, ...]:
    """Numbered from 1, one second apart, each lasting the second it was given."""
    return tuple(
        replace(r, attempt=i + 1, started_at=_iso(START + i * (r.elapsed_s + 0.0)))
        for i, r in enumerate(records)
    )


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def situation(
    past: tuple[AttemptRecord, ...] = (),
    *,
    deployments: tuple[DeploymentView, ...] = (A,),
    now: float | None = None,
    deadline: float | None = None,
    budget_left_s: float = 900.0,
    requested: int = 0,
    stored: bool = False,
) -> Situation:
    end = max((epoch_s(r.started_at) + r.elapsed_s for r in past), default=START)
    return Situation(
        history=past,
        deployments=deployments,
        now=end if now is None else now,
        deadline=START + DAY if deadline is None else deadline,
        delivery_started=START,
        budget_left_s=budget_left_s,
        requested_partials=requested,
        image_stored=stored,
    )


OK = record(Outcome.SUCCEEDED)
SERVER_ERROR = record(
    Outcome.SERVER_ERROR,
    error=ErrorInfo("server_error", None, "An error occurred while processing the request."),
)
TIMEOUT_408 = record(Outcome.GATEWAY_TIMEOUT, 408)
THROTTLED = record(Outcome.RATE_LIMITED, 429)
CONNECT = record(Outcome.CONNECT_ERROR, None)
CLIENT_UNSENT = record(Outcome.CLIENT_ERROR, None)


def test_from_settings_copies_every_field() -> None:
    settings = Settings.from_env(
        {
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:1",
            "AZURE_OPENAI_DEPLOYMENT": "gpt-image-2",
            "IMAGE_MAX_ATTEMPTS": "6",
            "IMAGE_MAX_CONNECT_ERRORS": "7",
            "IMAGE_BACKOFF_BASE_S": "0.5",
            "IMAGE_BACKOFF_MAX_S": "9",
            "IMAGE_INLINE_WAIT_MAX_S": "4",
            "IMAGE_MIN_PARTIAL_IMAGES": "2",
        }
    )
    planner = Planner.from_settings(settings)
    assert (planner.max_attempts, planner.max_connect_errors) == (6, 7)
    assert (planner.backoff_base_s, planner.backoff_max_s) == (0.5, 9.0)
    assert (planner.inline_wait_max_s, planner.min_partial_images) == (4.0, 2)


# -- first call, success, keep-alive ---------------------------------------------------------------


def test_first_call_goes_at_once_with_the_keep_alive_minimum() -> None:
    assert Planner().next_step(situation()) == Send("pool-a", 1)
    assert Planner().next_step(situation(requested=2)) == Send("pool-a", 2)
    assert Planner(min_partial_images=0).next_step(situation()) == Send("pool-a", 0)


def test_a_stored_image_is_done() -> None:
    assert Planner().next_step(situation(history(SERVER_ERROR, OK), stored=True)) == Done()


def test_a_success_whose_image_was_lost_is_made_again_at_once() -> None:
    assert Planner().next_step(situation(history(OK))) == Send("pool-a", 1)


def test_partial_images_rise_by_one_after_each_408_up_to_three() -> None:
    steps = []
    past: tuple[AttemptRecord, ...] = ()
    for _ in range(4):
        step = Planner(max_attempts=10, jitter=lambda _: 0.0).next_step(situation(past))
        assert isinstance(step, Send)
        steps.append(step.partial_images)
        past = history(*past, replace(TIMEOUT_408, partial_images_sent=step.partial_images))
    assert steps == [1, 2, 3, 3]


def test_partial_images_follow_the_latest_408_not_other_failures() -> None:
    planner = Planner(jitter=lambda _: 0.0)
    past = history(
        replace(TIMEOUT_408, partial_images_sent=1), replace(SERVER_ERROR, partial_images_sent=2)
    )
    assert planner.next_step(situation(past)) == Send("pool-a", 2)
    # A 408 reported as a plain http_error is the same gateway timeout.
    late = history(record(Outcome.HTTP_ERROR, 408, partials=2))
    assert planner.next_step(situation(late)) == Send("pool-a", 3)


# -- permanent, configuration, cap --------------------------------------------------------------


def test_content_filter_gives_up_at_once() -> None:
    blocked = record(
        Outcome.CONTENT_FILTER,
        400,
        error=ErrorInfo("invalid_request_error", "moderation_blocked", "no"),
    )
    step = Planner().next_step(situation(history(blocked)))
    assert isinstance(step, GiveUp) and step.kind is ErrorKind.CONTENT_FILTER
    assert "moderation_blocked" in step.message and "apim-1" in step.message


def test_invalid_request_and_other_4xx_give_up_as_invalid_request() -> None:
    for attempt in (record(Outcome.INVALID_REQUEST, 400), record(Outcome.HTTP_ERROR, 413)):
        step = Planner().next_step(situation(history(attempt)))
        assert isinstance(step, GiveUp) and step.kind is ErrorKind.INVALID_REQUEST


@pytest.mark.parametrize("status", [401, 403, 404])
def test_configuration_error_retries_at_once_while_the_router_still_offers_it(status: int) -> None:
    # Never capped: the host's maxDequeueCount bounds them. A new process knows nothing yet.
    past = history(*[record(Outcome.AUTH_ERROR, status)] * 10)
    assert Planner().next_step(situation(past)) == Send("pool-a", 1)


def test_no_usable_deployment_fails_the_invocation_naming_each() -> None:
    disabled = replace(A, disabled=True, reason="auth_error HTTP 401; probe in 300s")
    step = Planner().next_step(
        situation(history(record(Outcome.AUTH_ERROR, 401)), deployments=(disabled,))
    )
    assert isinstance(step, FailInvocation)
    assert "pool-a (auth_error HTTP 401" in step.message


def test_configuration_error_on_one_deployment_moves_to_the_next() -> None:
    disabled = replace(A, disabled=True, reason="401")
    past = history(record(Outcome.AUTH_ERROR, 401))
    assert Planner().next_step(situation(past, deployments=(disabled, B))) == Send("pool-b", 1)


def test_the_cap_counts_only_attempts_that_may_have_been_billed() -> None:
    planner = Planner(max_attempts=4, jitter=lambda _: 0.0)
    free = [THROTTLED, CONNECT, THROTTLED, CLIENT_UNSENT]
    past = history(SERVER_ERROR, *free, TIMEOUT_408, record(Outcome.DROPPED))
    assert isinstance(planner.next_step(situation(past)), Send)
    past = history(*past, record(Outcome.READ_TIMEOUT))
    step = planner.next_step(situation(past))
    assert isinstance(step, GiveUp) and step.kind is ErrorKind.RETRIES_EXHAUSTED
    assert "read_timeout" in step.message and "4 attempts" in step.message


def test_the_cap_counts_billed_client_errors_and_invalid_images() -> None:
    sent = record(Outcome.CLIENT_ERROR, 200, error=ErrorInfo(None, "BlobError", "storage down"))
    bad = record(Outcome.INVALID_IMAGE, 200, error=ErrorInfo(None, "not_an_image", "x"))
    step = Planner(max_attempts=3).next_step(situation(history(sent, bad, sent)))
    assert isinstance(step, GiveUp) and step.kind is ErrorKind.RETRIES_EXHAUSTED


def test_the_cap_applies_even_when_the_last_attempt_was_throttled() -> None:
    step = Planner().next_step(situation(history(*[SERVER_ERROR] * 4, THROTTLED)))
    assert isinstance(step, GiveUp) and step.kind is ErrorKind.RETRIES_EXHAUSTED


# -- backoff, inline or continuation ------------------------------------------------------------


def test_retryable_backs_off_inline_then_sends() -> None:
    past = history(SERVER_ERROR)
    assert TOP.next_step(situation(past)) == Wait(
        2.0, "retry of image 0 after server_error in 2.0s"
    )
    ended = epoch_s(past[-1].started_at) + past[-1].elapsed_s
    assert TOP.next_step(situation(past, now=ended + 2.0)) == Send("pool-a", 1)
    second = TOP.next_step(situation(history(SERVER_ERROR, TIMEOUT_408)))
    assert isinstance(second, Wait) and second.seconds == 4.0


def test_the_backoff_is_the_same_however_often_it_is_asked() -> None:
    past = history(SERVER_ERROR, SERVER_ERROR)
    first = Planner().next_step(situation(past))
    assert first == Planner().next_step(situation(past))
    expected = jitter_fraction(past[-1]) * 4.0
    assert isinstance(first, Wait) and first.seconds == pytest.approx(expected)
    later = Planner().next_step(situation(past, now=situation(past).now + expected / 2))
    assert isinstance(later, Wait) and later.seconds == pytest.approx(expected / 2)


def test_a_long_backoff_requeues() -> None:
    planner = replace(TOP, max_attempts=10)
    past = history(*[SERVER_ERROR] * 5)  # ceiling 2 * 2**4 = 32 s > 30 s inline maximum
    step = planner.next_step(situation(past))
    assert isinstance(step, Requeue) and step.seconds == 32.0
    step = planner.next_step(situation(history(*[SERVER_ERROR] * 8)))
    assert isinstance(step, Requeue) and step.seconds == 60.0


def test_throttled_waits_what_the_service_asked_counted_from_its_headers() -> None:
    one = history(replace(THROTTLED, retry_after_s=1.5))  # headers at 0.5 s, call ended at 1.0 s
    assert TOP.next_step(situation(one)) == Wait(1.0, "retry of image 0 after rate_limited in 1.0s")
    long = TOP.next_step(situation(history(replace(THROTTLED, retry_after_s=45.0))))
    assert isinstance(long, Requeue) and long.seconds == pytest.approx(44.5)
    now = TOP.next_step(situation(history(replace(THROTTLED, retry_after_s=0.0))))
    assert now == Send("pool-a", 1)


def test_retry_after_is_trusted_up_to_an_hour() -> None:
    step = TOP.next_step(situation(history(replace(THROTTLED, retry_after_s=7 * DAY))))
    assert isinstance(step, Requeue) and step.seconds == pytest.approx(3600.0 - 0.5)
    assert step.seconds < MAX_REQUEUE_DELAY_S


def test_throttled_without_retry_after_backs_off_on_throttles_only() -> None:
    assert TOP.next_step(situation(history(THROTTLED))).seconds == 2.0  # type: ignore[union-attr]
    mixed = TOP.next_step(situation(history(SERVER_ERROR, SERVER_ERROR, THROTTLED)))
    assert isinstance(mixed, Wait) and mixed.seconds == 2.0
    runs = TOP.next_step(situation(history(THROTTLED, THROTTLED, THROTTLED)))
    assert isinstance(runs, Wait) and runs.seconds == 8.0


# -- connect errors and other free calls --------------------------------------------------------


def test_connect_errors_back_off_inline_never_by_continuation() -> None:
    planner = replace(TOP, max_connect_errors=50)
    step = planner.next_step(situation(history(*[CONNECT] * 6)))
    assert step == Wait(30.0, "retry of image 0 after connect_error in 30.0s")


def test_connect_errors_fail_the_invocation_at_the_cap_of_a_delivery() -> None:
    planner = Planner(max_connect_errors=3, jitter=lambda _: 0.0)
    assert isinstance(planner.next_step(situation(history(CONNECT, CONNECT))), Send)
    step = planner.next_step(situation(history(CONNECT, CLIENT_UNSENT, CONNECT)))
    assert isinstance(step, FailInvocation)
    assert "3 times" in step.message and "AZURE_OPENAI_ENDPOINT" in step.message


def test_connect_errors_of_earlier_deliveries_do_not_count_toward_this_ones_cap() -> None:
    planner = Planner(max_connect_errors=2, jitter=lambda _: 0.0)
    past = history(CONNECT, CONNECT)
    later = replace(situation(past), delivery_started=situation(past).now)
    assert isinstance(planner.next_step(later), Send)


# -- several deployments -----------------------------------------------------------------------


def test_a_retry_goes_at_once_to_another_usable_deployment() -> None:
    past = history(SERVER_ERROR)
    assert TOP.next_step(situation(past, deployments=(A, B))) == Send("pool-b", 1)
    failed_on_b = history(replace(SERVER_ERROR, deployment="pool-b"))
    assert TOP.next_step(situation(failed_on_b, deployments=(A, B))) == Send("pool-a", 1)


def test_with_no_other_deployment_ready_the_earliest_wins() -> None:
    b_later = replace(B, ready_in_s=1.5, reason="request quota spent")
    step = TOP.next_step(situation(history(SERVER_ERROR), deployments=(A, b_later)))
    assert step == Wait(1.5, "pool-b: request quota spent")
    b_much_later = replace(B, ready_in_s=25.0, reason="breaker open")
    step = TOP.next_step(situation(history(SERVER_ERROR), deployments=(A, b_much_later)))
    assert step == Wait(2.0, "retry of image 0 after server_error in 2.0s")


def test_preference_order_decides_between_ready_deployments() -> None:
    assert Planner().next_step(situation(deployments=(B, A))) == Send("pool-b", 1)


def test_quota_waits_are_inline_or_by_continuation() -> None:
    spent = replace(A, ready_in_s=3.0, reason="request quota spent")
    assert Planner().next_step(situation(deployments=(spent,))) == Wait(
        3.0, "pool-a: request quota spent"
    )
    long = replace(A, ready_in_s=50.0, reason="breaker open (failures)")
    assert Planner().next_step(situation(deployments=(long,))) == Requeue(
        50.0, "pool-a: breaker open (failures)"
    )


# -- budget and deadline ------------------------------------------------------------------------


def test_a_spent_budget_hands_over_to_a_continuation_after_a_call() -> None:
    spent = replace(situation(budget_left_s=-1.0), delivery_calls=1)  # a call for another image
    step = Planner().next_step(spent)
    assert isinstance(step, Requeue) and step.seconds == 1.0
    # No call yet in this delivery: the budget does not stop the first one.
    assert Planner().next_step(situation(budget_left_s=-1.0)) == Send("pool-a", 1)


def test_a_wait_longer_than_the_budget_left_is_a_continuation() -> None:
    step = TOP.next_step(situation(history(SERVER_ERROR), budget_left_s=1.0))
    assert isinstance(step, Requeue) and step.seconds == 2.0


def test_past_the_deadline_no_call_starts() -> None:
    past = history(SERVER_ERROR)
    step = Planner().next_step(situation(past, deadline=START + 0.5))
    assert isinstance(step, GiveUp) and step.kind is ErrorKind.DEADLINE_EXCEEDED
    assert "IMAGE_REQUEST_DEADLINE_S" in step.message and "apim-1" in step.message
    first = Planner().next_step(situation(now=START + 10, deadline=START + 10))
    assert isinstance(first, GiveUp) and "no call was made" in first.message


def test_a_wait_that_would_cross_the_deadline_gives_up_now() -> None:
    past = history(SERVER_ERROR)
    ended = situation(past).now
    step = TOP.next_step(situation(past, deadline=ended + 1.0))
    assert isinstance(step, GiveUp) and step.kind is ErrorKind.DEADLINE_EXCEEDED
    assert "in 2s" in step.message
    assert isinstance(TOP.next_step(situation(past, deadline=ended + 2.5)), Wait)
