"""A test hook of the soak, never of the product: plant the fault the checks exist to catch.

`plant_double_generation` makes one finished image's call again, as a host that lost track of its
success would, and stores the new bytes over the first through the blob tap, as a host would. The
emulator stamps the new call's id into them, so the generation checks must name that image.
"""

from __future__ import annotations

import base64
import logging

import requests
from azure.storage.blob import BlobServiceClient

from devtools.soak.stack import CONTAINER, DEPLOYMENT, SoakStack
from devtools.soak.workload import Workload

log = logging.getLogger("soak.plant")

API_VERSION = "2025-04-01-preview"


def plant_double_generation(stack: SoakStack, workload: Workload) -> str | None:
    """The blob it overwrote (`<id>/0.png`), or None when no request fits (none succeeded)."""
    container = stack.container()
    done = {
        n.partition("/")[0] for n in container.list_blob_names() if n.endswith("/manifest.json")
    }
    request = next(
        (
            r
            for r in workload.requests
            if r.id in done and r.n == 1 and "output_format" not in r.body
        ),
        None,
    )
    if request is None:
        return None
    body = {k: request.body[k] for k in ("prompt", "size", "quality")} | {"n": 1}
    url = f"{stack.emulator_url}/openai/deployments/{DEPLOYMENT}/images/generations"
    answer = requests.post(
        url, params={"api-version": API_VERSION}, json=body,
        headers={"api-key": stack.api_key}, timeout=60,
    )  # fmt: skip
    answer.raise_for_status()
    data = base64.b64decode(answer.json()["data"][0]["b64_json"])
    name = f"{request.id}/0.png"
    via_tap = BlobServiceClient.from_connection_string(stack.host_storage_connection_string)
    blob = via_tap.get_container_client(CONTAINER).get_blob_client(name)
    metadata = blob.get_blob_properties().metadata
    blob.upload_blob(data, overwrite=True, metadata=metadata)
    log.info("planted a second generation of %s (call %s)", name, answer.headers["apim-request-id"])
    return name
