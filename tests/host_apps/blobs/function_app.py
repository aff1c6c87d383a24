"""Blob triggers for the stand-in's tests: each invocation leaves a probe file; FAIL_NAMES fail."""

import json
import os
import uuid

import azure.functions as func

app = func.FunctionApp()
PROBE = os.environ["PROBE_DIR"]
FAIL = set(filter(None, os.environ.get("FAIL_NAMES", "").split(",")))


def record(kind: str, blob: func.InputStream) -> None:
    body = blob.read()
    doc = {
        "kind": kind,
        "name": blob.name,
        "length": blob.length,
        "uri": blob.uri,
        "body": body.decode(),
    }
    # Written aside, then renamed: the test reads the folder while functions run.
    path = os.path.join(PROBE, f"{kind}-{uuid.uuid4().hex}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f)
    os.replace(path + ".tmp", path)
    if body.decode() in FAIL:
        raise RuntimeError(f"told to fail on {blob.name}")


@app.blob_trigger(arg_name="blob", path="%POLL_CONTAINER%/in/{name}.txt", connection="MyStorage")
def polled(blob: func.InputStream) -> None:
    record("polled", blob)


@app.blob_trigger(
    arg_name="blob",
    path="%GRID_CONTAINER%/{name}/manifest.json",
    connection="MyStorage",
    source=func.BlobSource.EVENT_GRID,
)
def gridded(blob: func.InputStream) -> None:
    record("gridded", blob)
