"""What both blob trigger sources share: options, the listener thread, the pools, idleness.

A listener scans on an interval (see `blob_scan.py` for why locally both sources scan) and hands
each blob version to a small dispatch pool, so several blobs are processed at once while the
function itself runs on the worker pool under functionTimeout (`blob_invocation.py`).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from azure.storage.blob import BlobServiceClient

from emulators.functions_host.app_loader import BlobFunction
from emulators.functions_host.blob_invocation import BlobInvoker
from emulators.functions_host.eventgrid import EventGridRetryPolicy

log = logging.getLogger("functions_host")

DEFAULT_SCAN_INTERVAL_S = 1.0
DEFAULT_DEAD_LETTER_CONTAINER = "eventgrid-deadletter"
HOST_ID_SETTING = "AzureFunctionsWebHost__hostid"
BLOB_CONCURRENCY = 4


@dataclass(frozen=True, slots=True)
class BlobOptions:
    """How the stand-in plays the blob sources; see `eventgrid.py` for the retry policy."""

    host_id: str
    scan_interval_s: float = DEFAULT_SCAN_INTERVAL_S
    event_grid: EventGridRetryPolicy = field(default_factory=EventGridRetryPolicy)
    dead_letter_container: str = DEFAULT_DEAD_LETTER_CONTAINER
    lease_s: int = 600


class BlobListener:
    """Base: `_scan_once` finds work and `_dispatch`es it; subclasses say what one unit is."""

    kind = "blob"

    def __init__(
        self, function: BlobFunction, service: BlobServiceClient, invoker: BlobInvoker,
        options: BlobOptions,
    ) -> None:  # fmt: skip
        self.function = function
        self.service = service
        self.invoker = invoker
        self.options = options
        self._stop = threading.Event()
        self._dispatcher = ThreadPoolExecutor(BLOB_CONCURRENCY, thread_name_prefix="blob")
        self._running: set[Future[None]] = set()
        self._lock = threading.Lock()
        self._found_work = True
        self._thread = threading.Thread(target=self._run, name=f"blob-{function.name}")

    def prepare(self) -> None:
        """Work done before the host reports it started (the Event Grid subscription's snapshot)."""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._running)

    def idle(self) -> bool:
        """Nothing running and the last scan found nothing to do."""
        return self.in_flight == 0 and not self._found_work

    def wait_finished(self, timeout: float) -> int:
        """Wait for dispatched work; the number still running at the deadline."""
        self._dispatcher.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            running = list(self._running)
        for future in running:
            try:
                future.result(timeout=max(0.0, timeout))
            except Exception:  # reported by the unit itself
                pass
        return self.in_flight

    def _dispatch(self, work: object) -> None:
        try:
            future = self._dispatcher.submit(self._process_logged, work)
        except RuntimeError:  # stopping: the unit is picked up again by the next host
            return
        with self._lock:
            self._running.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._running.discard(future)

    def _process_logged(self, work: object) -> None:
        try:
            self._process(work)
        except Exception:  # one unit's storage error must not end the listener
            log.exception("'%s' failed to process %s", self.function.full_name, work)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._found_work = self._scan_once()
            except Exception:  # a listener that dies silently would strand its container
                log.exception(
                    "Blob listener for '%s' failed; scanning again", self.function.full_name
                )
                self._found_work = True
            self._stop.wait(0.05 if self._found_work else self.options.scan_interval_s)

    def _scan_once(self) -> bool:
        raise NotImplementedError

    def _process(self, work: object) -> None:
        raise NotImplementedError
