"""What one soak run does: how many requests, how hard the faults, when the disruptions come."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class SoakConfig:
    requests: int = 300
    seed: int = 7
    fault_rate: float = 0.3  # mid-stream server_error on images with a long side >= 2048
    time_scale: float = 0.01  # emulator clock: a 245 s image takes 2.45 s
    payload_scale: float = 0.01
    scripted_429_share: float = 0.12  # requests that get one or two scripted 429s
    content_filter_share: float = 0.03  # prompts the emulator refuses: a permanent failure
    kills: int = 2  # SIGKILLs of host A, each mid-stream
    outage_s: float = 10.0  # Azurite down this long
    # When each disruption may start, as the share of requests with a terminal record.
    kill_at: tuple[float, ...] = (0.15, 0.6)
    outage_at: float | None = 0.35  # None: no outage
    max_attempts: int = 4  # IMAGE_MAX_ATTEMPTS given to the hosts and checked
    lock_lease_s: int = 15  # IMAGE_LOCK_LEASE_S
    message_lease_s: int = 20  # the host's --lease-s: a killed host's messages reappear after it
    threads: int = 8  # PYTHON_THREADPOOL_THREAD_COUNT per host
    disruption_timeout_s: float = 120.0  # a disruption's condition must come true within this
    drain_timeout_s: float = 600.0  # after the last disruption, everything must settle within this
    # Every wait draws from this (`budget.py`); the last `reserve_s` of it gathers and stops. It is
    # shorter than the test's timeout (tests/test_soak.py adds `TEST_MARGIN_S`).
    budget_s: float = 840.0
    reserve_s: float = 60.0
    service_start_s: float = 60.0  # Azurite or the emulator must answer within this
    # A test hook, never the product: once drained, generate one finished image again and store it
    # over the first, as a product that billed an image twice would. The checks must catch it.
    plant_double_generation: bool = False

    def __post_init__(self) -> None:
        if self.requests < 10:
            raise ValueError(f"requests: at least 10, got {self.requests}")
        if len(self.kill_at) != self.kills:
            raise ValueError(f"kill_at: {self.kills} kills need {self.kills} thresholds")
        if not 0 < self.reserve_s < self.budget_s:
            raise ValueError(f"reserve_s: must be inside budget_s ({self.budget_s}s)")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate: must be in 0..1, got {self.fault_rate}")

    def with_requests(self, requests: int) -> SoakConfig:
        return replace(self, requests=requests)


FULL = SoakConfig()
# CI: the same disruptions on fewer requests (the kills and the outage cost the same either way).
# Its waits all come out of one 380 s budget, under the test's timeout: a stuck soak fails itself
# and still reports.
CI = SoakConfig(requests=90, disruption_timeout_s=60.0, drain_timeout_s=150.0, budget_s=380.0)
