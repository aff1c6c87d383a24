"""Randomized exponential polling back-off, as the queue listener uses between empty polls."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

MINIMUM_POLLING_INTERVAL_S = 0.1


@dataclass(frozen=True, slots=True)
class PollingBackoff:
    """How long to wait before the next poll; `after_empty` doubles it, `reset` after a hit."""

    maximum_s: float
    minimum_s: float = MINIMUM_POLLING_INTERVAL_S
    empty_polls: int = 0

    def after_empty(self) -> PollingBackoff:
        return replace(self, empty_polls=min(self.empty_polls + 1, 30))

    def reset(self) -> PollingBackoff:
        return replace(self, empty_polls=0)

    def delay(self, rng: random.Random) -> float:
        """Minimum times 2^(empty polls - 1), jittered by ±20 %, clamped to [minimum, maximum]."""
        if self.empty_polls == 0:
            return 0.0
        base = self.minimum_s * 2 ** (self.empty_polls - 1)
        return max(self.minimum_s, min(self.maximum_s, base * rng.uniform(0.8, 1.2)))
