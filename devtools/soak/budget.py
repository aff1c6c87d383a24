"""One time budget for a whole soak, shorter than the test's timeout, that every wait draws from.

Why: each wait used to have its own deadline, and their sum exceeded the test's timeout, so a stuck
soak was killed by pytest-timeout and its report lost. Now a wait gets what it asks for or what is
left, whichever is less; the last `reserve_s` is kept for gathering the evidence and stopping the
services, so a soak that runs out of time still judges and reports what it saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from devtools.services import wait_until


class OutOfBudget(TimeoutError):
    """A wait was cut short by the soak's budget, not by its own deadline."""


@dataclass
class Budget:
    total_s: float
    reserve_s: float
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if not 0 < self.reserve_s < self.total_s:
            raise ValueError(f"budget: reserve {self.reserve_s}s must be inside {self.total_s}s")

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        """What the waits may still use (the reserve excluded)."""
        return self.total_s - self.reserve_s - self.elapsed()

    def allow(self, wanted_s: float) -> float:
        return max(0.0, min(wanted_s, self.left()))

    def final(self, wanted_s: float) -> float:
        """For gathering and stopping: the reserve counts, and a little is always granted."""
        return max(1.0, min(wanted_s, self.total_s - self.elapsed()))

    def require(self, needed_s: float, what: str) -> None:
        """Fail now, before starting something that cannot be stopped halfway (an outage)."""
        if self.left() < needed_s:
            raise OutOfBudget(self._message(what))

    def wait_until(
        self, condition: Callable[[], bool], wanted_s: float, interval: float, what: str
    ) -> None:
        """`devtools.services.wait_until` within the budget; `OutOfBudget` if it cut the wait."""
        timeout = self.allow(wanted_s)
        try:
            wait_until(condition, timeout, interval, what=what)
        except TimeoutError:
            if timeout < wanted_s:
                raise OutOfBudget(self._message(what)) from None
            raise

    def _message(self, what: str) -> str:
        return (
            f"the soak's {self.total_s:.0f}s budget ran out after {self.elapsed():.0f}s "
            f"waiting for {what}"
        )
