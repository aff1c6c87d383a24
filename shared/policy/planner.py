"""The planner: from plain values, the next step for one image. The only place that decides.

The pipeline asks `Planner.next_step(situation)` before every call and carries out what it says:

- `Send(deployment, partial_images)`: claim the deployment from the router and make the call;
- `Wait(seconds)`: sleep in this invocation, then ask again;
- `Requeue(seconds)`: the wait is too long to hold a worker thread (or the invocation's time budget is
  spent): re-enqueue the request with that visibility delay and end the invocation;
- `GiveUp(kind, message)`: write error.json;
- `FailInvocation(message)`: raise, so the host redelivers and in the end poisons the message (the
  request is good; a setting is wrong, and `requeue-poison` brings it back once fixed);
- `Done()`: the image is stored.

The situation is everything the decision depends on, as values: the image's attempts across
deliveries, what the router knows of each deployment now, the wall clock, the request's deadline and
the invocation's time budget. No I/O, no clock, no randomness (the jitter comes from the attempt, see
`backoff`), so every branch is a unit test. What each outcome means comes from `outcomes`. The rules
are docs/design.md §7.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.policy.backoff import full_jitter_backoff, jitter_fraction, keep_alive_partials
from shared.policy.outcomes import (
    MAX_RETRY_AFTER_S,
    Category,
    billed_attempts,
    describe,
    judge,
)
from shared.records.attempts import AttemptRecord, Outcome, epoch_s
from shared.records.documents import ErrorKind

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = [
    "DeploymentView",
    "Done",
    "FailInvocation",
    "GiveUp",
    "Planner",
    "Requeue",
    "Send",
    "Situation",
    "Step",
    "Wait",
]


@dataclass(frozen=True, slots=True)
class DeploymentView:
    """What the router knows of one deployment at the moment of asking."""

    name: str
    ready_in_s: float = 0.0  # 0: a call may start now; else when its breaker or quota allows one
    disabled: bool = False  # out of rotation for a configuration error
    reason: str = ""  # why it is not ready, for logs and status.json


@dataclass(frozen=True, slots=True)
class Situation:
    history: Sequence[AttemptRecord]  # this image's attempts, oldest first, across deliveries
    deployments: Sequence[DeploymentView]  # in the router's order of preference
    now: float  # wall clock, epoch seconds
    deadline: float  # epoch seconds: no call starts at or after it
    delivery_started: float  # epoch seconds: this delivery's attempts started at or after it
    budget_left_s: float  # of this invocation's time budget; may be negative
    delivery_calls: int = 0  # calls this delivery has made, for any image of the request
    requested_partials: int = 0  # what the caller asked for; the keep-alive minimum may raise it
    image_stored: bool = False


@dataclass(frozen=True, slots=True)
class Send:
    deployment: str
    partial_images: int


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float
    reason: str


@dataclass(frozen=True, slots=True)
class Requeue:
    seconds: float
    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    kind: ErrorKind
    message: str


@dataclass(frozen=True, slots=True)
class FailInvocation:
    message: str


@dataclass(frozen=True, slots=True)
class Done:
    pass


Step = Send | Wait | Requeue | GiveUp | FailInvocation | Done

# A queue message cannot be hidden for longer than 7 days; the put would fail.
MAX_REQUEUE_DELAY_S = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Planner:
    """The retry rules as a value (docs/design.md §7 and §9)."""

    max_attempts: int = 4
    max_connect_errors: int = 5
    backoff_base_s: float = 2.0
    backoff_max_s: float = 60.0
    inline_wait_max_s: float = 30.0
    min_partial_images: int = 1
    # Where in the backoff interval a retry goes; tests pin it, the product draws it per attempt.
    jitter: Callable[[AttemptRecord], float] = jitter_fraction

    @classmethod
    def from_settings(cls, settings: Settings) -> Planner:
        return cls(
            max_attempts=settings.max_attempts,
            max_connect_errors=settings.max_connect_errors,
            backoff_base_s=settings.backoff_base_s,
            backoff_max_s=settings.backoff_max_s,
            inline_wait_max_s=settings.inline_wait_max_s,
            min_partial_images=settings.min_partial_images,
        )

    def next_step(self, s: Situation) -> Step:
        if s.image_stored:
            return Done()
        history = list(s.history)
        last = history[-1] if history else None
        if s.now >= s.deadline:
            return GiveUp(ErrorKind.DEADLINE_EXCEEDED, _deadline_message(history, "passed"))
        if last is not None:
            ended = self._ended(last, history, s)
            if ended is not None:
                return ended
        usable = [d for d in s.deployments if not d.disabled]
        if not usable:
            return FailInvocation(_none_usable(s.deployments))
        wait, chosen = min(
            ((self._ready_in(d, last, history, s.now), i) for i, d in enumerate(usable)),
        )
        deployment = usable[chosen]
        if s.delivery_calls and s.budget_left_s <= 0:
            return Requeue(max(1.0, wait), "the invocation's time budget is used")
        if wait <= 0:
            partials = keep_alive_partials(s.requested_partials, self.min_partial_images, history)
            return Send(deployment.name, partials)
        if s.now + wait >= s.deadline:
            return GiveUp(
                ErrorKind.DEADLINE_EXCEEDED,
                _deadline_message(history, f"would pass before the next try (in {wait:.0f}s)"),
            )
        reason = self._wait_reason(deployment, last, wait)
        if wait <= self.inline_wait_max_s and wait <= max(0.0, s.budget_left_s):
            return Wait(wait, reason)
        return Requeue(min(wait, MAX_REQUEUE_DELAY_S), reason)

    def _ended(
        self, last: AttemptRecord, history: list[AttemptRecord], s: Situation
    ) -> GiveUp | FailInvocation | None:
        """Whether the last attempt ends this image's tries (or this delivery's)."""
        verdict = judge(last)
        if verdict.category is Category.FINAL:
            return GiveUp(
                ErrorKind.RETRIES_EXHAUSTED,
                f"the service said not to retry (x-should-retry: false); last: {describe(last)}",
            )
        if verdict.category is Category.PERMANENT:
            filtered = last.outcome is Outcome.CONTENT_FILTER
            kind = ErrorKind.CONTENT_FILTER if filtered else ErrorKind.INVALID_REQUEST
            return GiveUp(kind, f"the service refused the request: {describe(last)}")
        billed = billed_attempts(history)
        if billed >= self.max_attempts and verdict.category is not Category.SUCCESS:
            return GiveUp(
                ErrorKind.RETRIES_EXHAUSTED,
                f"gave up after {billed} attempts (cap {self.max_attempts}); last: {describe(last)}",
            )
        unreachable = sum(
            1
            for r in history
            if judge(r).unreachable and epoch_s(r.started_at) >= s.delivery_started
        )
        if verdict.unreachable and unreachable >= self.max_connect_errors:
            # Not billed, so no cap would stop them: an endpoint that refuses every connection is
            # a configuration error. Fail the invocation; the host's maxDequeueCount then poisons.
            return FailInvocation(
                f"could not reach {last.deployment!r} {unreachable} times in this delivery "
                f"(check AZURE_OPENAI_ENDPOINT and the network): {describe(last)}"
            )
        return None

    def _ready_in(
        self,
        deployment: DeploymentView,
        last: AttemptRecord | None,
        history: list[AttemptRecord],
        now: float,
    ) -> float:
        """Seconds until a call to `deployment` may start: its own readiness, and for the
        deployment that just failed, the backoff. A retry goes at once to another usable deployment."""
        ready = max(0.0, deployment.ready_in_s)
        if last is None or last.deployment != deployment.name:
            return ready
        return max(ready, self._backoff_until(last, history) - now)

    def _backoff_until(self, last: AttemptRecord, history: list[AttemptRecord]) -> float:
        """Epoch seconds before which the failed deployment gets no retry of this image."""
        verdict = judge(last)
        started = epoch_s(last.started_at)
        ended = started + last.elapsed_s
        if verdict.category in (Category.SUCCESS, Category.CONFIGURATION):
            # A success whose image was lost is made again at once; a configuration error is the
            # router's business (it takes the deployment out of rotation in this process).
            return ended
        if verdict.category is Category.THROTTLED and last.retry_after_s is not None:
            # Retry-After counts from when the answer's headers arrived.
            heard = started + (last.headers_s if last.headers_s is not None else last.elapsed_s)
            return heard + min(max(0.0, last.retry_after_s), MAX_RETRY_AFTER_S)
        wait = full_jitter_backoff(
            _trailing_failures(history, throttled=verdict.category is Category.THROTTLED),
            self.backoff_base_s,
            self.backoff_max_s,
            self.jitter(last),
        )
        if verdict.unreachable:
            # Kept inline: a continuation would start a new delivery and escape the connect cap.
            wait = min(wait, self.inline_wait_max_s)
        return ended + wait

    @staticmethod
    def _wait_reason(deployment: DeploymentView, last: AttemptRecord | None, wait: float) -> str:
        if deployment.ready_in_s >= wait and deployment.reason:
            return f"{deployment.name}: {deployment.reason}"
        if last is not None and not last.succeeded:
            return f"retry of image {last.image_index} after {last.outcome.value} in {wait:.1f}s"
        return f"{deployment.name}: ready in {wait:.1f}s"


def _trailing_failures(history: Sequence[AttemptRecord], *, throttled: bool) -> int:
    """The backoff exponent: failures of this kind since the image's last success, at least 1.

    Throttles and other failures back off separately: a run of 429s answered by their own
    Retry-After should not stretch the wait after a server error, and vice versa. Connection errors
    count although they are not billed, so an unreachable endpoint backs off exponentially.
    """
    count = 0
    for record in reversed(history):
        category = judge(record).category
        if category is Category.SUCCESS:
            break
        if (category is Category.THROTTLED) == throttled:
            count += 1
    return max(1, count)


def _deadline_message(history: Sequence[AttemptRecord], what: str) -> str:
    tail = f"; last: {describe(history[-1])}" if history else "; no call was made"
    return f"the request's deadline (IMAGE_REQUEST_DEADLINE_S) {what} after {len(history)} attempt(s){tail}"


def _none_usable(deployments: Sequence[DeploymentView]) -> str:
    parts = "; ".join(f"{d.name} ({d.reason})" for d in deployments)
    return (
        "no deployment can serve requests (check endpoint, deployment name, key or role): " + parts
    )
