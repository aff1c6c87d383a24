"""The support report on plain dicts: grouping, counts, time ranges, apim-request-ids, text."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.ops.reporting import (
    RequestHistory,
    build_report,
    format_report,
    governing_record,
    request_folders,
)
from shared.records.attempts import AttemptRecord, ErrorInfo, Outcome

SINCE = datetime(2026, 5, 6, 14, 0, tzinfo=UTC)
UNTIL = datetime(2026, 5, 7, 14, 0, tzinfo=UTC)


def call(
    attempt: int,
    outcome: str,
    started_at: str,
    *,
    apim: str | None = None,
    deployment: str = "gpt-image-2-1",
    image_index: int = 0,
    http_status: int | None = 200,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An attempt as the pipeline stores it (AttemptRecord.to_json)."""
    return AttemptRecord(
        attempt=attempt,
        image_index=image_index,
        deployment=deployment,
        started_at=started_at,
        elapsed_s=12.5,
        first_event_s=1.0,
        http_status=http_status,
        apim_request_id=apim,
        x_request_id=None,
        partial_images_sent=1,
        partials_received=1,
        outcome=Outcome(outcome),
        error=ErrorInfo.from_json(error) if error else None,
    ).to_json()


SERVER_ERROR = {
    "type": "server_error",
    "code": None,
    "message": "An error occurred while processing the request.",
}
TIMEOUT = {"type": None, "code": "Timeout", "message": "The operation was timeout."}


def report_of(*histories: RequestHistory, **kwargs: Any) -> Any:
    return build_report(
        histories, since=SINCE, until=UNTIL, api_version="2025-04-01-preview", **kwargs
    )


@pytest.fixture
def histories() -> list[RequestHistory]:
    recovered = {  # manifest.json: one crash, then success
        "status": "succeeded",
        "attempts": [
            call(1, "server_error", "2026-05-07T13:30:05.000Z", apim="a1", error=SERVER_ERROR),
            call(2, "succeeded", "2026-05-07T13:31:00.000Z", apim="ok1"),
        ],
    }
    exhausted = {  # error.json: every call failed
        "status": "failed",
        "error": {"kind": "retries_exhausted", "message": "4 attempts failed"},
        "completed_at": "2026-05-07T13:59:00.000Z",
        "attempts": [
            call(1, "server_error", "2026-05-07T13:45:00.000Z", apim="b1", error=SERVER_ERROR),
            call(2, "gateway_timeout", "2026-05-07T13:50:00.000Z", apim="b2", http_status=408,
                 error=TIMEOUT),
            call(3, "server_error", "2026-05-07T13:58:10.000Z", apim="b3", error=SERVER_ERROR),
            call(4, "connect_error", "2026-05-07T13:58:50.000Z", http_status=None,
                 deployment="gpt-image-2-b"),
        ],
    }  # fmt: skip
    running = {  # status.json of a request still at work
        "status": "retrying",
        "attempts": [
            call(1, "rate_limited", "2026-05-07T12:00:00.000Z", apim="c1", http_status=429),
        ],
    }
    return [
        RequestHistory("req-ok", recovered),
        RequestHistory("req-dead", exhausted),
        RequestHistory("req-busy", running),
    ]


def test_groups_by_deployment_outcome_and_code(histories: list[RequestHistory]) -> None:
    report = report_of(*histories)
    keys = [(g.deployment, g.outcome, g.code, g.attempts) for g in report.groups]
    assert keys == [
        ("gpt-image-2-1", "server_error", None, 3),
        ("gpt-image-2-1", "gateway_timeout", "Timeout", 1),
        ("gpt-image-2-1", "rate_limited", None, 1),
        ("gpt-image-2-b", "connect_error", None, 1),
    ]
    assert (report.requests, report.attempts, report.failed_attempts) == (3, 7, 6)
    assert [(d.name, d.attempts, d.failed) for d in report.deployments] == [
        ("gpt-image-2-1", 6, 5),
        ("gpt-image-2-b", 1, 1),
    ]


def test_server_error_group_has_every_apim_id_in_time_order_and_its_range(
    histories: list[RequestHistory],
) -> None:
    group = report_of(*histories).groups[0]
    assert group.apim_request_ids == ("a1", "b1", "b3")
    assert (group.first_at, group.last_at) == (
        "2026-05-07T13:30:05.000Z",
        "2026-05-07T13:58:10.000Z",
    )
    assert group.requests == 2
    assert group.recovered == 1  # req-ok's crash was followed by a success of the same image
    assert group.http_statuses == (200,)
    assert group.example_message == "An error occurred while processing the request."
    assert group.request_ids == ("req-ok", "req-dead")


def test_calls_without_an_answer_are_counted_apart(histories: list[RequestHistory]) -> None:
    (connect,) = [g for g in report_of(*histories).groups if g.outcome == "connect_error"]
    assert connect.apim_request_ids == ()
    assert connect.without_apim_request_id == 1


def test_recovery_is_per_image() -> None:
    """A success of image 1 does not make image 0's failure 'recovered'."""
    record = {
        "status": "failed",
        "attempts": [
            call(1, "server_error", "2026-05-07T13:00:00Z", apim="x", error=SERVER_ERROR),
            call(2, "succeeded", "2026-05-07T13:01:00Z", apim="y", image_index=1),
        ],
    }
    (group,) = report_of(RequestHistory("r", record)).groups
    assert group.recovered == 0


def test_failed_requests_come_from_terminal_error_records(histories: list[RequestHistory]) -> None:
    (failed,) = report_of(*histories).failed_requests
    assert (failed.id, failed.status, failed.kind) == ("req-dead", "failed", "retries_exhausted")
    # status.json says `failed` too, but carries no error object: it is not counted twice.
    echo = RequestHistory("req-echo", {"status": "failed", "detail": "x", "attempts": []})
    assert [f.id for f in report_of(echo).failed_requests] == []


def test_unreadable_attempt_entries_are_skipped_not_fatal() -> None:
    record = {
        "attempts": [{"attempt": "?"}, call(1, "truncated", "2026-05-07T13:00:00Z", apim="t")]
    }
    (group,) = report_of(RequestHistory("r", record)).groups
    assert (group.outcome, group.code, group.apim_request_ids) == ("truncated", None, ("t",))


def test_text_reads_like_the_support_ticket(histories: list[RequestHistory]) -> None:
    text = format_report(report_of(*histories))
    assert "- Region: unknown (fill in)" in text
    assert (
        "- Deployment names: gpt-image-2-1 (6 calls, 5 failed), gpt-image-2-b (1 call, 1 failed)"
        in text
    )
    assert "- API version: 2025-04-01-preview" in text
    assert (
        "- server_error (code: none, HTTP 200) — 3 attempts between 2026-05-07T13:30Z and 13:58Z "
        "in 2 requests; 1 succeeded on retry; apim-request-id: a1, b1, b3"
    ) in text
    assert "- gateway_timeout (code: Timeout, HTTP 408) — 1 attempt at 2026-05-07T13:50Z" in text
    assert "1 without apim-request-id (no response)" in text
    assert "  message: An error occurred while processing the request." in text
    assert "- req-dead: failed (retries_exhausted) at 2026-05-07T13:59Z: 4 attempts failed" in text
    assert text.index("Deployment gpt-image-2-1") < text.index("Deployment gpt-image-2-b")


def test_region_and_ranges_across_days() -> None:
    record = {
        "attempts": [
            call(1, "server_error", "2026-05-06T23:50:00Z", apim="p", error=SERVER_ERROR),
            call(2, "server_error", "2026-05-07T00:10:00Z", apim="q", error=SERVER_ERROR),
        ]
    }
    text = format_report(report_of(RequestHistory("r", record), region="Sweden Central"))
    assert "- Region: Sweden Central" in text
    assert "between 2026-05-06T23:50Z and 2026-05-07T00:10Z" in text


def test_no_failures_says_so() -> None:
    record = {"attempts": [call(1, "succeeded", "2026-05-07T13:00:00Z", apim="ok")]}
    report = report_of(RequestHistory("r", record))
    assert report.groups == ()
    assert "No failed calls in this period." in format_report(report)


def test_json_form_is_plain_data(histories: list[RequestHistory]) -> None:
    data = json.loads(json.dumps(report_of(*histories).to_json()))
    assert data["groups"][0]["apim_request_ids"] == ["a1", "b1", "b3"]
    assert data["since"] == "2026-05-06T14:00:00Z"
    assert data["failed_requests"][0]["kind"] == "retries_exhausted"


def test_a_terminal_record_supersedes_status_json() -> None:
    assert governing_record({"status.json", "error.json"}) == "error.json"
    assert governing_record({"status.json", "error.json", "manifest.json"}) == "manifest.json"
    assert governing_record({"status.json"}) == "status.json"
    with pytest.raises(ValueError):
        governing_record({"0.png"})


def test_request_folders_come_from_record_names_only_newest_first() -> None:
    t = [datetime(2026, 5, 7, 13, m, tzinfo=UTC) for m in range(6)]
    listing = [
        ("old/status.json", t[0]),
        ("old/error.json", t[1]),
        ("new/status.json", t[2]),
        ("new/0.png", t[5]),  # images do not move a folder's time, nor make one
        ("new/partials/0-0.png", t[5]),
        ("stray.json", t[5]),
        ("only-images/0.png", t[5]),
        ("deep/status.json/x", t[5]),
        ("mid/manifest.json", t[1]),
        ("mid/status.json", t[3]),
    ]
    folders = request_folders(listing)
    assert [(f.id, f.governing, f.updated) for f in folders] == [
        ("mid", "manifest.json", t[3]),
        ("new", "status.json", t[2]),
        ("old", "error.json", t[1]),
    ]
