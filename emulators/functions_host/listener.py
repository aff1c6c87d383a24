"""One queue trigger: poll with back-off, keep the in-flight limits, run and settle each message.

A new batch is fetched once no more than `newBatchThreshold` messages are in flight, so at most
`batchSize + newBatchThreshold` run at once. A `def` function also needs a free thread of the
worker pool (shared by every `def` function), reserved before receiving so that no message sits
leased while it waits for a thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.queue import QueueClient
from azure.storage.queue import QueueMessage as StorageMessage

from emulators.functions_host.app_loader import QueueFunction
from emulators.functions_host.backoff import PollingBackoff
from emulators.functions_host.capacity import Slots
from emulators.functions_host.delivery import Delivery, DeliveryState, LeaseKeeper
from emulators.functions_host.host_config import MAX_BATCH_SIZE, QueueOptions
from emulators.functions_host.invocation import (
    ReceivedMessage,
    call_async,
    call_sync,
    log_executed,
    log_executing,
)
from emulators.functions_host.settlement import PoisonQueue, move_to_poison, settle

log = logging.getLogger("functions_host")


def received(message: StorageMessage) -> ReceivedMessage:
    return ReceivedMessage(
        id=message.id,
        content=message.content if isinstance(message.content, str) else str(message.content),
        dequeue_count=int(message.dequeue_count or 0),
        pop_receipt=str(message.pop_receipt),
        insertion_time=message.inserted_on,
        expiration_time=message.expires_on,
        time_next_visible=message.next_visible_on,
    )


class QueueListener:
    def __init__(
        self,
        function: QueueFunction,
        queue: QueueClient,
        poison: PoisonQueue,
        options: QueueOptions,
        *,
        lease_keeper: LeaseKeeper,
        changed: threading.Condition,
        pool: Executor | None,
        pool_slots: Slots | None,
        loop: asyncio.AbstractEventLoop | None,
        settler: Executor,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.function = function
        self.queue = queue
        self.poison = poison
        self.options = options
        self._keeper = lease_keeper
        self._changed = changed
        self._pool = pool
        self._pool_slots = pool_slots
        self._loop = loop
        self._settler = settler
        self._rng = rng
        self._clock = clock
        self.in_flight = 0  # received and not yet settled or abandoned; guarded by `changed`
        self._stop = threading.Event()
        self._missing_logged = False
        self._at_capacity = False
        self._thread = threading.Thread(target=self._run, name=f"listener-{function.name}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # Polling

    def _reserve(self) -> int:
        """Claim room for the next batch, waiting (briefly) while there is none."""
        with self._changed:
            room = 0
            if self.in_flight <= self.options.new_batch_threshold:
                room = min(
                    self.options.batch_size,
                    MAX_BATCH_SIZE,
                    self.options.max_in_flight - self.in_flight,
                )
                if room > 0 and self._pool_slots is not None:
                    room = self._pool_slots.take_up_to(room)
            if room == 0:
                if not self._at_capacity:
                    log.debug(
                        "'%s' at capacity: %d in flight", self.function.full_name, self.in_flight
                    )
                self._at_capacity = True
                self._changed.wait(0.5)
                return 0
            self._at_capacity = False
            self.in_flight += room
            return room

    def _unreserve(self, count: int) -> None:
        if count <= 0:
            return
        with self._changed:
            self.in_flight -= count
            self._changed.notify_all()
        if self._pool_slots is not None:
            self._pool_slots.give_back(count)

    def _receive(self, count: int) -> list[StorageMessage]:
        try:
            pages = self.queue.receive_messages(
                messages_per_page=count, visibility_timeout=self._keeper.lease_s
            ).by_page()
            messages = list(next(pages, []))  # an empty queue ends the paging at once
        except ResourceNotFoundError:
            if not self._missing_logged:
                log.warning("Queue '%s' does not exist (yet); polling it", self.function.queue_name)
                self._missing_logged = True
            return []
        except AzureError as error:
            log.warning("Polling '%s' failed: %s", self.function.queue_name, error)
            return []
        self._missing_logged = False
        return messages

    def _run(self) -> None:
        backoff = PollingBackoff(self.options.max_polling_interval_s)
        while not self._stop.is_set():
            try:
                found = self._poll_once()
            except Exception:  # a listener that dies silently would strand its queue
                log.exception("Listener for '%s' failed; polling again", self.function.full_name)
                found = False
            if found:
                backoff = backoff.reset()
            else:
                backoff = backoff.after_empty()
                self._stop.wait(backoff.delay(self._rng))

    def _poll_once(self) -> bool:
        """Receive and dispatch one batch; False when there was nothing to receive."""
        room = self._reserve()
        if room == 0:
            return True  # full, not idle: no back-off, `_reserve` already waited for a slot
        messages = self._receive(room)
        self._unreserve(room - len(messages))
        for message in messages:
            self._dispatch(received(message))
        return bool(messages)

    # One message

    def _dispatch(self, message: ReceivedMessage) -> None:
        if message.dequeue_count > self.options.max_dequeue_count:
            try:
                move_to_poison(
                    self.queue, self.poison, message.id, message.pop_receipt, message.content,
                    self.options.max_dequeue_count,
                )  # fmt: skip
            except AzureError as error:
                log.warning("Could not poison message %s: %s", message.id, error)
            self._unreserve(1)
            return
        invocation_id = str(uuid.uuid4())
        delivery = self._keeper.new_delivery(self.function, self.queue, message, invocation_id)
        delivery.on_abandoned = self._abandoned
        log_executing(self.function, invocation_id)
        if self.function.is_async:
            assert self._loop is not None
            future = asyncio.run_coroutine_threadsafe(self._invoke_async(delivery), self._loop)
            delivery.cancel = future.cancel
        else:
            assert self._pool is not None
            self._pool.submit(self._invoke_sync, delivery)

    def _invoke_sync(self, delivery: Delivery) -> None:
        error = call_sync(
            self.function, delivery.message, self.options.message_encoding, delivery.invocation_id
        )
        if self._pool_slots is not None:
            self._pool_slots.give_back(1)  # the thread is free, even for an abandoned invocation
        self._finish(delivery, error)

    async def _invoke_async(self, delivery: Delivery) -> None:
        error = await call_async(
            self.function, delivery.message, self.options.message_encoding, delivery.invocation_id
        )
        self._finish(delivery, error)

    def _finish(self, delivery: Delivery, error: BaseException | None) -> None:
        duration = self._clock() - delivery.started
        if not delivery.begin_settling():
            log.debug(
                "Abandoned invocation %s returned after %.1fs", delivery.invocation_id, duration
            )
            return
        log_executed(self.function, delivery.invocation_id, duration, error)
        try:
            self._settler.submit(self._settle, delivery, error is None)
        except RuntimeError:  # the host stopped after its grace period: the lease will lapse
            log.warning("Host stopped; message %s is left to reappear", delivery.message.id)

    def _settle(self, delivery: Delivery, succeeded: bool) -> None:
        try:
            with delivery.lock:  # the lease keeper may be renewing; use the newest pop receipt
                settle(
                    self.queue,
                    self.poison,
                    message_id=delivery.message.id,
                    pop_receipt=delivery.pop_receipt,
                    content=delivery.message.content,
                    dequeue_count=delivery.message.dequeue_count,
                    succeeded=succeeded,
                    max_dequeue_count=self.options.max_dequeue_count,
                    visibility_timeout_s=self.options.visibility_timeout_s,
                )
                delivery.state = DeliveryState.DONE
        finally:
            self._keeper.forget(delivery)
            self._release_slot()

    def _abandoned(self, delivery: Delivery) -> None:
        self._release_slot()

    def _release_slot(self) -> None:
        with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()
