"""Backoff arithmetic and the keep-alive rule for `partial_images`: pure functions.

The jitter is drawn from the failed attempt itself (a seed made of its start time, number and
deployment), so the wait after a given attempt is a fact about that attempt: the planner can be asked
again after a sleep, or in another delivery, and names the same moment. Different attempts, and so
different requests failing together, still spread over the whole interval.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from shared.records.attempts import AttemptRecord, Outcome

__all__ = ["MAX_PARTIAL_IMAGES", "full_jitter_backoff", "jitter_fraction", "keep_alive_partials"]

MAX_PARTIAL_IMAGES = 3  # the API accepts 0..3


def full_jitter_backoff(failures: int, base_s: float, max_s: float, fraction: float) -> float:
    """`fraction` (in [0, 1)) of min(max_s, base_s * 2 ** (failures - 1)): AWS's "full jitter".

    Full jitter spreads clients that failed together (a worker crash fails every stream on it) over
    the whole interval instead of sending them back in a synchronised wave.
    """
    if failures <= 0 or max_s <= 0 or base_s <= 0:
        return 0.0
    exponent = min(failures - 1, 64)  # 2.0 ** 1100 overflows; the cap is reached long before
    return fraction * min(max_s, base_s * 2.0**exponent)


def jitter_fraction(record: AttemptRecord) -> float:
    """A uniform draw in [0, 1) that is the same every time it is asked for the same attempt."""
    seed = f"{record.started_at}|{record.attempt}|{record.image_index}|{record.deployment}"
    return random.Random(seed).random()  # str seeds hash with SHA-512: stable across processes


def keep_alive_partials(
    requested: int, minimum: int, image_history: Sequence[AttemptRecord]
) -> int:
    """`partial_images` for the next call: at least the keep-alive minimum, at most 3.

    The gateway answers 408 when no byte has flowed for 60 s. A partial image is what keeps the
    stream alive, so after a 408 the next call asks for one more than the one that timed out, to make
    the first partial arrive sooner.
    """
    wanted = max(requested, minimum)
    for record in reversed(image_history):
        if record.outcome is Outcome.GATEWAY_TIMEOUT or record.http_status == 408:
            wanted = max(wanted, record.partial_images_sent + 1)
            break
    return max(0, min(MAX_PARTIAL_IMAGES, wanted))
