"""The JSON documents of docs/design.md §5: status.json, manifest.json and error.json.

Pure functions from values to dicts, so the shapes are tested without storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from shared.records.attempts import AttemptRecord
from shared.records.history import CallHistory

Calls = Sequence[AttemptRecord] | CallHistory

MANIFEST_SCHEMA = "imagegen.manifest/1"
ERROR_SCHEMA = "imagegen.error/1"


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"


class ErrorKind(StrEnum):
    INVALID_REQUEST = "invalid_request"
    CONTENT_FILTER = "content_filter"
    RETRIES_EXHAUSTED = "retries_exhausted"
    POISONED = "poisoned"
    DEADLINE_EXCEEDED = (
        "deadline_exceeded"  # IMAGE_REQUEST_DEADLINE_S passed before it could finish
    )


def status_doc(
    request_id: str,
    status: Status,
    *,
    updated_at: str,
    images_done: int,
    attempts: Calls,
    request_hash: str | None = None,
    created_at: str | None = None,
    detail: str | None = None,
    first_delivery_at: str | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": request_id,
        "status": status.value,
        "updated_at": updated_at,
        "images_done": images_done,
        **_calls(attempts),
    }
    if first_delivery_at is not None:
        doc["first_delivery_at"] = first_delivery_at
    if request_hash is not None:
        doc["request_hash"] = request_hash
    if created_at is not None:
        doc["created_at"] = created_at
    if detail is not None:
        doc["detail"] = detail
    return doc


def attempts_from_status(doc: dict[str, Any] | None) -> list[AttemptRecord]:
    """The attempt history a status.json carries; unreadable entries are skipped, not fatal."""
    return CallHistory.from_doc(doc).attempts


def _calls(attempts: Calls) -> dict[str, Any]:
    history = attempts if isinstance(attempts, CallHistory) else CallHistory.from_doc(None)
    if not isinstance(attempts, CallHistory):
        for record in attempts:
            history.add(record, billed=lambda _: True)
        history.calls = max(history.calls, len(history.attempts))
    return history.to_json()


def manifest_doc(
    request_id: str,
    *,
    request: dict[str, Any],
    request_hash: str,
    images: Sequence[dict[str, Any]],
    attempts: Calls,
    created_at: str,
    completed_at: str,
    metadata: dict[str, str],
) -> dict[str, Any]:
    return {
        "schema": MANIFEST_SCHEMA,
        "id": request_id,
        "status": Status.SUCCEEDED.value,
        "request": request,
        "request_hash": request_hash,
        "images": list(images),
        **_calls(attempts),
        "created_at": created_at,
        "completed_at": completed_at,
        "metadata": metadata,
    }


def error_doc(
    request_id: str,
    *,
    status: Status,
    kind: ErrorKind,
    message: str,
    created_at: str,
    completed_at: str,
    request: dict[str, Any] | None = None,
    request_hash: str | None = None,
    images: Sequence[dict[str, Any]] = (),
    attempts: Calls = (),
    metadata: dict[str, str] | None = None,
    input_text: str | None = None,
    queue_message_id: str | None = None,
    content_filter: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`content_filter`: the safety system's verdict (`ErrorInfo.content_filter`), as `error.content_filter`."""
    doc: dict[str, Any] = {
        "schema": ERROR_SCHEMA,
        "id": request_id,
        "status": status.value,
        "request": request,
        "images": list(images),
        **_calls(attempts),
        "created_at": created_at,
        "completed_at": completed_at,
        "metadata": metadata or {},
        "error": {"kind": kind.value, "message": message},
    }
    if content_filter is not None:
        doc["error"]["content_filter"] = content_filter
    if request_hash is not None:
        doc["request_hash"] = request_hash
    if input_text is not None:
        doc["input"] = input_text
    if queue_message_id is not None:
        doc["queue_message_id"] = queue_message_id
    return doc
