"""Everything the checks judge, gathered once at the end into plain values.

Storage is read straight from Azurite (not through the tap), after the queues drained.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.storage.blob import ContainerClient

from devtools.soak.blobtap import BlobWrite
from devtools.soak.chaos import Disruptions
from devtools.soak.observe import CallTimes
from emulators.image_deployment.stamp import embedded_id

IMAGE_BLOB = re.compile(r"^(?P<id>[^/]+)/(?P<index>\d+)\.(png|jpg)$")


@dataclass(frozen=True, slots=True)
class StatusBlob:
    doc: dict[str, Any] | None
    lease_state: str  # available | leased | expired | breaking | broken


@dataclass(frozen=True, slots=True)
class StoredImage:
    sha256: str
    size: int
    metadata: dict[str, str]
    call: str | None = None  # the apim-request-id the emulator wrote into the bytes


@dataclass(frozen=True, slots=True)
class HostLogSummary:
    name: str
    incarnation: int
    executed_ok: int
    executed_failed: int
    alive_at_end: bool
    killed: bool
    exit_code: int | None


@dataclass(frozen=True, slots=True)
class Evidence:
    manifests: dict[str, dict[str, Any]]
    errors: dict[str, dict[str, Any]]  # error.json by folder
    statuses: dict[str, StatusBlob]
    images: dict[str, StoredImage]  # blob name → what it holds now
    folders: frozenset[str]
    calls: list[dict[str, Any]]  # the emulator's request log
    call_times: dict[str, CallTimes]
    writes: list[BlobWrite]
    disruptions: Disruptions
    hosts: list[HostLogSummary]
    queue_left: int
    poison_left: int
    script_left: int  # scripted outcomes the emulator never served
    duration_s: float


def read_storage(
    container: ContainerClient,
) -> tuple[
    dict[str, dict[str, Any]],
    dict[str, dict[str, Any]],
    dict[str, StatusBlob],
    dict[str, StoredImage],
    frozenset[str],
]:
    manifests: dict[str, dict[str, Any]] = {}
    errors: dict[str, dict[str, Any]] = {}
    statuses: dict[str, StatusBlob] = {}
    images: dict[str, StoredImage] = {}
    folders: set[str] = set()
    for blob in container.list_blobs(include=["metadata"]):
        folder, _, rest = blob.name.partition("/")
        folders.add(folder)
        if rest in ("manifest.json", "error.json", "status.json"):
            raw = container.download_blob(blob.name).readall()
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {"unreadable": raw[:200].decode(errors="replace")}
            if rest == "manifest.json":
                manifests[folder] = doc
            elif rest == "error.json":
                errors[folder] = doc
            else:
                statuses[folder] = StatusBlob(doc, str(blob.lease.state or "available"))
        elif IMAGE_BLOB.match(blob.name):
            data = container.download_blob(blob.name).readall()
            images[blob.name] = StoredImage(
                hashlib.sha256(data).hexdigest(),
                len(data),
                dict(blob.metadata or {}),
                embedded_id(data),
            )
    return manifests, errors, statuses, images, frozenset(folders)


def count_lines(path: Path, needle: str) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text(errors="replace").splitlines() if needle in line)
