"""A deployment's request budget shared by every instance of the Function App (issue 5).

The Function App scales out, and every instance draws on the same quota (10 requests a minute for
gpt-image). A per-process limiter cannot see the others, so the window of recent sends lives in one
blob per deployment: `<container>/<deployment name>.json`, the serialised `SlidingWindow` of
`shared.policy.ratelimit` with wall-clock send times (epoch seconds, so every instance reads them alike;
Azure hosts keep NTP time, well within what a minute-long window cares about).

Taking a send is read, decide (pure `SlidingWindow.admit`), conditional write: `If-Match` the ETag
read, or `If-None-Match: *` to create the blob. A 412 (or 409 on create) means another instance
wrote in between; read again after a short jittered pause. Nothing is held between calls (no
lease), so an instance that dies leaves nothing to clean up: its sends age out of the window like
anyone's. Round trips: one read and one write when a send is taken, one read when the window is
full, more only under contention.

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
from dataclasses import replace
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings

from shared.policy.ratelimit import SlidingWindow

__all__ = [
    "DEFAULT_QUOTA_CONTAINER",
    "BlobQuota",
    "QuotaContention",
    "decode_window",
    "encode_window",
]

log = logging.getLogger(__name__)

DEFAULT_QUOTA_CONTAINER = "imagegen-quota"
SCHEMA = "imagegen.quota/1"


class QuotaContention(RuntimeError):
    """Too many instances wrote the quota blob at once; the caller should fail or retry later."""


def encode_window(window: SlidingWindow) -> bytes:
    return json.dumps(
        {
            "schema": SCHEMA,
            "limit": window.limit,
            "window_s": window.window_s,
            "sent": [round(t, 6) for t in window.sent],
        },
        separators=(",", ":"),
    ).encode()


def decode_window(data: bytes, limit: int, window_s: float) -> SlidingWindow:
    """The stored sends under the caller's `limit` and `window_s` (the settings are the authority).

    A blob that is not a window (someone wrote over it) reads as empty rather than blocking the
    deployment for good; the next write replaces it.
    """
    try:
        doc: Any = json.loads(data)
        sent = tuple(sorted(float(t) for t in doc["sent"]))
    except (ValueError, TypeError, KeyError):
        log.warning("quota blob is not a window; starting it afresh")
        sent = ()
    return SlidingWindow(limit=limit, window_s=window_s, sent=sent)


class BlobQuota:
    """Sliding windows in blobs, one per deployment. Thread-safe; clock, sleep and RNG injectable.

    `acquire(name, limit, window_s)` returns 0.0 when the send is recorded, else the seconds to
    wait. `acquire_wait` and `observe` match `shared.policy.ratelimit.RateLimiter`, so the router takes
    either.
    """

    def __init__(
        self,
        container: ContainerClient,
        *,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_conflicts: int = 25,
        conflict_pause_s: float = 0.05,
    ) -> None:
        self._container = container
        self._window_s = window_s
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._max_conflicts = max_conflicts
        self._conflict_pause_s = conflict_pause_s
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # The last window this process read or wrote per deployment: a lower bound on the truth
        # (sends are only ever added, and they age out by time alone), which lets `observe` skip
        # storage when the server's count agrees with it.
        self._seen: dict[str, SlidingWindow] = {}
        self._container_ready = False
        self.conflicts = 0  # for tests and logs: how many writes lost a race

    @classmethod
    def for_service(
        cls,
        service: BlobServiceClient,
        container_name: str = DEFAULT_QUOTA_CONTAINER,
        **kwargs: Any,
    ) -> BlobQuota:
        return cls(service.get_container_client(container_name), **kwargs)

    def acquire(self, name: str, limit: int, window_s: float | None = None) -> float:
        """Record a send for `name` if its window has room: 0.0, else the seconds until it has."""
        window_s = self._window_s if window_s is None else window_s
        known_wait = self._known_full(name, limit, window_s)
        if known_wait > 0:
            return known_wait

        def admit(window: SlidingWindow, now: float) -> tuple[SlidingWindow | None, float]:
            after, admission = window.admit(now)
            return (after, 0.0) if admission.allowed else (None, admission.wait_s)

        return self._update(name, limit, window_s, admit)

    def _known_full(self, name: str, limit: int, window_s: float) -> float:
        """The wait, without a round trip, when the window this process last saw is still full.

        What we saw only undercounts the truth (sends are only added; they age out by time), so
        a full one means the stored one is full too, for at least as long.
        """
        seen = self._seen.get(name)
        if seen is None:
            return 0.0
        _, admission = replace(seen, limit=limit, window_s=window_s).admit(self._clock())
        return 0.0 if admission.allowed else admission.wait_s

    def acquire_wait(self, name: str, limit: int) -> float:
        return self.acquire(name, limit)

    def observe(
        self,
        name: str,
        limit: int,
        remaining: int | None,
        reset_s: float | None = None,
        window_s: float | None = None,
    ) -> None:
        """Pad the shared window when the server says fewer requests remain than it holds."""
        if remaining is None:
            return
        window_s = self._window_s if window_s is None else window_s
        seen = self._seen.get(name)
        if seen is not None:
            now = self._clock()
            seen = replace(seen, limit=limit, window_s=window_s).pruned(now)
            if seen.observe_headers(now, remaining, reset_s).sent == seen.sent:
                # What we last saw already holds at least this many sends, and the truth holds
                # more: nothing to pad, no round trip.
                return

        def pad(window: SlidingWindow, now: float) -> tuple[SlidingWindow | None, float]:
            after = window.observe_headers(now, remaining, reset_s)
            return (None if after.sent == window.pruned(now).sent else after), 0.0

        self._update(name, limit, window_s, pad)

    def window(self, name: str, limit: int, window_s: float | None = None) -> SlidingWindow:
        """The stored window, pruned at the current time (one read; for reports and tests)."""
        window_s = self._window_s if window_s is None else window_s
        window, _ = self._read(name, limit, window_s)
        return window.pruned(self._clock())

    # -- storage -------------------------------------------------------------------------------

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def _update(
        self,
        name: str,
        limit: int,
        window_s: float,
        change: Callable[[SlidingWindow, float], tuple[SlidingWindow | None, float]],
    ) -> float:
        """Read, apply `change` (None: nothing to write), write conditionally; retry on conflict."""
        with self._lock(name):
            for conflict in range(self._max_conflicts + 1):
                window, etag = self._read(name, limit, window_s)
                now = self._clock()
                after, result = change(window, now)
                if after is None:
                    self._seen[name] = window
                    return result
                after = after.pruned(now)
                if self._write(name, after, etag):
                    self._seen[name] = after
                    return result
                self.conflicts += 1
                # Full jitter, growing: instances that collided must not collide again in step.
                cap = self._conflict_pause_s * 2.0 ** min(conflict, 5)
                self._sleep(self._rng.uniform(0.0, cap))
        raise QuotaContention(
            f"quota blob for {name!r} changed under us {self._max_conflicts + 1} times in a row"
        )

    def _read(self, name: str, limit: int, window_s: float) -> tuple[SlidingWindow, str | None]:
        try:
            downloader = self._container.get_blob_client(_blob_name(name)).download_blob()
            data = downloader.readall()
        except ResourceNotFoundError:
            return SlidingWindow(limit=limit, window_s=window_s), None
        return decode_window(data, limit, window_s), downloader.properties.etag

    def _write(self, name: str, window: SlidingWindow, etag: str | None) -> bool:
        """True when written; False when another writer got there first."""
        blob = self._container.get_blob_client(_blob_name(name))
        data = encode_window(window)
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
