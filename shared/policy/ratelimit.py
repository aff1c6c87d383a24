"""Client-side request quota per deployment: a sliding window of our own sends.

A deployment allows N requests per minute; a request beyond that gets a 429. The 429 costs nothing,
but it costs a round trip and, at the host's concurrency, many of them arrive at once. So before
each call the pipeline asks this limiter how long to wait. `SlidingWindow` is a pure value (state
advances by returning a new window, time is an argument); `RateLimiter` is a thin thread-safe holder
of one window per deployment with an injected clock. It only knows this process's sends: other
instances share the quota, which is why the server's `x-ratelimit-remaining-requests` can tighten
the window (`observe_headers`), and why a 429 is still handled by the retry policy.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

__all__ = ["Admission", "RateLimiter", "SlidingWindow"]

_MIN_WAIT_S = 0.001


@dataclass(frozen=True, slots=True)
class Admission:
    """The limiter's answer: send now (`allowed`), or wait `wait_s` and ask again."""

    allowed: bool
    wait_s: float
    remaining: int


@dataclass(frozen=True, slots=True)
class SlidingWindow:
    """Send times (sorted) within the last `window_s` seconds; at most `limit` may be in it."""

    limit: int
    window_s: float = 60.0
    sent: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")
        if not self.window_s > 0:
            raise ValueError(f"window_s must be positive, got {self.window_s}")

    def pruned(self, now: float) -> SlidingWindow:
        """The window without the sends that left it: a send at t counts until t + window_s."""
        cut = bisect.bisect_right(self.sent, now - self.window_s)
        return self if cut == 0 else replace(self, sent=self.sent[cut:])

    def remaining(self, now: float) -> int:
        return max(0, self.limit - len(self.pruned(now).sent))

    def admit(self, now: float) -> tuple[SlidingWindow, Admission]:
        """Record a send at `now` if the window has room; otherwise say how long until it has."""
        window = self.pruned(now)
        count = len(window.sent)
        if count < self.limit:
            sent = _insert(window.sent, now)
            return replace(window, sent=sent), Admission(True, 0.0, self.limit - len(sent))
        # The send whose expiry brings the count below the limit (padding can make count > limit).
        frees_at = window.sent[count - self.limit] + self.window_s
        # Strictly positive: a wait of 0 would read as "sent" to callers of `acquire_wait`.
        return window, Admission(False, max(_MIN_WAIT_S, frees_at - now), 0)

    def observe_headers(
        self, now: float, remaining: int | None, reset_s: float | None
    ) -> SlidingWindow:
        """Believe the server when it says fewer requests remain than we think.

        Other instances (or other clients of the deployment) spend the same quota. When the server
        reports `remaining` below our count, pad the window with placeholder sends so we do not send
        a request certain to get a 429. They expire when the server says its window resets
        (`reset_s` from now), or a full window from now when it does not say. A server reporting
        more room than we think is ignored: our own sends are facts, its count may lag.
        """
        window = self.pruned(now)
        if remaining is None:
            return window
        ours = self.limit - len(window.sent)
        missing = ours - max(0, remaining)
        if missing <= 0:
            return window
        expires = now + (
            self.window_s if reset_s is None else min(max(0.0, reset_s), self.window_s)
        )
        placeholder = expires - self.window_s
        if placeholder <= now - self.window_s:
            return window  # the server's window resets now: nothing to hold back
        # One splice, not `missing` inserts: a large limit must not make this quadratic.
        at = bisect.bisect_right(window.sent, placeholder)
        sent = (*window.sent[:at], *(placeholder,) * missing, *window.sent[at:])
        return replace(window, sent=sent)


def _insert(sent: tuple[float, ...], moment: float) -> tuple[float, ...]:
    # Keeps the tuple sorted even if a caller's clock is not monotonic.
    at = bisect.bisect_right(sent, moment)
    return (*sent[:at], moment, *sent[at:])


class RateLimiter:
    """One `SlidingWindow` per deployment name, shared by the worker threads of this process.

    Callers loop: `wait = acquire_wait(name, rpm)`; if it is positive, sleep that long and ask
    again; at 0 the send has been recorded and the caller must send. The clock is injected (by
    default `time.monotonic`) so tests drive it by hand.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = 60.0) -> None:
        self._clock = clock
        self._window_s = window_s
        self._windows: dict[str, SlidingWindow] = {}
        self._lock = threading.Lock()

    def _window(self, name: str, limit: int) -> SlidingWindow:
        window = self._windows.get(name)
        if window is None:
            return SlidingWindow(limit=limit, window_s=self._window_s)
        return window if window.limit == limit else replace(window, limit=limit)

    def acquire_wait(self, name: str, limit: int) -> float:
        """0.0 when a send is allowed now (and recorded); otherwise seconds to wait first."""
        with self._lock:
            window, admission = self._window(name, limit).admit(self._clock())
            self._windows[name] = window
            return admission.wait_s if not admission.allowed else 0.0

    def observe(
        self, name: str, limit: int, remaining: int | None, reset_s: float | None = None
    ) -> None:
        """Feed the server's view back: rate-limit headers, or `remaining=0` after a 429."""
        with self._lock:
            window = self._window(name, limit).observe_headers(self._clock(), remaining, reset_s)
            self._windows[name] = window

    def snapshot(self, name: str) -> SlidingWindow | None:
        with self._lock:
            return self._windows.get(name)
