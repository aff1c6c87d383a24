"""The service's error answers in every shape (shared/azure_openai/errors.py), and what they mean
downstream: the outcome, the verdict kept in the record, x-should-retry in the outcome table and
the planner, and the verdict in error.json and the operator's output. Plain values, no I/O."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from shared.azure_openai import errors
from shared.azure_openai.headers import parse_should_retry
from shared.azure_openai.image_api import _handle_event, _Trace
from shared.azure_openai.sse import Event
from shared.ops.cli import summary
from shared.ops.reporting import RequestHistory, build_report, format_report, format_verdict
from shared.policy.outcomes import Category, judge
from shared.policy.planner import GiveUp, Planner, Send, Situation
from shared.records.attempts import AttemptRecord, ErrorInfo, Outcome, epoch_s
from shared.records.documents import ErrorKind, Status, error_doc

RESULTS = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": True, "severity": "high"},
    "violence": {"filtered": False, "severity": "safe"},
    "jailbreak": {"filtered": False, "detected": False},
}
AZURE = {
    "error": {
        "type": "invalid_request_error",
        "code": "content_policy_violation",
        "message": "Your request was rejected as a result of our safety system.",
        "param": None,
        "inner_error": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_results": RESULTS,
            "revised_prompt": "a red fox, revised",
        },
    }
}
LEGACY = {
    "created": 1,
    "error": {"code": "contentFilter", "message": "Your task failed as a result of our safety system.", "status": 400},
}  # fmt: skip
OPENAI = {
    "error": {
        "type": "image_generation_user_error",
        "code": "moderation_blocked",
        "message": "Your request was rejected by the safety system.",
        "param": None,
        "moderation_details": {"moderation_stage": "input", "categories": ["sexual"]},
    }
}
BLOCKED = {
    "error": {
        "code": "Forbidden",
        "message": "Your resource has been temporarily blocked because we detected behavior that "
        "may violate our content policy. For more details on Azure OpenAI service content policy, "
        "please visit https://aka.ms/aoaicodeofconduct",
    }
}
UNUSUAL = {
    "error": {
        "code": "Forbidden",
        "message": "Your resource has been temporarily blocked because we detected unusual behavior.",
    }
}
BAD_KEY = {"error": {"code": "401", "message": "Access denied due to invalid subscription key."}}


def body(status: int, data: Any) -> tuple[Outcome, ErrorInfo]:
    info = errors.from_body(status, data, "")
    return errors.status_outcome(status, info), info


# --- bodies --------------------------------------------------------------------------------------


def test_azure_content_policy_violation_keeps_the_whole_verdict() -> None:
    outcome, info = body(400, AZURE)
    assert outcome is Outcome.CONTENT_FILTER
    assert (info.type, info.code) == ("invalid_request_error", "content_policy_violation")
    assert info.content_filter == {
        "shape": "azure",
        "categories": RESULTS,
        "filtered": ["sexual"],
        "revised_prompt": "a red fox, revised",
        "inner_code": "ResponsibleAIPolicyViolation",
    }


def test_the_chat_apis_innererror_spelling_is_read_too() -> None:
    error = dict(AZURE["error"])
    error["innererror"] = error.pop("inner_error")
    outcome, info = body(400, {"error": error})
    assert outcome is Outcome.CONTENT_FILTER
    assert info.content_filter is not None
    assert info.content_filter["filtered"] == ["sexual"]
    assert info.content_filter["revised_prompt"] == "a red fox, revised"


def test_only_the_inner_code_marks_a_content_filter() -> None:
    error = {
        "code": "BadRequest",
        "message": "m",
        "inner_error": {"code": "ResponsibleAIPolicyViolation"},
    }
    outcome, info = body(400, {"error": error})
    assert outcome is Outcome.CONTENT_FILTER
    assert info.content_filter == {"shape": "azure", "inner_code": "ResponsibleAIPolicyViolation"}


def test_the_legacy_content_filter_code_is_a_content_filter_not_an_invalid_request() -> None:
    outcome, info = body(400, LEGACY)
    assert outcome is Outcome.CONTENT_FILTER
    assert info.code == "contentFilter"
    assert info.content_filter == {"shape": "azure_legacy"}


def test_openai_moderation_blocked_keeps_its_moderation_details() -> None:
    outcome, info = body(400, OPENAI)
    assert outcome is Outcome.CONTENT_FILTER
    assert info.content_filter == {
        "shape": "openai",
        "moderation_details": {"moderation_stage": "input", "categories": ["sexual"]},
    }


def test_a_403_blocking_the_resource_for_content_policy_is_a_content_filter() -> None:
    outcome, info = body(403, BLOCKED)
    assert outcome is Outcome.CONTENT_FILTER
    assert info.content_filter == {"shape": "resource_blocked", "reason": "content_policy"}


@pytest.mark.parametrize("data", [UNUSUAL, BAD_KEY, {"error": {"code": "403"}}])
def test_other_403s_and_401s_stay_auth_errors(data: dict[str, Any]) -> None:
    for status in (401, 403):
        outcome, info = body(status, data)
        assert outcome is Outcome.AUTH_ERROR
        assert info.content_filter is None


def test_an_ordinary_400_is_an_invalid_request_without_a_verdict() -> None:
    data = {
        "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "bad size"}
    }
    outcome, info = body(400, data)
    assert outcome is Outcome.INVALID_REQUEST
    assert info.content_filter is None and info.to_json() == {
        "type": "invalid_request_error",
        "code": "invalid_value",
        "message": "bad size",
    }


@pytest.mark.parametrize(
    "data",
    [
        {"error": {"code": {"nested": 1}, "message": ["x"], "inner_error": "text"}},
        {"error": {"code": "content_policy_violation", "inner_error": {"content_filter_results": [1]}}},
        {"error": {"code": "moderation_blocked", "moderation_details": "not an object"}},
        {"error": "a string"},
        ["a", "list"],
    ],
)  # fmt: skip
def test_malformed_error_bodies_are_recorded_not_raised(data: Any) -> None:
    outcome, info = body(400, data)
    assert outcome in (Outcome.CONTENT_FILTER, Outcome.INVALID_REQUEST)
    assert isinstance(info.message, str) and info.message
    json.dumps(info.to_json())  # whatever came in, the record stays JSON


def test_a_body_that_is_not_json_keeps_its_text() -> None:
    info = errors.from_body(502, None, "  <html>Bad gateway</html> ")
    assert info == ErrorInfo(None, None, "<html>Bad gateway</html>")
    assert errors.from_body(502, None, "").message == "HTTP 502"


# --- stream error events -------------------------------------------------------------------------


def _trace() -> _Trace:
    return _Trace(1, 0, "pool-a", "2026-05-07T13:46:12.190Z", 0.0, 1, lambda: 0.0)


@pytest.mark.parametrize(
    ("payload", "shape"),
    [
        ({"type": "error", "error": AZURE["error"]}, "azure"),
        ({"type": "error", "error": LEGACY["error"]}, "azure_legacy"),
        ({"type": "error", "error": OPENAI["error"]}, "openai"),
        ({"type": "error", **OPENAI["error"], "sequence_number": 3}, "openai"),  # flat
    ],
)
def test_content_filter_error_events_keep_the_verdict(payload: dict[str, Any], shape: str) -> None:
    result = _handle_event(Event(event="error", data=json.dumps(payload)), _trace(), "png", None)
    assert result is not None and result.record.outcome is Outcome.CONTENT_FILTER
    error = result.record.error
    assert error is not None and error.content_filter is not None
    assert error.content_filter["shape"] == shape
    assert error.type != "error"  # a flat event's own "type" is not the error's type


# --- records -------------------------------------------------------------------------------------


def _record(outcome: Outcome, status: int | None, **changes: Any) -> AttemptRecord:
    return replace(
        AttemptRecord(
            attempt=1, image_index=0, deployment="pool-a", started_at="2026-05-07T13:46:12.190Z",
            elapsed_s=1.0, first_event_s=None, http_status=status, apim_request_id="apim-1",
            x_request_id=None, partial_images_sent=1, partials_received=0, outcome=outcome,
            headers_s=0.5,
        ),
        **changes,
    )  # fmt: skip


def test_records_round_trip_the_verdict_and_the_header_and_read_old_records() -> None:
    _, info = body(400, AZURE)
    record = _record(Outcome.CONTENT_FILTER, 400, error=info, should_retry=False)
    data = json.loads(json.dumps(record.to_json()))
    assert data["error"]["content_filter"]["filtered"] == ["sexual"]
    assert data["should_retry"] is False
    assert AttemptRecord.from_json(data) == record
    # A record written before either field existed reads as "none said".
    del data["should_retry"], data["error"]["content_filter"]
    old = AttemptRecord.from_json(data)
    assert old.should_retry is None and old.error is not None and old.error.content_filter is None
    assert "content_filter" not in old.error.to_json()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"x-should-retry": "true"}, True), ({"X-Should-Retry": "false"}, False),
     ({"x-should-retry": "TRUE"}, None), ({"x-should-retry": "1"}, None), ({}, None)],
)  # fmt: skip
def test_x_should_retry_is_read_as_openai_python_reads_it(
    headers: dict[str, str], expected: bool | None
) -> None:
    assert parse_should_retry(headers) is expected


# --- the outcome table and the planner -----------------------------------------------------------


def test_a_403_content_block_is_a_refusal_not_a_configuration_error() -> None:
    verdict = judge(_record(Outcome.CONTENT_FILTER, 403))
    assert verdict.category is Category.PERMANENT
    assert not verdict.billed  # a 403 never reached the model
    assert judge(_record(Outcome.AUTH_ERROR, 403)).category is Category.CONFIGURATION


@pytest.mark.parametrize(
    ("outcome", "status", "should_retry", "category", "billed"),
    [
        (Outcome.SERVER_ERROR, 500, False, Category.FINAL, True),
        (Outcome.SERVER_ERROR, 503, None, Category.RETRYABLE, True),
        (Outcome.RATE_LIMITED, 429, False, Category.FINAL, False),
        (Outcome.GATEWAY_TIMEOUT, 408, False, Category.FINAL, True),
        (Outcome.HTTP_ERROR, 409, True, Category.RETRYABLE, True),
        (Outcome.HTTP_ERROR, 409, None, Category.PERMANENT, True),
        (Outcome.INVALID_REQUEST, 400, True, Category.RETRYABLE, True),
        (Outcome.CONTENT_FILTER, 403, True, Category.RETRYABLE, True),  # billed: the cap bounds it
        (Outcome.AUTH_ERROR, 401, True, Category.CONFIGURATION, False),
        (Outcome.AUTH_ERROR, 401, False, Category.CONFIGURATION, False),
        # On a 200 stream the header says nothing (openai-python reads it on errors only).
        (Outcome.SERVER_ERROR, 200, False, Category.RETRYABLE, True),
        (Outcome.SUCCEEDED, 200, False, Category.SUCCESS, True),
    ],
)  # fmt: skip
def test_the_outcome_table_obeys_x_should_retry(
    outcome: Outcome, status: int, should_retry: bool | None, category: Category, billed: bool
) -> None:
    verdict = judge(_record(outcome, status, should_retry=should_retry))
    assert (verdict.category, verdict.billed) == (category, billed)


def _situation(*past: AttemptRecord) -> Situation:
    from shared.policy.planner import DeploymentView

    start = epoch_s(past[0].started_at)
    return Situation(
        history=past, deployments=(DeploymentView("pool-a"),), now=start + 100.0,
        deadline=start + 86400.0, delivery_started=start, budget_left_s=900.0,
    )  # fmt: skip


def test_the_planner_gives_up_when_the_service_says_not_to_retry() -> None:
    step = Planner().next_step(_situation(_record(Outcome.SERVER_ERROR, 500, should_retry=False)))
    assert isinstance(step, GiveUp)
    assert step.kind is ErrorKind.RETRIES_EXHAUSTED
    assert "x-should-retry: false" in step.message and "apim-1" in step.message
    # Without the header a 500 is retried.
    assert isinstance(Planner().next_step(_situation(_record(Outcome.SERVER_ERROR, 500))), Send)


def test_the_planner_retries_a_409_the_service_says_to_retry() -> None:
    refused = _record(Outcome.HTTP_ERROR, 409)
    assert isinstance(Planner().next_step(_situation(refused)), GiveUp)
    assert isinstance(Planner().next_step(_situation(replace(refused, should_retry=True))), Send)


@pytest.mark.parametrize("data", [AZURE, LEGACY, OPENAI])
def test_a_content_filter_ends_as_content_filter_after_one_call(data: dict[str, Any]) -> None:
    outcome, info = body(400, data)
    step = Planner().next_step(_situation(_record(outcome, 400, error=info)))
    assert isinstance(step, GiveUp) and step.kind is ErrorKind.CONTENT_FILTER


def test_a_403_content_block_ends_as_content_filter_after_one_call() -> None:
    outcome, info = body(403, BLOCKED)
    step = Planner().next_step(_situation(_record(outcome, 403, error=info)))
    assert isinstance(step, GiveUp) and step.kind is ErrorKind.CONTENT_FILTER


# --- error.json, status and report ---------------------------------------------------------------


def _error_json(verdict: dict[str, Any] | None) -> dict[str, Any]:
    return error_doc(
        "r1", status=Status.FAILED, kind=ErrorKind.CONTENT_FILTER, message="refused",
        created_at="2026-05-07T13:46:12.190Z", completed_at="2026-05-07T13:46:13.190Z",
        content_filter=verdict,
    )  # fmt: skip


def test_error_json_carries_the_verdict_only_when_there_is_one() -> None:
    _, info = body(400, AZURE)
    assert _error_json(info.content_filter)["error"]["content_filter"] == info.content_filter
    assert "content_filter" not in _error_json(None)["error"]


@pytest.mark.parametrize(
    ("data", "status", "line"),
    [
        (AZURE, 400, "azure: sexual filtered (high); revised prompt 'a red fox, revised'"),
        (LEGACY, 400, "azure_legacy: no verdict in the answer (contentFilter)"),
        (OPENAI, 400, "openai: moderation input: categories sexual"),
        (BLOCKED, 403, "resource_blocked: the resource is temporarily blocked for content policy"),
    ],
)
def test_status_and_report_show_the_verdict(data: dict[str, Any], status: int, line: str) -> None:
    _, info = body(status, data)
    assert info.content_filter is not None
    assert format_verdict(info.content_filter) == line
    doc = _error_json(info.content_filter)
    assert f"  content filter: {line}" in summary(doc).splitlines()
    from datetime import UTC, datetime

    report = build_report(
        [RequestHistory("r1", doc)],
        since=datetime(2026, 5, 7, tzinfo=UTC),
        until=datetime(2026, 5, 8, tzinfo=UTC),
        api_version="2025-04-01-preview",
    )
    assert report.failed_requests[0].content_filter == info.content_filter
    assert f"  content filter: {line}" in format_report(report).splitlines()
