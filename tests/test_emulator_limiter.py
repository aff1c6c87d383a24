"""The emulator's rate-limit models without HTTP: plain emulated times stand in for the clock."""

from __future__ import annotations

import pytest

from emulators.image_deployment import config as cfg
from emulators.image_deployment.limiter import (
    Decision,
    Periods,
    RateLimiter,
    RateModel,
    RateRule,
    Rounding,
    Window,
    headers,
)

SLIDING_3 = RateRule(3)
PERIODS = RateModel.PERIODS


def periods(
    rpm: int,
    period_s: float = 10.0,
    rounding: Rounding = Rounding.CEIL,
    admit_fraction: float = 1.0,
) -> RateRule:
    return RateRule(rpm, PERIODS, period_s, rounding, admit_fraction)


def test_sliding_window_admits_rpm_then_refuses_until_the_oldest_leaves() -> None:
    window = Window()
    for i, t in enumerate((0.0, 10.0, 20.0)):
        decision, window = window.admit(t, SLIDING_3)
        assert decision.allowed and decision.remaining == 2 - i
    refused, window = window.admit(30.0, SLIDING_3)
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_after_s == pytest.approx(30.0)  # t=0 leaves at 60
    again, window = window.admit(31.0, SLIDING_3)
    assert not again.allowed  # refusals did not enter the window
    admitted, window = window.admit(60.5, SLIDING_3)
    assert admitted.allowed and admitted.remaining == 0
    assert admitted.reset_s == pytest.approx(9.5)


@pytest.mark.parametrize(
    ("rpm", "period_s", "rounding", "limit"),
    [
        (10, 10.0, Rounding.FLOOR, 1),  # 1.67
        (10, 10.0, Rounding.CEIL, 2),
        (10, 10.0, Rounding.ROUND, 2),
        (9, 10.0, Rounding.ROUND, 2),  # 1.5 rounds half up, not to even
        (3, 10.0, Rounding.ROUND, 1),  # 0.5
        (120, 10.0, Rounding.FLOOR, 20),  # what a 120 RPM deployment reports
        (300, 10.0, Rounding.CEIL, 50),
        (600, 1.0, Rounding.FLOOR, 10),  # the quota documentation's 1 s example
        (10, 1.0, Rounding.FLOOR, 1),  # 0.17: at least one, or it would admit nothing
        (10, 1.0, Rounding.CEIL, 1),
    ],
)
def test_allowance_per_period_is_rpm_times_p_over_60_rounded(
    rpm: int, period_s: float, rounding: Rounding, limit: int
) -> None:
    rule = periods(rpm, period_s=period_s, rounding=rounding)
    assert rule.limit == rule.admits == limit


def test_admit_fraction_is_applied_exactly_before_rounding() -> None:
    rule = periods(10, admit_fraction=0.6)
    assert (rule.limit, rule.admits) == (2, 1)
    # 100 x 10 / 60 x 0.9 is 15; in floats it is 15.000000000000002, which ceil would make 16.
    assert periods(100, admit_fraction=0.9).admits == 15
    assert periods(600, period_s=1.0, admit_fraction=0.6).admits == 6
    assert periods(10, admit_fraction=0.01).admits == 1  # never zero
    assert RateRule(10, admit_fraction=0.6).admits == 6  # the sliding minute too


def test_burst_gets_the_period_allowance_then_429s_to_the_period_start() -> None:
    rule = periods(10)  # ceil: 2 per 10 s
    state = Periods(100.0, 10.0)
    seen: list[Decision] = []
    for t in (100.0, 100.1, 100.2, 100.3, 104.0):
        decision, state = state.admit(t, rule)
        seen.append(decision)
    assert [d.allowed for d in seen] == [True, True, False, False, False]
    assert [d.remaining for d in seen] == [1, 0, 0, 0, 0]
    assert [d.retry_after_s for d in seen[2:]] == pytest.approx([9.8, 9.7, 6.0])
    assert all(d.limit == 2 and d.reset_s is None for d in seen)
    assert state.admitted == 2  # refusals do not count
    again, state = state.admit(110.0, rule)  # the next period starts exactly at 110
    assert again.allowed and again.remaining == 1 and state.start == 110.0


def test_periods_stay_on_their_grid_across_idle_time() -> None:
    rule = periods(10, rounding=Rounding.FLOOR)
    state = Periods(0.0, 10.0)
    _, state = state.admit(0.5, rule)
    late, state = state.admit(37.0, rule)  # three periods idle: now in [30, 40)
    assert late.allowed and state.start == 30.0
    refused, state = state.admit(39.0, rule)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(1.0)


def test_one_second_mode() -> None:
    rule = periods(600, period_s=1.0)  # 10 a second
    state = Periods(0.0, 1.0)
    allowed = []
    for i in range(12):
        decision, state = state.admit(i * 0.01, rule)
        allowed.append(decision.allowed)
    assert allowed == [True] * 10 + [False] * 2
    assert decision.retry_after_s == pytest.approx(0.89)
    assert state.admit(1.0, rule)[0].allowed


def test_with_a_fraction_the_headers_report_the_nominal_allowance() -> None:
    rule = periods(10, admit_fraction=0.6)  # nominal 2, admits 1
    first, state = Periods(0.0, 10.0).admit(0.0, rule)
    second, state = state.admit(1.0, rule)
    assert (first.allowed, first.limit, first.remaining) == (True, 2, 1)
    assert (second.allowed, second.remaining) == (False, 1)  # a 429 while 1 is "remaining"
    assert second.retry_after_s == pytest.approx(9.0)


def test_a_period_changed_at_run_time_starts_a_new_grid() -> None:
    state = Periods(0.0, 10.0, admitted=2)
    decision, state = state.admit(3.0, periods(10, period_s=1.0))
    assert decision.allowed and (state.start, state.length, state.admitted) == (3.0, 1.0, 1)


def test_limiter_counts_per_deployment_anchored_at_its_first_counted_request() -> None:
    limiter = RateLimiter()
    rule = periods(10, rounding=Rounding.FLOOR)  # 1 per 10 s
    assert limiter.peek("a", 5.0, rule).allowed  # a peek does not start the grid
    assert limiter.admit("a", 7.0, rule).allowed
    refused = limiter.admit("a", 16.0, rule)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(1.0)  # grid from 7
    assert limiter.admit("b", 16.0, rule).allowed  # another deployment, its own periods
    assert limiter.admit("a", 17.0, rule).allowed
    # Switching the model at run time starts that deployment afresh.
    assert limiter.admit("a", 17.5, RateRule(1)).allowed
    assert not limiter.admit("a", 17.6, RateRule(1)).allowed
    limiter.reset()
    assert limiter.admit("a", 17.7, rule).allowed


def test_headers_of_each_model() -> None:
    sliding = Decision(True, 10, 9, 0.0, 6.0)
    assert headers(sliding, 0.5) == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "3s",
    }
    assert headers(Decision(False, 2, 0, 4.0, None), 1.0) == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
    }


def test_rate_options_from_flags_env_and_runtime() -> None:
    default = cfg.load([], {})
    assert (default.rate_period_s, default.rate_rounding, default.rate_admit_fraction) == (
        10.0, Rounding.CEIL, 1.0,
    )  # fmt: skip
    env = {"EMULATOR_RATE_MODEL": "periods", "EMULATOR_RATE_ROUNDING": "floor"}
    argv = ["--rate-period-s", "1", "--rate-admit-fraction", "0.6"]
    argv += ["--deployment", "a", "--deployment", "b:admit_fraction=0.5"]
    c = cfg.load(argv, env)
    assert c.rate_rule(c.deployment("a")) == RateRule(10, PERIODS, 1.0, Rounding.FLOOR, 0.6)
    assert c.rate_rule(c.deployment("b")).admit_fraction == 0.5
    assert c.rate_rule(None).admit_fraction == 0.6
    shown = c.public()
    assert (shown["rate_model"], shown["rate_rounding"], shown["rate_period_s"]) == (
        "periods", "floor", 1.0,
    )  # fmt: skip
    assert [d["admit_fraction"] for d in shown["deployments"]] == [0.6, 0.5]
    changed = cfg.replace_options(c, {"rate_admit_fraction": 0.8, "rate_model": "sliding"})
    # A deployment with its own fraction keeps it; the one that followed the global one follows.
    assert [d.admit_fraction for d in changed.deployments] == [0.8, 0.5]
    assert changed.rate_model is RateModel.SLIDING


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["--rate-model", "fixed"], "--rate-model"),
        (["--rate-rounding", "up"], "--rate-rounding"),
        (["--rate-period-s", "0"], "--rate-period-s"),
        (["--rate-period-s", "61"], "--rate-period-s"),
        (["--rate-admit-fraction", "0"], "--rate-admit-fraction"),
        (["--rate-admit-fraction", "1.5"], "--rate-admit-fraction"),
        (["--deployment", "a:admit_fraction=2"], "--deployment"),
    ],
)
def test_bad_rate_options_fail_with_one_line_naming_them(argv: list[str], name: str) -> None:
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(argv, {})
    assert name in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(cfg.ConfigError):
        cfg.replace_options(cfg.load([], {}), {"rate_model": 3})
