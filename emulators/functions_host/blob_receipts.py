"""Blob receipts: how the polling blob trigger remembers which blob versions it has processed.

As the real host does, one empty blob per (function, blob version) in `azure-webjobs-hosts`:
`blobreceipts/{hostId}/{functionId}/{ETag}/{container}/{blob}` (the ETag comes before the blob name,
which can hold slashes). It is created with If-None-Match `*` and metadata `Incomplete=True` before
the first invocation, and that key is removed once the blob is done (succeeded, or poisoned). A blob
version with a completed receipt never fires again, so a restart does not reprocess it; one with an
incomplete receipt (the host stopped midway) is processed again: at least once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobClient, BlobServiceClient

HOSTS_CONTAINER = "azure-webjobs-hosts"
RECEIPTS_DIRECTORY = "blobreceipts"
INCOMPLETE_KEY = "Incomplete"
_HOST_ID_CHARS = re.compile(r"[^a-z0-9-]")


class ReceiptState(Enum):
    NONE = "none"
    INCOMPLETE = "incomplete"
    COMPLETE = "complete"


def host_id_from(name: str) -> str:
    """A host id as the host derives one from the site name: lower case, [a-z0-9-], 32 chars at most."""
    cleaned = _HOST_ID_CHARS.sub("-", name.lower()).strip("-")
    return (cleaned or "localhost")[:32].rstrip("-")


def function_id(function_name: str) -> str:
    """The id the host gives a function in receipts and poison messages."""
    return f"Host.Functions.{function_name}"


def receipt_name(host_id: str, function: str, etag: str, container: str, blob_name: str) -> str:
    return f"{RECEIPTS_DIRECTORY}/{host_id}/{function}/{etag}/{container}/{blob_name}"


@dataclass(frozen=True, slots=True)
class BlobReceipts:
    """The receipts of one function; every call is one request to Storage."""

    service: BlobServiceClient
    host_id: str
    function: str

    def _blob(self, etag: str, container: str, blob_name: str) -> BlobClient:
        name = receipt_name(self.host_id, self.function, etag, container, blob_name)
        return self.service.get_blob_client(HOSTS_CONTAINER, name)

    def state(self, etag: str, container: str, blob_name: str) -> ReceiptState:
        try:
            properties = self._blob(etag, container, blob_name).get_blob_properties()
        except ResourceNotFoundError:
            return ReceiptState.NONE
        metadata = {k.lower(): v for k, v in (properties.metadata or {}).items()}
        if metadata.get(INCOMPLETE_KEY.lower(), "").lower() == "true":
            return ReceiptState.INCOMPLETE
        return ReceiptState.COMPLETE

    def try_create(self, etag: str, container: str, blob_name: str) -> bool:
        """Create the incomplete receipt; False if one exists already (another run got there)."""
        blob = self._blob(etag, container, blob_name)
        for _ in range(2):
            try:
                blob.upload_blob(b"", metadata={INCOMPLETE_KEY: "True"}, if_none_match="*")
                return True
            except ResourceExistsError:
                return False
            except ResourceNotFoundError:  # no azure-webjobs-hosts container yet
                try:
                    self.service.create_container(HOSTS_CONTAINER)
                except ResourceExistsError:
                    pass
        return False

    def mark_complete(self, etag: str, container: str, blob_name: str) -> None:
        blob = self._blob(etag, container, blob_name)
        try:
            metadata = dict(blob.get_blob_properties().metadata or {})
            metadata = {k: v for k, v in metadata.items() if k.lower() != INCOMPLETE_KEY.lower()}
            blob.set_blob_metadata(metadata)
        except ResourceNotFoundError:
            pass  # someone deleted the receipt: nothing to complete, as the host tolerates
