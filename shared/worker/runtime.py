"""Wires settings into the long-lived objects one Functions worker process shares.

Built once per process: the storage clients and HTTP sessions keep their connection pools across
invocations, and the router's breakers must see every call the process makes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from shared.azure_openai.image_api import ImageApi
from shared.policy.pacer import PaceKeeper
from shared.policy.planner import Planner
from shared.records.attempts import utc_now
from shared.settings import Settings
from shared.storage.clients import blob_service, queue_service
from shared.storage.quota import BlobPacer
from shared.storage.store import RequestStore
from shared.telemetry import Telemetry, telemetry_from_settings
from shared.worker.router import QuotaGate, Router


def quota_gate(settings: Settings, blobs: BlobServiceClient) -> QuotaGate:
    """Each deployment's pace: in Storage when instances share the quota, else in this process."""
    window_s, burst = settings.rate_window_s, settings.rate_burst
    if settings.quota_scope == "process":
        return PaceKeeper(window_s=window_s, burst=burst)
    return BlobPacer.for_service(blobs, settings.quota_container, window_s=window_s, burst=burst)


@dataclass
class Runtime:
    """Everything the pipeline needs, with time, sleep and randomness injectable for tests."""

    settings: Settings
    store: RequestStore
    requests_queue: QueueClient
    api: ImageApi
    router: Router
    planner: Planner
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    now: Callable[[], datetime] = utc_now
    # Calls in flight in this process, across every invocation's images (IMAGE_MAX_STREAMS).
    streams: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(32)
    )
    telemetry: Telemetry = field(default_factory=Telemetry.disabled)
    _ready: bool = False
    _ready_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        queues = queue_service(settings.storage)
        blobs = blob_service(settings.storage)
        telemetry = telemetry_from_settings(settings)
        return cls(
            settings=settings,
            store=RequestStore(blobs, settings.images_container, telemetry=telemetry),
            requests_queue=queues.get_queue_client(settings.requests_queue),
            api=ImageApi(
                api_version=settings.api_version,
                connect_timeout_s=settings.connect_timeout_s,
                read_timeout_s=settings.read_timeout_s,
            ),
            router=Router.from_settings(settings, quota_gate(settings, blobs)),
            planner=Planner.from_settings(settings),
            streams=threading.BoundedSemaphore(settings.max_streams),
            telemetry=telemetry,
        )

    def ensure_ready(self) -> None:
        """Create the output container once per process (idempotent, cheap after the first call)."""
        if self._ready:
            return
        with self._ready_lock:
            if not self._ready:
                self.store.ensure_container()
                self._ready = True
