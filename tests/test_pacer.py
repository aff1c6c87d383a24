"""Unit tests of shared.policy.pacer: GCRA spacing, burst, 429 pause and slowdown, recovery."""

from __future__ import annotations

import threading

import pytest

from shared.policy.pacer import Pace, PaceKeeper, PacePolicy

T0 = 1_700_000_000.0
TEN = PacePolicy(rpm=10, window_s=60.0, guard=0.0, catch_up=0.0)  # one send per 6 s


def sends(policy: PacePolicy, times: list[float], pace: Pace | None = None) -> list[float]:
    """The wait answered at each of `times` (0.0: sent), taking each send that may go."""
    pace = pace or Pace.start(policy)
    waits = []
    for now in times:
        pace, wait = pace.admit(now, policy)
        waits.append(wait)
    return waits


def test_the_interval_is_the_window_over_the_rpm_with_its_guard() -> None:
    assert TEN.nominal_s == 6.0
    assert PacePolicy(rpm=10).nominal_s == pytest.approx(6.12)
    with pytest.raises(ValueError):
        PacePolicy(rpm=0)
    with pytest.raises(ValueError):
        PacePolicy(rpm=10, burst=0)


def test_sends_are_spaced_evenly_not_counted_per_minute() -> None:
    # Ten at once: one goes, the next may go 6 s later, not "ten this minute".
    assert sends(TEN, [T0] * 3) == [0.0, 6.0, 6.0]
    assert sends(TEN, [T0, T0 + 6.0, T0 + 12.0, T0 + 13.0]) == [0.0, 0.0, 0.0, 5.0]


def test_a_send_a_little_late_keeps_the_schedule_a_long_idle_does_not_bank() -> None:
    policy = PacePolicy(rpm=10, window_s=60.0, guard=0.0, catch_up=0.1)
    pace, _ = Pace.start(policy).admit(T0, policy)  # next slot T0 + 6
    late, wait = pace.admit(T0 + 6.5, policy)  # half a second late: under 0.6 s of catch-up
    assert wait == 0.0 and late.tat == T0 + 12.0  # the next slot keeps its place
    very_late, _ = pace.admit(T0 + 20.0, policy)
    assert very_late.tat == T0 + 26.0  # later than that (or idle): the schedule starts again


def test_catching_up_never_puts_three_sends_in_one_ten_second_period() -> None:
    policy = PacePolicy(rpm=10)  # the product's own: 2 % guard, 10 % catch-up
    pace, sends = Pace.start(policy), []
    now = T0
    for lateness in [0.0, 0.6, 0.0, 0.61, 0.0, 0.3, 0.6, 0.0] * 4:
        now = max(now, pace.tat) + lateness
        pace, wait = pace.admit(now, policy)
        assert wait == 0.0
        sends.append(now)
    assert max(sum(1 for t in sends if s <= t < s + 10.0) for s in sends) <= 2


def test_a_burst_allows_that_many_ahead_of_the_schedule() -> None:
    policy = PacePolicy(rpm=10, window_s=60.0, guard=0.0, burst=3, catch_up=0.0)
    assert sends(policy, [T0] * 4) == [0.0, 0.0, 0.0, 6.0]


def test_an_idle_deployment_does_not_bank_sends() -> None:  # beyond the catch-up (none here)
    pace, _ = Pace.start(TEN).admit(T0, TEN)
    assert sends(TEN, [T0 + 600.0, T0 + 600.0], pace) == [0.0, 6.0]


def test_a_429_pauses_until_its_retry_after_and_gives_its_slot_back() -> None:
    pace, _ = Pace.start(TEN).admit(T0, TEN)  # next slot at T0 + 6
    throttled = pace.throttled(T0 + 1.0, 20.0, TEN)
    assert throttled.paused_until == T0 + 21.0
    assert throttled.wait_s(T0 + 1.0, TEN) == pytest.approx(20.0)
    assert throttled.wait_s(T0 + 21.0, TEN) == 0.0
    # The refused call's slot is returned: without the pause, the next send could go at once.
    unpaused = pace.throttled(T0 + 1.0, None, TEN)
    assert unpaused.wait_s(T0 + 1.0, TEN) == 0.0


def test_429s_slow_the_pace_down_and_sends_bring_it_back_slowly() -> None:
    pace = Pace.start(TEN)
    for _ in range(3):
        pace = pace.throttled(T0, None, TEN)
    assert pace.interval_s == pytest.approx(6.0 * 1.25**3)
    intervals = []
    now = T0
    for _ in range(40):
        pace, wait = pace.admit(now, TEN)
        assert wait == 0.0
        intervals.append(pace.interval_s)
        now += pace.interval_s
    assert intervals == sorted(intervals, reverse=True)  # recovering, never overshooting
    assert intervals[0] > 6.0 * 1.25**2 and intervals[-1] == 6.0


def test_the_slowdown_has_a_floor_rate() -> None:
    pace = Pace.start(TEN)
    for _ in range(100):
        pace = pace.throttled(T0, None, TEN)
    assert pace.interval_s == 6.0 * TEN.slowest


def test_a_stored_pace_is_fitted_to_the_current_settings() -> None:
    stored = Pace(interval_s=1.0, tat=T0)
    assert stored.fitted(TEN).interval_s == 6.0
    assert Pace(interval_s=1e6).fitted(TEN).interval_s == 48.0


def test_keeper_paces_each_deployment_apart_with_a_fake_clock() -> None:  # (default policy)
    now = [T0]
    keeper = PaceKeeper(window_s=60.0, clock=lambda: now[0])
    assert keeper.acquire_wait("a", 10) == 0.0
    assert keeper.acquire_wait("a", 10) == pytest.approx(6.12)
    assert keeper.acquire_wait("b", 10) == 0.0
    keeper.throttled("b", 10, 30.0)
    now[0] += 7.0
    assert keeper.acquire_wait("a", 10) == 0.0
    assert keeper.acquire_wait("b", 10) == pytest.approx(23.0)


def test_keeper_sends_one_per_interval_under_concurrency() -> None:
    now = [T0]
    keeper = PaceKeeper(window_s=60.0, clock=lambda: now[0])
    sent: list[int] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait(timeout=5)
        if keeper.acquire_wait("a", 10) == 0.0:
            sent.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert sum(sent) == 1
