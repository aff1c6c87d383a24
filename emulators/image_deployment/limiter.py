"""Requests-per-minute limit per deployment, in emulated time, by one of two models.

`periods` (how Azure OpenAI counts): the service "evaluates the rate of incoming requests over a
small period of time, typically 1 or 10 seconds" and answers 429 when the rate in that period would
exceed the per-minute limit. Each period of P seconds admits RPM x P / 60 requests, rounded by a
selectable rule. Ten calls in one second at 10 RPM are a burst: with P = 10 only the period's
allowance gets through, although the minute's total is within the limit. A 429's `retry-after-ms`
and `retry-after` count to the start of the next period.

- Rounding, default `ceil`: an evenly paced client can never put more than ceil(RPM x P / 60) calls
  in one period (calls spaced 60 / RPM apart, in a half-open interval of P seconds), so `ceil` is the
  one rule under which a client pacing at exactly its RPM never sees a 429. `floor` is stricter
  (10 RPM, P = 10: 1 per period, 6 a minute), `round` rounds half up. Every rule admits at least one
  call per period, or a 1 s period below 60 RPM would refuse everything; so at 10 RPM the 1 s mode
  admits one call a second, up to 60 a minute. Azure's example of 1 s evaluation is a 600 RPM
  deployment (10 a second); use the 1 s mode for limits that high.
- Alignment: per deployment, as Azure counts per deployment. A deployment's grid of periods starts
  at the first request it counts (after start-up or a reset) and then stays fixed, idle or not: the
  client cannot know the phase, and a burst's outcome does not depend on where the emulator's clock
  happens to stand.
- Admit fraction: a deployment may admit less than its nominal allowance (a real one does: a
  burst got a 429 on its 6th call while the headers still reported 45 remaining). It then admits
  the exact allowance times the fraction, rounded by the same rule (at least one), while its
  headers keep reporting the nominal allowance. The fraction applies to the sliding model too.
- Headers, as Azure sends them: `x-ratelimit-limit-requests` is the per-period allowance, not the
  RPM (a 120 RPM deployment reports 20, a 300 RPM one 50 at P = 10), and `x-ratelimit-remaining-
  requests` what is left of it in the current period. Azure sends no `x-ratelimit-reset-requests`
  (its deployments expose only the remaining counts), so this model sends none either: a client
  must learn the period from 429s. `x-ratelimit-remaining-tokens` is not sent: Azure reports it
  against a tokens-per-minute quota, and an image deployment's quota is stated in requests per
  minute (gpt-image: capacity units of 3 RPM); a made-up token count would be a signal a client
  could act on with nothing behind it.
  (Sources: the Azure OpenAI quota documentation, and Microsoft Q&A answers and user reports on its
  rate limits and headers.)

`sliding`: a sliding 60 s window; it admits RPM requests in any 60 s and sends the OpenAI-style
`x-ratelimit-reset-requests` (until the oldest admitted request leaves the window).

In both models a refused request does not count (as on Azure, a 429 does not use up quota).
`Window` and `Periods` are values: `admit` returns a `Decision` and the next value, so the policy is
testable with plain numbers. `RateLimiter` only keeps each deployment's current value behind a lock.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction

WINDOW_S = 60.0


class RateModel(Enum):
    SLIDING = "sliding"
    PERIODS = "periods"


class Rounding(Enum):
    FLOOR = "floor"
    CEIL = "ceil"
    ROUND = "round"  # half up, not Python's half to even


@dataclass(frozen=True, slots=True)
class RateRule:
    """How one deployment is limited right now (from the current Config)."""

    rpm: int
    model: RateModel = RateModel.SLIDING
    period_s: float = 10.0
    rounding: Rounding = Rounding.CEIL
    admit_fraction: float = 1.0

    @property
    def window_s(self) -> float:
        return WINDOW_S if self.model is RateModel.SLIDING else self.period_s

    @property
    def limit(self) -> int:
        """The nominal allowance of one window: what the headers report."""
        return _rounded(self._exact(), self.rounding)

    @property
    def admits(self) -> int:
        """The allowance the deployment really grants (the nominal one times the fraction)."""
        return _rounded(self._exact() * Fraction(str(self.admit_fraction)), self.rounding)

    def _exact(self) -> Fraction:
        # Exact decimal arithmetic: 100 RPM x 10 s / 60 x 0.9 is 15, not 15.000000000000002 (ceil 16).
        return Fraction(self.rpm) * Fraction(str(self.window_s)) / 60


def _rounded(value: Fraction, rule: Rounding) -> int:
    if rule is Rounding.FLOOR:
        whole = math.floor(value)
    elif rule is Rounding.CEIL:
        whole = math.ceil(value)
    else:
        whole = math.floor(value + Fraction(1, 2))
    return max(1, whole)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the limiter said; times are emulated seconds."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float  # 0 when allowed
    reset_s: float | None  # sliding: until the oldest admitted request leaves; periods: not sent


@dataclass(frozen=True, slots=True)
class Window:
    """The sliding model: emulated arrival times of the admitted requests of the last 60 s."""

    admitted: tuple[float, ...] = ()

    def _live(self, now: float) -> tuple[float, ...]:
        return tuple(t for t in self.admitted if t > now - WINDOW_S)

    def peek(self, now: float, rule: RateRule) -> Decision:
        live = self._live(now)
        reset = live[0] + WINDOW_S - now if live else 0.0
        remaining = max(0, rule.limit - len(live))
        if len(live) < rule.admits:
            return Decision(True, rule.limit, remaining, 0.0, reset)
        # The request may go when enough old ones have left for one slot to free up.
        wait = live[len(live) - rule.admits] + WINDOW_S - now
        return Decision(False, rule.limit, remaining, max(wait, 0.0), reset)

    def admit(self, now: float, rule: RateRule) -> tuple[Decision, Window]:
        decision = self.peek(now, rule)
        if not decision.allowed:
            return decision, Window(self._live(now))
        live = (*self._live(now), now)
        remaining = max(0, rule.limit - len(live))
        return Decision(True, rule.limit, remaining, 0.0, live[0] + WINDOW_S - now), Window(live)


@dataclass(frozen=True, slots=True)
class Periods:
    """The periods model: the current period of one deployment and what it admitted."""

    start: float
    length: float
    admitted: int = 0

    def current(self, now: float, length: float) -> Periods:
        if length != self.length:  # the period was changed at run time: a new grid from now
            return Periods(now, length)
        if now < self.start + length:  # also a request timed just before a concurrent one
            return self
        passed = math.floor((now - self.start) / length)
        return Periods(self.start + passed * length, length)

    def peek(self, now: float, rule: RateRule) -> Decision:
        period = self.current(now, rule.period_s)
        remaining = max(0, rule.limit - period.admitted)
        if period.admitted < rule.admits:
            return Decision(True, rule.limit, remaining, 0.0, None)
        wait = period.start + period.length - now
        return Decision(False, rule.limit, remaining, max(wait, 0.0), None)

    def admit(self, now: float, rule: RateRule) -> tuple[Decision, Periods]:
        period = self.current(now, rule.period_s)
        decision = period.peek(now, rule)
        if not decision.allowed:
            return decision, period
        period = Periods(period.start, period.length, period.admitted + 1)
        remaining = max(0, rule.limit - period.admitted)
        return Decision(True, rule.limit, remaining, 0.0, None), period


class RateLimiter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, Window | Periods] = {}

    def _state(self, deployment: str, now: float, rule: RateRule) -> Window | Periods:
        # A model switched at run time starts from nothing: the two histories do not translate.
        state = self._states.get(deployment)
        if rule.model is RateModel.SLIDING:
            return state if isinstance(state, Window) else Window()
        return state if isinstance(state, Periods) else Periods(now, rule.period_s)

    def admit(self, deployment: str, now: float, rule: RateRule) -> Decision:
        with self._lock:
            decision, state = self._state(deployment, now, rule).admit(now, rule)
            self._states[deployment] = state
            return decision

    def peek(self, deployment: str, now: float, rule: RateRule) -> Decision:
        """The headers of a request refused before the limit (it is not counted, and a
        deployment's first period does not start with it)."""
        with self._lock:
            return self._state(deployment, now, rule).peek(now, rule)

    def reset(self) -> None:
        with self._lock:
            self._states.clear()


def client_seconds(emulated_s: float, scale: float) -> tuple[int, int]:
    """(retry-after in whole seconds rounded up, at least 1; retry-after-ms) as the client sees them."""
    ms = max(1, math.ceil(emulated_s * scale * 1000))
    return max(1, math.ceil(ms / 1000)), ms


def _reset_text(emulated_s: float, scale: float) -> str:
    ms = max(0, round(emulated_s * scale * 1000))
    return f"{ms}ms" if ms < 1000 else f"{ms / 1000:g}s"


def headers(decision: Decision, scale: float) -> dict[str, str]:
    """The x-ratelimit-* headers of an answer (see the module docstring for the choice)."""
    shown = {
        "x-ratelimit-limit-requests": str(decision.limit),
        "x-ratelimit-remaining-requests": str(decision.remaining),
    }
    if decision.reset_s is not None:
        shown["x-ratelimit-reset-requests"] = _reset_text(decision.reset_s, scale)
    return shown
