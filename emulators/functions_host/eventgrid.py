"""What Event Grid does for a blob trigger with `source=EventGrid`: the event, its retries, its dead letter.

Azurite has no Event Grid, so the stand-in plays the subscription itself (see `blob_listener.py`):
it publishes a `Microsoft.Storage.BlobCreated` event (Event Grid schema) for every new or
overwritten blob, retries a failed delivery on Event Grid's documented schedule (10 s, 30 s, 1 min,
5 min, 10 min, 30 min, 1 h, 3 h, 6 h, then every 12 h) until 30 delivery attempts or the event's
24 h time to live run out, whichever comes first, and then writes the event to a dead-letter blob
the way a dead-letter destination holds it. `time_scale` shrinks the schedule and the time to live
alike, so a test sees the whole life of an event in seconds.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import Any

# Event Grid's retry schedule, seconds after each failed attempt; the last step repeats.
RETRY_SCHEDULE_S = (10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600)
DEFAULT_MAX_ATTEMPTS = 30
DEFAULT_TTL_S = 24 * 3600.0
BLOB_CREATED = "Microsoft.Storage.BlobCreated"
MAX_ATTEMPTS_EXCEEDED = "MaxDeliveryAttemptsExceeded"
TTL_EXCEEDED = "TimeToLiveExceeded"


@dataclass(frozen=True, slots=True)
class EventGridRetryPolicy:
    """A subscription's retry policy; `time_scale` < 1 runs the real schedule faster."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    ttl_s: float = DEFAULT_TTL_S
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 30:
            raise ValueError(f"max delivery attempts must be in 1..30, got {self.max_attempts}")
        if self.time_scale <= 0 or self.ttl_s <= 0:
            raise ValueError("the time scale and the time to live must be positive")

    def delay_s(self, attempts: int) -> float:
        """How long to wait after the `attempts`-th failed delivery, on the scaled clock."""
        step = RETRY_SCHEDULE_S[min(max(attempts, 1), len(RETRY_SCHEDULE_S)) - 1]
        return step * self.time_scale

    def give_up(self, attempts: int, age_s: float) -> str | None:
        """Why no further attempt follows `attempts` failed ones for an event `age_s` old, or None."""
        if attempts >= self.max_attempts:
            return MAX_ATTEMPTS_EXCEEDED
        if age_s + self.delay_s(attempts) > self.ttl_s * self.time_scale:
            return TTL_EXCEEDED
        return None


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def blob_created_event(
    *, account: str, container: str, blob_name: str, url: str, etag: str, content_type: str | None,
    content_length: int, blob_type: str, now: datetime.datetime,
) -> dict[str, Any]:  # fmt: skip
    """The BlobCreated event Storage publishes for a Put Blob, in the Event Grid event schema."""
    return {
        "topic": (
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local/providers/"
            f"Microsoft.Storage/storageAccounts/{account}"
        ),
        "subject": f"/blobServices/default/containers/{container}/blobs/{blob_name}",
        "eventType": BLOB_CREATED,
        "id": str(uuid.uuid4()),
        "data": {
            "api": "PutBlob",
            "requestId": str(uuid.uuid4()),
            "eTag": etag,
            "contentType": content_type or "application/octet-stream",
            "contentLength": content_length,
            "blobType": blob_type,
            "url": url,
            "sequencer": f"{int(now.timestamp() * 1_000_000):032x}",
            "storageDiagnostics": {"batchId": str(uuid.uuid4())},
        },
        "dataVersion": "",
        "metadataVersion": "1",
        "eventTime": iso(now),
    }


def dead_letter_record(
    event: dict[str, Any], *, reason: str, attempts: int, outcome: str, status_code: int,
    published: datetime.datetime, last_attempt: datetime.datetime,
) -> list[dict[str, Any]]:  # fmt: skip
    """The dead-letter blob's body: a JSON array of the event with the delivery's outcome added."""
    return [
        {
            **event,
            "deadLetterReason": reason,
            "deliveryAttempts": attempts,
            "lastDeliveryOutcome": outcome,
            "lastHttpStatusCode": status_code,
            "publishTime": iso(published),
            "lastDeliveryAttemptTime": iso(last_attempt),
        }
    ]


def dead_letter_blob_name(account: str, subscription: str, event_id: str,
                          now: datetime.datetime) -> str:  # fmt: skip
    """`{TOPIC}/{SUBSCRIPTION}/yyyy/mm/dd/hh/{id}.json`, the layout of Event Grid's dead letters."""
    utc = now.astimezone(datetime.UTC)
    return f"{account.upper()}/{subscription.upper()}/{utc:%Y/%m/%d/%H}/{event_id}.json"
