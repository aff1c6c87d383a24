"""Wires settings into the long-lived objects one Functions worker process shares.

Built once per process: the storage clients and HTTP sessions keep their connection pools across
invocations, and the router's breakers must see every call the process makes.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, QueueServiceClient

from shared.attempts import utc_now
from shared.image_api import ImageApi
from shared.quota import BlobQuota
from shared.ratelimit import RateLimiter
from shared.retry import RetryPolicy
from shared.router import QuotaGate, Router
from shared.settings import Settings, StorageConfig
from shared.store import RequestStore


def blob_service(config: StorageConfig, **client_kwargs: Any) -> BlobServiceClient:
    """`client_kwargs` go to the SDK client as they are (retry_total, connection_timeout, ...)."""
    if config.connection_string is not None:
        return BlobServiceClient.from_connection_string(config.connection_string, **client_kwargs)
    return BlobServiceClient(config.blob_service_uri or "", credential=_identity(), **client_kwargs)


def queue_service(config: StorageConfig, **client_kwargs: Any) -> QueueServiceClient:
    """`client_kwargs` go to the SDK client as they are (retry_total, connection_timeout, ...)."""
    if config.connection_string is not None:
        return QueueServiceClient.from_connection_string(config.connection_string, **client_kwargs)
    return QueueServiceClient(
        config.queue_service_uri or "", credential=_identity(), **client_kwargs
    )


# Our window opens a send slot when our own record of a send expires; the deployment's window
# counts from when the send arrived, a little later and by a varying amount. Waiting 2 % longer
# than the window keeps that jitter from turning into 429s at every window edge.
QUOTA_GUARD = 0.02


def quota_gate(settings: Settings, blobs: BlobServiceClient) -> QuotaGate:
    """The request budget: in Storage when instances share the quota, else in this process."""
    window_s = settings.rate_window_s * (1 + QUOTA_GUARD)
    if settings.quota_scope == "process":
        return RateLimiter(clock=time.monotonic, window_s=window_s)
    return BlobQuota.for_service(blobs, settings.quota_container, window_s=window_s)


def _identity():  # type: ignore[no-untyped-def]
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


@dataclass
class Runtime:
    """Everything the pipeline needs, with time, sleep and randomness injectable for tests."""

    settings: Settings
    store: RequestStore
    requests_queue: QueueClient
    api: ImageApi
    router: Router
    policy: RetryPolicy
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    now: Callable[[], datetime] = utc_now
    _ready: bool = False
    _ready_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        queues = queue_service(settings.storage)
        blobs = blob_service(settings.storage)
        return cls(
            settings=settings,
            store=RequestStore(blobs, settings.images_container),
            requests_queue=queues.get_queue_client(settings.requests_queue),
            api=ImageApi(
                api_version=settings.api_version,
                connect_timeout_s=settings.connect_timeout_s,
                read_timeout_s=settings.read_timeout_s,
            ),
            router=Router.from_settings(settings, quota_gate(settings, blobs)),
            policy=RetryPolicy.from_settings(settings),
        )

    def ensure_ready(self) -> None:
        """Create the output container once per process (idempotent, cheap after the first call)."""
        if self._ready:
            return
        with self._ready_lock:
            if not self._ready:
                self.store.ensure_container()
                self._ready = True
