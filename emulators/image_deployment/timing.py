"""How long the model takes, and when each streamed event is ready (emulated seconds).

duration = Q × (pixels / 1024²)^0.72, Q = 22 s low, 45 s medium or auto, 90 s high
(1024² low ≈ 22 s, 2048² high ≈ 244 s, 3840x2160 high ≈ 400 s). The first of P partial images is
ready at min(0.12 × duration, 45 s), the rest evenly up to 60 % of the duration, the completed event
at the duration. These figures follow the ticket's observations.
"""

from __future__ import annotations

from dataclasses import dataclass

QUALITY_SECONDS = {"low": 22.0, "medium": 45.0, "auto": 45.0, "high": 90.0}
EXPONENT = 0.72
FIRST_PARTIAL_SHARE = 0.12
FIRST_PARTIAL_CAP_S = 45.0
LAST_PARTIAL_SHARE = 0.6


@dataclass(frozen=True, slots=True)
class Schedule:
    partials_at: tuple[float, ...]
    completed_at: float


def duration_s(width: int, height: int, quality: str) -> float:
    return QUALITY_SECONDS[quality] * ((width * height) / 1_048_576) ** EXPONENT


def schedule(duration: float, partials: int) -> Schedule:
    if partials <= 0:
        return Schedule((), duration)
    first = min(FIRST_PARTIAL_SHARE * duration, FIRST_PARTIAL_CAP_S)
    last = max(LAST_PARTIAL_SHARE * duration, first)
    if partials == 1:
        return Schedule((first,), duration)
    step = (last - first) / (partials - 1)
    return Schedule(tuple(first + i * step for i in range(partials)), duration)
