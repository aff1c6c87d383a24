"""A producer's client: submit generation requests and follow them to their images.

Needs only this module, the contract, the record models (`shared.records`) and the Azure SDKs
(no app settings), so another Python service can vendor it. `status` and `wait` return the
documents as models (`Manifest`, `ErrorRecord`, `StatusDoc`), whose JSON Schemas are in `schemas/`. It validates with the same contract the function uses, so a bad request
fails here, in the producer, with the same message it would get in error.json.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings
from azure.storage.queue import QueueClient, QueueServiceClient

from shared.contract.models import DEFAULT_MODELS
from shared.contract.request import GenerationRequest, encode_message, validate_request
from shared.records.attempts import iso_utc, utc_now
from shared.records.documents import Status, status_doc
from shared.records.models import (
    Document,
    ErrorRecord,
    Manifest,
    StatusDoc,
    UnreadableRecord,
    parse_document,
)

__all__ = [
    "ErrorRecord",
    "ImageRequestClient",
    "Manifest",
    "RequestTimeout",
    "StatusDoc",
    "UnreadableRecord",
    "new_request_id",
]

TERMINAL = ("manifest.json", "error.json")
ProgressCallback = Callable[[StatusDoc], None]


class RequestTimeout(TimeoutError):
    """`wait` reached its deadline before the request finished; the request goes on."""


def new_request_id() -> str:
    """Sortable by time and unique: `20260507T134612-3f9c1a2b`."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


class ImageRequestClient:
    def __init__(
        self,
        queue: QueueClient,
        container: ContainerClient,
        *,
        input_containers: tuple[str, ...] = ("inputs",),
        models: tuple[str, ...] = DEFAULT_MODELS,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.queue = queue
        self.container = container
        self.input_containers = input_containers
        # The models of the deployments the app may send to: a request none of them would take is
        # refused here, as the app would refuse it (gpt-image-2, the app's default, when not told).
        self.models = models
        self._monotonic = monotonic
        self._sleep = sleep
        self._queue_ready = False

    @classmethod
    def from_connection_string(
        cls,
        connection_string: str,
        queue_name: str = "image-requests",
        container_name: str = "images",
        **kwargs: Any,
    ) -> ImageRequestClient:
        queue = QueueServiceClient.from_connection_string(connection_string).get_queue_client(
            queue_name
        )
        container = BlobServiceClient.from_connection_string(
            connection_string
        ).get_container_client(container_name)
        return cls(queue, container, **kwargs)

    def validate(self, request: GenerationRequest | Mapping[str, Any]) -> GenerationRequest:
        """The request with an id set, or `InvalidMessage` with the contract's messages."""
        data = (
            request.model_dump(exclude_none=True)
            if isinstance(request, GenerationRequest)
            else dict(request)
        )
        return validate_request(
            data,
            default_id=new_request_id(),
            input_containers=self.input_containers,
            models=self.models,
        )

    def submit(self, request: GenerationRequest | Mapping[str, Any]) -> str:
        """Validate, write status `queued`, enqueue as plain JSON; returns the request's id."""
        validated = self.validate(request)
        text = encode_message(validated)  # Raises InvalidMessage over the queue's 64 KiB.
        request_id = validated.id or ""
        self._write_queued(request_id, validated.request_hash())
        self._ensure_queue()
        self.queue.send_message(text)
        return request_id

    def _ensure_queue(self) -> None:
        if not self._queue_ready:
            try:
                self.queue.create_queue()
            except ResourceExistsError:
                pass
            self._queue_ready = True

    def _write_queued(self, request_id: str, request_hash: str) -> None:
        """`queued` only for a new id: a resubmitted id keeps the status its work has reached."""
        doc = status_doc(
            request_id,
            Status.QUEUED,
            updated_at=iso_utc(utc_now()),
            images_done=0,
            attempts=(),
            request_hash=request_hash,
        )
        try:
            self.container.create_container()
        except ResourceExistsError:
            pass
        try:
            self.container.upload_blob(
                f"{request_id}/status.json",
                json.dumps(doc).encode(),
                overwrite=False,
                content_settings=ContentSettings(content_type="application/json"),
            )
        except HttpResponseError as exc:
            # 409: it exists; 412: it exists and a delivery holds its lease. Either way, keep it.
            if exc.status_code not in (409, 412):
                raise

    def _read(self, request_id: str, name: str) -> Document | None:
        """The document's model, None if the blob does not exist, `UnreadableRecord` if invalid."""
        blob = f"{request_id}/{name}"
        try:
            data = self.container.download_blob(blob).readall()
        except ResourceNotFoundError:
            return None
        if name == "status.json" and data.strip() == b"{}":
            # The worker's placeholder for the request's lease: taken, nothing written in it yet.
            return None
        return parse_document(name, data, where=f"{self.container.container_name}/{blob}")

    def terminal(self, request_id: str) -> Manifest | ErrorRecord | None:
        """manifest.json or error.json if the request has finished, else None."""
        for name in TERMINAL:
            record = self._read(request_id, name)
            if isinstance(record, Manifest | ErrorRecord):
                return record
        return None

    def status(self, request_id: str) -> Manifest | ErrorRecord | StatusDoc | None:
        """The terminal record if there is one, else status.json, else None (unknown id)."""
        record = self.terminal(request_id)
        if record is not None:
            return record
        status = self._read(request_id, "status.json")
        return status if isinstance(status, StatusDoc) else None

    def wait(
        self,
        request_id: str,
        timeout: float,
        on_progress: ProgressCallback | None = None,
        poll_s: float = 0.5,
    ) -> Manifest | ErrorRecord:
        """Poll until manifest.json or error.json exists; return it. Progress is reported on change.

        `record.succeeded` tells the two apart; `record.model_dump(mode="json")` is the stored JSON.
        """
        deadline = self._monotonic() + timeout
        last: tuple[Any, ...] | None = None
        while True:
            record = self.terminal(request_id)
            if record is not None:
                return record
            status = self._read(request_id, "status.json")
            if isinstance(status, StatusDoc) and on_progress is not None:
                marker = (status.status, status.images_done, len(status.attempts))
                if marker != last:
                    last = marker
                    on_progress(status)
            if self._monotonic() >= deadline:
                raise RequestTimeout(f"request {request_id} did not finish within {timeout:.0f}s")
            self._sleep(poll_s)

    def fetch(self, request_id: str, dest_dir: str | Path) -> list[Path]:
        """Download the request's images and records into `dest_dir`; returns the files written."""
        dest = Path(dest_dir)
        written: list[Path] = []
        for blob in self.container.list_blobs(name_starts_with=f"{request_id}/"):
            relative = blob.name[len(request_id) + 1 :]
            if not relative or relative.startswith("..") or "/../" in relative:
                continue
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                self.container.download_blob(blob.name).readinto(out)
            written.append(target)
        return written
