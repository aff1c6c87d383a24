"""What a request's answer will be and when each part of it is sent (emulated seconds from arrival).

`plan()` is pure: the request, the outcome (scripted, a random fault, or None) and the gateway
timeout decide it. The gateway rule lives here once: when the first byte would come later than the
timeout, the answer is a 408 at the timeout instead, whichever outcome made it late.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from . import events, timing
from .limiter import client_seconds
from .script import Outcome
from .validation import ImageRequest


class StepKind(Enum):
    PARTIAL = "partial"
    COMPLETED = "completed"
    ERROR = "error"  # SSE error frame, or a 500 JSON when not streaming
    DROP = "drop"  # half of the event due, then the connection closes


@dataclass(frozen=True, slots=True)
class Step:
    at_s: float
    kind: StepKind
    partial_index: int | None = None  # which partial (for DROP: the event cut in half)
    tamper: str | None = None  # a scripted bad payload: a `bad_completed` payload, or "bad_index"


@dataclass(frozen=True, slots=True)
class Answer:
    """One JSON response at `at_s`."""

    status: int
    body: dict[str, Any]
    outcome: str
    at_s: float = 0.0
    retry_after_s: float | None = None  # emulated; 429s carry retry-after headers


@dataclass(frozen=True, slots=True)
class Delivery:
    """The model's work: an SSE stream (`stream`) or one JSON result at the last step."""

    stream: bool
    steps: tuple[Step, ...]

    @property
    def outcome(self) -> str:
        last = self.steps[-1].kind
        if last is StepKind.COMPLETED and any(s.tamper for s in self.steps):
            return "bad_partial_index" if self.steps[-1].tamper is None else "bad_completed"
        return {StepKind.COMPLETED: "succeeded", StepKind.ERROR: "server_error"}.get(
            last, "dropped"
        )

    @property
    def partials(self) -> int:
        """Partial images in the plan: what the completed event's usage bills."""
        return sum(1 for s in self.steps if s.kind is StepKind.PARTIAL)


Plan = Answer | Delivery
_VARIATIONS = ("fewer_partials", "late_first_partial", "bad_completed", "bad_partial_index")


def _work(request: ImageRequest, duration: float) -> list[Step]:
    partials = request.partial_images if request.stream else 0
    sched = timing.schedule(duration, partials)
    steps = [Step(t, StepKind.PARTIAL, i) for i, t in enumerate(sched.partials_at)]
    return [*steps, Step(sched.completed_at, StepKind.COMPLETED)]


def _interrupt(steps: list[Step], outcome: Outcome) -> list[Step]:
    """Cut the work after `after_partials` partials (past the last one: where completed was due)."""
    cut = min(outcome.after_partials, len(steps) - 1)
    head, due = steps[:cut], steps[cut]
    if outcome.kind == "server_error":
        return [*head, Step(due.at_s, StepKind.ERROR)]
    if outcome.kind == "drop":
        return [*head, Step(due.at_s, StepKind.DROP, due.partial_index)]
    # stall: nothing more is sent for `seconds`, then the stream carries on.
    return [*head, *(replace(s, at_s=s.at_s + outcome.seconds) for s in steps[cut:])]


def _vary(steps: list[Step], outcome: Outcome) -> list[Step]:
    """The outcomes that change what a working stream sends, not whether it ends well."""
    if outcome.kind == "fewer_partials":
        # The service: "the final image may be sent before the full number of partial images".
        kept = [s for s in steps if s.kind is StepKind.PARTIAL][: outcome.partials]
        return [*kept, steps[-1]]
    if outcome.kind == "late_first_partial":
        delay = max(0.0, outcome.seconds - steps[0].at_s)
        return [replace(s, at_s=s.at_s + delay) for s in steps]
    if outcome.kind == "bad_completed":
        return [*steps[:-1], replace(steps[-1], tamper=outcome.payload)]
    # bad_partial_index: the first partial, if any was asked.
    if steps[0].kind is StepKind.PARTIAL:
        return [replace(steps[0], tamper="bad_index"), *steps[1:]]
    return steps


def plan(
    request: ImageRequest,
    outcome: Outcome | None,
    gateway_timeout_s: float,
    *,
    api_version: str,
    time_scale: float,
) -> Plan:
    kind = outcome.kind if outcome else "ok"
    if kind == "http_error":
        assert outcome is not None
        return Answer(outcome.status, events.http_error(outcome.status), "http_error")
    if kind == "rate_limited":
        assert outcome is not None
        return rate_limited(
            request.endpoint, outcome.retry_after_ms / 1000, api_version, time_scale
        )
    if kind == "content_filter":
        assert outcome is not None
        body = events.content_filter(
            outcome.shape, outcome.category, outcome.severity, request.prompt
        )
        return Answer(400, body, "content_filter")
    if kind == "resource_blocked":
        assert outcome is not None
        return Answer(403, events.resource_blocked(outcome.reason), "resource_blocked")
    if kind == "gateway_timeout":
        return gateway_timeout(gateway_timeout_s)
    duration = timing.duration_s(request.width, request.height, request.quality)
    if kind == "slow" and outcome is not None and outcome.duration_s is not None:
        duration = outcome.duration_s
    steps = _work(request, duration)
    if outcome is not None and kind in ("server_error", "drop", "stall"):
        steps = _interrupt(steps, outcome)
    if outcome is not None and kind in _VARIATIONS:
        steps = _vary(steps, outcome)
    if steps[0].at_s > gateway_timeout_s:
        return gateway_timeout(gateway_timeout_s)
    return Delivery(request.stream, tuple(steps))


def gateway_timeout(gateway_timeout_s: float) -> Answer:
    return Answer(408, events.TIMEOUT_BODY, "gateway_timeout", at_s=gateway_timeout_s)


def rate_limited(
    endpoint: str, retry_after_s: float, api_version: str, time_scale: float
) -> Answer:
    """A 429; its message names the wait the client really has (scaled), as the headers do."""
    seconds, _ = client_seconds(retry_after_s, time_scale)
    body = events.rate_limited(endpoint, api_version, seconds)
    return Answer(429, body, "rate_limited", retry_after_s=retry_after_s)
