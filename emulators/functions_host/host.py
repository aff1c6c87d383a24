"""The host: one listener per queue or blob trigger, the worker's pools and event loop, shutdown, drain."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from azure.core.exceptions import AzureError, ResourceNotFoundError

from emulators.functions_host.app_loader import EVENT_GRID, LoadedApp
from emulators.functions_host.app_settings import AppSettings
from emulators.functions_host.blob_eventgrid import EventGridBlobListener
from emulators.functions_host.blob_invocation import BlobInvoker
from emulators.functions_host.blob_listener import BlobListener, BlobOptions
from emulators.functions_host.blob_polling import PollingBlobListener
from emulators.functions_host.capacity import Slots
from emulators.functions_host.connections import resolve_connection
from emulators.functions_host.delivery import LeaseKeeper
from emulators.functions_host.errors import HostStartupError
from emulators.functions_host.host_config import HostConfig
from emulators.functions_host.listener import QueueListener
from emulators.functions_host.settlement import PoisonQueue

log = logging.getLogger("functions_host")

DEFAULT_LEASE_S = 600  # the extension receives with 10 min visibility and renews at half-time
THREAD_COUNT_SETTING = "PYTHON_THREADPOOL_THREAD_COUNT"


def default_thread_count() -> int:
    return min(32, (os.cpu_count() or 1) + 4)


def thread_count(settings: AppSettings) -> int:
    """The Python worker's pool size: PYTHON_THREADPOOL_THREAD_COUNT or min(32, cores + 4)."""
    raw = settings.get(THREAD_COUNT_SETTING)
    if raw is None or raw.strip() == "":
        return default_thread_count()
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise HostStartupError(f"{THREAD_COUNT_SETTING} must be a positive integer, got {raw!r}")
    return value


@dataclass(frozen=True, slots=True)
class HostOptions:
    lease_s: int = DEFAULT_LEASE_S
    thread_count: int = 6
    blobs: BlobOptions = field(default_factory=lambda: BlobOptions(host_id="localhost"))


class Host:
    """Runs every queue trigger of a loaded app until stopped (or drained)."""

    def __init__(
        self,
        app: LoadedApp,
        config: HostConfig,
        settings: AppSettings,
        options: HostOptions,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if options.lease_s < 2:
            raise HostStartupError("the lease must be at least 2 s (it is renewed at half-time)")
        self.app = app
        self.config = config
        self.options = options
        self._clock = clock
        self._changed = threading.Condition()
        self._keeper = LeaseKeeper(
            options.lease_s, config.function_timeout_s, config.function_timeout_text, clock
        )
        self._settler = ThreadPoolExecutor(max_workers=4, thread_name_prefix="settle")
        self._pool: ThreadPoolExecutor | None = None
        self._pool_slots: Slots | None = None
        if any(not f.is_async for f in app.queue_functions):
            self._pool = ThreadPoolExecutor(options.thread_count, thread_name_prefix="worker")
            self._pool_slots = Slots(options.thread_count, self._changed)
        self._loop: asyncio.AbstractEventLoop | None = None
        if any(f.is_async for f in app.queue_functions):
            self._loop = asyncio.new_event_loop()
        rng = rng or random.Random()
        self.listeners: list[QueueListener] = []
        for function in app.queue_functions:
            connection = resolve_connection(
                function.connection, settings, f"the connection of function '{function.name}'"
            )
            service = connection.service_client()
            self.listeners.append(
                QueueListener(
                    function,
                    service.get_queue_client(function.queue_name),
                    PoisonQueue(service, function.queue_name),
                    config.queues,
                    lease_keeper=self._keeper,
                    changed=self._changed,
                    pool=self._pool if not function.is_async else None,
                    pool_slots=self._pool_slots if not function.is_async else None,
                    loop=self._loop,
                    settler=self._settler,
                    rng=random.Random(rng.random()),
                    clock=clock,
                )
            )
        self.blob_listeners = self._blob_listeners(settings)

    def _blob_listeners(self, settings: AppSettings) -> list[BlobListener]:
        """Blob triggers run their code on a pool of their own, the size of the worker's pool."""
        if not self.app.blob_functions:
            return []
        self._blob_pool = ThreadPoolExecutor(
            self.options.thread_count, thread_name_prefix="blob-worker"
        )
        blobs = replace(self.options.blobs, lease_s=self.options.lease_s)
        listeners: list[BlobListener] = []
        for function in self.app.blob_functions:
            connection = resolve_connection(
                function.connection, settings, f"the connection of function '{function.name}'"
            )
            invoker = BlobInvoker(
                function, self._blob_pool, self.config.function_timeout_s,
                self.config.function_timeout_text, self._clock,
            )  # fmt: skip
            blob_service = connection.blob_service_client()
            if function.source == EVENT_GRID:
                listeners.append(
                    EventGridBlobListener(
                        function, blob_service, invoker, blobs, connection.service_client()
                    )
                )
            else:
                listeners.append(
                    PollingBlobListener(
                        function,
                        blob_service,
                        invoker,
                        blobs,
                        self.config.queues,
                        connection.service_client(),
                    )
                )
        return listeners

    def start(self) -> None:
        for skipped in self.app.skipped:
            log.info(
                "Function 'Functions.%s' is not run locally: %s.", skipped.name, skipped.reason
            )
        if self._loop is not None:
            threading.Thread(
                target=self._loop.run_forever, name="async-worker", daemon=True
            ).start()
        self._keeper.start()
        for listener in self.listeners:
            listener.start()
            log.info(
                "Found function 'Functions.%s': queue trigger on '%s'",
                listener.function.name,
                listener.function.queue_name,
            )
        for blob_listener in self.blob_listeners:
            blob_listener.prepare()
            blob_listener.start()
            log.info(
                "Found function 'Functions.%s': blob trigger (%s) on '%s'",
                blob_listener.function.name,
                blob_listener.function.source,
                blob_listener.function.path,
            )
        queues = self.config.queues
        log.info(
            "Host started (batchSize=%d, newBatchThreshold=%d, maxDequeueCount=%d, "
            "visibilityTimeout=%ss, maxPollingInterval=%ss, messageEncoding=%s, lease=%ss, "
            "%s=%d)",
            queues.batch_size,
            queues.new_batch_threshold,
            queues.max_dequeue_count,
            queues.visibility_timeout_s,
            queues.max_polling_interval_s,
            queues.message_encoding,
            self.options.lease_s,
            THREAD_COUNT_SETTING,
            self.options.thread_count,
        )

    @property
    def in_flight(self) -> int:
        with self._changed:
            return sum(listener.in_flight for listener in self.listeners)

    def blobs_idle(self) -> bool:
        return all(listener.idle() for listener in self.blob_listeners)

    def pending_messages(self) -> int:
        """Messages on every trigger queue, invisible ones included (Azurite and Azure count them)."""
        total = 0
        for listener in self.listeners:
            try:
                total += listener.queue.get_queue_properties().approximate_message_count or 0
            except ResourceNotFoundError:
                continue
        return total

    def wait_drained(self, stop: threading.Event, interval_s: float = 0.5) -> bool:
        """True once queues are empty and nothing runs for two polls in a row; False if stopped."""
        quiet = 0
        while not stop.wait(interval_s):
            try:
                idle = self.in_flight == 0 and self.pending_messages() == 0 and self.blobs_idle()
            except AzureError as error:
                log.warning("Could not read queue lengths: %s", error)
                idle = False
            quiet = quiet + 1 if idle else 0
            if quiet >= 2:
                log.info("Drained: every trigger queue is empty and nothing is running")
                return True
        return False

    def shutdown(self, grace_s: float) -> bool:
        """Stop polling, give running invocations `grace_s`, stop renewing. True if all finished."""
        log.info("Stopping the host (grace %ss)", grace_s)
        for listener in self.listeners:
            listener.stop()
        for blob_listener in self.blob_listeners:
            blob_listener.stop()
        for listener in self.listeners:
            listener.join(timeout=30)
        for blob_listener in self.blob_listeners:
            blob_listener.join(timeout=30)
        deadline = self._clock() + grace_s
        unfinished_blobs = sum(
            b.wait_finished(max(0.0, deadline - self._clock())) for b in self.blob_listeners
        )
        with self._changed:
            while self.in_flight > 0 and self._clock() < deadline:
                self._changed.wait(min(0.2, max(0.0, deadline - self._clock())))
            unfinished = self.in_flight + unfinished_blobs
        self._keeper.stop()
        if unfinished:
            log.warning(
                "%d invocation(s) did not finish within %ss; their messages reappear when their "
                "leases lapse",
                unfinished,
                grace_s,
            )
        self._settler.shutdown(wait=True)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        log.info("Host stopped")
        return unfinished == 0
