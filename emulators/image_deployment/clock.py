"""Emulated time: the service's durations run `time_scale` times as fast on the wall clock.

Everything inside the emulator (timing model, rate window, gateway timeout, scripted durations) is
in emulated seconds. The two edges convert: sleeping waits `scale` times as long on the real clock,
and every time the client sees (retry-after, retry-after-ms, x-ratelimit-reset-requests) is the
emulated value times `scale`, because that is how long the client really has to wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Emulated seconds since an arbitrary origin."""
        ...

    def wait_until(self, emulated_s: float, stop: threading.Event | None = None) -> bool:
        """Block until `now() >= emulated_s`; False if `stop` was set first."""
        ...

    def to_client_s(self, emulated_s: float) -> float:
        """The real seconds the client experiences for an emulated duration."""
        ...


@dataclass(frozen=True, slots=True)
class ScaledClock:
    scale: float
    monotonic: Callable[[], float] = field(default=time.monotonic, repr=False)

    def now(self) -> float:
        return self.monotonic() / self.scale

    def wait_until(self, emulated_s: float, stop: threading.Event | None = None) -> bool:
        gate = stop if stop is not None else threading.Event()
        while True:
            remaining = (emulated_s - self.now()) * self.scale
            if remaining <= 0:
                return True
            if gate.wait(remaining):
                return False

    def to_client_s(self, emulated_s: float) -> float:
        return emulated_s * self.scale
