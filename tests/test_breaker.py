"""The circuit breaker as a value: every transition driven by hand with plain numbers for time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shared.policy.breaker import Breaker, State, Ticket
from shared.policy.outcomes import Category
from shared.settings import DeploymentConfig, Settings, StorageConfig

R = Category.RETRYABLE
OK = Category.SUCCESS


def fail(breaker: Breaker, times: int, now: float = 0.0) -> Breaker:
    for _ in range(times):
        breaker = breaker.record(R, now)
    return breaker


def test_opens_after_k_consecutive_retryable_failures() -> None:
    breaker = fail(Breaker(failures_to_open=3, cooldown_s=30.0), 2)
    assert breaker.state is State.CLOSED and breaker.allows(0.0)
    breaker = breaker.record(R, 1.0, reason="server_error")
    assert breaker.state is State.OPEN
    assert breaker.until == 31.0 and breaker.reason == "server_error"
    assert not breaker.allows(1.0) and not breaker.allows(30.9)


def test_success_and_400_reset_the_count_and_short_429_does_not_count() -> None:
    breaker = fail(Breaker(failures_to_open=3), 2)
    assert breaker.record(OK, 0.0).failures == 0
    assert breaker.record(Category.PERMANENT, 0.0).failures == 0
    throttled = breaker.record(Category.THROTTLED, 0.0, retry_after_s=2.0)
    assert throttled.failures == 2 and throttled.state is State.CLOSED
    assert throttled.record(R, 0.0).state is State.OPEN


def test_no_call_while_open_then_exactly_one_probe() -> None:
    breaker = fail(Breaker(failures_to_open=1, cooldown_s=30.0), 1, now=0.0)
    _, ticket = breaker.claim(29.0)
    assert ticket is None
    assert breaker.status(30.0) is State.HALF_OPEN
    probing, ticket = breaker.claim(30.0)
    assert ticket == Ticket(epoch=1, probe=True)
    assert probing.state is State.HALF_OPEN
    assert not probing.allows(30.0)
    _, second = probing.claim(31.0)
    assert second is None


def test_probe_success_closes_and_failure_reopens_for_another_cooldown() -> None:
    breaker = fail(Breaker(failures_to_open=2, cooldown_s=10.0), 2, now=0.0)
    probing, ticket = breaker.claim(10.0)
    closed = probing.record(OK, 12.0, ticket=ticket)
    assert closed.state is State.CLOSED and closed.failures == 0 and closed.allows(12.0)
    reopened = probing.record(R, 12.0, ticket=ticket)
    assert reopened.state is State.OPEN and reopened.until == 22.0
    assert reopened.epoch == probing.epoch + 1
    assert not reopened.allows(21.9) and reopened.allows(22.0)


def test_late_answers_from_calls_started_before_it_opened_are_ignored() -> None:
    breaker = Breaker(failures_to_open=2, cooldown_s=10.0)
    breaker, old = breaker.claim(0.0)
    assert old == Ticket(0)
    breaker = fail(breaker, 2, now=1.0)
    # A long stream started before the breaker opened ends now: neither outcome is the probe's.
    assert breaker.record(OK, 5.0, ticket=old) == breaker
    probing, probe = breaker.claim(11.0)
    assert probing.record(OK, 12.0, ticket=old) == probing
    assert probing.record(R, 12.0, ticket=old) == probing
    assert probing.record(OK, 12.0, ticket=probe).state is State.CLOSED


def test_long_429_opens_at_once_for_the_longer_of_retry_after_and_cooldown() -> None:
    breaker = Breaker(cooldown_s=30.0)  # long means more than 15 s by default
    assert breaker.record(Category.THROTTLED, 0.0, retry_after_s=15.0).state is State.CLOSED
    opened = breaker.record(Category.THROTTLED, 0.0, retry_after_s=45.0)
    assert opened.state is State.OPEN and opened.until == 45.0
    opened = breaker.record(Category.THROTTLED, 0.0, retry_after_s=20.0)
    assert opened.state is State.OPEN and opened.until == 30.0
    strict = Breaker(cooldown_s=30.0, long_retry_after_s=5.0)
    assert strict.record(Category.THROTTLED, 0.0, retry_after_s=6.0).state is State.OPEN


def test_short_429_on_the_probe_lets_the_next_caller_probe() -> None:
    breaker = fail(Breaker(failures_to_open=1, cooldown_s=10.0), 1)
    probing, ticket = breaker.claim(10.0)
    after = probing.record(Category.THROTTLED, 11.0, retry_after_s=1.0, ticket=ticket)
    assert after.allows(11.0)
    assert after.claim(11.0)[1] == Ticket(after.epoch, probe=True)


def test_release_gives_an_unsent_probe_back() -> None:
    breaker = fail(Breaker(failures_to_open=1, cooldown_s=10.0), 1)
    probing, ticket = breaker.claim(10.0)
    assert ticket is not None and not probing.allows(10.0)
    released = probing.release(ticket)
    assert released.allows(10.0)
    assert released.claim(10.0)[1] is not None
    closed, closed_ticket = Breaker().claim(0.0)
    assert closed_ticket is not None and closed.release(closed_ticket) == closed


def test_lost_probe_is_presumed_lost_after_its_timeout() -> None:
    breaker = fail(Breaker(failures_to_open=1, cooldown_s=10.0, probe_timeout_s=100.0), 1)
    probing, _ = breaker.claim(10.0)
    assert not probing.allows(109.0)
    assert probing.ready_at(20.0) == 30.0  # re-check after a cool-down while the probe is out
    assert probing.allows(110.0)
    assert probing.claim(110.0)[1] is not None


def test_configuration_error_disables_then_probes_after_the_long_pause() -> None:
    breaker = Breaker(cooldown_s=30.0, disabled_s=300.0)
    disabled = breaker.record(Category.CONFIGURATION, 5.0, reason="auth_error HTTP 401")
    assert disabled.state is State.DISABLED and disabled.disabled(304.0)
    assert not disabled.allows(304.0)
    # A long 429 does not shorten or replace it.
    assert disabled.record(Category.THROTTLED, 6.0, retry_after_s=60.0) == disabled
    assert not disabled.disabled(305.0) and disabled.allows(305.0)
    probing, ticket = disabled.claim(305.0)
    assert probing.record(Category.CONFIGURATION, 306.0, ticket=ticket).disabled(600.0)
    assert probing.record(OK, 306.0, ticket=ticket).state is State.CLOSED


def test_from_settings_and_validation() -> None:
    settings = Settings(
        storage=StorageConfig(connection_string="UseDevelopmentStorage=true"),
        deployments=(),
        breaker_failures=2,
        breaker_cooldown_s=12.0,
    )
    breaker = Breaker.from_settings(settings)
    assert (breaker.failures_to_open, breaker.cooldown_s, breaker.long_429_s) == (2, 12.0, 6.0)
    # With one deployment there is nowhere to fail over to: only configuration errors take it out.
    single = Breaker.from_settings(
        replace(settings, deployments=(DeploymentConfig("d", "http://x", "d"),))
    )
    for moment in range(10):
        single = single.record(Category.RETRYABLE, float(moment))
        single = single.record(Category.THROTTLED, float(moment), retry_after_s=3600.0)
    assert single.allows(10.0)
    assert single.record(Category.CONFIGURATION, 11.0).disabled(12.0)
    with pytest.raises(ValueError, match="failures_to_open"):
        Breaker(failures_to_open=0)
