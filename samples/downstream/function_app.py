"""A downstream step: when a request's manifest.json lands, catalogue its images.

Event Grid source: on Flex Consumption it is the only blob trigger source that works (the polling
source is not supported there), and its latency is seconds rather than minutes. The subscription in
Azure filters on the `manifest.json` suffix, so status.json and the images never reach this code.
"""

from __future__ import annotations

import logging
import os

import azure.functions as func
from azure.storage.blob import BlobServiceClient
from catalogue import Catalogue

log = logging.getLogger("downstream")
app = func.FunctionApp()
catalogue = Catalogue(
    # The Functions host's own setting name, mixed case as Azure spells it.
    BlobServiceClient.from_connection_string(os.environ["AzureWebJobsStorage"]),  # noqa: SIM112
    os.environ["IMAGES_CONTAINER"],
    os.environ.get("CATALOGUE_CONTAINER", "catalogue"),
)


@app.blob_trigger(
    arg_name="manifest",
    path="%IMAGES_CONTAINER%/{name}/manifest.json",
    connection="AzureWebJobsStorage",
    source=func.BlobSource.EVENT_GRID,
)
def catalogue_manifest(manifest: func.InputStream) -> None:
    """Verify each image against the manifest, write thumbnails and one index line; log, re-raise."""
    blob_name = (manifest.name or "").split("/", 1)[-1]  # `name` is container/blob
    try:
        log.info("%s", catalogue.process(blob_name, manifest.read()))
    except Exception:
        log.exception("Cataloguing %s failed; the delivery will be retried", manifest.name)
        raise
