"""Requests-per-minute limit: a sliding 60 s window per deployment, in emulated time.

`Window` is a value: `admit` returns a `Decision` and the next window, so the policy is testable with
plain numbers. `RateLimiter` only keeps the current window of each deployment behind a lock.
A refused request does not enter the window (as on Azure, a 429 does not use up quota).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Decision:
    """What the limiter said; times are emulated seconds."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float  # 0 when allowed
    reset_s: float  # until the oldest admitted request leaves the window


@dataclass(frozen=True, slots=True)
class Window:
    admitted: tuple[float, ...] = ()

    def _live(self, now: float) -> tuple[float, ...]:
        return tuple(t for t in self.admitted if t > now - WINDOW_S)

    def peek(self, now: float, limit: int) -> Decision:
        live = self._live(now)
        reset = live[0] + WINDOW_S - now if live else 0.0
        if len(live) < limit:
            return Decision(True, limit, limit - len(live), 0.0, reset)
        # The request may go when enough old ones have left for one slot to free up.
        wait = live[len(live) - limit] + WINDOW_S - now
        return Decision(False, limit, 0, max(wait, 0.0), reset)

    def admit(self, now: float, limit: int) -> tuple[Decision, Window]:
        decision = self.peek(now, limit)
        if not decision.allowed:
            return decision, Window(self._live(now))
        live = (*self._live(now), now)
        reset = live[0] + WINDOW_S - now
        return Decision(True, limit, limit - len(live), 0.0, reset), Window(live)


class RateLimiter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, Window] = {}

    def admit(self, deployment: str, now: float, limit: int) -> Decision:
        with self._lock:
            decision, window = self._windows.get(deployment, Window()).admit(now, limit)
            self._windows[deployment] = window
            return decision

    def peek(self, deployment: str, now: float, limit: int) -> Decision:
        with self._lock:
            return self._windows.get(deployment, Window()).peek(now, limit)

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()


def client_seconds(emulated_s: float, scale: float) -> tuple[int, int]:
    """(retry-after in whole seconds rounded up, at least 1; retry-after-ms) as the client sees them."""
    ms = max(1, math.ceil(emulated_s * scale * 1000))
    return max(1, math.ceil(ms / 1000)), ms
