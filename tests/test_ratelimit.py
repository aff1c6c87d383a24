"""Unit tests of shared.policy.ratelimit with a hand-driven clock."""

from __future__ import annotations

import threading

import pytest

from shared.azure_openai.headers import parse_reset_duration
from shared.policy.ratelimit import Admission, RateLimiter, SlidingWindow


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fill(window: SlidingWindow, *moments: float) -> SlidingWindow:
    for moment in moments:
        window, admission = window.admit(moment)
        assert admission.allowed
    return window


def test_admits_up_to_the_limit_and_counts_down() -> None:
    window = SlidingWindow(limit=3)
    remaining = []
    for moment in (0.0, 1.0, 2.0):
        window, admission = window.admit(moment)
        remaining.append(admission.remaining)
        assert admission.allowed and admission.wait_s == 0.0
    assert remaining == [2, 1, 0]
    assert window.sent == (0.0, 1.0, 2.0)


def test_refuses_when_full_and_says_when_the_oldest_send_leaves() -> None:
    window = fill(SlidingWindow(limit=3), 0.0, 10.0, 20.0)
    after, admission = window.admit(30.0)
    assert admission == Admission(allowed=False, wait_s=30.0, remaining=0)
    assert after.sent == window.sent  # a refusal records nothing


def test_a_send_leaves_the_window_exactly_window_s_later() -> None:
    window = fill(SlidingWindow(limit=2, window_s=60.0), 0.0, 5.0)
    _, early = window.admit(59.999)
    assert not early.allowed
    assert early.wait_s == pytest.approx(0.001)
    after, admission = window.admit(60.0)
    assert admission.allowed and admission.remaining == 0
    assert after.sent == (5.0, 60.0)


def test_remaining_reflects_expiry() -> None:
    window = fill(SlidingWindow(limit=5, window_s=10.0), 0.0, 4.0, 8.0)
    assert window.remaining(9.0) == 2
    assert window.remaining(14.5) == 4
    assert window.remaining(100.0) == 5


def test_invalid_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="limit"):
        SlidingWindow(limit=0)
    with pytest.raises(ValueError, match="window_s"):
        SlidingWindow(limit=1, window_s=0.0)


def test_server_reporting_fewer_remaining_pads_the_window_until_its_reset() -> None:
    window = fill(SlidingWindow(limit=10, window_s=60.0), 100.0)  # we think 9 remain
    padded = window.observe_headers(100.0, remaining=2, reset_s=12.0)
    assert padded.remaining(100.0) == 2
    padded = fill(padded, 100.0, 100.0)
    _, admission = padded.admit(101.0)
    assert not admission.allowed
    assert admission.wait_s == pytest.approx(11.0)  # the server's window resets at 112
    assert padded.admit(112.0)[1].allowed


def test_padding_without_reset_holds_a_full_window() -> None:
    padded = SlidingWindow(limit=4, window_s=60.0).observe_headers(0.0, remaining=0, reset_s=None)
    _, admission = padded.admit(1.0)
    assert not admission.allowed and admission.wait_s == pytest.approx(59.0)


def test_server_reporting_more_room_or_nothing_changes_nothing() -> None:
    window = fill(SlidingWindow(limit=3), 0.0, 1.0)
    assert window.observe_headers(2.0, remaining=3, reset_s=5.0).sent == window.sent
    assert window.observe_headers(2.0, remaining=None, reset_s=5.0).sent == window.sent
    assert window.observe_headers(2.0, remaining=0, reset_s=0.0).sent == window.sent


def test_window_is_a_value() -> None:
    window = SlidingWindow(limit=1)
    window.admit(0.0)
    assert window.sent == ()
    with pytest.raises(AttributeError):
        window.limit = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("6s", 6.0),
        ("1m30s", 90.0),
        ("250ms", 0.25),
        ("1h", 3600.0),
        ("0.5s", 0.5),
        ("12.5", 12.5),
        (" 3 ", 3.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("5x", None),
        ("s", None),
        ("-1", None),
        ("1m junk", None),
    ],
)
def test_parse_reset_duration(raw: str | None, seconds: float | None) -> None:
    assert parse_reset_duration(raw) == seconds


def test_limiter_waits_then_admits_with_a_fake_clock() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, window_s=60.0)
    assert [limiter.acquire_wait("a", 2) for _ in range(2)] == [0.0, 0.0]
    clock.advance(20.0)
    wait = limiter.acquire_wait("a", 2)
    assert wait == pytest.approx(40.0)
    clock.advance(wait)
    assert limiter.acquire_wait("a", 2) == 0.0
    snapshot = limiter.snapshot("a")
    assert snapshot is not None and snapshot.sent == (clock.now,)  # both first sends left


def test_limiter_keeps_deployments_apart() -> None:
    limiter = RateLimiter(clock=FakeClock())
    assert limiter.acquire_wait("a", 1) == 0.0
    assert limiter.acquire_wait("a", 1) > 0.0
    assert limiter.acquire_wait("b", 1) == 0.0
    assert limiter.snapshot("c") is None


def test_limiter_follows_a_changed_limit() -> None:
    limiter = RateLimiter(clock=FakeClock())
    assert limiter.acquire_wait("a", 1) == 0.0
    assert limiter.acquire_wait("a", 1) > 0.0
    assert limiter.acquire_wait("a", 2) == 0.0


def test_limiter_observe_after_a_429_holds_back_until_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    limiter.observe("a", 10, remaining=0, reset_s=7.0)
    assert limiter.acquire_wait("a", 10) == pytest.approx(7.0)
    clock.advance(7.0)
    assert limiter.acquire_wait("a", 10) == 0.0


def test_limiter_admits_exactly_the_limit_under_concurrency() -> None:
    limiter = RateLimiter(clock=FakeClock())
    barrier = threading.Barrier(16)
    results: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait(timeout=10)
        for _ in range(25):
            wait = limiter.acquire_wait("shared", 100)
            with lock:
                results.append(wait)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    assert len(results) == 400
    assert results.count(0.0) == 100
    snapshot = limiter.snapshot("shared")
    assert snapshot is not None and len(snapshot.sent) == 100


def test_padding_a_large_limit_is_one_splice_not_quadratic() -> None:
    window = SlidingWindow(limit=100_000, window_s=60.0, sent=(5.0,))
    padded = window.observe_headers(10.0, remaining=0, reset_s=1.0)
    assert len(padded.sent) == 100_000
    assert padded.sent == tuple(sorted(padded.sent))
    # Placeholders sit where they expire when the server's window resets (1 s from now).
    assert padded.sent[-1] == 5.0 and set(padded.sent[:-1]) == {10.0 + 1.0 - 60.0}
