"""The cross-instance pace in a blob, against the running Azurite.

Instances are simulated by separate `BlobPacer` objects, each with its own `BlobServiceClient`
(so its own connection pool): they share nothing but the blob, as Function App instances do.
"""

from __future__ import annotations

import itertools
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
from shared.policy.pacer import Pace, PacePolicy
from shared.settings import DeploymentConfig
from shared.storage.quota import BlobPacer, decode_pace, encode_pace
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


def pacer(conn: str, name: str, clock: Callable[[], float], **kwargs: Any) -> BlobPacer:
    return BlobPacer(container(conn, name), clock=clock, **kwargs)


def test_sends_are_paced_for_one_client(
    azurite_connection_string: str, container_name: str
) -> None:
    clock = Clock()
    quota = pacer(azurite_connection_string, container_name, clock)
    assert quota.acquire_wait("dep-a", 10) == 0.0
    assert quota.acquire_wait("dep-a", 10) == pytest.approx(6.12)  # 60 s / 10, 2 % guard
    assert quota.acquire_wait("dep-b", 10) == 0.0  # one pace per deployment
    clock.now += 6.12
    assert quota.acquire_wait("dep-a", 10) == 0.0
    assert quota.pace("dep-a", 10).tat == pytest.approx(clock.now + 6.12)


def test_blob_is_the_serialised_pace(azurite_connection_string: str, container_name: str) -> None:
    clock = Clock()
    client = container(azurite_connection_string, container_name)
    BlobPacer(client, clock=clock).acquire_wait("dep-a", 10)
    body = json.loads(client.download_blob("dep-a.json").readall())
    assert body == {
        "schema": "imagegen.pace/1",
        "interval_s": 6.12,
        "tat": clock.now + 6.12,
        "paused_until": 0.0,
    }
    policy = PacePolicy(rpm=10)
    pace = Pace(interval_s=7.5, tat=12.0, paused_until=3.0)
    assert decode_pace(encode_pace(pace), policy) == pace
    assert decode_pace(b"not json", policy) == Pace.start(policy)
    # A sliding window left by an older version reads as a fresh pace, not a blocked deployment.
    old = b'{"schema":"imagegen.quota/1","limit":10,"window_s":60.0,"sent":[1.0]}'
    assert decode_pace(old, policy) == Pace.start(policy)


def test_at_most_two_round_trips_per_send_uncontended(
    azurite_connection_string: str, container_name: str
) -> None:
    counter = RequestCounter()
    client = container(azurite_connection_string, container_name, counter)
    client.create_container()
    counter.take()
    clock = Clock()
    quota = BlobPacer(client, clock=clock)
    assert quota.acquire_wait("dep-a", 10) == 0.0
    assert counter.take() == ["GET", "PUT"]  # read (404), create with If-None-Match: *
    assert quota.acquire_wait("dep-a", 10) > 0.0
    assert counter.take() == []  # the next slot is later by what we last wrote: no round trip
    clock.now += 6.12
    assert quota.acquire_wait("dep-a", 10) == 0.0
    assert counter.take() == ["GET", "PUT"]  # read, write with If-Match


def test_a_429_pauses_every_instance(azurite_connection_string: str, container_name: str) -> None:
    clock = Clock()
    one = pacer(azurite_connection_string, container_name, clock)
    other = pacer(azurite_connection_string, container_name, clock)
    assert one.acquire_wait("dep-a", 10) == 0.0
    one.throttled("dep-a", 10, 30.0)
    assert other.acquire_wait("dep-a", 10) == pytest.approx(30.0)
    assert other.pace("dep-a", 10).interval_s == pytest.approx(6.12 * 1.25)
    clock.now += 30.0
    assert other.acquire_wait("dep-a", 10) == 0.0


def test_conflicting_write_is_retried(azurite_connection_string: str, container_name: str) -> None:
    """Another instance writes between our read and our write: 412, read again, succeed."""
    base = Clock()
    rival = pacer(azurite_connection_string, container_name, base, burst=5)
    assert rival.acquire_wait("dep-a", 10) == 0.0  # the blob exists from here on
    interfered: list[float] = []

    def clock_that_lets_the_rival_in() -> float:
        # Our clock is read after the blob was read: the rival writes now, once.
        if not interfered:
            interfered.append(base.now)
            assert rival.acquire_wait("dep-a", 10) == 0.0
        return base.now

    pauses: list[float] = []
    quota = BlobPacer(
        container(azurite_connection_string, container_name),
        clock=clock_that_lets_the_rival_in,
        sleep=pauses.append,
        rng=random.Random(7),
        burst=5,
    )
    assert quota.acquire_wait("dep-a", 10) == 0.0
    assert quota.conflicts == 1 and len(pauses) == 1 and 0.0 <= pauses[0] <= 0.05
    # Nobody's send was lost: three sends moved the schedule three intervals.
    assert quota.pace("dep-a", 10).tat == pytest.approx(base.now + 3 * 6.12)


def test_an_instance_that_dies_mid_exchange_holds_nothing(
    azurite_connection_string: str, container_name: str
) -> None:
    clock = Clock()

    def dies() -> float:
        raise SystemExit("instance killed between read and write")

    doomed = BlobPacer(container(azurite_connection_string, container_name), clock=dies)
    with pytest.raises(SystemExit):
        doomed.acquire_wait("dep-a", 1)
    survivor = pacer(azurite_connection_string, container_name, clock)
    assert survivor.acquire_wait("dep-a", 1) == 0.0


def test_three_instances_keep_the_pace_between_them(
    azurite_connection_string: str, container_name: str
) -> None:
    """45 sends through 3 instances at 600 per minute scaled to 6 s: one per 10 ms at most."""
    rpm, window_s, per_instance = 600, 6.0, 15
    interval = window_s / rpm * 1.02
    sends: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(3)

    def instance() -> None:
        last = [0.0]

        def clock() -> float:
            last[0] = time.time()
            return last[0]

        quota = pacer(azurite_connection_string, container_name, clock, window_s=window_s)
        try:
            start.wait(timeout=10)
            taken = 0
            while taken < per_instance:
                wait = quota.acquire_wait("shared-dep", rpm)
                if wait > 0:
                    time.sleep(wait)  # what the pipeline does with a short wait
                    continue
                with lock:
                    sends.append(last[0])  # the time this send was taken under
                taken += 1
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=instance) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    assert len(sends) == 3 * per_instance
    sends.sort()
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    # Each send was taken no earlier than one interval after the one before (float rounding aside).
    assert min(gaps) >= interval - 1e-4
    assert sends[-1] - sends[0] >= (len(sends) - 1) * interval - 1e-3


def test_router_over_the_shared_pace_fails_over_when_another_instance_took_the_slot(
    azurite_connection_string: str, container_name: str
) -> None:
    clock = Clock()
    primary = DeploymentConfig(name="primary", endpoint="https://p.example", deployment="p", rpm=2)
    backup = DeploymentConfig(
        name="backup", endpoint="https://b.example", deployment="b", priority=1, rpm=2
    )
    elsewhere = pacer(azurite_connection_string, container_name, clock)
    assert elsewhere.acquire_wait("primary", 2) == 0.0
    here = pacer(azurite_connection_string, container_name, clock)
    router = Router([primary, backup], here, Breaker())
    choice = router.pick(0.0)
    assert isinstance(choice, Use) and choice.deployment.name == "backup"
    assert here.pace("backup", 2).tat > clock.now  # the send was taken in the blob
