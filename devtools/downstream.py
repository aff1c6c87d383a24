"""The downstream sample (samples/downstream) in a second host stand-in, beside the product.

`make demo` and `make run` start it so that every manifest the product writes is catalogued as a
blob-triggered pipeline in Azure would catalogue it: a thumbnail per image and one line per request
in `catalogue/index.jsonl`. It gets its own host id, so its Event Grid subscription and blob receipts
are its own, as a separate Function App's are.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient

from devtools.services import REPO_ROOT, Service, python_module, start

SAMPLE_DIR = REPO_ROOT / "samples" / "downstream"
CATALOGUE_CONTAINER = "catalogue"
HOST_ID = "imagegen-downstream-sample"
INDEX_BLOB = "index.jsonl"
# Event Grid's retry schedule ten times faster (10 s -> 1 s), so a failed delivery shows up at once.
HOST_ARGS = ("--eventgrid-time-scale", "0.1")


def downstream_settings(settings: Mapping[str, str]) -> dict[str, str]:
    """The sample's app settings: the product's storage and images container, its own host id."""
    return {
        "AzureWebJobsStorage": settings["AzureWebJobsStorage"],
        "IMAGES_CONTAINER": settings.get("IMAGES_CONTAINER", "images"),
        "CATALOGUE_CONTAINER": CATALOGUE_CONTAINER,
        "AzureFunctionsWebHost__hostid": HOST_ID,
    }


def catalogue_container(settings: Mapping[str, str]) -> ContainerClient:
    service = BlobServiceClient.from_connection_string(settings["AzureWebJobsStorage"])
    return service.get_container_client(CATALOGUE_CONTAINER)


def start_downstream(settings: Mapping[str, str], log_path: Path) -> Service:
    """Create the catalogue container the sample expects, then start its host; ready once started.

    Started before the product's host, its Event Grid subscription sees every manifest that follows.
    """
    try:
        catalogue_container(settings).create_container()
    except ResourceExistsError:
        pass
    command = python_module("emulators.functions_host", "--app-dir", str(SAMPLE_DIR), *HOST_ARGS)

    def started() -> bool:
        return log_path.exists() and "Host started" in log_path.read_text(errors="replace")

    return start(
        "downstream", command, ready=started, env=downstream_settings(settings), log_path=log_path
    )


def index_lines(container: ContainerClient) -> dict[str, dict[str, Any]]:
    """Request id -> its line in index.jsonl (none yet: empty)."""
    try:
        text = container.download_blob(INDEX_BLOB).readall().decode("utf-8")
    except ResourceNotFoundError:
        return {}
    lines = (json.loads(line) for line in text.splitlines() if line.strip())
    return {str(line.get("id")): line for line in lines}


def wait_catalogued(
    container: ContainerClient, ids: Iterable[str], timeout: float
) -> dict[str, dict[str, Any]]:
    """The index lines of `ids`, once all are in or `timeout` has passed (then what there is)."""
    wanted = set(ids)
    deadline = time.monotonic() + timeout
    while True:
        found = {i: line for i, line in index_lines(container).items() if i in wanted}
        if len(found) == len(wanted) or time.monotonic() >= deadline:
            return found
        time.sleep(0.5)


def catalogue_report(
    container: ContainerClient, ids: Iterable[str], lines: Mapping[str, dict[str, Any]]
) -> list[str]:
    """One line per request: its index line's images and the thumbnail blobs written for it."""
    report = []
    for request_id in ids:
        line = lines.get(request_id)
        if line is None:
            dead = f"dead-letter/{request_id}.json"
            where = "in the dead letter" if container.get_blob_client(dead).exists() else "not yet"
            report.append(f"{request_id}: no index line ({where})")
            continue
        sizes = " ".join(f"{i.get('width')}x{i.get('height')}" for i in line.get("images", []))
        thumbnails = sorted(
            b.name for b in container.list_blobs(name_starts_with=f"thumbnails/{request_id}/")
        )
        report.append(
            f"{request_id}: indexed {line.get('catalogued_at')}, images {sizes}; "
            f"thumbnails {', '.join(thumbnails) or '-'}"
        )
    return report
