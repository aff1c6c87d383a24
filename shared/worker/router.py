"""Which deployment the next attempt goes to (docs/design.md §7).

`Router` holds one `Breaker` per deployment and asks a quota (the per-process `RateLimiter` or the
cross-instance `BlobQuota`, anything with `acquire_wait` and `observe`) for the request budget. A
`pick` walks the deployments by priority (lower first, as APIM backend pools; then the one with
fewer recent failures; then the configured order), skips those whose breaker says no or whose
quota is known to be spent, and takes the budget of the first that has some. So a `Use` answer
means: the breaker's ticket is claimed and the send is recorded in the quota; send now.

How the pipeline drives it, per call: it asks the planner (`shared.policy.planner`) with
`view(now)`, what the router knows of each deployment; the planner names one; `claim(name, now)`
takes that deployment's breaker ticket and a quota slot (`Use`), or says to wait (`WaitFor`) when
another instance or thread took the budget first; the call's record goes back through `report`.
`pick` is the same walk in one step (first usable by preference), for callers without a planner.

A `Use` must always be reported (in a `finally`), or a probe stays claimed until its timeout.
The router never sleeps and takes `now` as an argument (a monotonic clock); the quota does its own
storage I/O, outside the router's lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from shared.policy.breaker import Breaker, State, Ticket
from shared.policy.outcomes import MAX_RETRY_AFTER_S, describe, judge
from shared.policy.planner import DeploymentView
from shared.records.attempts import AttemptRecord, Outcome

if TYPE_CHECKING:
    from shared.settings import DeploymentConfig, Settings

__all__ = ["Choice", "NoneUsable", "QuotaGate", "Router", "Use", "WaitFor"]

log = logging.getLogger(__name__)


class QuotaGate(Protocol):
    """A pace per deployment: `shared.policy.pacer.PaceKeeper`, `shared.storage.quota.BlobPacer`."""

    def acquire_wait(self, name: str, rpm: int) -> float:
        """0.0 when a send may go now (and is taken); otherwise seconds to wait first."""
        ...

    def throttled(self, name: str, rpm: int, retry_after_s: float | None) -> None:
        """A 429: slow the deployment's pace and pause it until the Retry-After, for everyone."""
        ...


@dataclass(frozen=True, slots=True)
class Use:
    """Send the attempt to `deployment` now; hand `ticket` back to `Router.report`."""

    deployment: DeploymentConfig
    ticket: Ticket

    @property
    def probe(self) -> bool:
        return self.ticket.probe


@dataclass(frozen=True, slots=True)
class WaitFor:
    """No deployment can take a call now; the earliest one may in `seconds`."""

    seconds: float
    reason: str


@dataclass(frozen=True, slots=True)
class NoneUsable:
    """Every deployment is out of rotation for a configuration error: fail the invocation."""

    message: str


Choice = Use | WaitFor | NoneUsable


class Router:
    """Thread-safe: worker threads pick and report concurrently."""

    def __init__(
        self,
        deployments: Sequence[DeploymentConfig],
        quota: QuotaGate,
        breaker: Breaker | None = None,
    ) -> None:
        if not deployments:
            raise ValueError("a router needs at least one deployment")
        names = [d.name for d in deployments]
        if len(set(names)) != len(names):
            raise ValueError("deployment names must be unique")
        self._deployments = tuple(deployments)
        self._by_name = {d.name: d for d in deployments}
        self._order = {d.name: i for i, d in enumerate(deployments)}
        self._quota = quota
        template = breaker or Breaker()
        self._breakers: dict[str, Breaker] = {d.name: template for d in deployments}
        # When the quota last said "not before": saves asking storage again until then.
        self._quota_free_at: dict[str, float] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, quota: QuotaGate) -> Router:
        return cls(settings.deployments, quota, Breaker.from_settings(settings))

    @property
    def deployments(self) -> tuple[DeploymentConfig, ...]:
        return self._deployments

    def breaker(self, name: str) -> Breaker:
        with self._lock:
            return self._breakers[name]

    def pick(self, now: float, *, exclude: Collection[str] = ()) -> Choice:
        """The deployment for the next attempt, or how long until there is one (see module doc)."""
        with self._lock:
            if all(b.disabled(now) for b in self._breakers.values()):
                return NoneUsable(self._none_usable_message(now))
            candidates = [
                d
                for d in self._ranked()
                if d.name not in exclude
                and self._breakers[d.name].allows(now)
                and self._quota_free_at.get(d.name, now) <= now
            ]
        for deployment in candidates:
            choice = self._try(deployment, now)
            if choice is not None:
                return choice
        with self._lock:
            return self._wait_for(now, exclude)

    def report(
        self, name: str, record: AttemptRecord, now: float, *, ticket: Ticket | None = None
    ) -> None:
        """Feed an attempt's outcome back: the breaker's state and the quota's view."""
        deployment = self._by_name[name]
        verdict = judge(record)
        retry_after = _trusted_retry_after(record)
        with self._lock:
            before = self._breakers[name]
            after = before.record(
                verdict.category, now, retry_after, ticket, describe(record), verdict.health
            )
            self._breakers[name] = after
            if record.outcome is Outcome.RATE_LIMITED and retry_after is not None:
                self._hold_quota(name, now + retry_after - record.headers_age_s)
        _log_transition(name, before, after, now)
        self._observe_quota(deployment, record, now)

    def view(self, now: float) -> tuple[DeploymentView, ...]:
        """What the planner needs of every deployment, in order of preference (see module doc)."""
        with self._lock:
            views = []
            for d in self._ranked():
                breaker = self._breakers[d.name]
                if breaker.disabled(now):
                    reason = f"{breaker.reason}; probe in {breaker.until - now:.0f}s"
                    views.append(DeploymentView(d.name, breaker.until - now, True, reason))
                    continue
                breaker_at = breaker.ready_at(now)
                quota_at = max(now, self._quota_free_at.get(d.name, now))
                if breaker_at > now and breaker_at >= quota_at:
                    reason = f"breaker {breaker.status(now).value} ({breaker.reason})"
                elif quota_at > now:
                    reason = "request quota spent"
                else:
                    reason = ""
                views.append(DeploymentView(d.name, max(breaker_at, quota_at) - now, False, reason))
            return tuple(views)

    def claim(self, name: str, now: float) -> Use | WaitFor:
        """Take `name`'s breaker ticket and a quota slot for one call, or say how long to wait.

        WaitFor(0) means another thread took the probe a moment ago: ask again, but do not spin.
        """
        choice = self._try(self._by_name[name], now)
        if choice is not None:
            return choice
        with self._lock:
            free_at = self._quota_free_at.get(name, now)
        return WaitFor(max(0.0, free_at - now), f"{name}: request quota spent or probe taken")

    def release(self, use: Use) -> None:
        """Give back a claim whose call never produced a record (it raised before sending)."""
        with self._lock:
            name = use.deployment.name
            self._breakers[name] = self._breakers[name].release(use.ticket)

    # -- internals -----------------------------------------------------------------------------

    def _ranked(self) -> list[DeploymentConfig]:
        return sorted(
            self._deployments,
            key=lambda d: (d.priority, self._breakers[d.name].failures, self._order[d.name]),
        )

    def _try(self, deployment: DeploymentConfig, now: float) -> Use | None:
        """Claim the breaker, then the quota; give the claim back if the quota says wait."""
        name = deployment.name
        with self._lock:
            breaker, ticket = self._breakers[name].claim(now)
            if ticket is None:
                return None  # another thread took the probe since we looked
            self._breakers[name] = breaker
        sent = False
        try:
            wait = self._quota.acquire_wait(name, deployment.rpm)
            sent = wait <= 0
        finally:
            if not sent:
                with self._lock:
                    self._breakers[name] = self._breakers[name].release(ticket)
        if sent:
            if ticket.probe:
                log.info("deployment %s: sending the probe after its cool-down", name)
            return Use(deployment, ticket)
        with self._lock:
            self._hold_quota(name, now + wait)
        return None

    def _hold_quota(self, name: str, free_at: float) -> None:
        self._quota_free_at[name] = max(free_at, self._quota_free_at.get(name, free_at))

    def _wait_for(self, now: float, exclude: Collection[str]) -> WaitFor:
        best: tuple[float, str] | None = None
        for d in self._ranked():
            breaker = self._breakers[d.name]
            if breaker.disabled(now):
                continue
            breaker_at = breaker.ready_at(now)
            quota_at = max(now, self._quota_free_at.get(d.name, now))
            ready = max(breaker_at, quota_at)
            if best is None or ready < best[0]:
                if d.name in exclude:
                    why = "no other deployment can take it now"
                elif breaker_at > now and breaker_at >= quota_at:
                    why = f"breaker {breaker.status(now).value} ({breaker.reason})"
                elif quota_at > now:
                    why = "request quota spent"
                else:
                    why = "taken by another thread just now; ask again"
                best = (ready, f"{d.name}: {why}")
        if best is None:  # unreachable: pick returned NoneUsable when all are disabled
            return WaitFor(0.0, "no deployment")
        return WaitFor(max(0.0, best[0] - now), best[1])

    def _none_usable_message(self, now: float) -> str:
        parts = [
            f"{name} ({b.reason}; probe in {b.until - now:.0f}s)"
            for name, b in self._breakers.items()
        ]
        return (
            "no deployment can serve requests (check endpoint, deployment name, key or role): "
            + ("; ".join(parts))
        )

    def _observe_quota(
        self, deployment: DeploymentConfig, record: AttemptRecord, now: float
    ) -> None:
        """A 429 slows and pauses the deployment's pace for every thread and instance.

        Retry-After counts from when the answer began; it is aged by what the call took since.
        Other answers' rate-limit headers are not used: Azure's remaining count is per short period
        and comes without a reset time, so the pace, fed by the 429s, is the better authority.
        """
        if record.outcome is not Outcome.RATE_LIMITED and record.http_status != 429:
            return
        trusted = _trusted_retry_after(record)
        retry_after = None if trusted is None else max(0.0, trusted - record.headers_age_s)
        self._quota.throttled(deployment.name, deployment.rpm, retry_after)


def _trusted_retry_after(record: AttemptRecord) -> float | None:
    if record.retry_after_s is None:
        return None
    return min(max(0.0, record.retry_after_s), MAX_RETRY_AFTER_S)


def _log_transition(name: str, before: Breaker, after: Breaker, now: float) -> None:
    if before.state is after.state and before.epoch == after.epoch:
        return
    if after.state is State.DISABLED:
        log.warning(
            "deployment %s: out of rotation for %.0fs after a configuration error: %s",
            name, after.until - now, after.reason,
        )  # fmt: skip
    elif after.state is State.OPEN and after.epoch != before.epoch:
        log.warning(
            "deployment %s: breaker open for %.0fs: %s", name, after.until - now, after.reason
        )
    elif after.state is State.CLOSED:
        log.info("deployment %s: breaker closed, the probe succeeded", name)
