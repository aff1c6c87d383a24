"""The JSON documents of docs/design.md §5: status.json, manifest.json and error.json.

Pure functions from values to the documents' JSON, so the shapes are tested without storage. Each
builds its model (`shared.records.models`) and returns the model's JSON: a document the models
cannot read back is never written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.records.attempts import AttemptRecord
from shared.records.history import CallHistory
from shared.records.models import (
    ERROR_SCHEMA,
    MANIFEST_SCHEMA,
    STATUS_SCHEMA,
    ErrorKind,
    ErrorRecord,
    Failure,
    Manifest,
    Status,
    StatusDoc,
)

__all__ = [
    "ERROR_SCHEMA",
    "MANIFEST_SCHEMA",
    "STATUS_SCHEMA",
    "ErrorKind",
    "Status",
    "attempts_from_status",
    "error_doc",
    "manifest_doc",
    "status_doc",
]

Calls = Sequence[AttemptRecord] | CallHistory


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
    return StatusDoc(
        id=request_id,
        status=status,
        updated_at=updated_at,
        images_done=images_done,
        **_calls(attempts),
        first_delivery_at=first_delivery_at,
        request_hash=request_hash,
        created_at=created_at,
        detail=detail,
    ).model_dump(mode="json")


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
    return Manifest(
        schema_=MANIFEST_SCHEMA,
        id=request_id,
        status=Status.SUCCEEDED.value,
        request=request,
        request_hash=request_hash,
        images=list(images),
        **_calls(attempts),
        created_at=created_at,
        completed_at=completed_at,
        metadata=metadata,
    ).model_dump(mode="json")


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
    return ErrorRecord(
        schema_=ERROR_SCHEMA,
        id=request_id,
        status=status.value,
        request=request,
        images=list(images),
        **_calls(attempts),
        created_at=created_at,
        completed_at=completed_at,
        metadata=metadata or {},
        error=Failure(kind=kind, message=message, content_filter=content_filter),
        request_hash=request_hash,
        input=input_text,
        queue_message_id=queue_message_id,
    ).model_dump(mode="json")
