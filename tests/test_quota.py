"""The cross-instance request budget in a blob, against the running Azurite.

Instances are simulated by separate `BlobQuota` objects, each with its own `BlobServiceClient`
(so its own connection pool): they share nothing but the blob, as Function App instances do.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from shared.policy.breaker import Breaker
from shared.policy.ratelimit import SlidingWindow
from shared.settings import DeploymentConfig
from shared.storage.quota import BlobQuota, decode_window, encode_window
from shared.worker.router import Router, Use


@dataclass
class Clock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class RequestCounter:
    """Counts every HTTP request a client sends (the storage pipeline's per-request hook)."""

    methods: list[str] = field(default_factory=list)

    def __call__(self, request: Any) -> None:
        self.methods.append(request.http_request.method)

    def take(self) -> list[str]:
        taken, self.methods = self.methods, []
        return taken


@pytest.fixture
def container_name(
    azurite_connection_string: str, unique_name: Callable[[str], str]
) -> Iterator[str]:
    name = unique_name("quota")
    yield name
    service = BlobServiceClient.from_connection_string(azurite_connection_string)
    try:
        service.delete_container(name)
    except Exception:  # the test may not have created it; cleanup must not mask its result
        pass


def container(conn: str, name: str, counter: RequestCounter | None = None) -> ContainerClient:
    kwargs: dict[str, Any] = {"raw_request_hook": counter} if counter else {}
    return BlobServiceClient.from_connection_string(conn, **kwargs).get_container_client(name)


def test_limit_respected_by_one_client(azurite_connection_string: str, container_name: str) -> None:
    clock = Clock()
    quota = BlobQuota(container(azurite_connection_string, container_name), clock=clock)
    assert [quota.acquire("dep-a", 3, 60.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    clock.now += 20.0
    assert quota.acquire("dep-a", 3, 60.0) == pytest.approx(40.0)
    assert quota.acquire("dep-b", 3, 60.0) == 0.0  # one window per deployment
    clock.now += 40.0
    assert quota.acquire("dep-a", 3, 60.0) == 0.0
    stored = quota.window("dep-a", 3, 60.0)
    assert stored.sent == (clock.now,)  # the three of a minute ago aged out of the blob too


def test_blob_is_the_serialised_window(azurite_connection_string: str, container_name: str) -> None:
    clock = Clock()
    client = container(azurite_connection_string, container_name)
    BlobQuota(client, clock=clock).acquire("dep-a", 10, 60.0)
    body = json.loads(client.download_blob("dep-a.json").readall())
    assert body == {
        "schema": "imagegen.quota/1",
        "limit": 10,
        "window_s": 60.0,
        "sent": [clock.now],
    }
    window = SlidingWindow(limit=5, window_s=30.0, sent=(1.0, 2.5))
    assert decode_window(encode_window(window), 5, 30.0) == window
    assert decode_window(b"not json", 5, 30.0) == SlidingWindow(limit=5, window_s=30.0)


def test_at_most_two_round_trips_per_acquire_uncontended(
    azurite_connection_string: str, container_name: str
) -> None:
    counter = RequestCounter()
    client = container(azurite_connection_string, container_name, counter)
    client.create_container()
    counter.take()
    clock = Clock()
    quota = BlobQuota(client, clock=clock)
    assert quota.acquire("dep-a", 2, 60.0) == 0.0
    assert counter.take() == ["GET", "PUT"]  # read (404), create with If-None-Match: *
    assert quota.acquire("dep-a", 2, 60.0) == 0.0
    assert counter.take() == ["GET", "PUT"]  # read, write with If-Match
    assert quota.acquire("dep-a", 2, 60.0) > 0.0
    assert counter.take() == []  # full by what we last wrote: known without asking storage
    clock.now += 61.0  # our sends have aged out: storage decides again
    assert quota.acquire("dep-a", 2, 60.0) == 0.0
    assert counter.take() == ["GET", "PUT"]
    assert quota.acquire("dep-a", 2, 60.0) == 0.0
    assert counter.take() == ["GET", "PUT"]
    # The server agrees with what we hold: nothing to pad, no round trip at all.
    quota.observe("dep-a", 2, remaining=0, reset_s=60.0)
    assert counter.take() == []


def test_observe_pads_the_shared_window(
    azurite_connection_string: str, container_name: str
) -> None:
    clock = Clock()
    one = BlobQuota(container(azurite_connection_string, container_name), clock=clock)
    other = BlobQuota(container(azurite_connection_string, container_name), clock=clock)
    assert one.acquire("dep-a", 10, 60.0) == 0.0
    # The server says only 5 remain (someone else spends the same deployment): hold back 4 more.
    one.observe("dep-a", 10, remaining=5, reset_s=30.0)
    assert other.window("dep-a", 10, 60.0).remaining(clock.now) == 5
    for _ in range(5):
        assert other.acquire("dep-a", 10, 60.0) == 0.0
    assert other.acquire("dep-a", 10, 60.0) > 0.0
    clock.now += 30.0  # the placeholders expire when the server said its window resets
    assert other.acquire("dep-a", 10, 60.0) == 0.0


def test_conflicting_write_is_retried(azurite_connection_string: str, container_name: str) -> None:
    """Another instance writes between our read and our write: 412, read again, succeed."""
    base = Clock()
    rival = BlobQuota(container(azurite_connection_string, container_name), clock=base)
    assert rival.acquire("dep-a", 10, 60.0) == 0.0  # the blob exists from here on
    interfered: list[float] = []

    def clock_that_lets_the_rival_in() -> float:
        # Our clock is read after the blob was read: the rival writes now, once.
        if not interfered:
            interfered.append(base.now)
            assert rival.acquire("dep-a", 10, 60.0) == 0.0
        return base.now

    pauses: list[float] = []
    quota = BlobQuota(
        container(azurite_connection_string, container_name),
        clock=clock_that_lets_the_rival_in,
        sleep=pauses.append,
        rng=random.Random(7),
    )
    assert quota.acquire("dep-a", 10, 60.0) == 0.0
    assert quota.conflicts == 1 and len(pauses) == 1 and 0.0 <= pauses[0] <= 0.05
    assert len(quota.window("dep-a", 10, 60.0).sent) == 3  # nobody's send was lost


def test_an_instance_that_dies_mid_exchange_holds_nothing(
    azurite_connection_string: str, container_name: str
) -> None:
    clock = Clock()

    def dies() -> float:
        raise SystemExit("instance killed between read and write")

    doomed = BlobQuota(container(azurite_connection_string, container_name), clock=dies)
    with pytest.raises(SystemExit):
        doomed.acquire("dep-a", 1, 60.0)
    survivor = BlobQuota(container(azurite_connection_string, container_name), clock=clock)
    assert survivor.acquire("dep-a", 1, 60.0) == 0.0


def test_three_instances_never_exceed_the_limit_in_any_window(
    azurite_connection_string: str, container_name: str
) -> None:
    """60 sends through 3 instances against 10 per 1 s window (a minute scaled to a second)."""
    limit, window_s, per_instance = 10, 1.0, 20
    sends: list[float] = []
    conflicts: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(3)

    def instance() -> None:
        last = [0.0]

        def clock() -> float:
            last[0] = time.time()
            return last[0]

        quota = BlobQuota(
            container(azurite_connection_string, container_name), clock=clock, window_s=window_s
        )
        try:
            start.wait(timeout=10)
            taken = 0
            while taken < per_instance:
                wait = quota.acquire_wait("shared-dep", limit)
                if wait > 0:
                    time.sleep(wait)  # what the pipeline does with a short wait
                    continue
                with lock:
                    sends.append(last[0])  # the time this send was recorded under
                taken += 1
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)
        finally:
            conflicts.append(quota.conflicts)

    threads = [threading.Thread(target=instance) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    assert len(sends) == 3 * per_instance
    sends.sort()
    busiest = max(
        sum(1 for t in sends[i:] if t < start_t + window_s) for i, start_t in enumerate(sends)
    )
    assert busiest <= limit
    # Sanity of the measure itself: 60 sends at 10 per second took at least 5 windows.
    assert sends[-1] - sends[0] >= 5 * window_s
    print(f"conflicts retried per instance: {conflicts}; busiest window held {busiest}")


def test_router_over_the_shared_quota_fails_over_when_another_instance_spent_it(
    azurite_connection_string: str, container_name: str
) -> None:
    clock = Clock()
    primary = DeploymentConfig(name="primary", endpoint="https://p.example", deployment="p", rpm=2)
    backup = DeploymentConfig(
        name="backup", endpoint="https://b.example", deployment="b", priority=1, rpm=2
    )
    elsewhere = BlobQuota(container(azurite_connection_string, container_name), clock=clock)
    assert [elsewhere.acquire("primary", 2, 60.0) for _ in range(2)] == [0.0, 0.0]
    here = BlobQuota(container(azurite_connection_string, container_name), clock=clock)
    router = Router([primary, backup], here, Breaker())
    choice = router.pick(0.0)
    assert isinstance(choice, Use) and choice.deployment.name == "backup"
    assert len(here.window("backup", 2, 60.0).sent) == 1  # the send was taken in the blob
