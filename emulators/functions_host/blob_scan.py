"""List a trigger's container and read blobs: the one place the blob listeners talk to its container.

Azurite emits neither Storage analytics logs nor Event Grid events, so both sources find changes the
same way locally: listing the container (only names under the path's literal prefix) with ETags, on
an interval. An overwrite gets a new ETag, so it is a new version to fire for.
"""

from __future__ import annotations

import json
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from emulators.functions_host.blob_invocation import BlobVersion
from emulators.functions_host.blob_path import BlobPathPattern
from emulators.functions_host.blob_receipts import HOSTS_CONTAINER


def _blob_type(raw: object) -> str:
    text = str(getattr(raw, "value", raw) or "BlockBlob")
    return text if text.endswith("Blob") else f"{text}Blob"


def quoted_etag(etag: object) -> str:
    """The ETag as its HTTP header spells it (quoted); listings return it bare."""
    text = str(etag)
    return text if text.startswith('"') else f'"{text}"'


def list_matching(service: BlobServiceClient, path: BlobPathPattern) -> list[BlobVersion]:
    """Every blob matching the pattern now; an absent container holds none (it may come later)."""
    container = service.get_container_client(path.container)
    found: list[BlobVersion] = []
    try:
        for item in container.list_blobs(name_starts_with=path.prefix or None):
            bindings = path.match(item.name)
            if bindings is None:
                continue
            found.append(
                BlobVersion(
                    container=path.container,
                    name=item.name,
                    etag=quoted_etag(item.etag),
                    url=container.get_blob_client(item.name).url,
                    length=int(item.size or 0),
                    content_type=item.content_settings.content_type,
                    blob_type=_blob_type(item.blob_type),
                    bindings=bindings,
                )
            )
    except ResourceNotFoundError:
        return []
    return found


def read_blob(
    service: BlobServiceClient, blob: BlobVersion
) -> tuple[bytes, dict[str, Any], dict[str, str]] | None:
    """Content, properties (as the binding's `Properties` metadata) and metadata; None if deleted."""
    client = service.get_blob_client(blob.container, blob.name)
    try:
        downloader = client.download_blob()
        data = downloader.readall()
    except ResourceNotFoundError:
        return None
    props = downloader.properties
    properties = {
        "ContentLength": len(data),
        "ContentType": props.content_settings.content_type,
        "ETag": quoted_etag(props.etag),
        "LastModified": props.last_modified.isoformat() if props.last_modified else None,
        "BlobType": _blob_type(props.blob_type),
    }
    return data, properties, dict(props.metadata or {})


class JsonBlob:
    """A small JSON document in `azure-webjobs-hosts`, as the host keeps its own state there."""

    def __init__(self, service: BlobServiceClient, name: str) -> None:
        self._service = service
        self._client = service.get_blob_client(HOSTS_CONTAINER, name)

    def read(self) -> Any | None:
        try:
            return json.loads(self._client.download_blob().readall())
        except ResourceNotFoundError:
            return None

    def write(self, document: Any) -> None:
        body = json.dumps(document, separators=(",", ":")).encode()
        try:
            self._client.upload_blob(body, overwrite=True)
        except ResourceNotFoundError:
            try:
                self._service.create_container(HOSTS_CONTAINER)
            except ResourceExistsError:
                pass
            self._client.upload_blob(body, overwrite=True)
