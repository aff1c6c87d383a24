"""The blob trigger with `source=EventGrid`: the stand-in plays Storage's Event Grid subscription.

Azurite publishes no events, so changes are found by listing the container with ETags on an interval
and comparing with the subscription's last view, kept in `azure-webjobs-hosts`
(`eventgrid/{hostId}/{functionId}/subscription.json`) so a restarted host neither loses nor repeats
what changed while it was down. As with a new subscription, blobs present when it is first created
fire nothing. Each new or overwritten blob is published as a BlobCreated event onto a Storage queue
(Event Grid's own retry store, durable across restarts), then delivered at least once: on failure
it is retried on Event Grid's schedule (`eventgrid.py`, optionally time-scaled), and after the last
attempt or the time to live the event goes to a dead-letter blob in `dead_letter_container`.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from emulators.functions_host.app_loader import BlobFunction
from emulators.functions_host.blob_invocation import BlobInvoker, BlobVersion, input_stream
from emulators.functions_host.blob_listener import BlobListener, BlobOptions
from emulators.functions_host.blob_receipts import function_id
from emulators.functions_host.blob_scan import JsonBlob, list_matching, read_blob
from emulators.functions_host.eventgrid import (
    blob_created_event,
    dead_letter_blob_name,
    dead_letter_record,
)

log = logging.getLogger("functions_host")

_QUEUE_CHARS = re.compile(r"[^a-z0-9]+")


def delivery_queue_name(host_id: str, function_name: str) -> str:
    """A valid queue name unique to the (host, function) pair: `eventgrid-{host}-{function}`."""
    host = _QUEUE_CHARS.sub("-", host_id.lower()).strip("-")[:26].strip("-")
    function = _QUEUE_CHARS.sub("-", function_name.lower()).strip("-")[:26].strip("-")
    return f"eventgrid-{host}-{function}".strip("-")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class EventGridBlobListener(BlobListener):
    kind = "EventGrid"

    def __init__(
        self, function: BlobFunction, service: BlobServiceClient, invoker: BlobInvoker,
        options: BlobOptions, queue_service: QueueServiceClient,
    ) -> None:  # fmt: skip
        super().__init__(function, service, invoker, options)
        fid = function_id(function.name)
        self._subscription = JsonBlob(
            service, f"eventgrid/{options.host_id}/{fid}/subscription.json"
        )
        self._queue = queue_service.get_queue_client(
            delivery_queue_name(options.host_id, function.name)
        )
        self._seen: dict[str, str] = {}

    def prepare(self) -> None:
        """Create the subscription (its first view of the container) before the host reports ready."""
        try:
            self._queue.create_queue()
        except ResourceExistsError:
            pass
        state = self._subscription.read()
        if isinstance(state, dict) and isinstance(state.get("blobs"), dict):
            self._seen = {str(k): str(v) for k, v in state["blobs"].items()}
            return
        self._seen = {b.name: b.etag for b in list_matching(self.service, self.function.path)}
        self._subscription.write({"created": _utcnow().isoformat(), "blobs": self._seen})

    def pending_events(self) -> int:
        return self._queue.get_queue_properties().approximate_message_count or 0

    def idle(self) -> bool:
        return super().idle() and self.pending_events() == 0

    # Publishing: what Storage would send to Event Grid

    def _publish_changes(self) -> int:
        current = list_matching(self.service, self.function.path)
        changed = [b for b in current if self._seen.get(b.name) != b.etag]
        account = self.service.account_name or "devstoreaccount1"
        for blob in changed:
            event = blob_created_event(
                account=account, container=blob.container, blob_name=blob.name, url=blob.url,
                etag=blob.etag, content_type=blob.content_type, content_length=blob.length,
                blob_type=blob.blob_type, now=_utcnow(),
            )  # fmt: skip
            self._queue.send_message(json.dumps({"event": event, "bindings": blob.bindings}))
        names = {b.name for b in current}
        if changed or names != set(self._seen):
            self._seen = {b.name: b.etag for b in current}
            self._subscription.write({"blobs": self._seen})  # after sending: at least once
        return len(changed)

    # Delivering: what Event Grid does with each event

    def _scan_once(self) -> bool:
        published = self._publish_changes()
        room = 2 * 4 - self.in_flight
        if room <= 0:
            return True
        messages = list(
            self._queue.receive_messages(
                messages_per_page=min(room, 32), visibility_timeout=self.options.lease_s,
                max_messages=min(room, 32),
            )
        )  # fmt: skip
        for message in messages:
            self._dispatch(message)
        return bool(published or messages)

    def _process(self, work: object) -> None:
        message: Any = work
        body = json.loads(message.content)
        event = body["event"]
        data = event["data"]
        container, _, name = event["subject"].partition("/containers/")[2].partition("/blobs/")
        blob = BlobVersion(
            container=container, name=name, etag=data["eTag"], url=data["url"],
            length=int(data["contentLength"]), content_type=data.get("contentType"),
            blob_type=data.get("blobType", "BlockBlob"), bindings=dict(body.get("bindings") or {}),
        )  # fmt: skip
        read = read_blob(self.service, blob)
        if read is None:
            log.info("Blob '%s' was deleted before its event could be delivered", blob.path)
            self._queue.delete_message(message)
            return
        error = self.invoker.invoke(blob, input_stream(blob, *read))
        if error is None:
            self._queue.delete_message(message)
            return
        self._retry_or_dead_letter(message, event, error)

    def _retry_or_dead_letter(
        self, message: Any, event: dict[str, Any], error: BaseException
    ) -> None:
        attempts = int(message.dequeue_count or 1)
        policy = self.options.event_grid
        published = datetime.datetime.fromisoformat(event["eventTime"].replace("Z", "+00:00"))
        now = _utcnow()
        reason = policy.give_up(attempts, (now - published).total_seconds())
        if reason is None:
            delay = policy.delay_s(attempts)
            log.warning(
                "Event Grid: delivery %d of event %s failed; retrying in %.1fs",
                attempts, event["id"], delay,
            )  # fmt: skip
            self._queue.update_message(
                message, pop_receipt=message.pop_receipt, visibility_timeout=math.ceil(delay)
            )
            return
        timed_out = isinstance(error, TimeoutError)
        record = dead_letter_record(
            event, reason=reason, attempts=attempts, outcome="TimedOut" if timed_out else "GenericError",
            status_code=0 if timed_out else 500, published=published, last_attempt=now,
        )  # fmt: skip
        blob_name = dead_letter_blob_name(
            self.service.account_name or "devstoreaccount1", self.function.name, event["id"], now
        )
        container = self.service.get_container_client(self.options.dead_letter_container)
        try:
            container.create_container()
        except ResourceExistsError:
            pass
        container.upload_blob(blob_name, json.dumps(record).encode(), overwrite=True)
        log.error(
            "Event Grid: event %s dead-lettered (%s after %d attempts) to '%s/%s'",
            event["id"], reason, attempts, self.options.dead_letter_container, blob_name,
        )  # fmt: skip
        try:
            self._queue.delete_message(message)
        except AzureError as failure:
            log.warning("Could not remove dead-lettered event %s: %s", event["id"], failure)
