"""What an operator does to the request blobs: list requests, read records, re-send poison.

The storage half of the operator CLI (`shared.ops.cli`), apart so that it reads without argparse or
print in the way: every function returns a value (or calls back for a folder it had to skip), and
the CLI decides what to say and which exit code it means. Errors from the SDK and the store are
left to rise: the CLI turns them into one line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import QueueClient

from shared.client.producer import ImageRequestClient
from shared.contract.request import body_id
from shared.ops.reporting import ERROR, STATUS, Folder, RequestHistory, request_folders
from shared.records.attempts import iso_utc, utc_now
from shared.records.documents import ErrorKind, Status, attempts_from_status, status_doc
from shared.settings import OperatorSettings
from shared.storage.clients import blob_service, queue_service
from shared.storage.store import LockHeld, RequestStore, StoreError

READ_THREADS = 8
# A re-sent poison body stays invisible until its records are cleared; if we die in between,
# it still shows up on its own after this long.
REQUEUE_HIDE_S = 30

FolderRecord = tuple[Folder, dict[str, Any] | None]
# Told about a folder whose governing record could not be read; the listing goes on without it.
OnUnreadable = Callable[[Folder, StoreError], None]


def _ignore(folder: Folder, exc: StoreError) -> None:
    """The default for `OnUnreadable`: a caller that does not ask is not told."""


class Storage:
    """The SDK clients one operator command uses, over the request layout of `RequestStore`."""

    def __init__(self, settings: OperatorSettings, **client_kwargs: Any) -> None:
        """`client_kwargs` go to both SDK service clients (retry policy, timeouts)."""
        self.settings = settings
        blobs = blob_service(settings.storage, **client_kwargs)
        queues = queue_service(settings.storage, **client_kwargs)
        self.endpoint = blobs.url.rstrip("/")  # No key in it: safe to print.
        self.container = blobs.get_container_client(settings.images_container)
        self.queue: QueueClient = queues.get_queue_client(settings.requests_queue)
        self.store = RequestStore(blobs, settings.images_container)
        self.client = ImageRequestClient(
            self.queue, self.container, input_containers=settings.input_containers
        )

    def folders(self) -> list[Folder]:
        """Every request folder, newest first: one listing pass, no downloads."""
        try:
            listing = [(b.name, b.last_modified) for b in self.container.list_blobs()]
        except ResourceNotFoundError:
            return []  # No container yet: nothing was ever submitted here.
        return request_folders(listing)

    def read_records(
        self, folders: Sequence[Folder], on_unreadable: OnUnreadable = _ignore
    ) -> list[FolderRecord]:
        """Each folder's governing record, read in parallel; an unreadable one is None.

        `on_unreadable` runs on a worker thread, as each unreadable record is met.
        """

        def read(folder: Folder) -> FolderRecord:
            try:
                return folder, self.store.read_json(folder.id, folder.governing)
            except StoreError as exc:
                on_unreadable(folder, exc)
                return folder, None

        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            return list(pool.map(read, folders))


# --- listing ---------------------------------------------------------------------------------------


def updated_since(folders: list[Folder], since: timedelta | None, now: datetime) -> list[Folder]:
    """The folders changed within `since` of `now`; all of them when `since` is None."""
    if since is None:
        return folders
    cutoff = now - since
    return [f for f in folders if f.updated >= cutoff]


def record_status(record: dict[str, Any] | None) -> str:
    """Where a governing record says its request stands; `unknown` when it was not read."""
    return str((record or {}).get("status") or "unknown")


def find_requests(
    storage: Storage,
    *,
    now: datetime,
    since: timedelta | None = None,
    statuses: Collection[str] | None = None,
    limit: int,
    on_unreadable: OnUnreadable = _ignore,
) -> list[FolderRecord]:
    """Up to `limit` requests, newest first, whose status is one of `statuses` (any, when None).

    Read in batches newest first until enough match: a status filter needs the records, and a
    container of many requests should not be read whole for the last ten.
    """
    folders = updated_since(storage.folders(), since, now)
    found: list[FolderRecord] = []
    batch = READ_THREADS * 4
    for start in range(0, len(folders), batch):
        for folder, record in storage.read_records(folders[start : start + batch], on_unreadable):
            if statuses is None or record_status(record) in statuses:
                found.append((folder, record))
        if len(found) >= limit:
            break
    return found[:limit]


def recent_histories(
    storage: Storage, *, now: datetime, since: timedelta, on_unreadable: OnUnreadable = _ignore
) -> list[RequestHistory]:
    """The governing record of every request changed within `since`: what a report reads."""
    folders = updated_since(storage.folders(), since, now)
    return [
        RequestHistory(folder.id, record)
        for folder, record in storage.read_records(folders, on_unreadable)
        if record is not None
    ]


def ids_with_error_record(storage: Storage) -> list[str]:
    """Every request with an error.json, newest first: what `requeue-poison --all` looks at."""
    return [f.id for f in storage.folders() if ERROR in f.records]


# --- requeue-poison --------------------------------------------------------------------------------


class RequeueOutcome(Enum):
    NO_ERROR_RECORD = "no_error_record"
    NOT_POISONED = "not_poisoned"  # error.json of another kind: a real failure, not ours to retry
    NO_INPUT = "no_input"  # poisoned, but the record keeps no body to re-send
    WOULD_RESEND = "would_resend"  # a dry run stopped here
    LEASED = "leased"  # a delivery holds status.json right now
    RESENT = "resent"


@dataclass(frozen=True, slots=True)
class RequeueResult:
    """What `requeue_poisoned` did with one request, with what the CLI needs to say so."""

    request_id: str
    outcome: RequeueOutcome
    kind: object = None  # error.json's `error.kind` (any JSON: the record is not trusted)
    body_bytes: int = 0
    message_id: str | None = None
    # False: the body has no `id`, so the rerun's request id is the new message id.
    own_id: bool = True


def requeue_poisoned(
    storage: Storage,
    request_id: str,
    *,
    dry_run: bool = False,
    clock: Callable[[], datetime] = utc_now,
) -> RequeueResult:
    """Re-send a poisoned request's original body and clear its records so the rerun does work.

    Anything but a poisoned error.json with its body is left alone. Raises `StoreError` for a
    record that cannot be read, and the SDK's errors when storage cannot be reached.
    """
    record = storage.store.read_json(request_id, ERROR)
    if record is None:
        return RequeueResult(request_id, RequeueOutcome.NO_ERROR_RECORD)
    error = record.get("error")
    kind = error.get("kind") if isinstance(error, dict) else None
    if kind != ErrorKind.POISONED.value:
        return RequeueResult(request_id, RequeueOutcome.NOT_POISONED, kind=kind)
    body = record.get("input")
    if not isinstance(body, str) or not body:
        return RequeueResult(request_id, RequeueOutcome.NO_INPUT, kind=kind)
    size = len(body.encode())
    if dry_run:
        return RequeueResult(request_id, RequeueOutcome.WOULD_RESEND, kind=kind, body_bytes=size)
    try:
        message_id, own_id = _resend(storage, request_id, record, body, clock)
    except LockHeld:
        return RequeueResult(request_id, RequeueOutcome.LEASED, kind=kind, body_bytes=size)
    return RequeueResult(
        request_id,
        RequeueOutcome.RESENT,
        kind=kind,
        body_bytes=size,
        message_id=message_id,
        own_id=own_id,
    )


def _resend(
    storage: Storage,
    request_id: str,
    record: dict[str, Any],
    body: str,
    clock: Callable[[], datetime],
) -> tuple[str, bool]:
    """Send the body hidden, clear the records, then reveal it; undo the send if clearing fails.

    Order matters: a delivery that finds error.json is acknowledged without work, and a record
    deleted before the send succeeded would lose the only copy of the body.
    """
    own_id = body_id(body) is not None
    with contextlib.suppress(ResourceExistsError):
        storage.queue.create_queue()
    sent = storage.queue.send_message(body, visibility_timeout=REQUEUE_HIDE_S)
    try:
        if own_id:
            storage.store.write_status(request_id, queued_status(request_id, record, clock()))
        else:
            # The run gets a new folder (the message id); this one only held the poison record.
            storage.store.delete_record(request_id, STATUS)
        storage.store.delete_record(request_id, ERROR)
    except BaseException:
        with contextlib.suppress(Exception):
            storage.queue.delete_message(sent.id, sent.pop_receipt)
        raise
    storage.queue.update_message(sent.id, pop_receipt=sent.pop_receipt, visibility_timeout=0)
    return sent.id, own_id


def queued_status(request_id: str, record: dict[str, Any], now: datetime) -> dict[str, Any]:
    """`queued` again, keeping the whole attempt history.

    Billable attempts count toward the cap, and the 401/403/404 ones keep their apim-request-ids
    for the report; the pipeline tries again after a configuration error from an earlier delivery.
    """
    images = record.get("images")
    history = attempts_from_status(record)
    return status_doc(
        request_id,
        Status.QUEUED,
        updated_at=iso_utc(now),
        images_done=len(images) if isinstance(images, list) else 0,
        attempts=history,
        request_hash=record.get("request_hash"),
        created_at=record.get("created_at"),
        detail="re-sent by requeue-poison",
    )
