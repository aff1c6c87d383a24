"""A circuit breaker per deployment (docs/design.md §7), as a pure value.

The breaker keeps calls away from a deployment that is failing, so a retry goes to a healthy one
instead of feeding a crashed worker or an exhausted quota. State advances by returning a new
`Breaker`; time is an argument (`now`, any monotonic clock in seconds), so every transition is a
plain-value test. The thread-safe holder is `shared.worker.router.Router`.

States:
- `closed`: calls flow. `failures` consecutive retryable failures (server errors, 408, dropped or
  truncated streams, read timeouts, connection errors) open it.
- `open`: no calls until `until`. Also entered at once on a 429 whose Retry-After is long (more than
  `long_retry_after_s`, by default half the cool-down): the quota is gone for that long, and every
  call before then would only collect another 429. The cool-down is then the longer of the two.
- `half_open`: the cool-down is over and exactly one caller has claimed the probe. Its answer
  decides: a success (or a 400, which also proves the deployment answers) closes the breaker, a
  retryable failure opens it for another cool-down. A probe that never reports (its thread died)
  is presumed lost after `probe_timeout_s`, and another probe may go.
- `disabled`: a configuration error (401, 403, 404, a redirect) takes the deployment out of
  rotation for `disabled_s` (default 5 minutes), then one probe is allowed, as after `open`. Not for
  the process's life: a role assignment takes minutes to propagate, and a process that never looked
  again would need a restart after the operator fixed it. Five minutes is far longer than the host
  needs to redeliver a message five times into the poison queue, so a request that no deployment
  can serve still ends in poison instead of looping.

Calls take a `Ticket` when they start (`claim`) and hand it back with their outcome (`record`).
Streams last minutes, so when a breaker opens, calls started before it are still in flight; the
ticket's `epoch` lets their late answers be told apart from the probe's and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from shared.policy.outcomes import Category, Health

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["Breaker", "State", "Ticket"]

DEFAULT_DISABLED_S = 300.0
# A probe is one image: up to a few minutes of stream. Past this it is presumed lost, not slow.
DEFAULT_PROBE_TIMEOUT_S = 900.0


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    DISABLED = "disabled"


ALWAYS_CLOSED = 2**31  # failures_to_open for a breaker that retryable failures never open


@dataclass(frozen=True, slots=True)
class Ticket:
    """Handed out by `Breaker.claim`; give it back to `record` with the call's outcome.

    `epoch` counts the times the breaker has opened; `probe` says this call is the single probe.
    """

    epoch: int
    probe: bool = False


# What a category says of the deployment when the caller does not pass the outcome table's `Health`.
_HEALTH_OF: dict[Category, Health] = {
    Category.SUCCESS: Health.HEALTHY,
    Category.PERMANENT: Health.HEALTHY,  # a refusal proves the deployment answers
    Category.RETRYABLE: Health.FAILURE,
    Category.THROTTLED: Health.NEUTRAL,
    Category.CONFIGURATION: Health.DISABLE,
    Category.FINAL: Health.FAILURE,
}


@dataclass(frozen=True, slots=True)
class Breaker:
    """The breaker's policy (first five fields) and its state (the rest)."""

    failures_to_open: int = 3
    cooldown_s: float = 30.0
    long_retry_after_s: float | None = None  # None: half the cool-down
    disabled_s: float = DEFAULT_DISABLED_S
    probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S

    state: State = State.CLOSED
    failures: int = 0  # consecutive retryable failures while closed
    until: float = 0.0  # open/disabled: when a probe may go
    epoch: int = 0
    probe_since: float | None = None  # half_open: when the probe was claimed
    reason: str = ""  # why it last opened, for logs and `report`

    def __post_init__(self) -> None:
        if self.failures_to_open < 1:
            raise ValueError(f"failures_to_open must be at least 1, got {self.failures_to_open}")
        if self.cooldown_s < 0 or self.disabled_s < 0 or self.probe_timeout_s <= 0:
            raise ValueError("cooldown_s and disabled_s must be >= 0, probe_timeout_s > 0")

    @classmethod
    def from_settings(cls, settings: Settings) -> Breaker:
        if len(settings.deployments) == 1:
            # Nowhere to fail over to: opening would only stack a cool-down on the retry policy's
            # own backoff. One deployment keeps only the configuration-error rule.
            return cls(
                failures_to_open=ALWAYS_CLOSED,
                cooldown_s=settings.breaker_cooldown_s,
                long_retry_after_s=float("inf"),
            )
        return cls(
            failures_to_open=settings.breaker_failures, cooldown_s=settings.breaker_cooldown_s
        )

    @property
    def long_429_s(self) -> float:
        """A 429 asking for more than this opens the breaker."""
        return self.cooldown_s / 2 if self.long_retry_after_s is None else self.long_retry_after_s

    # -- reading -------------------------------------------------------------------------------

    def status(self, now: float) -> State:
        """The state as seen at `now`: an open breaker whose cool-down is over reads `half_open`."""
        if self.state in (State.OPEN, State.DISABLED) and now >= self.until:
            return State.HALF_OPEN
        return self.state

    def probe_available(self, now: float) -> bool:
        if self.state in (State.OPEN, State.DISABLED):
            return now >= self.until
        if self.state is State.HALF_OPEN:
            return self.probe_since is None or now >= self.probe_since + self.probe_timeout_s
        return False

    def allows(self, now: float) -> bool:
        """Whether a call may start now (for a half-open breaker: whether the probe is free)."""
        return self.state is State.CLOSED or self.probe_available(now)

    def ready_at(self, now: float) -> float:
        """The earliest time a call may start: `now` if it may now, else an estimate.

        While a probe is out nobody knows when it will answer; re-checking after a cool-down (or
        when the probe would be presumed lost, if sooner) keeps waiters from sleeping too long.
        """
        if self.allows(now):
            return now
        if self.state is State.HALF_OPEN and self.probe_since is not None:
            return min(self.probe_since + self.probe_timeout_s, now + max(self.cooldown_s, 1.0))
        return self.until

    def disabled(self, now: float) -> bool:
        """Out of rotation for a configuration error, and not yet due for a probe."""
        return self.state is State.DISABLED and now < self.until

    # -- transitions ---------------------------------------------------------------------------

    def claim(self, now: float) -> tuple[Breaker, Ticket | None]:
        """Start a call: a ticket and the new breaker, or None when no call may start.

        In `closed` every caller gets a ticket. Otherwise only one caller gets the probe; the
        holder must make this claim and store the result under one lock, which is what makes the
        single probe atomic.
        """
        if self.state is State.CLOSED:
            return self, Ticket(self.epoch)
        if self.probe_available(now):
            return replace(self, state=State.HALF_OPEN, probe_since=now), Ticket(self.epoch, True)
        return self, None

    def release(self, ticket: Ticket) -> Breaker:
        """Give back a probe that was never sent (the quota said wait): the next caller may probe."""
        if ticket.probe and self.state is State.HALF_OPEN and ticket.epoch == self.epoch:
            return replace(self, state=State.OPEN, probe_since=None, until=0.0)
        return self

    def record(
        self,
        category: Category,
        now: float,
        retry_after_s: float | None = None,
        ticket: Ticket | None = None,
        reason: str = "",
        health: Health | None = None,
    ) -> Breaker:
        """The breaker after a call that ended in `category` at `now`.

        Without a ticket the answer is taken as current (a probe's, when half-open). With one from
        an earlier epoch it is stale: the call started before the breaker last opened, and its
        success or failure says nothing about the deployment since. Configuration errors and long
        429s are facts about the deployment now, whenever the call started, so they always count.
        """
        health = _HEALTH_OF[category] if health is None else health
        if health is Health.DISABLE:
            return self._opened(State.DISABLED, now, self.disabled_s, reason or "configuration")
        if (
            category is Category.THROTTLED
            and retry_after_s is not None
            and retry_after_s > self.long_429_s
        ):
            if self.state is State.DISABLED:
                return self
            cooldown = max(self.cooldown_s, retry_after_s)
            if self.state is State.OPEN and self.until >= now + cooldown:
                return self
            return self._opened(State.OPEN, now, cooldown, reason or "rate limited")
        if ticket is not None and ticket.epoch != self.epoch:
            return self
        match self.state:
            case State.CLOSED:
                if health is Health.HEALTHY:
                    return self if self.failures == 0 else replace(self, failures=0)
                if health is Health.FAILURE:
                    failures = self.failures + 1
                    if failures >= self.failures_to_open:
                        return self._opened(State.OPEN, now, self.cooldown_s, reason or "failures")
                    return replace(self, failures=failures)
                return self  # a short 429, our own client's failure: not the deployment's health
            case State.HALF_OPEN:
                if health is Health.HEALTHY:
                    return replace(
                        self, state=State.CLOSED, failures=0, until=0.0, probe_since=None, reason=""
                    )
                if health is Health.FAILURE:
                    return self._opened(State.OPEN, now, self.cooldown_s, reason or "probe failed")
                # A short 429 (or our client's failure) on the probe decides nothing: probe again.
                return replace(self, state=State.OPEN, probe_since=None, until=now)
            case _:
                # Open or disabled, no probe claimed: an answer from a call that started before.
                return self

    def _opened(self, state: State, now: float, cooldown_s: float, reason: str) -> Breaker:
        return replace(
            self,
            state=state,
            failures=max(self.failures, self.failures_to_open) if state is State.OPEN else 0,
            until=now + cooldown_s,
            epoch=self.epoch + 1,
            probe_since=None,
            reason=reason,
        )
