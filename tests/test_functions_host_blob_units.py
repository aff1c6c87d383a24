"""Units of the stand-in's blob triggers that need no Storage: paths, sources, receipts, Event Grid."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import pytest

from emulators.functions_host.app_loader import EVENT_GRID, LOGS_AND_CONTAINER_SCAN, load_app
from emulators.functions_host.app_settings import AppSettings
from emulators.functions_host.blob_eventgrid import delivery_queue_name
from emulators.functions_host.blob_invocation import BlobVersion
from emulators.functions_host.blob_path import parse_blob_path, resolve_blob_path
from emulators.functions_host.blob_polling import poison_message
from emulators.functions_host.blob_receipts import host_id_from, receipt_name
from emulators.functions_host.errors import HostStartupError, MissingSettingError
from emulators.functions_host.eventgrid import (
    MAX_ATTEMPTS_EXCEEDED,
    TTL_EXCEEDED,
    EventGridRetryPolicy,
    dead_letter_blob_name,
)

HOST_APPS = Path(__file__).parent / "host_apps"


def test_a_parameter_binds_any_text_slashes_included() -> None:
    path = parse_blob_path("images/{name}/manifest.json", "test")
    assert (path.container, path.prefix, path.parameters) == ("images", "", ("name",))
    assert path.match("abc/manifest.json") == {"name": "abc"}
    assert path.match("a/b/manifest.json") == {"name": "a/b"}
    assert path.match("abc/status.json") is None
    assert path.match("abc/0.png") is None
    assert path.match("/manifest.json") is None  # a parameter is never empty


def test_literal_prefix_and_several_parameters() -> None:
    path = parse_blob_path("ccc/in/{name}.{ext}", "test")
    assert path.prefix == "in/"
    assert path.match("in/a.b.txt") == {"name": "a.b", "ext": "txt"}
    assert parse_blob_path("ccc", "test").match("any/thing") == {"blob": "any/thing"}
    assert parse_blob_path("ccc/x.txt", "test").match("x.txt") == {}


@pytest.mark.parametrize("bad", ["{c}/x", "Images/x", "c/{a}/{a}", "c/{name", "c/x}"])
def test_bad_paths_fail_start_up(bad: str) -> None:
    with pytest.raises(HostStartupError):
        parse_blob_path(bad, "test")


def test_percent_settings_resolve_before_matching() -> None:
    settings = AppSettings({"IMAGES_CONTAINER": "img-1"})
    path = resolve_blob_path("%IMAGES_CONTAINER%/{name}/manifest.json", settings, "f")
    assert str(path) == "img-1/{name}/manifest.json"
    with pytest.raises(MissingSettingError, match="NOPE"):
        resolve_blob_path("%NOPE%/{name}", settings, "f")


def test_the_loader_reads_each_blob_trigger_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBE_DIR", "/tmp")
    monkeypatch.setattr(sys, "path", list(sys.path))
    settings = AppSettings({"POLL_CONTAINER": "p-1", "GRID_CONTAINER": "g-1"})
    app = load_app(HOST_APPS / "blobs", settings)
    sources = {f.name: (f.source, str(f.path), f.connection) for f in app.blob_functions}
    assert sources == {
        "polled": (LOGS_AND_CONTAINER_SCAN, "p-1/in/{name}.txt", "MyStorage"),
        "gridded": (EVENT_GRID, "g-1/{name}/manifest.json", "MyStorage"),
    }
    assert app.queue_functions == () and app.skipped == ()


def test_receipt_names_put_the_etag_before_the_blob_name() -> None:
    name = receipt_name("host", "Host.Functions.f", '"0x1"', "c", "a/b.txt")
    assert name == 'blobreceipts/host/Host.Functions.f/"0x1"/c/a/b.txt'
    assert host_id_from("My_App.Folder") == "my-app-folder"
    assert len(host_id_from("x" * 80)) == 32


def test_poison_message_is_the_hosts_blob_trigger_message() -> None:
    blob = BlobVersion("c", "in/a.txt", '"0x1"', "http://x/c/in/a.txt", 3, None, "BlockBlob")
    assert poison_message("f", blob) == (
        '{"Type":"BlobTrigger","FunctionId":"Host.Functions.f","BlobType":"BlockBlob",'
        '"ContainerName":"c","BlobName":"in/a.txt","ETag":"\\"0x1\\""}'
    )


def test_event_grid_schedule_and_limits() -> None:
    policy = EventGridRetryPolicy()
    assert [policy.delay_s(n) for n in range(1, 12)] == [
        10, 30, 60, 300, 600, 1800, 3600, 10800, 21600, 43200, 43200,
    ]  # fmt: skip
    assert policy.give_up(30, 0) == MAX_ATTEMPTS_EXCEEDED
    assert policy.give_up(1, 0) is None
    assert policy.give_up(10, 23 * 3600) == TTL_EXCEEDED  # the next try would pass 24 h
    fast = EventGridRetryPolicy(max_attempts=3, time_scale=0.1)
    assert fast.delay_s(1) == pytest.approx(1.0)
    assert fast.give_up(2, 0) is None and fast.give_up(3, 0) == MAX_ATTEMPTS_EXCEEDED
    with pytest.raises(ValueError):
        EventGridRetryPolicy(max_attempts=31)


def test_dead_letter_layout_and_queue_names() -> None:
    moment = datetime.datetime(2025, 3, 4, 5, 6, tzinfo=datetime.UTC)
    assert dead_letter_blob_name("acct", "fn", "e1", moment) == "ACCT/FN/2025/03/04/05/e1.json"
    name = delivery_queue_name("H" * 40, "Catalogue_Manifest" * 3)
    assert len(name) <= 63 and name.startswith("eventgrid-hhh") and "--" not in name
