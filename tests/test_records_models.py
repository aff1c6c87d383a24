"""The output documents' models (shared/records/models.py) and their committed JSON Schemas.

The documents come from the builders the pipeline, the poison recorder, the operators' tools and the
client write with (shared/records/documents.py), so what is tested here is what lands in Storage.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from shared.records.attempts import AttemptRecord, ErrorInfo, Outcome
from shared.records.documents import ErrorKind, Status, error_doc, manifest_doc, status_doc
from shared.records.history import CallHistory
from shared.records.models import (
    Attempt,
    ErrorRecord,
    Manifest,
    StatusDoc,
    UnreadableRecord,
    parse_document,
)
from shared.records.schemas import SCHEMA_FILES, schema_texts, stale_files

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"

FAILED_CALL = AttemptRecord(
    attempt=1, image_index=0, deployment="gpt-image-2-1", started_at="2026-05-07T13:30:00.000Z",
    elapsed_s=41.25, first_event_s=0.8, http_status=200, apim_request_id="apim-1",
    x_request_id="x-1", partial_images_sent=2, partials_received=1, outcome=Outcome.SERVER_ERROR,
    error=ErrorInfo("server_error", None, "An error occurred while processing your request."),
    ratelimit={"x-ratelimit-remaining-requests": "4"}, headers_s=0.3,
)  # fmt: skip
THROTTLED = AttemptRecord(
    attempt=2, image_index=0, deployment="gpt-image-2-1", started_at="2026-05-07T13:30:42.000Z",
    elapsed_s=0.05, first_event_s=None, http_status=429, apim_request_id="apim-2",
    x_request_id=None, partial_images_sent=2, partials_received=0, outcome=Outcome.RATE_LIMITED,
    retry_after_s=6.0,
)  # fmt: skip
SUCCEEDED = AttemptRecord(
    attempt=3, image_index=0, deployment="gpt-image-2-1", started_at="2026-05-07T13:30:50.000Z",
    elapsed_s=38.5, first_event_s=0.7, http_status=200, apim_request_id="apim-3",
    x_request_id="x-3", partial_images_sent=2, partials_received=2, outcome=Outcome.SUCCEEDED,
)  # fmt: skip
CALLS = [FAILED_CALL, THROTTLED, SUCCEEDED]
IMAGE = {"index": 0, "blob": "req-1/0.png", "content_type": "image/png", "bytes": 1234,
         "sha256": "ab" * 32, "width": 1024, "height": 1024,
         "usage": {"total_tokens": 4200}}  # fmt: skip
REQUEST = {"id": "req-1", "operation": "generate", "prompt": "an apple", "size": "1024x1024"}


def status_json(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "updated_at": "2026-05-07T13:31:00.000Z", "images_done": 0, "attempts": CALLS,
        "request_hash": "h1", "created_at": "2026-05-07T13:29:59.000Z",
        "detail": "waiting 6 s for the deployment's quota",
        "first_delivery_at": "2026-05-07T13:30:00.000Z",
    }  # fmt: skip
    fields.update(overrides)
    return status_doc("req-1", Status.RETRYING, **fields)


def manifest_json() -> dict[str, Any]:
    history = CallHistory()
    for record in CALLS:
        history.add(record, billed=lambda a: a.outcome is not Outcome.RATE_LIMITED)
    return manifest_doc(
        "req-1", request=REQUEST, request_hash="h1", images=[IMAGE], attempts=history,
        created_at="2026-05-07T13:29:59.000Z", completed_at="2026-05-07T13:31:29.000Z",
        metadata={"source": "tests"},
    )  # fmt: skip


def failed_json() -> dict[str, Any]:
    return error_doc(
        "req-1", status=Status.FAILED, kind=ErrorKind.RETRIES_EXHAUSTED, message="4 attempts",
        created_at="2026-05-07T13:29:59.000Z", completed_at="2026-05-07T13:35:00.000Z",
        request=REQUEST, request_hash="h1", attempts=CALLS[:1], metadata={"source": "tests"},
        queue_message_id="m-1",
    )  # fmt: skip


def rejected_json() -> dict[str, Any]:
    return error_doc(
        "m-2", status=Status.REJECTED, kind=ErrorKind.INVALID_REQUEST, message="prompt: required",
        created_at="2026-05-07T13:29:59.000Z", completed_at="2026-05-07T13:29:59.000Z",
        input_text='{"size": "1024x1024"}', queue_message_id="m-2",
    )  # fmt: skip


DOCUMENTS = {
    "status": ("status.json", status_json),
    "status-minimal": ("status.json", lambda: status_doc("q", Status.QUEUED, updated_at="t",
                                                         images_done=0, attempts=())),
    "manifest": ("manifest.json", manifest_json),
    "failed": ("error.json", failed_json),
    "rejected": ("error.json", rejected_json),
}  # fmt: skip


# --- the builders' documents --------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(DOCUMENTS))
def test_every_built_document_reads_back_to_the_same_json(case: str) -> None:
    name, build = DOCUMENTS[case]
    doc = build()
    stored = json.dumps(doc, separators=(",", ":"))  # as the store writes it
    model = parse_document(name, stored.encode())
    assert model.model_dump(mode="json") == doc
    assert json.loads(model.model_dump_json()) == doc
    assert list(model.model_dump(mode="json")) == list(doc)  # the order it is written in


def test_the_documents_keep_the_fields_and_order_they_were_written_with() -> None:
    assert list(status_json()) == [
        "schema", "id", "status", "updated_at", "images_done", "attempts", "outcome_counts",
        "calls", "first_delivery_at", "request_hash", "created_at", "detail",
    ]  # fmt: skip
    assert list(manifest_json()) == [
        "schema", "id", "status", "request", "request_hash", "images", "attempts",
        "outcome_counts", "calls", "created_at", "completed_at", "metadata",
    ]  # fmt: skip
    assert list(failed_json()) == [
        "schema", "id", "status", "request", "images", "attempts", "outcome_counts", "calls",
        "created_at", "completed_at", "metadata", "error", "request_hash", "queue_message_id",
    ]  # fmt: skip
    rejected = rejected_json()
    assert rejected["request"] is None and "request_hash" not in rejected
    assert rejected["input"] == '{"size": "1024x1024"}'
    assert manifest_json()["schema"] == "imagegen.manifest/1"
    assert rejected["schema"] == "imagegen.error/1"
    assert status_json()["schema"] == "imagegen.status/1"
    # Optional fields never written are left out, not written as null.
    assert list(DOCUMENTS["status-minimal"][1]()) == [
        "schema", "id", "status", "updated_at", "images_done", "attempts", "outcome_counts",
        "calls",
    ]  # fmt: skip


def test_the_manifest_model_gives_typed_access() -> None:
    manifest = Manifest.model_validate(manifest_json())
    assert manifest.succeeded and manifest.schema_ == "imagegen.manifest/1"
    assert manifest.images[0].sha256 == "ab" * 32 and manifest.images[0].width == 1024
    assert manifest.attempts[0].outcome is Outcome.SERVER_ERROR
    assert (
        manifest.attempts[0].error is not None and manifest.attempts[0].error.type == "server_error"
    )
    assert manifest.outcome_counts == {"rate_limited": 1, "server_error": 1, "succeeded": 1}
    assert manifest.calls == 3
    assert manifest.attempt_records() == CALLS
    error = ErrorRecord.model_validate(failed_json())
    assert not error.succeeded and error.error.kind is ErrorKind.RETRIES_EXHAUSTED
    status = StatusDoc.model_validate(status_json())
    assert status.status is Status.RETRYING and not status.finished


def test_an_attempt_model_is_the_attempt_records_json() -> None:
    for record in CALLS:
        model = Attempt.from_record(record)
        assert model.model_dump(mode="json") == record.to_json()
        assert model.to_record() == record


# --- documents written before, and by newer writers ---------------------------------------------


def test_a_status_json_written_before_the_schema_field_and_the_counts_reads() -> None:
    old = {"id": "run-1", "status": "retrying", "updated_at": "2026-05-07T13:31:00.000Z",
           "images_done": 0, "attempts": [FAILED_CALL.to_json(), THROTTLED.to_json()],
           "request_hash": "h-run-1"}  # fmt: skip
    status = parse_document("status.json", json.dumps(old))
    assert isinstance(status, StatusDoc)
    assert status.schema_ == "imagegen.status/1"
    assert status.outcome_counts == {"rate_limited": 1, "server_error": 1}
    assert status.calls == 2
    assert status.first_delivery_at is None and status.detail is None
    assert {k: v for k, v in status.model_dump(mode="json").items() if k in old} == old


def test_old_attempts_without_the_later_fields_read_with_their_defaults() -> None:
    old_attempt = {"attempt": 4, "image_index": 0, "deployment": "d", "started_at": "t",
                   "elapsed_s": 3, "first_event_s": None, "http_status": 500,
                   "apim_request_id": None, "x_request_id": None, "outcome": "http_error",
                   "error": {"type": None, "code": "500", "message": "boom"}}  # fmt: skip
    old = {"schema": "imagegen.manifest/1", "id": "r", "status": "succeeded", "request": REQUEST,
           "request_hash": "h", "images": [IMAGE], "attempts": [old_attempt],
           "created_at": "c", "completed_at": "d", "metadata": {}}  # fmt: skip
    manifest = parse_document("manifest.json", json.dumps(old))
    assert isinstance(manifest, Manifest)
    (attempt,) = manifest.attempts
    assert (attempt.partials_received, attempt.ratelimit, attempt.headers_s) == (0, {}, None)
    assert attempt.elapsed_s == 3.0
    assert manifest.calls == 4  # the numbering shows three earlier calls the list no longer has
    assert manifest.outcome_counts == {"http_error": 1}


def test_content_filter_details_and_unknown_fields_are_kept() -> None:
    doc = failed_json()
    filtered = {"hate": {"filtered": True, "severity": "high"}}
    doc["error"] = {"kind": "content_filter", "message": "refused", "content_filter": filtered}
    doc["attempts"][0]["error"]["content_filter"] = filtered
    doc["written_by"] = "a newer worker"
    record = parse_document("error.json", json.dumps(doc))
    assert isinstance(record, ErrorRecord)
    assert record.error.content_filter == filtered
    assert record.attempts[0].error is not None
    assert record.attempts[0].error.content_filter == filtered
    assert record.model_dump(mode="json") == doc


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("manifest.json", b"{not json", "images/r/manifest.json is not a valid manifest.json: "),
        ("manifest.json", json.dumps({**manifest_json(), "status": "failed"}), "status: "),
        ("manifest.json", json.dumps({**manifest_json(), "schema": "imagegen.manifest/2"}),
         "schema: "),
        ("error.json", json.dumps({**failed_json(), "error": {"kind": "oops", "message": "m"}}),
         "error.kind: "),
        ("status.json", json.dumps({"status": "running"}), "id: Field required"),
    ],
)  # fmt: skip
def test_an_invalid_document_is_an_error_naming_the_blob_and_the_field(
    name: str, data: str | bytes, expected: str
) -> None:
    with pytest.raises(UnreadableRecord) as caught:
        parse_document(name, data, where=f"images/r/{name}")
    assert expected in str(caught.value)
    assert str(caught.value).startswith(f"images/r/{name} is not a valid {name}: ")


# --- JSON Schemas -----------------------------------------------------------------------------


def test_the_committed_schemas_are_current() -> None:
    for name, text in schema_texts().items():
        path = SCHEMAS / name
        assert path.exists() and path.read_text(encoding="utf-8") == text, (
            f"schemas/{name} is stale: run `.venv/bin/python -m shared.records`"
        )


def test_python_m_shared_records_writes_the_schemas_and_checks_them(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shared.records", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    assert run("--check").returncode == 0  # the committed files
    out = tmp_path / "schemas"
    written = run(str(out))
    assert written.returncode == 0, written.stderr
    for name in SCHEMA_FILES:
        assert (out / name).read_text(encoding="utf-8") == (SCHEMAS / name).read_text("utf-8")
    (out / "manifest.schema.json").write_text("{}\n", encoding="utf-8")
    assert stale_files(out) == ["manifest.schema.json"]
    check = run("--check", str(out))
    assert check.returncode == 1
    assert "manifest.schema.json is stale" in check.stderr


@pytest.mark.parametrize("case", sorted(DOCUMENTS))
def test_every_built_document_validates_against_its_committed_schema(case: str) -> None:
    name, build = DOCUMENTS[case]
    schema_file = {"status.json": "status", "manifest.json": "manifest", "error.json": "error"}
    schema = json.loads((SCHEMAS / f"{schema_file[name]}.schema.json").read_text("utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(build())


def test_the_schemas_reject_what_the_models_reject() -> None:
    schema = json.loads((SCHEMAS / "manifest.schema.json").read_text("utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    for broken in (
        {**manifest_json(), "status": "failed"},
        {**manifest_json(), "schema": "imagegen.error/1"},
        {k: v for k, v in manifest_json().items() if k != "images"},
        {**manifest_json(), "images": [{**IMAGE, "bytes": "many"}]},
    ):
        assert not validator.is_valid(broken)
        with pytest.raises(UnreadableRecord):
            parse_document("manifest.json", broken)
    error = json.loads((SCHEMAS / "error.schema.json").read_text("utf-8"))
    assert error["properties"]["status"]["enum"] == ["failed", "rejected"]
    assert "request" not in error["required"]  # a message that was not a request has none
    status = json.loads((SCHEMAS / "status.schema.json").read_text("utf-8"))
    assert status["required"] == ["id", "status", "updated_at"]  # older status.json still valid
