"""The catalogue step for one manifest: verify, thumbnail, index once; or dead-letter, writing nothing else.

Layout of the `catalogue` container:

```
thumbnails/{id}/{index}.jpg    one small JPEG per image (overwritten identically on redelivery)
index.jsonl                    append blob: one JSON line per request, written exactly once
markers/{id}                   created with If-None-Match * ; metadata `indexed=true` once the line is in
dead-letter/{id}.json          a manifest whose images do not match it, with the reason
```

Delivery is at least once, so every step is idempotent: thumbnails are deterministic, and the index
line is appended under a lease on the request's marker, after checking the marker (and, after a
crash between append and marking, the index itself) for it.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobLeaseClient, BlobServiceClient, ContentSettings
from PIL import Image

log = logging.getLogger("downstream")

MANIFEST_SCHEMA = "imagegen.manifest/1"
THUMBNAIL_PX = 256
INDEX_BLOB = "index.jsonl"
_IMAGE_FIELDS = {"index": int, "blob": str, "sha256": str, "bytes": int}


class ManifestRejected(Exception):
    """The manifest cannot be catalogued: the reason goes to the dead letter, nothing else is written."""


@dataclass(frozen=True, slots=True)
class ImageEntry:
    index: int
    blob: str
    sha256: str
    bytes: int
    width: int | None
    height: int | None


@dataclass(frozen=True, slots=True)
class Manifest:
    id: str
    images: tuple[ImageEntry, ...]
    completed_at: str | None


def parse_manifest(data: bytes) -> Manifest:
    """The fields the catalogue needs, checked; anything else is a ManifestRejected saying what."""
    try:
        doc = json.loads(data)
    except ValueError as error:
        raise ManifestRejected(f"manifest is not JSON: {error}") from None
    if not isinstance(doc, dict) or doc.get("schema") != MANIFEST_SCHEMA:
        raise ManifestRejected(f"manifest schema is not {MANIFEST_SCHEMA}")
    if not isinstance(doc.get("id"), str) or not doc["id"]:
        raise ManifestRejected("manifest has no id")
    if not isinstance(doc.get("images"), list) or not doc["images"]:
        raise ManifestRejected("manifest lists no images")
    images = []
    for position, raw in enumerate(doc["images"]):
        if not isinstance(raw, dict):
            raise ManifestRejected(f"images[{position}] is not an object")
        for name, kind in _IMAGE_FIELDS.items():
            if not isinstance(raw.get(name), kind) or isinstance(raw.get(name), bool):
                raise ManifestRejected(
                    f"images[{position}].{name} is missing or not {kind.__name__}"
                )
        images.append(
            ImageEntry(raw["index"], raw["blob"], raw["sha256"].lower(), raw["bytes"],
                       raw.get("width"), raw.get("height"))
        )  # fmt: skip
    return Manifest(doc["id"], tuple(images), doc.get("completed_at"))


def thumbnail(data: bytes) -> bytes:
    """A JPEG at most THUMBNAIL_PX on its longer side; raises ManifestRejected if not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            out = io.BytesIO()
            image.convert("RGB").save(out, "JPEG", quality=80)
            return out.getvalue()
    except (OSError, ValueError) as error:
        raise ManifestRejected(f"not a readable image: {error}") from None


class Catalogue:
    def __init__(
        self, service: BlobServiceClient, images_container: str, catalogue_container: str
    ) -> None:
        self.images = service.get_container_client(images_container)
        self.catalogue = service.get_container_client(catalogue_container)
        self.images_container = images_container

    def process(self, manifest_blob: str, data: bytes) -> str:
        """Handle one delivery of a manifest; returns what happened (for the log)."""
        try:
            manifest = parse_manifest(data)
            if self._indexed(manifest.id):
                return f"{manifest.id}: already catalogued"
            contents = self._verified(manifest)
            thumbnails = [thumbnail(contents[image.index]) for image in manifest.images]
        except ManifestRejected as rejected:
            request_id = manifest_blob.rsplit("/", 2)[-2] if "/" in manifest_blob else manifest_blob
            self._dead_letter(request_id, manifest_blob, str(rejected))
            return f"{request_id}: dead-lettered: {rejected}"
        for image, jpeg in zip(manifest.images, thumbnails, strict=True):
            self.catalogue.upload_blob(
                f"thumbnails/{manifest.id}/{image.index}.jpg", jpeg, overwrite=True,
                content_settings=ContentSettings(content_type="image/jpeg"),
            )  # fmt: skip
        self._index_once(manifest, manifest_blob)
        return f"{manifest.id}: catalogued {len(manifest.images)} image(s)"

    def _verified(self, manifest: Manifest) -> dict[int, bytes]:
        problems, contents = [], {}
        for image in manifest.images:
            try:
                data = self.images.download_blob(image.blob).readall()
            except ResourceNotFoundError:
                problems.append(f"image {image.index}: blob {image.blob} is missing")
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest != image.sha256 or len(data) != image.bytes:
                problems.append(
                    f"image {image.index}: {image.blob} has sha256 {digest} and {len(data)} bytes, "
                    f"the manifest says {image.sha256} and {image.bytes}"
                )
            contents[image.index] = data
        if problems:
            raise ManifestRejected("; ".join(problems))
        return contents

    def _dead_letter(self, request_id: str, manifest_blob: str, reason: str) -> None:
        record = {"id": request_id, "manifest": f"{self.images_container}/{manifest_blob}",
                  "reason": reason, "at": _now()}  # fmt: skip
        self.catalogue.upload_blob(
            f"dead-letter/{request_id}.json", json.dumps(record).encode(), overwrite=True
        )

    def _marker(self, request_id: str) -> Any:
        return self.catalogue.get_blob_client(f"markers/{request_id}")

    def _indexed(self, request_id: str) -> bool:
        try:
            metadata = self._marker(request_id).get_blob_properties().metadata or {}
        except ResourceNotFoundError:
            return False
        return metadata.get("indexed") == "true"

    def _index_once(self, manifest: Manifest, manifest_blob: str) -> None:
        marker = self._marker(manifest.id)
        try:
            marker.upload_blob(b"", if_none_match="*")
        except ResourceExistsError:
            pass  # an earlier delivery got this far; the lease below decides who appends
        lease: BlobLeaseClient = marker.acquire_lease(
            lease_duration=15
        )  # a busy one raises: retried
        try:
            if (marker.get_blob_properties().metadata or {}).get("indexed") == "true":
                return
            index = self.catalogue.get_blob_client(INDEX_BLOB)
            try:
                index.create_append_blob(if_none_match="*")
            except ResourceExistsError:
                pass
            if not self._line_present(manifest.id):  # an append whose marking was lost
                line = {"id": manifest.id, "manifest": f"{self.images_container}/{manifest_blob}",
                        "completed_at": manifest.completed_at, "catalogued_at": _now(),
                        "images": [{"index": i.index, "blob": i.blob, "sha256": i.sha256,
                                    "width": i.width, "height": i.height,
                                    "thumbnail": f"thumbnails/{manifest.id}/{i.index}.jpg"}
                                   for i in manifest.images]}  # fmt: skip
                index.append_block((json.dumps(line, separators=(",", ":")) + "\n").encode())
            marker.set_blob_metadata({"indexed": "true"}, lease=lease)
        finally:
            lease.release()

    def _line_present(self, request_id: str) -> bool:
        text = self.catalogue.download_blob(INDEX_BLOB).readall().decode()
        return any(json.loads(line).get("id") == request_id for line in text.splitlines() if line)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
