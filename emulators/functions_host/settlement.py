"""What happens to a message after its invocation: delete, release for redelivery, or poison.

Mirrors the Storage Queues extension 5.x `QueueProcessor`: success deletes; a failure with
`dequeue_count >= maxDequeueCount` copies the raw body to `<queue>-poison` (created if missing) and
deletes the original; any other failure makes the message visible again after `visibilityTimeout`.
"""

from __future__ import annotations

import logging
import threading

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.queue import QueueClient, QueueServiceClient

log = logging.getLogger("functions_host")

POISON_SUFFIX = "-poison"


class PoisonQueue:
    """The `<queue>-poison` queue, created the first time a message is sent to it."""

    def __init__(self, service: QueueServiceClient, queue_name: str) -> None:
        self.name = queue_name + POISON_SUFFIX
        self._client = service.get_queue_client(self.name)
        self._created = False
        self._lock = threading.Lock()

    def send(self, content: str) -> None:
        with self._lock:
            if not self._created:
                try:
                    self._client.create_queue()
                except ResourceExistsError:
                    pass
                self._created = True
        self._client.send_message(content)


def move_to_poison(
    queue: QueueClient, poison: PoisonQueue, message_id: str, pop_receipt: str, content: str,
    max_dequeue_count: int,
) -> None:  # fmt: skip
    log.warning(
        "Message has reached MaxDequeueCount of %d. Moving message %s to queue '%s'.",
        max_dequeue_count,
        message_id,
        poison.name,
    )
    poison.send(content)  # the raw text as received: what a producer put there, byte for byte
    queue.delete_message(message_id, pop_receipt)


def settle(
    queue: QueueClient, poison: PoisonQueue, *, message_id: str, pop_receipt: str, content: str,
    dequeue_count: int, succeeded: bool, max_dequeue_count: int, visibility_timeout_s: float,
) -> None:  # fmt: skip
    """Apply the outcome; a storage error is logged, and the message then reappears on its own."""
    try:
        if succeeded:
            queue.delete_message(message_id, pop_receipt)
        elif dequeue_count >= max_dequeue_count:
            move_to_poison(queue, poison, message_id, pop_receipt, content, max_dequeue_count)
        else:
            queue.update_message(
                message_id, pop_receipt=pop_receipt, visibility_timeout=round(visibility_timeout_s)
            )
    except AzureError as error:
        log.warning("Could not settle message %s on '%s': %s", message_id, queue.queue_name, error)
