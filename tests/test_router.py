"""Router: priority order, breakers, pace, failover; a fake clock and the real per-process pacer."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

from shared.policy.breaker import Breaker, State
from shared.policy.pacer import PaceKeeper
from shared.records.attempts import AttemptRecord, ErrorInfo, Outcome
from shared.settings import DeploymentConfig
from shared.worker.router import NoneUsable, Router, Use, WaitFor


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class CountingQuota:
    """The real PaceKeeper, counting the calls the router makes to it."""

    keeper: PaceKeeper
    acquires: list[str] = field(default_factory=list)
    throttles: list[tuple[str, float | None]] = field(default_factory=list)

    def acquire_wait(self, name: str, rpm: int) -> float:
        self.acquires.append(name)
        return self.keeper.acquire_wait(name, rpm)

    def throttled(self, name: str, rpm: int, retry_after_s: float | None) -> None:
        self.throttles.append((name, retry_after_s))
        self.keeper.throttled(name, rpm, retry_after_s)


def dep(name: str, priority: int = 0, rpm: int = 10) -> DeploymentConfig:
    return DeploymentConfig(
        name=name, endpoint=f"https://{name}.example", deployment=name, priority=priority, rpm=rpm
    )


def record(
    deployment: str,
    outcome: Outcome,
    status: int | None = 200,
    retry_after_s: float | None = None,
    ratelimit: dict[str, str] | None = None,
) -> AttemptRecord:
    return AttemptRecord(
        attempt=1,
        image_index=0,
        deployment=deployment,
        started_at="2026-01-01T00:00:00.000Z",
        elapsed_s=1.0,
        first_event_s=0.5,
        http_status=status,
        apim_request_id=f"apim-{deployment}",
        x_request_id=None,
        partial_images_sent=1,
        partials_received=0,
        outcome=outcome,
        error=None if outcome is Outcome.SUCCEEDED else ErrorInfo("server_error", None, "boom"),
        retry_after_s=retry_after_s,
        ratelimit=ratelimit or {},
    )


def make(
    *deployments: DeploymentConfig, burst: int = 1, **breaker: float
) -> tuple[Router, CountingQuota, Clock]:
    clock = Clock()
    # One send per 60 s / rpm (`burst` of them at once); no guard, so the numbers stay round.
    quota = CountingQuota(PaceKeeper(window_s=60.0, burst=burst, guard=0.0, clock=clock))
    router = Router(deployments, quota, Breaker(**breaker))  # type: ignore[arg-type]
    return router, quota, clock


def use(choice: object) -> Use:
    assert isinstance(choice, Use), choice
    return choice


def test_lower_priority_number_first_whatever_the_configured_order() -> None:
    router, _, clock = make(dep("b", priority=2), dep("a", priority=1), dep("c", priority=3))
    assert use(router.pick(clock.now)).deployment.name == "a"


def test_open_breaker_is_skipped_and_gets_no_call_until_its_cooldown_ends() -> None:
    router, quota, clock = make(
        dep("a", 0), dep("b", 1, rpm=100), failures_to_open=3, cooldown_s=30.0
    )
    for attempt in range(3):
        clock.now += 6.0 if attempt else 0.0  # a's pace: one send per 60 s / 10
        choice = use(router.pick(clock.now))
        assert choice.deployment.name == "a"
        router.report("a", record("a", Outcome.SERVER_ERROR, 500), clock.now, ticket=choice.ticket)
    assert router.breaker("a").state is State.OPEN
    quota.acquires.clear()
    opened_at = clock.now
    for offset in range(30):
        clock.now = opened_at + offset
        choice = use(router.pick(clock.now))
        assert choice.deployment.name == "b"
        router.report("b", record("b", Outcome.SUCCEEDED), clock.now, ticket=choice.ticket)
    assert "a" not in quota.acquires  # not even its quota was asked while open
    clock.now = opened_at + 30.0  # the cool-down is over: a single probe
    probe = use(router.pick(clock.now))
    assert probe.deployment.name == "a" and probe.probe
    assert use(router.pick(clock.now)).deployment.name == "b"  # the probe is out: others go to b
    router.report("a", record("a", Outcome.SUCCEEDED), clock.now, ticket=probe.ticket)
    assert router.breaker("a").state is State.CLOSED
    clock.now += 6.0
    assert use(router.pick(clock.now)).deployment.name == "a"


def test_failed_probe_reopens_for_another_cooldown() -> None:
    router, _, clock = make(dep("a", 0), dep("b", 1), failures_to_open=1, cooldown_s=10.0)
    router.report("a", record("a", Outcome.DROPPED, 200), clock.now)
    clock.now += 10.0
    probe = use(router.pick(clock.now))
    assert probe.deployment.name == "a" and probe.probe
    router.report("a", record("a", Outcome.READ_TIMEOUT, 200), clock.now, ticket=probe.ticket)
    assert router.breaker("a").state is State.OPEN
    clock.now += 9.0
    assert use(router.pick(clock.now)).deployment.name == "b"
    clock.now += 1.0
    assert use(router.pick(clock.now)).deployment.name == "a"


def test_quota_full_deployment_is_skipped_and_not_asked_again_until_it_frees() -> None:
    router, quota, clock = make(dep("a", 0, rpm=2), dep("b", 1, rpm=10), burst=2)
    assert [use(router.pick(clock.now)).deployment.name for _ in range(4)] == ["a", "a", "b", "b"]
    assert quota.acquires == ["a", "a", "a", "b", "b"]  # a's "not yet" is remembered
    clock.now += 29.9  # a's next slot: one interval (60 s / 2) after its burst of two
    assert use(router.pick(clock.now)).deployment.name == "b"
    clock.now += 0.1
    assert use(router.pick(clock.now)).deployment.name == "a"


def test_wait_for_the_earliest_of_breaker_cooldown_and_quota() -> None:
    router, _, clock = make(dep("a", 0, rpm=1), dep("b", 1, rpm=1), failures_to_open=1)
    assert use(router.pick(clock.now)).deployment.name == "a"
    router.report("b", record("b", Outcome.SERVER_ERROR, 503), clock.now)  # b opens for 30 s
    clock.now += 5.0
    choice = router.pick(clock.now)
    assert isinstance(choice, WaitFor)
    assert choice.seconds == 25.0 and choice.reason.startswith("b: breaker")
    clock.now += 30.0  # b's probe is due at 1030, a's quota frees at 1060
    assert use(router.pick(clock.now)).deployment.name == "b"


def test_wait_for_the_quota_when_it_frees_first() -> None:
    router, _, clock = make(dep("a", 0, rpm=1), failures_to_open=3)
    use(router.pick(clock.now))
    clock.now += 20.0
    choice = router.pick(clock.now)
    assert isinstance(choice, WaitFor)
    assert abs(choice.seconds - 40.0) < 1e-6 and "quota" in choice.reason


def test_retry_goes_at_once_to_another_deployment_with_exclude() -> None:
    router, _, clock = make(dep("a", 0), dep("b", 1))
    first = use(router.pick(clock.now))
    router.report("a", record("a", Outcome.SERVER_ERROR, 500), clock.now, ticket=first.ticket)
    retry = router.pick(clock.now, exclude={"a"})
    assert use(retry).deployment.name == "b"
    # With a single deployment there is no other: the caller backs off, then picks normally.
    single, _, clock = make(dep("a"))
    choice = single.pick(clock.now, exclude={"a"})
    assert isinstance(choice, WaitFor) and choice.seconds == 0.0
    assert use(single.pick(clock.now)).deployment.name == "a"


def test_none_usable_only_when_every_deployment_is_disabled() -> None:
    router, _, clock = make(dep("a", 0), dep("b", 1), disabled_s=300.0)
    router.report("a", record("a", Outcome.AUTH_ERROR, 401), clock.now)
    assert use(router.pick(clock.now)).deployment.name == "b"
    router.report("b", record("b", Outcome.HTTP_ERROR, 404), clock.now)
    choice = router.pick(clock.now)
    assert isinstance(choice, NoneUsable)
    assert "HTTP 401" in choice.message and "HTTP 404" in choice.message
    assert "apim-a" in choice.message and "apim-b" in choice.message
    assert isinstance(router.pick(clock.now, exclude={"a"}), NoneUsable)
    clock.now += 300.0  # out of rotation for a long while, not for ever: then one probe
    probe = use(router.pick(clock.now))
    assert probe.probe and probe.deployment.name == "a"


def test_long_429_opens_the_breaker_and_a_short_one_only_holds_the_quota() -> None:
    router, quota, clock = make(dep("a", 0), dep("b", 1), cooldown_s=30.0)
    choice = use(router.pick(clock.now))
    router.report(
        "a",
        record("a", Outcome.RATE_LIMITED, 429, retry_after_s=5.0),
        clock.now,
        ticket=choice.ticket,
    )
    assert router.breaker("a").state is State.CLOSED
    assert quota.throttles[-1] == ("a", 5.0)
    assert use(router.pick(clock.now)).deployment.name == "b"
    clock.now += 5.0
    choice = use(router.pick(clock.now))
    assert choice.deployment.name == "a"
    router.report(
        "a",
        record("a", Outcome.RATE_LIMITED, 429, retry_after_s=50.0),
        clock.now,
        ticket=choice.ticket,
    )
    assert router.breaker("a").state is State.OPEN and router.breaker("a").until == clock.now + 50.0


def test_a_429_reaches_the_pace_aged_by_the_stream_that_followed_it() -> None:
    router, quota, clock = make(dep("a", rpm=10))
    # Headers at 1 s, answer over at 3 s: 2 s of the 12 s Retry-After are already gone.
    refused = replace(
        record("a", Outcome.RATE_LIMITED, 429, retry_after_s=12.0), elapsed_s=3.0, headers_s=1.0
    )
    router.report("a", refused, clock.now, ticket=use(router.pick(clock.now)).ticket)
    assert quota.throttles == [("a", 10.0)]
    assert quota.keeper.acquire_wait("a", 10) == 10.0  # every sender of the pace waits it out


def test_rate_limit_headers_of_other_answers_leave_the_pace_alone() -> None:
    router, quota, clock = make(dep("a", rpm=10))
    headers = {"x-ratelimit-remaining-requests": "0"}
    router.report(
        "a", record("a", Outcome.SUCCEEDED, ratelimit=headers), clock.now,
        ticket=use(router.pick(clock.now)).ticket,
    )  # fmt: skip
    assert quota.throttles == []
    assert quota.keeper.acquire_wait("a", 10) == 6.0  # paced as usual, no padding


def test_healthier_deployment_first_within_a_priority() -> None:
    router, _, clock = make(dep("a", 0), dep("b", 0), failures_to_open=3)
    router.report("a", record("a", Outcome.SERVER_ERROR, 500), clock.now)
    assert use(router.pick(clock.now)).deployment.name == "b"


def test_single_probe_under_concurrent_picks() -> None:
    router, _, clock = make(dep("a", 0), failures_to_open=1, cooldown_s=10.0)
    router.report("a", record("a", Outcome.SERVER_ERROR, 500), clock.now)
    clock.now += 10.0
    results: list[object] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(router.pick(clock.now))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == 8
    assert sum(isinstance(r, Use) for r in results) == 1
    assert all(isinstance(r, WaitFor) for r in results if not isinstance(r, Use))


def test_probe_is_given_back_when_the_quota_says_wait() -> None:
    router, _, clock = make(dep("a", 0, rpm=1), failures_to_open=1, cooldown_s=10.0)
    use(router.pick(clock.now))  # spends a's one request of the minute
    router.report("a", record("a", Outcome.SERVER_ERROR, 500), clock.now)
    clock.now += 10.0
    waiting = router.pick(clock.now)
    assert isinstance(waiting, WaitFor) and waiting.seconds == 50.0
    assert router.breaker("a").allows(clock.now)  # the probe was not kept by the failed claim
    clock.now += 50.0
    assert use(router.pick(clock.now)).probe
