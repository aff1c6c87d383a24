"""`python -m shared.ops` against the running Azurite, with records written as the pipeline writes them.

The CLI runs in-process through `main(argv, environ=..., cwd=...)`; one test runs it as a
subprocess to see what an operator's shell sees (exit code, one line, no traceback).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient, QueueServiceClient
from conftest import Emulator
from product_stack import Product, start_product

from devtools import azurite
from devtools.services import REPO_ROOT, free_port, wait_until
from shared.contract.request import InvalidMessage, validate_request
from shared.ops.cli import main, parse_metadata, parse_since
from shared.records.attempts import AttemptRecord, ErrorInfo, Outcome

TERMINAL_FAILURE = 1
NOT_FOUND = 4


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class Stage:
    """A fresh queue and container, the environment naming them, and a way to run the CLI."""

    env: dict[str, str]
    cwd: Path
    queue: QueueClient
    container: ContainerClient
    capsys: pytest.CaptureFixture[str]

    def cli(self, *argv: str) -> Run:
        self.capsys.readouterr()
        code = main(list(argv), environ=self.env, cwd=self.cwd)
        captured = self.capsys.readouterr()
        return Run(code, captured.out, captured.err)

    def put(self, request_id: str, name: str, doc: dict[str, Any] | bytes) -> None:
        data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.container.upload_blob(f"{request_id}/{name}", data, overwrite=True)

    def get(self, request_id: str, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.container.download_blob(f"{request_id}/{name}").readall())
        except ResourceNotFoundError:
            return None

    def modified(self, request_id: str, name: str) -> datetime:
        blob = self.container.get_blob_client(f"{request_id}/{name}")
        return blob.get_blob_properties().last_modified

    def messages(self) -> list[str]:
        """Every visible message's text, taken off the queue."""
        try:
            received = list(
                self.queue.receive_messages(messages_per_page=32, visibility_timeout=60)
            )
        except ResourceNotFoundError:
            return []
        for message in received:
            self.queue.delete_message(message)
        return [m.content for m in received]


@pytest.fixture
def stage(
    azurite_connection_string: str,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Stage]:
    queue_name, container_name = unique_name("cliq"), unique_name("clii")
    env = {
        "AzureWebJobsStorage": azurite_connection_string,
        "IMAGE_REQUESTS_QUEUE": queue_name,
        "IMAGES_CONTAINER": container_name,
    }
    queue = QueueServiceClient.from_connection_string(azurite_connection_string).get_queue_client(
        queue_name
    )
    container = BlobServiceClient.from_connection_string(
        azurite_connection_string
    ).get_container_client(container_name)
    container.create_container()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    yield Stage(env, cwd, queue, container, capsys)
    container.delete_container()
    try:
        queue.delete_queue()
    except ResourceNotFoundError:
        pass


# --- records as the pipeline writes them ----------------------------------------------------------


def attempt(
    n: int,
    outcome: str,
    apim: str | None,
    started_at: str = "2026-05-07T13:30:00.000Z",
    error: dict[str, Any] | None = None,
    http_status: int | None = 200,
) -> dict[str, Any]:
    return AttemptRecord(
        attempt=n,
        image_index=0,
        deployment="gpt-image-2-1",
        started_at=started_at,
        elapsed_s=61.0,
        first_event_s=20.0,
        http_status=http_status,
        apim_request_id=apim,
        x_request_id=None,
        partial_images_sent=1,
        partials_received=1,
        outcome=Outcome(outcome),
        error=ErrorInfo.from_json(error) if error else None,
    ).to_json()


CRASH = {"type": "server_error", "code": None, "message": "An error occurred"}


def status_json(request_id: str, status: str, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": request_id,
        "status": status,
        "updated_at": "2026-05-07T13:31:00.000Z",
        "images_done": 1 if status == "succeeded" else 0,
        "attempts": attempts,
        "request_hash": "h-" + request_id,
    }


def manifest_json(request_id: str, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema": "imagegen.manifest/1",
        "id": request_id,
        "status": "succeeded",
        "request": {"id": request_id, "prompt": "an apple"},
        "request_hash": "h-" + request_id,
        "images": [
            {
                "index": 0,
                "blob": f"{request_id}/0.png",
                "content_type": "image/png",
                "bytes": 4,
                "sha256": "00",
                "width": 1024,
                "height": 1024,
                "usage": None,
            }
        ],
        "attempts": attempts,
        "created_at": "2026-05-07T13:30:00.000Z",
        "completed_at": "2026-05-07T13:31:00.000Z",
        "metadata": {},
    }


def error_json(
    request_id: str,
    kind: str,
    attempts: list[dict[str, Any]],
    *,
    input_text: str | None = None,
    status: str = "failed",
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": "imagegen.error/1",
        "id": request_id,
        "status": status,
        "request": {"id": request_id, "prompt": "an apple"},
        "request_hash": "h-" + request_id,
        "images": [],
        "attempts": attempts,
        "created_at": "2026-05-07T13:30:00.000Z",
        "completed_at": "2026-05-07T13:59:00.000Z",
        "metadata": {},
        "error": {"kind": kind, "message": f"{kind} happened"},
    }
    if input_text is not None:
        doc["input"] = input_text
    return doc


# --- submit -----------------------------------------------------------------------------------------


def test_submit_rejects_what_the_contract_rejects_and_leaves_the_queue_alone(stage: Stage) -> None:
    argv = ["submit", "--prompt", "x", "--n", "11", "--output-format", "jpeg", "--background",
            "transparent"]  # fmt: skip
    run = stage.cli(*argv)
    assert run.code == 2
    with pytest.raises(InvalidMessage) as expected:
        validate_request({"prompt": "x", "n": 11, "output_format": "jpeg",
                          "background": "transparent"}, default_id="x")  # fmt: skip
    for line in expected.value.errors:
        assert f"invalid request: {line}" in run.err
    assert run.out == ""
    assert stage.messages() == []
    assert list(stage.container.list_blobs()) == []


def test_submit_sends_every_field_and_writes_queued(stage: Stage) -> None:
    run = stage.cli(
        "submit", "--prompt", "a red apple", "--id", "job-1", "--operation", "edit",
        "--size", "1024x1536", "--quality", "high", "-n", "2", "--output-format", "jpeg",
        "--output-compression", "80", "--background", "opaque", "--moderation", "auto",
        "--partial-images", "2", "--save-partials", "--input-image", "inputs/a.png",
        "--input-image", "inputs/b.png", "--mask", "inputs/m.png",
        "--user", "u-7", "--metadata", "team=art", "--metadata", "ticket=a=b",
    )  # fmt: skip
    assert (run.code, run.out) == (0, "job-1\n"), run.err
    (text,) = stage.messages()
    assert json.loads(text) == {
        "id": "job-1", "operation": "edit", "prompt": "a red apple", "size": "1024x1536",
        "quality": "high", "n": 2, "output_format": "jpeg", "output_compression": 80,
        "background": "opaque", "moderation": "auto", "partial_images": 2, "save_partials": True,
        "input_images": ["inputs/a.png", "inputs/b.png"], "mask": "inputs/m.png",
        "user": "u-7", "metadata": {"team": "art", "ticket": "a=b"},
    }  # fmt: skip
    status = stage.get("job-1", "status.json")
    assert status is not None and status["status"] == "queued"
    # moderation low is for generations; input_fidelity reaches the contract, which validates with
    # gpt-image-2 (the client's default model) and so refuses it.
    run = stage.cli("submit", "--prompt", "x", "--id", "job-2", "--moderation", "low")
    assert (run.code, run.out) == (0, "job-2\n"), run.err
    assert json.loads(stage.messages()[-1])["moderation"] == "low"
    run = stage.cli(
        "submit", "--prompt", "x", "--operation", "edit", "--input-image", "inputs/a.png",
        "--input-fidelity", "high",
    )  # fmt: skip
    assert run.code == 2
    assert "input_fidelity: gpt-image-2 takes no input_fidelity" in run.err


def test_submit_without_an_id_gets_one(stage: Stage) -> None:
    run = stage.cli("submit", "--prompt", "an apple")
    request_id = run.out.strip()
    assert run.code == 0 and request_id
    assert json.loads(stage.messages()[0])["id"] == request_id


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "--prompt", "x", "--metadata", "novalue"],
        ["submit", "--prompt", "x", "--metadata", "k=1", "--metadata", "k=2"],
        ["submit", "--prompt", "x", "-n", "two"],
        ["submit"],
        ["list", "--since", "yesterday"],
        ["requeue-poison"],
        ["requeue-poison", "a", "--all"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2_and_send_nothing(stage: Stage, argv: list[str]) -> None:
    run = stage.cli(*argv)
    assert run.code == 2
    assert "usage:" in run.err
    assert stage.messages() == []


def test_submit_wait_reports_the_terminal_record_and_out_downloads(
    stage: Stage, tmp_path: Path
) -> None:
    """The pipeline's work is played by hand-written records, present before the first poll."""
    stage.put("done-1", "status.json", status_json("done-1", "running", []))
    stage.put("done-1", "0.png", b"\x89PNG")
    stage.put("done-1", "manifest.json", manifest_json("done-1", [attempt(1, "succeeded", "x")]))
    run = stage.cli(
        "submit", "--prompt", "an apple", "--id", "done-1", "--out", str(tmp_path / "o")
    )
    assert run.code == 0, run.err
    assert run.out.startswith("done-1\ndone-1: succeeded — 1 image, 1 call")
    assert (tmp_path / "o" / "done-1" / "0.png").read_bytes() == b"\x89PNG"
    assert str(tmp_path / "o" / "done-1" / "manifest.json") in run.out


def test_a_second_submit_out_to_the_same_dir_keeps_the_first(stage: Stage, tmp_path: Path) -> None:
    """`--out DIR` writes DIR/<id>/: the README's `--out out/` twice must not overwrite 0.png."""
    for request_id, png in (("first-1", b"\x89PNG-first"), ("second-1", b"\x89PNG-second")):
        stage.put(request_id, "0.png", png)
        stage.put(
            request_id, "manifest.json", manifest_json(request_id, [attempt(1, "succeeded", "x")])
        )
        run = stage.cli(
            "submit", "--prompt", "an apple", "--id", request_id, "--out", str(tmp_path / "out")
        )
        assert run.code == 0, run.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["first-1", "second-1"]
    assert (tmp_path / "out" / "first-1" / "0.png").read_bytes() == b"\x89PNG-first"
    assert (tmp_path / "out" / "second-1" / "0.png").read_bytes() == b"\x89PNG-second"
    first = json.loads((tmp_path / "out" / "first-1" / "manifest.json").read_text())
    assert first["id"] == "first-1"


def test_submit_wait_shows_progress_then_times_out_with_exit_1(stage: Stage) -> None:
    stage.put("slow-1", "status.json", status_json("slow-1", "retrying",
                                                   [attempt(1, "server_error", "a", error=CRASH)]))  # fmt: skip
    run = stage.cli("submit", "--prompt", "p", "--id", "slow-1", "--wait", "--timeout", "0.3",
                    "--poll", "0.1")  # fmt: skip
    assert run.code == 1
    assert (
        "slow-1: retrying · images done 0 · attempts 1 · last server_error on gpt-image-2-1 · partials received 1"
        in run.err
    )
    assert "not finished after 0.3s" in run.err


def test_submit_wait_on_a_failed_request_exits_1(stage: Stage) -> None:
    stage.put("bad-1", "error.json", error_json("bad-1", "content_filter", []))
    run = stage.cli("submit", "--prompt", "p", "--id", "bad-1", "--wait", "--poll", "0.1")
    assert run.code == 1
    assert "bad-1: failed (content_filter)" in run.out


# --- status, fetch, list ---------------------------------------------------------------------------


def test_status_summary_json_and_exit_codes(stage: Stage) -> None:
    stage.put("run-1", "status.json", status_json("run-1", "retrying",
              [attempt(1, "gateway_timeout", "apim-408", http_status=408)]))  # fmt: skip
    run = stage.cli("status", "run-1")
    assert run.code == 0
    assert run.out.startswith(
        "run-1: retrying — 0 images, 1 call, updated 2026-05-07T13:31:00.000Z"
    )
    assert (
        "last call: gateway_timeout on gpt-image-2-1, HTTP 408, apim-request-id apim-408" in run.out
    )

    # The document as its model reads it: everything stored, plus what a document written before
    # a field existed reads as (the status schema version, the call counts).
    as_json = stage.cli("status", "run-1", "--json")
    stored = stage.get("run-1", "status.json")
    assert json.loads(as_json.out) == {
        "schema": "imagegen.status/1",
        **stored,
        "outcome_counts": {"gateway_timeout": 1},
        "calls": 1,
    }

    # The terminal record wins over status.json.
    stage.put("run-1", "error.json", error_json("run-1", "retries_exhausted", []))
    failed = stage.cli("status", "run-1")
    assert failed.code == 1
    assert "run-1: failed (retries_exhausted)" in failed.out
    assert "error: retries_exhausted happened" in failed.out

    stage.put("torn", "status.json", b"{not json")
    torn = stage.cli("status", "torn")
    assert torn.code == 1 and torn.err.startswith("unreadable record: ")
    assert "Traceback" not in torn.err

    unknown = stage.cli("status", "nope")
    assert unknown.code == NOT_FOUND and "no request 'nope'" in unknown.err


def test_fetch_downloads_images_and_records(stage: Stage, tmp_path: Path) -> None:
    stage.put("img-1", "0.png", b"\x89PNG-zero")
    stage.put("img-1", "status.json", status_json("img-1", "succeeded", []))
    stage.put("img-1", "manifest.json", manifest_json("img-1", [attempt(1, "succeeded", "x")]))
    stage.put("img-10", "0.png", b"another request with a longer id")
    run = stage.cli("fetch", "img-1", str(tmp_path / "dl"))
    assert run.code == 0, run.err
    assert (tmp_path / "dl" / "0.png").read_bytes() == b"\x89PNG-zero"
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [
        "0.png",
        "manifest.json",
        "status.json",
    ]
    missing = stage.cli("fetch", "missing", str(tmp_path / "none"))
    assert missing.code == NOT_FOUND and "no request 'missing'" in missing.err
    assert not (tmp_path / "none").exists()
    # Found but not finished is not "no such request".
    stage.put("img-2", "status.json", status_json("img-2", "running", []))
    assert stage.cli("fetch", "img-2", str(tmp_path / "dl2")).code == TERMINAL_FAILURE


def test_list_newest_first_with_status_filter(stage: Stage) -> None:
    stage.put("a-old", "status.json", status_json("a-old", "queued", []))
    old = stage.modified("a-old", "status.json")

    def newer() -> bool:  # last_modified has one-second resolution; the order needs two values
        stage.put("b-failed", "status.json", status_json("b-failed", "failed", []))
        return stage.modified("b-failed", "status.json") > old

    wait_until(newer, timeout=5, interval=0.25, what="a later last_modified")
    stage.put("b-failed", "error.json", error_json("b-failed", "poisoned", []))
    stage.put("c-ok", "0.png", b"png")
    stage.put("c-ok", "manifest.json", manifest_json("c-ok", [attempt(1, "succeeded", "x")]))
    stage.put("c-ok", "partials/0-0.png", b"png")
    run = stage.cli("list", "--json")
    rows = json.loads(run.out)
    assert [r["id"] for r in rows][-1] == "a-old"
    assert {r["id"]: r["status"] for r in rows} == {
        "a-old": "queued",
        "b-failed": "failed",
        "c-ok": "succeeded",
    }
    assert {r["id"]: r["images"] for r in rows}["c-ok"] == 1
    failed = stage.cli("list", "--status", "failed")
    assert failed.code == 0
    (line,) = failed.out.splitlines()
    assert "b-failed" in line and "poisoned: poisoned happened" in line
    assert stage.cli("list", "--since", "1h", "--limit", "1", "--json").out.count('"id"') == 1


def test_list_status_rejected_and_failed_means_failed_or_rejected(stage: Stage) -> None:
    """After bad messages, "find what failed" must find the rejected ones too."""
    stage.put("f-1", "error.json", error_json("f-1", "retries_exhausted", []))
    stage.put("r-1", "error.json", error_json("r-1", "invalid_request", [], status="rejected"))
    stage.put("ok-1", "manifest.json", manifest_json("ok-1", [attempt(1, "succeeded", "x")]))
    stage.put("q-1", "status.json", status_json("q-1", "queued", []))

    def ids(*argv: str) -> set[str]:
        run = stage.cli("list", *argv, "--json")
        assert run.code == 0, run.err
        return {row["id"] for row in json.loads(run.out)}

    assert ids("--status", "rejected") == {"r-1"}
    assert ids("--status", "failed") == {"f-1"}
    assert ids("--failed") == {"f-1", "r-1"}
    both = stage.cli("list", "--failed", "--status", "queued")
    assert both.code == 2 and "not allowed with argument" in both.err


def test_list_of_a_container_not_created_yet_is_empty(stage: Stage) -> None:
    stage.env["IMAGES_CONTAINER"] = "never-created-" + stage.queue.queue_name[-12:]
    run = stage.cli("list")
    assert (run.code, run.out) == (0, "")
    assert "no requests match" in run.err


# --- report ------------------------------------------------------------------------------------------


def test_report_groups_failures_and_lists_every_apim_request_id(stage: Stage) -> None:
    ok_attempts = [
        attempt(1, "server_error", "apim-a", "2026-05-07T13:30:00.000Z", CRASH),
        attempt(2, "succeeded", "apim-ok", "2026-05-07T13:31:00.000Z"),
    ]
    stage.put("r-ok", "status.json", status_json("r-ok", "succeeded", ok_attempts))
    stage.put("r-ok", "manifest.json", manifest_json("r-ok", ok_attempts))
    dead_attempts = [
        attempt(1, "server_error", "apim-b", "2026-05-07T13:40:00.000Z", CRASH),
        attempt(2, "server_error", "apim-c", "2026-05-07T13:58:00.000Z", CRASH),
    ]
    # status.json repeats the history its error.json holds: counted once.
    stage.put("r-dead", "status.json", status_json("r-dead", "failed", dead_attempts))
    stage.put("r-dead", "error.json", error_json("r-dead", "retries_exhausted", dead_attempts))
    stage.put("r-busy", "status.json", status_json("r-busy", "retrying",
              [attempt(1, "rate_limited", "apim-429", "2026-05-07T13:50:00.000Z", None, 429)]))  # fmt: skip

    run = stage.cli("report", "--since", "1h", "--region", "Sweden Central")
    assert run.code == 0, run.err
    assert "- Region: Sweden Central" in run.out
    assert "- Deployment names: gpt-image-2-1 (5 calls, 4 failed)" in run.out
    assert (
        "- server_error (code: none, HTTP 200) — 3 attempts between 2026-05-07T13:30Z and 13:58Z"
        " in 2 requests; 1 succeeded on retry; apim-request-id: apim-a, apim-b, apim-c"
    ) in run.out
    assert "- rate_limited (code: none, HTTP 429) — 1 attempt at 2026-05-07T13:50Z" in run.out
    assert "- r-dead: failed (retries_exhausted)" in run.out

    data = json.loads(stage.cli("report", "--json").out)
    assert data["attempts"] == 5
    assert [g["apim_request_ids"] for g in data["groups"]] == [
        ["apim-a", "apim-b", "apim-c"],
        ["apim-429"],
    ]


# --- requeue-poison ---------------------------------------------------------------------------------


def test_requeue_poison_resends_the_body_and_clears_the_record(stage: Stage) -> None:
    body = json.dumps({"id": "p-1", "prompt": "an apple", "size": "2048x2048"})
    history = [
        attempt(1, "server_error", "apim-1", error=CRASH),
        attempt(2, "auth_error", "apim-2", http_status=401),
    ]
    stage.put("p-1", "status.json", status_json("p-1", "failed", history))
    stage.put("p-1", "error.json", error_json("p-1", "poisoned", history, input_text=body))
    stage.put("other", "error.json", error_json("other", "retries_exhausted", []))

    run = stage.cli("requeue-poison", "p-1", "other")
    assert run.code == 1  # `other` was named but is not poisoned
    assert run.out.startswith("p-1: re-sent to ")
    assert (
        "other: has error.json kind 'retries_exhausted', not a poisoned record; left alone"
        in run.err
    )
    assert stage.messages() == [body]
    assert stage.get("p-1", "error.json") is None
    status = stage.get("p-1", "status.json")
    assert status is not None
    assert status["status"] == "queued"
    assert (
        status["request_hash"] == "h-p-1"
    )  # so the pipeline takes the re-sent body as the same request
    # The history stays whole: the 401's apim-request-id remains for the report, and the
    # pipeline calls again after a configuration error from an earlier delivery.
    assert [a["outcome"] for a in status["attempts"]] == ["server_error", "auth_error"]
    assert stage.get("other", "error.json") is not None


def test_requeue_poison_all_and_a_body_without_an_id(stage: Stage) -> None:
    with_id = json.dumps({"id": "p-2", "prompt": "a pear"})
    without_id = json.dumps({"prompt": "a plum"})
    stage.put("p-2", "error.json", error_json("p-2", "poisoned", [], input_text=with_id))
    stage.put("msg-9", "status.json", status_json("msg-9", "failed", []))
    stage.put("msg-9", "error.json", error_json("msg-9", "poisoned", [], input_text=without_id))
    stage.put("rej", "error.json", error_json("rej", "invalid_request", [], status="rejected"))

    dry = stage.cli("requeue-poison", "--all", "--dry-run")
    assert dry.code == 0 and dry.out.count("would re-send") == 2
    assert stage.messages() == []

    run = stage.cli("requeue-poison", "--all")
    assert run.code == 0, run.err
    assert "the body has no id, so it runs as request" in run.out
    assert "2 re-sent, 1 other error records left alone" in run.err
    assert sorted(stage.messages()) == sorted([with_id, without_id])
    assert stage.get("msg-9", "error.json") is None and stage.get("msg-9", "status.json") is None
    assert stage.get("p-2", "error.json") is None
    assert stage.get("rej", "error.json") is not None


# --- settings and reachability ----------------------------------------------------------------------


def test_missing_or_bad_settings_exit_2_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], azurite_connection_string: str
) -> None:
    """No AZURE_OPENAI_* is needed; what is needed and missing is named in one line."""
    assert main(["list"], environ={}, cwd=tmp_path) == 2
    assert capsys.readouterr().err.startswith(
        "settings: AzureWebJobsStorage: required setting is missing"
    )
    assert main(["status", "x"], environ={"AzureWebJobsStorage": "nonsense"}, cwd=tmp_path) == 2
    assert "not a storage connection string" in capsys.readouterr().err
    env = {"AzureWebJobsStorage": azurite_connection_string, "IMAGES_CONTAINER": "Bad_Name"}
    assert main(["list"], environ=env, cwd=tmp_path) == 2
    assert "IMAGES_CONTAINER: 'Bad_Name' is not a valid" in capsys.readouterr().err


def test_a_wrong_account_key_is_a_settings_error(
    azurite_connection_string: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = azurite_connection_string.replace(azurite.ACCOUNT_KEY, "d3Jvbmcga2V5")
    assert main(["list"], environ={"AzureWebJobsStorage": wrong}, cwd=tmp_path) == 2
    err = capsys.readouterr().err
    assert "/devstoreaccount1 refused the credentials" in err
    assert "d3Jvbmcga2V5" not in err and len(err.splitlines()) == 1


def test_local_settings_json_is_read_under_the_environment(stage: Stage) -> None:
    stage.put("ls-1", "status.json", status_json("ls-1", "queued", []))
    (stage.cwd / "local.settings.json").write_text(
        json.dumps({"IsEncrypted": False, "Values": stage.env}), encoding="utf-8"
    )
    env, stage.env = stage.env, {}
    assert "ls-1" in stage.cli("list").out
    # The environment wins over the file.
    stage.env = {"IMAGES_CONTAINER": "other-" + env["IMAGES_CONTAINER"][-12:]}
    assert "ls-1" not in stage.cli("list").out


def test_unreachable_storage_exits_3_with_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AzureWebJobs", "IMAGE"))},
        "AzureWebJobsStorage": azurite.connection_string(port, port, port),
        "PYTHONPATH": str(REPO_ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-m", "shared.ops", "status", "some-id"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    assert done.stdout == ""
    assert (
        done.stderr
        == f"storage unreachable at http://127.0.0.1:{port}/devstoreaccount1: connection refused\n"
    )


def test_unreachable_storage_in_every_command(tmp_path: Path) -> None:
    port = free_port()
    env = {"AzureWebJobsStorage": azurite.connection_string(port, port, port)}
    for argv in (["submit", "--prompt", "x"], ["list"], ["report"], ["requeue-poison", "--all"]):
        assert main(argv, environ=env, cwd=tmp_path) == 3, argv


def test_durations_and_metadata_parse() -> None:
    assert parse_since("30m") == timedelta(minutes=30)
    assert parse_since("24h") == timedelta(hours=24)
    assert parse_since("7d") == timedelta(days=7)
    assert parse_since("1.5h") == timedelta(minutes=90)
    assert parse_metadata("k=v=w") == ("k", "v=w")
    for bad in ("", "0h", "24", "h", "-1d", "3x"):
        with pytest.raises(Exception, match="expected a duration"):
            parse_since(bad)


def test_help_exits_0_and_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], environ={}) == 0
    out = capsys.readouterr().out
    assert "requeue-poison" in out
    assert "4 no such request" in " ".join(out.split())
    assert main(["status", "--help"], environ={}) == 0
    assert "4 no such request" in " ".join(capsys.readouterr().out.split())


# --- end to end: the host stand-in and the emulator -------------------------------------------------


def product_env(product: Product) -> dict[str, str]:
    """What an operator's shell has: the storage settings only, no AZURE_OPENAI_*."""
    return {
        name: product.settings[name]
        for name in ("AzureWebJobsStorage", "IMAGE_REQUESTS_QUEUE", "IMAGES_CONTAINER")
    }


@pytest.mark.slow
def test_submit_wait_progress_out_and_report_through_the_host(
    product: Product, emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = f"cli crash {uuid.uuid4().hex[:8]}"
    emulator.script({"outcome": "server_error", "after_partials": 1, "prompt_contains": text})
    env, out_dir = product_env(product), tmp_path / "out"
    argv = ["submit", "--prompt", text, "--size", "1024x1024", "--quality", "low",
            "--out", str(out_dir), "--poll", "0.1", "--timeout", "60"]  # fmt: skip
    code = main(argv, environ=env, cwd=tmp_path)
    captured = capsys.readouterr()
    assert code == 0, captured.err + product.host.log_tail(40)
    request_id = captured.out.splitlines()[0]
    assert f"{request_id}: succeeded — 1 image, 2 calls" in captured.out
    assert f"{request_id}: queued" in captured.err or f"{request_id}: running" in captured.err
    assert (out_dir / request_id / "0.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out_dir / request_id / "manifest.json").read_text())["id"] == request_id

    failed_call = next(r for r in emulator.requests_log() if text in str(r["body"].get("prompt")))
    assert main(["report", "--since", "30m"], environ=env, cwd=tmp_path) == 0
    report = capsys.readouterr().out
    assert f"apim-request-id: {failed_call['apim_request_id']}" in report
    assert "server_error (code: none, HTTP 200) — 1 attempt" in report
    assert "1 succeeded on retry" in report


@pytest.mark.slow
def test_requeue_poison_brings_a_request_to_success_after_the_key_is_fixed(
    product_factory: Callable[..., Product],
    emulator: Emulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    locked_out = product_factory(api_key="wrong-key")
    env = product_env(locked_out)
    argv = ["submit", "--prompt", f"cli locked out {uuid.uuid4().hex[:8]}", "--quality", "low"]
    assert main(argv, environ=env, cwd=tmp_path) == 0
    request_id = capsys.readouterr().out.strip()
    poisoned = locked_out.wait_record(request_id, "error.json", timeout=90)
    assert poisoned["error"]["kind"] == "poisoned"
    locked_out.host.stop()
    # start_product creates the queue and refuses an existing one; its messages are all handled.
    locked_out.queue.delete_queue()
    fixed = start_product(
        connection_string=env["AzureWebJobsStorage"],
        emulator_url=emulator.base_url,
        api_key=emulator.api_key,
        deployment=emulator.deployment,
        queue_name=env["IMAGE_REQUESTS_QUEUE"],
        container_name=env["IMAGES_CONTAINER"],
        log_path=tmp_path / "fixed-host.log",
    )
    try:
        assert main(["requeue-poison", request_id], environ=env, cwd=tmp_path) == 0
        assert capsys.readouterr().out.startswith(f"{request_id}: re-sent to ")
        manifest = fixed.wait_record(request_id, "manifest.json", timeout=60)
        assert manifest["status"] == "succeeded"
        assert [a["outcome"] for a in manifest["attempts"]][-1] == "succeeded"
        assert main(["status", request_id], environ=env, cwd=tmp_path) == 0
        assert fixed.read_json(request_id, "error.json") is None
    finally:
        fixed.host.stop()


def test_a_reader_that_goes_away_is_not_an_unreachable_storage(
    stage: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m shared.ops status ID | head -1`: the pipe closes, the command ends quietly."""
    stage.put("piped", "status.json", status_json("piped", "running", []))

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    code = main(["status", "piped"], environ=stage.env, cwd=stage.cwd)
    assert code == 0
    assert "unreachable" not in stage.capsys.readouterr().err
