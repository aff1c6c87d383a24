"""The requests of a soak and the 429s scripted into the emulator, drawn from one seeded RNG.

Every prompt carries a tag `[soak <id>]`, so the emulator's request log, which never sees our ids,
can be matched to requests, and a scripted outcome can target one request (`prompt_contains`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from devtools.soak.config import SoakConfig

BLOCKED_PHRASE = "forbidden-content"  # given to the emulator as --blocked-phrase
FAULT_MIN_LONG_SIDE = 2048  # the emulator's random faults hit only these
# (size, weight): about 40 % of the images are large enough for random mid-stream faults.
SIZES = (
    ("1024x1024", 30), ("1536x1024", 15), ("1024x1536", 10),
    ("2048x1024", 20), ("2048x1152", 10), ("2048x2048", 10), ("1024x2048", 5),
)  # fmt: skip
QUALITIES = ("low", "medium", "high")
SUBJECTS = ("a lighthouse at dusk", "a fox in snow", "a tram in Lisbon", "a bowl of ramen")


def tag(request_id: str) -> str:
    return f"[soak {request_id}]"


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    id: str
    body: dict[str, Any]
    content_filter: bool  # the emulator will refuse it: it must end failed/content_filter
    scripted_429s: int

    @property
    def n(self) -> int:
        return int(self.body.get("n", 1))

    @property
    def fault_eligible(self) -> bool:
        width, height = (int(v) for v in self.body["size"].split("x"))
        return max(width, height) >= FAULT_MIN_LONG_SIDE


@dataclass(frozen=True, slots=True)
class Workload:
    requests: tuple[PlannedRequest, ...]
    script: tuple[dict[str, Any], ...]  # POST /_emulator/script entries

    def by_id(self) -> dict[str, PlannedRequest]:
        return {r.id: r for r in self.requests}


def plan_workload(config: SoakConfig) -> Workload:
    rng = random.Random(config.seed)
    sizes, weights = zip(*SIZES, strict=True)
    requests: list[PlannedRequest] = []
    script: list[dict[str, Any]] = []
    for i in range(config.requests):
        request_id = f"soak-{i:04d}"
        blocked = rng.random() < config.content_filter_share
        prompt = f"{tag(request_id)} {rng.choice(SUBJECTS)}"
        body: dict[str, Any] = {
            "id": request_id,
            "prompt": f"{prompt} {BLOCKED_PHRASE}" if blocked else prompt,
            "size": rng.choices(sizes, weights)[0],
            "quality": rng.choice(QUALITIES),
            "metadata": {"soak": "1"},
        }
        if rng.random() < 0.15:
            body["n"] = 2
        if rng.random() < 0.15:
            body["save_partials"] = True
            body["partial_images"] = rng.choice((1, 2))
        if rng.random() < 0.15:
            body["output_format"] = "jpeg"
        throttled = 0
        if not blocked and rng.random() < config.scripted_429_share:
            throttled = rng.choice((1, 2))
            script += [
                {
                    "outcome": "rate_limited",
                    "retry_after_ms": rng.choice((500, 1000, 3000)),  # emulated ms
                    "prompt_contains": tag(request_id),
                }
                for _ in range(throttled)
            ]
        requests.append(PlannedRequest(request_id, body, blocked, throttled))
    return Workload(tuple(requests), tuple(script))
