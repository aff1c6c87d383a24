"""The blob layout of one request in the `images` container (docs/design.md §5).

```
{id}/{k}.{png|jpg}            image k, content type set, metadata request_id, image_index, sha256, ...
{id}/partials/{k}-{p}.{ext}   partial images, only with save_partials
{id}/status.json              progress, overwritten; its blob lease is the request's lock
{id}/manifest.json            create-only, written last: its existence means every image is in place
{id}/error.json               create-only terminal failure instead of a manifest
```

Everything the manifest lists about an image is also kept in the image blob's metadata, so a
redelivery finds finished images from their properties without downloading them. Documents are
compact UTF-8 JSON; every timestamp in them comes from the caller.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Literal, Protocol

from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobClient, BlobLeaseClient, BlobServiceClient, ContentSettings

from shared.records.imageinfo import (
    content_type,
    extension,
    image_dimensions,
    image_format,
    normalise_format,
)
from shared.telemetry import Telemetry

log = logging.getLogger(__name__)

STATUS = "status.json"
MANIFEST = "manifest.json"
ERROR = "error.json"
RecordName = Literal["manifest.json", "error.json"]
JSON_CONTENT_TYPE = "application/json"

MIN_LEASE_S = 15  # what Blob Storage accepts for a finite lease
MAX_LEASE_S = 60
# Blob metadata travels in HTTP headers (8 KiB in all); a usage object larger than this is dropped.
MAX_USAGE_METADATA = 4096
# Created only when no status exists yet, so the lease has a blob to hold; never overwrites one.
STATUS_PLACEHOLDER = b"{}"


class StoreError(Exception):
    """A blob holds something this module did not expect, or an operation cannot be done."""


class LockHeld(Exception):
    """Another delivery holds the request's lease: it is being worked on right now."""


class LeaseLost(StoreError):
    """Our lease on the request was broken, expired or taken over; stop writing for this request."""


class InputNotFound(Exception):
    """An edit's input image or mask blob does not exist; the message names its path."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """One finished image as `images[]` of the manifest lists it."""

    index: int
    blob: str
    content_type: str
    bytes: int
    sha256: str
    width: int
    height: int
    usage: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageInfo:
        usage = data.get("usage")
        return cls(
            index=int(data["index"]),
            blob=str(data["blob"]),
            content_type=str(data["content_type"]),
            bytes=int(data["bytes"]),
            sha256=str(data["sha256"]),
            width=int(data["width"]),
            height=int(data["height"]),
            usage=dict(usage) if isinstance(usage, dict) else None,
        )


def dumps(doc: Any) -> bytes:
    """Compact UTF-8 JSON; a lone surrogate (valid in JSON text, not in UTF-8) is kept escaped."""
    try:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def image_blob_name(id: str, index: int, fmt: str) -> str:
    return f"{_folder(id)}/{index}.{extension(fmt)}"


def partial_blob_name(id: str, index: int, partial_index: int, fmt: str) -> str:
    return f"{_folder(id)}/partials/{index}-{partial_index}.{extension(fmt)}"


def _folder(id: str) -> str:
    # The contract's id pattern already forbids these; a slip there must not write elsewhere.
    if not id or "/" in id or id in (".", ".."):
        raise ValueError(f"id: {id!r} cannot name a blob folder")
    return id


def _error_code(error: HttpResponseError) -> str:
    # Some operations give a StorageErrorCode enum, whose str() is its Python name, not the code.
    code = error.error_code
    return str(getattr(code, "value", code) or "")


class _Lease(Protocol):
    """What RequestLock needs of a BlobLeaseClient (so a test can make renewals fail on cue)."""

    id: str

    def renew(self, **kwargs: Any) -> None: ...

    def release(self, **kwargs: Any) -> None: ...


RETRY_RENEW_S = 1.0  # how soon a failed renewal is tried again


class RequestLock:
    """A held lease on `{id}/status.json`, renewed from a daemon thread until released.

    Renewal runs every `renew_every_s` (a third of the lease by default), so two renewals can fail
    before the lease runs out. `lost` turns true, for good, when Storage says the lease is gone, or
    when renewals have failed for a whole lease period (someone else may have taken it since).
    """

    def __init__(
        self,
        lease: _Lease,
        blob: str,
        lease_s: int,
        *,
        renew_every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lease = lease
        self.blob = blob
        self.lease_s = lease_s
        self._renew_every_s = renew_every_s if renew_every_s is not None else lease_s / 3
        self._clock = clock
        self._last_renewed = clock()
        self._renewals = 0
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._released = False
        self._thread = threading.Thread(
            target=self._renew_loop, name=f"lease-renewal {blob}", daemon=True
        )

    @property
    def lease_id(self) -> str:
        return self._lease.id

    @property
    def lost(self) -> bool:
        # Also true when the renewal thread is stuck in a slow call past the lease's end.
        if not self._lost.is_set() and not self._released:
            silent_for = self._clock() - self._last_renewed
            if silent_for >= self.lease_s:
                self._mark_lost(f"no renewal for {silent_for:.1f}s")
        return self._lost.is_set()

    @property
    def renewals(self) -> int:
        """Successful renewals so far."""
        return self._renewals

    def ensure_held(self) -> None:
        """Raise LeaseLost if the lease may have passed to someone else (check before committing)."""
        if self.lost:
            raise LeaseLost(f"lease on {self.blob} was lost")

    def start(self) -> RequestLock:
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop renewing and release the lease; idempotent, and never raises (the lease expires anyway)."""
        if self._released:
            return
        self._released = True
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self._renew_every_s + 30)
        try:
            self._lease.release()
        except Exception as exc:  # releasing is best effort; the lease times out
            log.warning("could not release lease on %s: %s", self.blob, exc)

    def __enter__(self) -> RequestLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _renew_loop(self) -> None:
        wait_s = self._renew_every_s
        while not self._stop.wait(wait_s):
            # The lease runs from when Storage got the request: count from before sending it.
            sent_at = self._clock()
            # After a failure, try again within a second instead of a third of the lease later;
            # and no SDK retries inside a renewal (their back-off alone can outlast a 15 s lease).
            wait_s = min(RETRY_RENEW_S, self._renew_every_s)
            try:
                self._lease.renew(retry_total=0)
            except HttpResponseError as exc:
                if exc.status_code in (409, 412):
                    # Broken, or held under another id: Storage says it is not ours any more.
                    self._mark_lost(f"{exc.status_code} {_error_code(exc)}")
                    return
                self._renewal_failed(exc)
            except Exception as exc:  # a network error: retry at the next tick
                self._renewal_failed(exc)
            else:
                self._last_renewed = sent_at
                self._renewals += 1
                wait_s = self._renew_every_s
            if self.lost:
                return

    def _renewal_failed(self, exc: BaseException) -> None:
        silent_for = self._clock() - self._last_renewed
        log.warning(
            "lease renewal on %s failed (%.1fs since the last renewal): %s",
            self.blob,
            silent_for,
            exc,
        )
        if silent_for >= self.lease_s:
            self._mark_lost(f"no renewal for {silent_for:.1f}s")

    def _mark_lost(self, why: str) -> None:
        log.error("lease on %s lost: %s", self.blob, why)
        self._lost.set()


class RequestStore:
    """Reads and writes one container's request folders; the caller supplies every document."""

    def __init__(
        self, blobs: BlobServiceClient, container: str, *, telemetry: Telemetry | None = None
    ) -> None:
        self._blobs = blobs
        self.container = container
        self._telemetry = telemetry or Telemetry.disabled()  # a span per write when enabled
        self._container = blobs.get_container_client(container)

    def ensure_container(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            self._container.create_container()

    # -- JSON documents -----------------------------------------------------------------------

    def terminal(self, id: str) -> Literal["manifest", "error"] | None:
        """Which terminal record the request has; a manifest wins, since it means images exist."""
        if self._blob(id, MANIFEST).exists():
            return "manifest"
        if self._blob(id, ERROR).exists():
            return "error"
        return None

    def read_json(self, id: str, name: str) -> dict[str, Any] | None:
        blob = self._blob(id, name)
        try:
            raw = blob.download_blob().readall()
        except ResourceNotFoundError:
            return None
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"{blob.blob_name} is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise StoreError(f"{blob.blob_name} holds a JSON {type(doc).__name__}, not an object")
        return doc

    def write_status(self, id: str, doc: dict[str, Any], lease: RequestLock | None = None) -> None:
        """Overwrite status.json; while the request is locked, only the lock's holder may."""
        blob = self._blob(id, STATUS)
        data = dumps(doc)
        try:
            with self._telemetry.blob_write("status", blob.blob_name, len(data)):
                blob.upload_blob(
                    data,
                    overwrite=True,
                    content_settings=ContentSettings(content_type=JSON_CONTENT_TYPE),
                    lease=lease.lease_id if lease is not None else None,
                )
        except HttpResponseError as exc:
            if exc.status_code != 412:
                raise
            if lease is None:
                raise LockHeld(f"{blob.blob_name} is leased by another delivery") from None
            raise LeaseLost(f"lease on {blob.blob_name} was lost ({_error_code(exc)})") from None

    def create_record(self, id: str, name: RecordName, doc: dict[str, Any]) -> bool:
        """Write manifest.json or error.json only if it does not exist yet; False if it did."""
        if name not in (MANIFEST, ERROR):
            raise ValueError(f"name: {name!r} is not a create-only record")
        blob, data = self._blob(id, name), dumps(doc)
        try:
            with self._telemetry.blob_write(name.removesuffix(".json"), blob.blob_name, len(data)):
                blob.upload_blob(
                    data,
                    overwrite=False,  # sends If-None-Match: *: the check and the write are one step
                    content_settings=ContentSettings(content_type=JSON_CONTENT_TYPE),
                )
        except ResourceExistsError:
            return False
        return True

    def delete_record(self, id: str, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self._blob(id, name).delete_blob()

    # -- images -------------------------------------------------------------------------------

    def existing_image(self, id: str, index: int, fmt: str) -> ImageInfo | None:
        """The image already written by an earlier delivery, from its properties alone."""
        name = image_blob_name(id, index, fmt)
        try:
            props = self._container.get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            return None
        meta = props.metadata or {}
        try:
            info = ImageInfo(
                index=index,
                blob=name,
                content_type=str(props.content_settings.content_type or content_type(fmt)),
                bytes=int(props.size),
                sha256=meta["sha256"],
                width=int(meta["width"]),
                height=int(meta["height"]),
                usage=json.loads(meta["usage"]) if meta.get("usage") else None,
            )
        except (KeyError, ValueError) as exc:
            # Not written by write_image (or by an older version): regenerate rather than guess.
            log.warning("ignoring %s: its metadata is incomplete (%s)", name, exc)
            return None
        if meta.get("bytes") not in (None, str(info.bytes)):
            log.warning("ignoring %s: %s bytes, metadata says %s", name, info.bytes, meta["bytes"])
            return None
        return info

    def write_image(
        self,
        id: str,
        index: int,
        data: bytes,
        fmt: str,
        *,
        request_id: str,
        usage: dict[str, Any] | None,
    ) -> ImageInfo:
        """Store image `index`, overwriting one left by a delivery that died before the manifest."""
        actual = image_format(data)
        width, height = image_dimensions(data)
        if actual != normalise_format(fmt):
            raise StoreError(f"image {index} of {id} is {actual}, not the requested {fmt}")
        info = ImageInfo(
            index=index,
            blob=image_blob_name(id, index, fmt),
            content_type=content_type(fmt),
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            width=width,
            height=height,
            usage=usage,
        )
        metadata = {
            "request_id": request_id,
            "image_index": str(index),
            "sha256": info.sha256,
            "width": str(width),
            "height": str(height),
            "bytes": str(info.bytes),
        }
        if usage is not None:
            # ASCII escapes: metadata values are HTTP header values.
            encoded = json.dumps(usage, separators=(",", ":"))
            if len(encoded) <= MAX_USAGE_METADATA:
                metadata["usage"] = encoded
            else:
                log.warning(
                    "usage of %s is %s bytes; not kept in metadata", info.blob, len(encoded)
                )
        with self._telemetry.blob_write("image", info.blob, info.bytes):
            self._container.get_blob_client(info.blob).upload_blob(
                data,
                overwrite=True,
                content_settings=ContentSettings(content_type=info.content_type),
                metadata=metadata,
            )
        return info

    def write_partial(self, id: str, index: int, partial_index: int, data: bytes, fmt: str) -> str:
        """Store one partial image (save_partials); returns its blob name."""
        name = partial_blob_name(id, index, partial_index, fmt)
        with self._telemetry.blob_write("partial", name, len(data)):
            self._container.get_blob_client(name).upload_blob(
                data,
                overwrite=True,
                content_settings=ContentSettings(content_type=content_type(fmt)),
                metadata={
                    "request_id": id,
                    "image_index": str(index),
                    "partial_index": str(partial_index),
                },
            )
        return name

    # -- lock ---------------------------------------------------------------------------------

    def lock(
        self, id: str, lease_s: int = 60, *, renew_every_s: float | None = None
    ) -> RequestLock:
        """Take the request's lease on status.json, or raise LockHeld if a delivery holds it."""
        if not MIN_LEASE_S <= lease_s <= MAX_LEASE_S:
            raise ValueError(f"lease_s: {lease_s} is outside {MIN_LEASE_S}..{MAX_LEASE_S}")
        blob = self._blob(id, STATUS)
        # Exists already in the usual case: client.submit wrote `queued`, or an earlier delivery ran.
        with contextlib.suppress(ResourceExistsError):
            blob.upload_blob(
                STATUS_PLACEHOLDER,
                overwrite=False,
                content_settings=ContentSettings(content_type=JSON_CONTENT_TYPE),
            )
        lease = BlobLeaseClient(blob)
        try:
            lease.acquire(lease_duration=lease_s)
        except HttpResponseError as exc:
            if exc.status_code == 409 and _error_code(exc) == "LeaseAlreadyPresent":
                raise LockHeld(f"{blob.blob_name} is leased by another delivery") from None
            raise
        return RequestLock(lease, blob.blob_name, lease_s, renew_every_s=renew_every_s).start()

    # -- inputs -------------------------------------------------------------------------------

    def read_input(self, path: str) -> tuple[str, bytes]:
        """An edit input `container/name` from the same account: (file name, bytes).

        Which containers are allowed is the contract's business, not this module's.
        """
        container, sep, name = path.partition("/")
        if not sep or not container or not name:
            raise ValueError(f"input path {path!r} is not container/name")
        try:
            data = self._blobs.get_blob_client(container, name).download_blob().readall()
        except ResourceNotFoundError:
            raise InputNotFound(f"input blob {path} not found") from None
        return name.rsplit("/", 1)[-1], data

    def _blob(self, id: str, name: str) -> BlobClient:
        return self._container.get_blob_client(f"{_folder(id)}/{name}")
