"""The poison queue's function: a request the host gave up on gets error.json kind `poisoned`.

Kept apart from the pipeline: it must take anything (bodies that are not JSON, ids that were never
valid) and never fail because of what a message holds.
"""

from __future__ import annotations

import contextlib
import logging

from shared.contract.request import GenerationRequest, InvalidMessage, body_id, parse_message
from shared.records.attempts import iso_utc
from shared.records.documents import ErrorKind, Status, error_doc, status_doc
from shared.records.history import CallHistory
from shared.storage.store import LeaseLost, LockHeld
from shared.worker.pipeline import Result, deployment_models
from shared.worker.runtime import Runtime

log = logging.getLogger("imagegen.poisoned")


def record_poisoned(body: bytes | str, message_id: str, rt: Runtime) -> Result:
    """Turn a poison message into error.json kind `poisoned` (unless the request succeeded).

    Never raises because of the message's content: whatever is on the poison queue gets a record.
    The whole body is kept in `input` so `requeue-poison` can send it again.
    """
    rt.ensure_ready()
    request: GenerationRequest | None = None
    with contextlib.suppress(InvalidMessage):
        request = parse_message(
            body,
            message_id=message_id,
            input_containers=rt.settings.input_containers,
            models=deployment_models(rt),
        )
    request_id = request.id if request is not None and body_id(body) is not None else None
    record_id = request_id or message_id
    if rt.store.terminal(record_id) == "manifest":
        log.info(
            "poisoned message %s: request %s already succeeded; nothing to record",
            message_id,
            record_id,
        )
        return Result.SKIPPED
    status = rt.store.read_json(record_id, "status.json") if request_id else None
    history = CallHistory.from_doc(status)
    last = history.attempts[-1] if history.attempts else None
    reason = (
        f"the host gave up after repeated failed deliveries; last attempt: {last.outcome.value}"
        + (f" (HTTP {last.http_status}: {last.error.message})" if last and last.error else "")
        if last
        else "the host gave up after repeated failed deliveries"
    )
    if request_id is None:
        reason += "; the original id is unknown (the message carried none), so this record is filed under the poison message's id"
    now = iso_utc(rt.now())
    doc = error_doc(
        record_id,
        status=Status.FAILED,
        kind=ErrorKind.POISONED,
        message=reason,
        created_at=(status or {}).get("created_at", now),
        completed_at=now,
        request=request.model_dump(mode="json") if request else None,
        request_hash=request.request_hash() if request else None,
        attempts=history,
        metadata=dict(request.metadata) if request else None,
        input_text=body if isinstance(body, str) else body.decode("utf-8", "backslashreplace"),
        queue_message_id=message_id,
    )
    if not rt.store.create_record(record_id, "error.json", doc):
        log.info("poisoned message %s: %s already has a terminal record", message_id, record_id)
        return Result.SKIPPED
    try:
        rt.store.write_status(
            record_id,
            status_doc(
                record_id,
                Status.FAILED,
                updated_at=now,
                images_done=0,
                attempts=history,
                detail=reason,
            ),
        )
    except (LockHeld, LeaseLost):
        # An abandoned delivery still holds the lease; error.json is the record that counts.
        log.info("request %s: status.json is leased; left as it is", record_id)
    log.warning("request %s poisoned: %s", record_id, reason)
    return Result.FAILED
