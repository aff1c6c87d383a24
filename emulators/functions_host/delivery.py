"""A message being processed, and the keeper that renews its lease and enforces functionTimeout.

A delivery moves running -> settling (the function returned; delete or release is under way) or
running -> abandoned (functionTimeout passed: the thread cannot be killed, so we stop renewing and
let the message reappear when its visibility lapses, as the host does when it restarts the worker).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.storage.queue import QueueClient

from emulators.functions_host.app_loader import QueueFunction
from emulators.functions_host.invocation import ReceivedMessage, log_executed

log = logging.getLogger("functions_host")


class DeliveryState(Enum):
    RUNNING = "running"
    SETTLING = "settling"
    ABANDONED = "abandoned"
    DONE = "done"


@dataclass(eq=False)
class Delivery:
    """Mutable by design: the pop receipt changes with every renewal. Guard with `lock`."""

    function: QueueFunction
    queue: QueueClient
    message: ReceivedMessage
    invocation_id: str
    started: float
    renew_at: float
    deadline: float | None
    pop_receipt: str
    state: DeliveryState = DeliveryState.RUNNING
    lease_lost: bool = False
    cancel: Callable[[], object] | None = None
    on_abandoned: Callable[[Delivery], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def begin_settling(self) -> bool:
        """True if the function's result still counts (it was not abandoned after a timeout)."""
        with self.lock:
            if self.state is not DeliveryState.RUNNING:
                return False
            self.state = DeliveryState.SETTLING
            return True


class LeaseKeeper:
    """One thread for every delivery: renews visibility at half the lease, times out invocations."""

    def __init__(
        self,
        lease_s: int,
        function_timeout_s: float | None,
        function_timeout_text: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lease_s = lease_s
        self.function_timeout_s = function_timeout_s
        self.function_timeout_text = function_timeout_text
        self.clock = clock
        self._tick_s = min(0.25, lease_s / 8)
        self._deliveries: set[Delivery] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing: whatever has not settled will reappear when its lease lapses."""
        self._stop.set()
        self._thread.join(timeout=10)

    def new_delivery(self, function: QueueFunction, queue: QueueClient, message: ReceivedMessage,
                     invocation_id: str) -> Delivery:  # fmt: skip
        now = self.clock()
        deadline = None if self.function_timeout_s is None else now + self.function_timeout_s
        delivery = Delivery(
            function, queue, message, invocation_id, now, now + self.lease_s / 2, deadline,
            message.pop_receipt,
        )  # fmt: skip
        with self._lock:
            self._deliveries.add(delivery)
        return delivery

    def forget(self, delivery: Delivery) -> None:
        with self._lock:
            self._deliveries.discard(delivery)

    def _run(self) -> None:
        while not self._stop.wait(self._tick_s):
            with self._lock:
                deliveries = list(self._deliveries)
            for delivery in deliveries:
                try:
                    self.check(delivery)
                except Exception:  # one bad delivery must not stop renewing the others
                    log.exception("Lease keeper failed on message %s", delivery.message.id)

    def check(self, delivery: Delivery) -> None:
        now = self.clock()
        if (
            delivery.deadline is not None
            and now >= delivery.deadline
            and delivery.state is DeliveryState.RUNNING
        ):
            self._time_out(delivery, now)
            return
        if now >= delivery.renew_at and not delivery.lease_lost:
            self._renew(delivery, now)

    def _renew(self, delivery: Delivery, now: float) -> None:
        with delivery.lock:
            if delivery.state not in (DeliveryState.RUNNING, DeliveryState.SETTLING):
                return
            try:
                receipt = delivery.queue.update_message(
                    delivery.message.id,
                    pop_receipt=delivery.pop_receipt,
                    visibility_timeout=self.lease_s,
                )
            except AzureError as error:
                # 404/400: the message is gone or another receiver holds it; anything else is
                # transient and retried on the next tick, well before the lease lapses.
                if isinstance(error, ResourceNotFoundError) or (
                    isinstance(error, HttpResponseError) and error.status_code in (400, 404)
                ):
                    delivery.lease_lost = True
                log.warning(
                    "Could not renew the lease of message %s on '%s': %s",
                    delivery.message.id,
                    delivery.function.queue_name,
                    error,
                )
                return
            delivery.pop_receipt = receipt.pop_receipt
            delivery.renew_at = now + self.lease_s / 2
            log.debug("Renewed the lease of message %s for %ss", delivery.message.id, self.lease_s)

    def _time_out(self, delivery: Delivery, now: float) -> None:
        with delivery.lock:
            if delivery.state is not DeliveryState.RUNNING:
                return
            delivery.state = DeliveryState.ABANDONED
        self.forget(delivery)
        name = delivery.function.full_name
        log.error(
            "Timeout value of %s exceeded by function '%s' (Id: '%s'). Initiating cancellation.",
            self.function_timeout_text,
            name,
            delivery.invocation_id,
        )
        error = TimeoutError(
            f"Timeout value of {self.function_timeout_text} was exceeded by function: {name}"
        )
        log_executed(delivery.function, delivery.invocation_id, now - delivery.started, error)
        if delivery.cancel is not None:
            delivery.cancel()  # an async function is cancelled; a thread keeps running
        if delivery.on_abandoned is not None:
            delivery.on_abandoned(delivery)
