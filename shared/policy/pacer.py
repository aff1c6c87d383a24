"""Sends to one deployment spaced evenly at its rate: GCRA, with AIMD on the 429s that still come.

Azure OpenAI does not count a deployment's requests per minute over a sliding minute: it evaluates
the rate over short periods (1 or 10 s) and answers 429 when a period's share of the per-minute limit
is spent. Ten calls in one second at 10 RPM are a burst, most of them refused although the minute's
total is fine. So calls are paced, not counted: the generic cell rate algorithm keeps a theoretical
arrival time (`tat`) that moves one interval (window / rpm) per send; a send may go when `now` is
within `burst - 1` intervals of it. That is a leaky bucket of depth `burst`: sends come at most
`burst` at a time and then one per interval, whatever the number of callers.

Feedback, when the service admits less than its nominal rate (shared by another client, or a
quota lowered since the setting was written): each 429 lengthens the interval by `slowdown` (a
multiplicative decrease of the rate), and pauses the deployment until its Retry-After for every
caller that shares this pace; each send lets the interval recover by a small additive step of the
rate, up to the nominal one. A 429 gives back the slot its call took. `Pace` is a pure value; the
holders are `PaceKeeper` (this process) and `shared.storage.quota.BlobPacer` (every instance).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

__all__ = ["Pace", "PaceKeeper", "PacePolicy"]

_MIN_WAIT_S = 0.001
# Spacing 2 % wider than nominal: a send leaves on our slot but arrives a varying moment later, and
# that jitter must not put two sends into one of the service's evaluation periods.
DEFAULT_GUARD = 0.02


@dataclass(frozen=True, slots=True)
class PacePolicy:
    """How a deployment's sends are spaced: the nominal rate and how it adapts."""

    rpm: int
    window_s: float = (
        60.0  # the per-minute limit's minute (tests shrink it with the emulator's clock)
    )
    burst: int = 1  # sends allowed ahead of the even schedule
    guard: float = (
        0.02  # spacing this much wider than nominal, against arrival jitter at period edges
    )
    slowdown: float = 1.25  # a 429 multiplies the interval by this (the rate by 0.8)
    recovery: float = 0.02  # each send adds this share of the nominal rate back
    slowest: float = 8.0  # the interval never grows past this many nominal intervals
    # A send that left this share of an interval late does not push the schedule back: slots keep
    # their places, so the per-send overhead (a storage round trip) does not slow the pace. Small
    # enough that no 10 s period ever holds more than RPM x 10 / 60 rounded up at the guard's pace.
    catch_up: float = 0.1

    def __post_init__(self) -> None:
        if self.rpm < 1 or not self.window_s > 0 or self.burst < 1:
            raise ValueError("rpm and burst must be at least 1, window_s positive")

    @property
    def nominal_s(self) -> float:
        return self.window_s / self.rpm * (1.0 + self.guard)


@dataclass(frozen=True, slots=True)
class Pace:
    """One deployment's pacing state (epoch seconds, shared by every instance through storage)."""

    interval_s: float  # the current spacing; nominal unless 429s lengthened it
    tat: float = 0.0  # theoretical arrival time of the next send
    paused_until: float = 0.0  # a 429's Retry-After holds every sender back until then

    @classmethod
    def start(cls, policy: PacePolicy) -> Pace:
        return cls(interval_s=policy.nominal_s)

    def fitted(self, policy: PacePolicy) -> Pace:
        """The stored state under the caller's policy (settings are the authority)."""
        low, high = policy.nominal_s, policy.nominal_s * policy.slowest
        interval = min(max(self.interval_s, low), high)
        return self if interval == self.interval_s else replace(self, interval_s=interval)

    def wait_s(self, now: float, policy: PacePolicy) -> float:
        """0 when a send may go at `now`, else how long until one may."""
        earliest = max(self.paused_until, self.tat - (policy.burst - 1) * self.interval_s)
        return 0.0 if now >= earliest else max(_MIN_WAIT_S, earliest - now)

    def admit(self, now: float, policy: PacePolicy) -> tuple[Pace, float]:
        """Take a send at `now` (the new state and 0.0), or say how long to wait (self, seconds)."""
        pace = self.fitted(policy)
        wait = pace.wait_s(now, policy)
        if wait > 0:
            return pace, wait
        # Additive increase of the rate, back toward the nominal one.
        rate = 1.0 / pace.interval_s + policy.recovery / policy.nominal_s
        interval = max(policy.nominal_s, 1.0 / rate)
        on_schedule = now - pace.tat <= policy.catch_up * pace.interval_s
        start = pace.tat if on_schedule else now  # late by more (or idle): the schedule restarts
        return replace(pace, interval_s=interval, tat=start + interval), 0.0

    def throttled(self, now: float, retry_after_s: float | None, policy: PacePolicy) -> Pace:
        """A 429: slow down, give back the refused call's slot, and pause until its Retry-After."""
        pace = self.fitted(policy)
        interval = min(pace.interval_s * policy.slowdown, policy.nominal_s * policy.slowest)
        tat = max(now, pace.tat - pace.interval_s)  # the refused call's slot, returned
        paused = max(pace.paused_until, now + max(0.0, retry_after_s or 0.0))
        return Pace(interval_s=interval, tat=max(tat, paused), paused_until=paused)


class PaceKeeper:
    """One `Pace` per deployment for this process only (`IMAGE_QUOTA_SCOPE=process`). Thread-safe."""

    def __init__(
        self,
        *,
        window_s: float = 60.0,
        burst: int = 1,
        guard: float = DEFAULT_GUARD,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._window_s = window_s
        self._burst = burst
        self._guard = guard
        self._clock = clock
        self._paces: dict[str, Pace] = {}
        self._lock = threading.Lock()

    def policy(self, rpm: int) -> PacePolicy:
        return PacePolicy(rpm=rpm, window_s=self._window_s, burst=self._burst, guard=self._guard)

    def acquire_wait(self, name: str, rpm: int) -> float:
        policy = self.policy(rpm)
        with self._lock:
            pace = self._paces.get(name) or Pace.start(policy)
            pace, wait = pace.admit(self._clock(), policy)
            self._paces[name] = pace
            return wait

    def throttled(self, name: str, rpm: int, retry_after_s: float | None) -> None:
        policy = self.policy(rpm)
        with self._lock:
            pace = self._paces.get(name) or Pace.start(policy)
            self._paces[name] = pace.throttled(self._clock(), retry_after_s, policy)

    def pace(self, name: str, rpm: int) -> Pace:
        with self._lock:
            return self._paces.get(name) or Pace.start(self.policy(rpm))
