"""The Azure-like `periods` rate model over real HTTP, at a scaled clock.

Timing assertions are lower bounds only: a 429's retry-after must reach the period's end (at least
the period minus what the client measured since the burst began), and a client that waits exactly
that long must be admitted.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

API_VERSION = "2025-04-01-preview"
# The smallest gpt-image-2 size. Its generation takes longer than a period, so a burst is sent
# concurrently, each call a moment after the one before: admission is decided on arrival.
TINY = {"prompt": "a dot", "size": "1024x640", "quality": "low"}
STAGGER_S = 0.02
SCALE = 0.3  # a 10 s period is 3 s of wall time: a burst of ten local calls fits in one


def post(emulator: Any, deployment: str) -> requests.Response:
    path = f"/openai/deployments/{deployment}/images/generations?api-version={API_VERSION}"
    headers = {"api-key": emulator.api_key}
    return requests.post(emulator.url(path), json=TINY, headers=headers, timeout=60)


def configure(emulator: Any, **options: object) -> dict[str, Any]:
    r = requests.post(emulator.url("/_emulator/config"), json=options, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def burst(emulator: Any, deployment: str, count: int) -> tuple[list[requests.Response], float]:
    """`count` calls one after another; also the wall time the first one was sent."""
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = []
        for _ in range(count):
            futures.append(pool.submit(post, emulator, deployment))
            time.sleep(STAGGER_S)  # keeps the arrival order the send order, not a wait for a state
        return [f.result() for f in futures], began


def retry_ms(r: requests.Response) -> int:
    ms = int(r.headers["retry-after-ms"])
    assert int(r.headers["retry-after"]) == max(1, -(-ms // 1000))
    return ms


def assert_counts_to_the_period_end(r: requests.Response, began: float, period_s: float) -> None:
    """The period began no earlier than the burst: the wait is at least what is left of it."""
    left_ms = (period_s - (time.monotonic() - began)) * 1000
    assert left_ms - 1 <= retry_ms(r) <= period_s * 1000 + 1


@pytest.fixture(scope="module")
def azure_like(emulator_factory: Any) -> Any:
    extra = (
        "--rate-model", "periods",
        "--deployment", "a:rpm=10", "--deployment", "b:rpm=10",
        "--deployment", "strict:rpm=10,admit_fraction=0.6",
    )  # fmt: skip
    return emulator_factory(time_scale=SCALE, extra_args=extra)


def test_a_burst_gets_the_period_allowance_and_429s_until_the_next_period(azure_like: Any) -> None:
    azure_like.reset()
    answers, began = burst(azure_like, "a", 10)
    # 10 RPM x 10 s / 60 = 1.67, rounded up (the default): two per period.
    assert [r.status_code for r in answers] == [200, 200] + [429] * 8
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers[:3]] == ["1", "0", "0"]
    for r in answers:
        assert r.headers["x-ratelimit-limit-requests"] == "2"
        assert "x-ratelimit-reset-requests" not in r.headers  # Azure sends no reset header
        assert "x-ratelimit-remaining-tokens" not in r.headers
    period_s = 10 * SCALE
    assert_counts_to_the_period_end(answers[-1], began, period_s)
    assert "retry after" in answers[-1].json()["error"]["message"]
    assert post(azure_like, "b").status_code == 200  # another deployment, its own periods

    # What the last 429 asked for, counted from when it was sent; the 200s of the burst take longer
    # than a period, so by now later periods may have begun: a little into the next one to begin,
    # so the three calls below cannot straddle its end.
    next_period = began + 9 * STAGGER_S + retry_ms(answers[-1]) / 1000
    while next_period < time.monotonic():
        next_period += period_s
    time.sleep(next_period + period_s / 4 - time.monotonic())
    again, _ = burst(azure_like, "a", 3)
    assert [r.status_code for r in again] == [200, 200, 429]
    log = [r for r in azure_like.requests_log() if r["deployment"] == "a"]
    assert [r["outcome"] for r in log] == ["succeeded"] * 2 + ["rate_limited"] * 8 + [
        "succeeded", "succeeded", "rate_limited",
    ]  # fmt: skip
    assert {r["status"] for r in log if r["outcome"] == "rate_limited"} == {429}


def test_admit_fraction_refuses_below_the_nominal_allowance(azure_like: Any) -> None:
    azure_like.reset()
    answers, began = burst(azure_like, "strict", 3)
    # Nominal 2 a period, 60 % of 1.67 admitted: 1. The headers still report the nominal view.
    assert [r.status_code for r in answers] == [200, 429, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["1", "1", "1"]
    assert answers[1].headers["x-ratelimit-limit-requests"] == "2"
    assert_counts_to_the_period_end(answers[-1], began, 10 * SCALE)


def test_admit_fraction_set_at_run_time_and_undone_by_reset(azure_like: Any) -> None:
    azure_like.reset()
    shown = configure(azure_like, rate_admit_fraction=0.6)
    assert shown["rate_admit_fraction"] == 0.6
    fractions = {d["name"]: d["admit_fraction"] for d in shown["deployments"]}
    assert fractions == {"a": 0.6, "b": 0.6, "strict": 0.6}
    answers, _ = burst(azure_like, "a", 2)
    assert [r.status_code for r in answers] == [200, 429]
    bad = requests.post(
        azure_like.url("/_emulator/config"), json={"rate_admit_fraction": 0}, timeout=5
    )
    assert bad.status_code == 400 and "--rate-admit-fraction" in bad.json()["error"]["message"]
    azure_like.reset()  # options changed at run time are undone, and the periods cleared
    assert (
        requests.get(azure_like.url("/_emulator/config"), timeout=5).json()["rate_admit_fraction"]
        == 1.0
    )
    answers, _ = burst(azure_like, "a", 3)
    assert [r.status_code for r in answers] == [200, 200, 429]


def test_the_model_can_be_switched_at_run_time(azure_like: Any) -> None:
    azure_like.reset()
    configure(azure_like, rate_model="sliding")
    answers, _ = burst(azure_like, "a", 11)  # the sliding minute admits all ten at once
    assert [r.status_code for r in answers] == [200] * 10 + [429]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "10"
    assert answers[0].headers["x-ratelimit-reset-requests"]
    azure_like.reset()


def test_one_second_mode(emulator_factory: Any) -> None:
    extra = ("--rate-model", "periods", "--rate-period-s", "1", "--deployment", "c:rpm=120")
    emulator = emulator_factory(time_scale=1.0, extra_args=extra)
    answers, began = burst(emulator, "c", 5)
    # 120 RPM over 1 s periods: two a second.
    assert [r.status_code for r in answers] == [200, 200, 429, 429, 429]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "2"
    assert_counts_to_the_period_end(answers[-1], began, 1.0)
    assert int(answers[-1].headers["retry-after"]) == 1
    time.sleep(retry_ms(answers[-1]) / 1000)
    assert post(emulator, "c").status_code == 200
