"""A deployment's pace shared by every instance of the Function App (docs/design.md §9).

The Function App scales out, and every instance draws on the same quota (10 requests a minute for
gpt-image). A per-process pacer cannot see the others, so the pace lives in one blob per deployment:
`<container>/<deployment name>.json`, the serialised `Pace` of `shared.policy.pacer` with wall-clock
times (epoch seconds, so every instance reads them alike; Azure hosts keep NTP time, well within
what a seconds-long interval cares about). A 429 seen by one instance pauses and slows all of them.

Taking a send is read, decide (pure `Pace.admit`), conditional write: `If-Match` the ETag
read, or `If-None-Match: *` to create the blob. A 412 (or 409 on create) means another instance
wrote in between; read again after a short jittered pause. Nothing is held between calls (no
lease), so an instance that dies leaves nothing to clean up. Round trips: one read and one write
when a send is taken, none when this process already knows the next slot is later, more only
under contention.

Threads of one process take a per-deployment lock around the exchange, so they queue here instead
of colliding on the ETag; only other instances cause conflicts.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings

from shared.policy.pacer import Pace, PacePolicy

__all__ = [
    "DEFAULT_QUOTA_CONTAINER",
    "BlobPacer",
    "QuotaContention",
    "decode_pace",
    "encode_pace",
]

log = logging.getLogger(__name__)

DEFAULT_QUOTA_CONTAINER = "imagegen-quota"
SCHEMA = "imagegen.pace/1"


class QuotaContention(RuntimeError):
    """Too many instances wrote the pace blob at once; the caller should fail or retry later."""


def encode_pace(pace: Pace) -> bytes:
    return json.dumps(
        {
            "schema": SCHEMA,
            "interval_s": round(pace.interval_s, 6),
            "tat": round(pace.tat, 6),
            "paused_until": round(pace.paused_until, 6),
        },
        separators=(",", ":"),
    ).encode()


def decode_pace(data: bytes, policy: PacePolicy) -> Pace:
    """The stored pace under the caller's policy (the settings are the authority).

    A blob that is not a pace (someone wrote over it, or the sliding window of an older version)
    reads as a fresh start rather than blocking the deployment for good; the next write replaces it.
    """
    try:
        doc: Any = json.loads(data)
        pace = Pace(float(doc["interval_s"]), float(doc["tat"]), float(doc["paused_until"]))
    except (ValueError, TypeError, KeyError):
        log.warning("quota blob is not a pace; starting it afresh")
        return Pace.start(policy)
    return pace.fitted(policy)


class BlobPacer:
    """Paces in blobs, one per deployment. Thread-safe; clock, sleep and RNG injectable.

    `acquire_wait(name, rpm)` returns 0.0 when the send is taken, else the seconds to wait;
    `throttled(name, rpm, retry_after_s)` records a 429. Same surface as
    `shared.policy.pacer.PaceKeeper`, so the router takes either.
    """

    def __init__(
        self,
        container: ContainerClient,
        *,
        window_s: float = 60.0,
        burst: int = 1,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_conflicts: int = 25,
        conflict_pause_s: float = 0.05,
    ) -> None:
        self._container = container
        self._window_s = window_s
        self._burst = burst
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._max_conflicts = max_conflicts
        self._conflict_pause_s = conflict_pause_s
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # The last pace this process read or wrote per deployment: its next slot is a lower bound
        # on the stored one (slots only move later, but for the one a 429 gives back), which lets
        # `acquire_wait` skip storage while it lies ahead.
        self._seen: dict[str, Pace] = {}
        self._container_ready = False
        self.conflicts = 0  # for tests and logs: how many writes lost a race

    @classmethod
    def for_service(
        cls,
        service: BlobServiceClient,
        container_name: str = DEFAULT_QUOTA_CONTAINER,
        **kwargs: Any,
    ) -> BlobPacer:
        return cls(service.get_container_client(container_name), **kwargs)

    def policy(self, rpm: int) -> PacePolicy:
        return PacePolicy(rpm=rpm, window_s=self._window_s, burst=self._burst)

    def acquire_wait(self, name: str, rpm: int) -> float:
        """Take a send for `name` if its pace allows one now: 0.0, else the seconds until it does."""
        policy = self.policy(rpm)
        seen = self._seen.get(name)
        if seen is not None:
            known = seen.fitted(policy).wait_s(self._clock(), policy)
            if known > 0:
                return known

        def admit(pace: Pace, now: float) -> tuple[Pace | None, float]:
            after, wait = pace.admit(now, policy)
            return (after, 0.0) if wait == 0 else (None, wait)

        return self._update(name, policy, admit)

    def throttled(self, name: str, rpm: int, retry_after_s: float | None) -> None:
        """A 429 from `name`: every instance slows down and waits out its Retry-After."""
        policy = self.policy(rpm)

        def slow(pace: Pace, now: float) -> tuple[Pace | None, float]:
            return pace.throttled(now, retry_after_s, policy), 0.0

        self._update(name, policy, slow)

    def pace(self, name: str, rpm: int) -> Pace:
        """The stored pace (one read; for reports and tests)."""
        pace, _ = self._read(name, self.policy(rpm))
        return pace

    # -- storage -------------------------------------------------------------------------------

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def _update(
        self,
        name: str,
        policy: PacePolicy,
        change: Callable[[Pace, float], tuple[Pace | None, float]],
    ) -> float:
        """Read, apply `change` (None: nothing to write), write conditionally; retry on conflict."""
        with self._lock(name):
            for conflict in range(self._max_conflicts + 1):
                pace, etag = self._read(name, policy)
                now = self._clock()
                after, result = change(pace, now)
                if after is None:
                    self._seen[name] = pace
                    return result
                if self._write(name, after, etag):
                    self._seen[name] = after
                    return result
                self.conflicts += 1
                # Full jitter, growing: instances that collided must not collide again in step.
                cap = self._conflict_pause_s * 2.0 ** min(conflict, 5)
                self._sleep(self._rng.uniform(0.0, cap))
        raise QuotaContention(
            f"pace blob for {name!r} changed under us {self._max_conflicts + 1} times in a row"
        )

    def _read(self, name: str, policy: PacePolicy) -> tuple[Pace, str | None]:
        try:
            downloader = self._container.get_blob_client(_blob_name(name)).download_blob()
            data = downloader.readall()
        except ResourceNotFoundError:
            return Pace.start(policy), None
        return decode_pace(data, policy), downloader.properties.etag

    def _write(self, name: str, pace: Pace, etag: str | None) -> bool:
        """True when written; False when another writer got there first."""
        blob = self._container.get_blob_client(_blob_name(name))
        data = encode_pace(pace)
        settings = ContentSettings(content_type="application/json")
        try:
            if etag is None:
                self._create(blob, data, settings)
            else:
                blob.upload_blob(
                    data,
                    overwrite=True,
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                    content_settings=settings,
                )
        except (ResourceModifiedError, ResourceExistsError):
            return False
        return True

    def _create(self, blob: Any, data: bytes, settings: ContentSettings) -> None:
        """Create-only (`If-None-Match: *`); makes the container the first time it is missing."""
        for _ in range(2):
            try:
                blob.upload_blob(
                    data,
                    overwrite=False,
                    match_condition=MatchConditions.IfMissing,
                    content_settings=settings,
                )
                return
            except ResourceNotFoundError:
                if self._container_ready:
                    raise
                try:
                    self._container.create_container()
                except ResourceExistsError:
                    pass
                self._container_ready = True
        raise ResourceNotFoundError(
            f"quota container {self._container.container_name!r} is missing"
        )


def _blob_name(name: str) -> str:
    # Deployment names are ours (settings), but keep the blob name to one path segment regardless.
    return name.replace("/", "_") + ".json"
