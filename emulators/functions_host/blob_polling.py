"""The blob trigger with `source=LogsAndContainerScan` (the default): scan, receipts, retries, poison.

The first scan sees every blob already in the container; each blob version (ETag) gets a receipt
(`blob_receipts.py`) so it fires once, across restarts. A failed invocation is retried at once
(after host.json `extensions.queues.visibilityTimeout`, as the host's internal queue does) up to
`maxDequeueCount` (5) attempts in all; then the host's poison message goes to the queue
`webjobs-blobtrigger-poison` (body: Type, FunctionId, BlobType, ContainerName, BlobName, ETag,
encoded per host.json `messageEncoding`, as a queue trigger on that queue reads it) and the receipt
is completed. Unlike the real host, the attempt count lives in memory: a restart midway starts the
count again (the blob is still processed at least once).
"""

from __future__ import annotations

import base64
import json
import logging
import threading

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from emulators.functions_host.app_loader import BlobFunction
from emulators.functions_host.blob_invocation import BlobInvoker, BlobVersion, input_stream
from emulators.functions_host.blob_listener import BlobListener, BlobOptions
from emulators.functions_host.blob_receipts import BlobReceipts, ReceiptState, function_id
from emulators.functions_host.blob_scan import list_matching, read_blob
from emulators.functions_host.host_config import QueueOptions

log = logging.getLogger("functions_host")

POISON_QUEUE = "webjobs-blobtrigger-poison"


def poison_message(function_name: str, blob: BlobVersion) -> str:
    """The host's BlobTriggerMessage, in its JSON property order."""
    return json.dumps(
        {
            "Type": "BlobTrigger",
            "FunctionId": function_id(function_name),
            "BlobType": blob.blob_type,
            "ContainerName": blob.container,
            "BlobName": blob.name,
            "ETag": blob.etag,
        },
        separators=(",", ":"),
    )


def encode_for_queue(text: str, encoding: str) -> str:
    return base64.b64encode(text.encode()).decode() if encoding == "base64" else text


class PollingBlobListener(BlobListener):
    kind = "LogsAndContainerScan"

    def __init__(
        self, function: BlobFunction, service: BlobServiceClient, invoker: BlobInvoker,
        options: BlobOptions, queues: QueueOptions, queue_service: QueueServiceClient,
    ) -> None:  # fmt: skip
        super().__init__(function, service, invoker, options)
        self.queues = queues
        self.receipts = BlobReceipts(service, options.host_id, function_id(function.name))
        self._poison = queue_service.get_queue_client(POISON_QUEUE)
        self._claimed: set[tuple[str, str]] = set()  # (name, etag) dispatched and not done
        self._completed: set[tuple[str, str]] = set()  # receipts known complete: no re-read
        self._claim_lock = threading.Lock()

    def _scan_once(self) -> bool:
        found = False
        for blob in list_matching(self.service, self.function.path):
            key = (blob.name, blob.etag)
            with self._claim_lock:
                if key in self._claimed or key in self._completed:
                    continue
            state = self.receipts.state(blob.etag, blob.container, blob.name)
            if state is ReceiptState.COMPLETE:
                self._completed.add(key)
                continue
            if state is ReceiptState.NONE:
                self.receipts.try_create(blob.etag, blob.container, blob.name)
            with self._claim_lock:
                self._claimed.add(key)
            self._dispatch(blob)
            found = True
        return found

    def _process(self, work: object) -> None:
        assert isinstance(work, BlobVersion)
        blob = work
        key = (blob.name, blob.etag)
        try:
            self._attempts(blob)
        finally:
            with self._claim_lock:
                self._claimed.discard(key)

    def _attempts(self, blob: BlobVersion) -> None:
        key = (blob.name, blob.etag)
        for attempt in range(1, self.queues.max_dequeue_count + 1):
            if self.stopping:
                return  # the receipt stays incomplete: the next host processes it
            read = read_blob(self.service, blob)
            if read is None:
                log.info("Blob '%s' was deleted before it could be processed", blob.path)
                break
            data, properties, metadata = read
            if self.invoker.invoke(blob, input_stream(blob, data, properties, metadata)) is None:
                break
            if attempt == self.queues.max_dequeue_count:
                self._send_to_poison(blob)
            elif self.queues.visibility_timeout_s > 0:
                self._stop.wait(self.queues.visibility_timeout_s)
        self.receipts.mark_complete(blob.etag, blob.container, blob.name)
        with self._claim_lock:
            self._completed.add(key)

    def _send_to_poison(self, blob: BlobVersion) -> None:
        log.warning(
            "Message has reached MaxDequeueCount of %d. Moving message for blob '%s' to queue '%s'.",
            self.queues.max_dequeue_count, blob.path, POISON_QUEUE,
        )  # fmt: skip
        try:
            self._poison.create_queue()
        except ResourceExistsError:
            pass
        body = poison_message(self.function.name, blob)
        self._poison.send_message(encode_for_queue(body, self.queues.message_encoding))
