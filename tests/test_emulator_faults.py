"""Scripted outcomes and random faults over real HTTP: every outcome of POST /_emulator/script,
matching and ordering, the ticket's error frames, and runtime option changes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from emulator_calls import edit, post

SMALL = {"prompt": "a pear", "size": "1024x1024", "quality": "low", "stream": True}
SERVER_ERROR = {
    "type": "server_error",
    "code": None,
    "message": "An error occurred while processing the request.",
    "param": None,
}
EDIT_ERROR = {
    "type": "image_generation_server_error",
    "code": "image_generation_failed",
    "message": "Image generation failed",
    "param": None,
}


def sse_events(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n"):
        lines = block.strip().split("\n")
        if lines == [""]:
            continue
        name = next((ln[6:].strip() for ln in lines if ln.startswith("event:")), None)
        data = "\n".join(ln[5:].strip() for ln in lines if ln.startswith("data:"))
        events.append((name, json.loads(data)))
    return events


def iter_events(response: requests.Response) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """Events as they arrive, so a test can act between them."""
    block: list[str] = []
    for line in response.iter_lines(decode_unicode=True):
        if line:
            block.append(line)
            continue
        if block:
            yield sse_events("\n".join(block))[0]
            block = []


def test_server_error_after_a_partial_is_the_tickets_frame(emulator: Any) -> None:
    emulator.script({"outcome": "server_error", "after_partials": 1})
    r = post(emulator, SMALL | {"partial_images": 2})
    assert r.status_code == 200
    events = sse_events(r.text)
    assert [n for n, _ in events] == ["image_generation.partial_image", "error"]
    assert events[1][1] == {"type": "error", "error": SERVER_ERROR, "sequence_number": 1}
    [record] = emulator.requests_log()
    assert (record["status"], record["outcome"], record["partials_sent"]) == (
        200,
        "server_error",
        1,
    )
    assert record["scripted"] == {"outcome": "server_error", "after_partials": 1}


def test_after_partials_beyond_the_request_fires_where_completed_was_due(emulator: Any) -> None:
    emulator.script({"outcome": "server_error", "after_partials": 3})
    started = time.monotonic()
    r = post(emulator, SMALL | {"partial_images": 1})
    events = sse_events(r.text)
    assert [n for n, _ in events] == ["image_generation.partial_image", "error"]
    assert events[-1][1]["sequence_number"] == 1
    assert time.monotonic() - started >= 22 * emulator.time_scale  # the completed event's time


def test_non_streaming_server_error_is_500_json(emulator: Any) -> None:
    emulator.script({"outcome": "server_error"})
    r = post(emulator, {"prompt": "x", "size": "1024x1024", "quality": "low"})
    assert r.status_code == 500
    assert r.json() == {"error": SERVER_ERROR}


def test_edits_error_is_the_specific_variant(emulator: Any) -> None:
    emulator.script({"outcome": "server_error", "after_partials": 0})
    r = edit(emulator, {"prompt": "x", "size": "1024x1024", "quality": "low", "stream": "true"})
    [(name, data)] = sse_events(r.text)
    assert name == "error"
    assert data == {"type": "error", "error": EDIT_ERROR, "sequence_number": 0}


def test_http_error_answers_that_status(emulator: Any) -> None:
    emulator.script({"outcome": "http_error", "status": 503})
    r = post(emulator, SMALL)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "ServiceUnavailable"
    assert r.headers["apim-request-id"]
    assert emulator.requests_log()[0]["outcome"] == "http_error"


def test_rate_limited_headers_are_in_scaled_time(sliding_emulator: Any) -> None:
    emulator = sliding_emulator
    emulator.script({"outcome": "rate_limited", "retry_after_ms": 1500})
    r = post(emulator, SMALL)
    assert r.status_code == 429
    assert r.headers["retry-after-ms"] == str(round(1500 * emulator.time_scale))
    assert r.headers["retry-after"] == "1"
    assert r.headers["x-ratelimit-limit-requests"] == "10"
    assert "x-ratelimit-remaining-requests" in r.headers
    assert "x-ratelimit-reset-requests" in r.headers
    assert "exceeded call rate limit" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "429"


def test_scripted_gateway_timeout_even_for_a_small_image(emulator: Any) -> None:
    emulator.script({"outcome": "gateway_timeout"})
    started = time.monotonic()
    r = post(emulator, SMALL | {"partial_images": 3})
    assert r.status_code == 408 and r.json()["error"]["code"] == "Timeout"
    assert time.monotonic() - started >= 60 * emulator.time_scale


def test_drop_cuts_the_chunked_stream_inside_an_event(emulator: Any) -> None:
    emulator.script({"outcome": "drop", "after_partials": 1})
    seen = []
    with post(emulator, SMALL | {"partial_images": 2}, stream=True) as r:
        assert r.status_code == 200
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for event in iter_events(r):
                seen.append(event[0])
    assert seen == ["image_generation.partial_image"]
    [record] = emulator.requests_log()
    assert record["outcome"] == "dropped"


def test_drop_of_a_json_answer_leaves_it_incomplete(emulator: Any) -> None:
    emulator.script({"outcome": "drop"})
    with pytest.raises(requests.exceptions.RequestException):
        post(emulator, {"prompt": "x", "size": "1024x1024", "quality": "low"}).json()


def test_content_filter(emulator: Any) -> None:
    emulator.script({"outcome": "content_filter"})
    r = post(emulator, SMALL)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "content_policy_violation"
    assert error["inner_error"]["code"] == "ResponsibleAIPolicyViolation"


def test_slow_needs_partials_to_outlive_the_gateway(emulator: Any) -> None:
    emulator.script({"outcome": "slow", "duration_s": 300}, {"outcome": "slow", "duration_s": 300})
    quiet = post(emulator, SMALL | {"partial_images": 0})
    assert quiet.status_code == 408
    started = time.monotonic()
    alive = post(emulator, SMALL | {"partial_images": 1})
    assert alive.status_code == 200
    assert sse_events(alive.text)[-1][0] == "image_generation.completed"
    assert time.monotonic() - started >= 300 * emulator.time_scale
    assert [r["outcome"] for r in emulator.requests_log()] == ["gateway_timeout", "succeeded"]


def test_stall_keeps_the_connection_open_and_silent(emulator: Any) -> None:
    emulator.script({"outcome": "stall", "after_partials": 1, "seconds": 400})
    read_timeout = 100 * emulator.time_scale  # far below the 400 s stall
    seen = []
    response = post(emulator, SMALL | {"partial_images": 2}, stream=True, timeout=(5, read_timeout))
    with response, pytest.raises(requests.exceptions.ConnectionError):
        for event in iter_events(response):
            seen.append(event[0])
    assert seen == ["image_generation.partial_image"]


def test_stall_then_the_stream_carries_on(emulator: Any) -> None:
    emulator.script({"outcome": "stall", "after_partials": 1, "seconds": 50})
    arrivals = []
    with post(emulator, SMALL | {"partial_images": 2}, stream=True) as r:
        for name, _ in iter_events(r):
            arrivals.append((name, time.monotonic()))
    names = [n for n, _ in arrivals]
    assert names == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert arrivals[1][1] - arrivals[0][1] >= 50 * emulator.time_scale


def test_script_matches_prompt_and_appends_in_order(sliding_emulator: Any) -> None:
    emulator = sliding_emulator
    emulator.script({"outcome": "http_error", "status": 502, "prompt_contains": "zebra"})
    emulator.script(
        {"outcome": "http_error", "status": 500}, {"outcome": "http_error", "status": 503}
    )
    pending = requests.get(emulator.url("/_emulator/script"), timeout=5).json()["pending"]
    assert [p["status"] for p in pending] == [502, 500, 503]
    assert post(emulator, {"prompt": "an apple", "size": "1024x640"}).status_code == 500
    assert post(emulator, {"prompt": "a zebra", "size": "1024x640"}).status_code == 502
    assert post(emulator, {"prompt": "a zebra", "size": "1024x640"}).status_code == 503
    assert (
        post(emulator, {"prompt": "a zebra", "size": "1024x640", "quality": "low"}).status_code
        == 200
    )


def test_bad_script_is_refused_whole(emulator: Any) -> None:
    r = requests.post(
        emulator.url("/_emulator/script"),
        json=[{"outcome": "ok"}, {"outcome": "stall", "seconds": -1}],
        timeout=5,
    )
    assert r.status_code == 400 and "script[1]" in r.json()["error"]["message"]
    assert requests.get(emulator.url("/_emulator/script"), timeout=5).json()["pending"] == []


def test_runtime_config_swap_and_reset_restores(emulator: Any) -> None:
    r = requests.post(emulator.url("/_emulator/config"), json={"fault_rate": 1.0}, timeout=5)
    assert r.status_code == 200 and r.json()["deployments"][0]["fault_rate"] == 1.0
    bad = requests.post(emulator.url("/_emulator/config"), json={"rpm": 0}, timeout=5)
    assert bad.status_code == 400 and "--rpm" in bad.json()["error"]["message"]
    faulty = post(emulator, {"prompt": "x", "size": "2048x2048", "quality": "low", "stream": True, "partial_images": 1})  # fmt: skip
    assert sse_events(faulty.text)[-1][0] == "error"
    emulator.reset()
    config = requests.get(emulator.url("/_emulator/config"), timeout=5).json()
    assert config["fault_rate"] == 0.0 and "api_key" not in config


# --- random faults on a deployment whose fault rate is 1 -------------------------------------------


@pytest.fixture(scope="module")
def faulty(emulator_factory: Any) -> Any:
    extra = ("--deployment", "calm", "--deployment", "flaky:fault_rate=1")
    return emulator_factory(extra_args=extra)


LARGE = {"prompt": "a storm", "size": "2048x2048", "quality": "low", "stream": True}


def test_random_fault_after_the_first_or_second_partial(faulty: Any) -> None:
    faulty.reset()
    for _ in range(3):
        events = sse_events(post(faulty, LARGE | {"partial_images": 3}, "flaky").text)
        partials = [n for n, _ in events if n == "image_generation.partial_image"]
        name, data = events[-1]
        assert name == "error" and data["error"] == SERVER_ERROR
        assert len(partials) in (1, 2)
        assert data["sequence_number"] == len(partials)
    assert all(r["scripted"]["random_fault"] for r in faulty.requests_log())


def test_random_fault_with_no_partials_comes_before_any_event(faulty: Any) -> None:
    faulty.reset()
    events = sse_events(post(faulty, LARGE | {"partial_images": 0}, "flaky").text)
    assert [(n, d["sequence_number"]) for n, d in events] == [("error", 0)]


def test_random_faults_spare_small_images_calm_deployments_and_scripts(faulty: Any) -> None:
    faulty.reset()
    small = post(faulty, LARGE | {"size": "1536x1024", "partial_images": 1}, "flaky")
    assert sse_events(small.text)[-1][0] == "image_generation.completed"
    calm = post(faulty, LARGE | {"partial_images": 1}, "calm")
    assert sse_events(calm.text)[-1][0] == "image_generation.completed"
    faulty.script({"outcome": "ok"})
    scripted = post(faulty, LARGE | {"partial_images": 1}, "flaky")
    assert sse_events(scripted.text)[-1][0] == "image_generation.completed"


def test_random_fault_on_edits_is_the_specific_variant(faulty: Any) -> None:
    faulty.reset()
    fields = {"prompt": "x", "size": "2048x2048", "quality": "low", "stream": "true", "partial_images": "1"}  # fmt: skip
    events = sse_events(edit(faulty, fields, "flaky").text)
    assert events[-1][1]["error"] == EDIT_ERROR
