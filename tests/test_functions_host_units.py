"""Units of the Functions host stand-in that need no Storage: config, settings, back-off, leases."""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError

from emulators.functions_host.app_loader import QueueFunction, load_app
from emulators.functions_host.app_settings import AppSettings, export_to_environ, load_settings
from emulators.functions_host.backoff import PollingBackoff
from emulators.functions_host.connections import resolve_connection
from emulators.functions_host.delivery import DeliveryState, LeaseKeeper
from emulators.functions_host.errors import (
    HostStartupError,
    MessageDecodeError,
    MissingSettingError,
)
from emulators.functions_host.host import thread_count
from emulators.functions_host.host_config import (
    load_host_config,
    parse_host_config,
    parse_timespan,
)
from emulators.functions_host.invocation import ReceivedMessage, build_arguments, decode_body

HOST_APPS = Path(__file__).parent / "host_apps"


# host.json


def test_host_json_defaults_are_the_extensions_with_local_polling() -> None:
    config = parse_host_config({"version": "2.0"})
    queues = config.queues
    assert (queues.batch_size, queues.new_batch_threshold, queues.max_dequeue_count) == (16, 8, 5)
    assert (queues.visibility_timeout_s, queues.max_polling_interval_s) == (0.0, 2.0)
    assert queues.message_encoding == "base64"
    assert queues.max_in_flight == 24
    assert config.function_timeout_s == 1800


def test_host_json_keys_are_case_insensitive_and_threshold_follows_batch_size() -> None:
    config = parse_host_config(
        {
            "Extensions": {"Queues": {"BatchSize": 10, "messageencoding": "None"}},
            "functionTimeout": "00:05:00",
        }
    )
    assert config.queues.batch_size == 10
    assert config.queues.new_batch_threshold == 5
    assert config.queues.message_encoding == "none"
    assert (config.function_timeout_s, config.function_timeout_text) == (300, "00:05:00")
    assert parse_host_config({"functionTimeout": "-1"}).function_timeout_s is None


@pytest.mark.parametrize(
    "queues",
    [
        {"batchSize": 33},
        {"batchSize": True},
        {"maxDequeueCount": 0},
        {"messageEncoding": "utf8"},
        {"visibilityTimeout": 30},
        {"maxPollingInterval": "00:00:00.050"},
    ],
)
def test_host_json_rejects_bad_queue_options(queues: dict[str, Any]) -> None:
    with pytest.raises(HostStartupError, match=r"host\.json"):
        parse_host_config({"extensions": {"queues": queues}})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:05:00", 300), ("00:00:00.500", 0.5), ("1.02:03:04", 93784), ("10:00:00", 36000)],
)
def test_timespans(text: str, seconds: float) -> None:
    assert parse_timespan(text, "x") == seconds


def test_a_malformed_timespan_names_its_key() -> None:
    with pytest.raises(HostStartupError, match="functionTimeout"):
        parse_host_config({"functionTimeout": "5 minutes"})


# settings and connections


def test_environment_wins_over_local_settings_and_fills_the_environment(tmp_path: Path) -> None:
    (tmp_path / "local.settings.json").write_text(
        json.dumps({"IsEncrypted": False, "Values": {"A": "file", "B": "file"}})
    )
    settings = load_settings(tmp_path, {"A": "env"})
    assert (settings.get("A"), settings.get("B")) == ("env", "file")
    environ = {"A": "env"}
    export_to_environ(settings, environ)
    assert environ == {"A": "env", "B": "file"}


def test_local_settings_values_must_be_strings(tmp_path: Path) -> None:
    (tmp_path / "local.settings.json").write_text(json.dumps({"Values": {"N": 3}}))
    with pytest.raises(HostStartupError, match=r"Values\.N"):
        load_settings(tmp_path, {})


@pytest.mark.parametrize(
    ("text", "message"), [("{not json", "not readable JSON"), ("[1]", "expected a JSON object")]
)
def test_unreadable_host_json_and_local_settings_name_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "host.json").write_text(text)
    with pytest.raises(HostStartupError, match=rf"host\.json: {message}"):
        load_host_config(tmp_path)
    (tmp_path / "local.settings.json").write_text(text)
    with pytest.raises(HostStartupError, match=rf"local\.settings\.json: {message}"):
        load_settings(tmp_path, {})


def test_missing_host_json_and_local_settings_are_the_defaults(tmp_path: Path) -> None:
    assert load_host_config(tmp_path) == parse_host_config({})
    assert load_settings(tmp_path, {"A": "env"}).values == {"A": "env"}


def test_percent_names_resolve_and_a_missing_one_is_named() -> None:
    settings = AppSettings({"ENV": "dev", "Q": "requests"})
    assert settings.resolve("%Q%-%ENV%", "queue") == "requests-dev"
    with pytest.raises(MissingSettingError, match="'NOPE'") as caught:
        settings.resolve("%NOPE%", "the queue name")
    assert caught.value.name == "NOPE"


def test_connections_resolve_like_the_host() -> None:
    azurite = "UseDevelopmentStorage=true"
    empty = resolve_connection("", AppSettings({"AzureWebJobsStorage": azurite}), "x")
    assert empty.setting == "AzureWebJobsStorage"
    assert "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1" in str(empty.connection_string)
    both = AppSettings({"AzureWebJobsMine": "AccountName=a;AccountKey=b", "Mine": "other"})
    assert resolve_connection("Mine", both, "x").setting == "AzureWebJobsMine"
    identity = resolve_connection("Mine", AppSettings({"Mine__accountName": "acct"}), "x")
    assert identity.connection_string is None
    assert identity.queue_service_uri == "https://acct.queue.core.windows.net"
    with pytest.raises(MissingSettingError, match="'Mine'"):
        resolve_connection("Mine", AppSettings({}), "x")


def test_thread_count_setting() -> None:
    assert thread_count(AppSettings({"PYTHON_THREADPOOL_THREAD_COUNT": "40"})) == 40
    assert 5 <= thread_count(AppSettings({})) <= 32
    with pytest.raises(HostStartupError, match="PYTHON_THREADPOOL_THREAD_COUNT"):
        thread_count(AppSettings({"PYTHON_THREADPOOL_THREAD_COUNT": "0"}))


# polling back-off


def test_backoff_grows_randomly_up_to_the_maximum_and_resets() -> None:
    rng = random.Random(7)
    backoff = PollingBackoff(maximum_s=2.0)
    assert backoff.delay(rng) == 0.0
    delays = []
    for _ in range(12):
        backoff = backoff.after_empty()
        delays.append(backoff.delay(rng))
    assert all(0.1 <= d <= 2.0 for d in delays)
    assert delays[0] <= 0.12 and delays[-1] == 2.0
    assert 0.8 * 0.4 <= delays[2] <= 1.2 * 0.4  # third empty poll: 400 ms ± 20 %
    assert backoff.reset().delay(rng) == 0.0


# message and arguments


def test_decode_body_per_encoding() -> None:
    assert decode_body("aGk=", "none") == b"aGk="
    assert decode_body("aGk=", "base64") == b"hi"
    assert decode_body("aG\nk=", "base64") == b"hi"
    with pytest.raises(MessageDecodeError, match="not a valid Base-64"):
        decode_body('{"id": "x"}', "base64")


def _message(content: str = "aGk=", dequeue_count: int = 1) -> ReceivedMessage:
    return ReceivedMessage("m1", content, dequeue_count, "receipt-1", None, None, None)


def _function(**overrides: Any) -> QueueFunction:
    values: dict[str, Any] = {
        "name": "f",
        "queue_name": "q",
        "connection": "",
        "arg_name": "msg",
        "wants_context": True,
        "is_async": False,
        "user_function": lambda msg, context: None,
        "directory": "/app",
    }
    return QueueFunction(**{**values, **overrides})


def test_arguments_carry_the_message_and_a_context() -> None:
    arguments = build_arguments(_function(), _message(dequeue_count=3), "base64", "inv-1")
    message, context = arguments["msg"], arguments["context"]
    assert (message.id, message.get_body(), message.dequeue_count) == ("m1", b"hi", 3)
    assert message.pop_receipt == "receipt-1"
    assert (context.invocation_id, context.function_name, context.function_directory) == (
        "inv-1",
        "f",
        "/app",
    )
    assert context.thread_local_storage.invocation_id == "inv-1"
    assert "context" not in build_arguments(_function(wants_context=False), _message(), "none", "i")


# app loading


def test_load_app_finds_queue_triggers_and_skips_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, "function_app", None)
    loaded = load_app(HOST_APPS / "basic", AppSettings({"BASIC_QUEUE": "Requests-Q"}))
    [function] = loaded.queue_functions
    assert (function.name, function.queue_name, function.connection) == (
        "record",
        "requests-q",
        "MyStorage",
    )
    assert (function.arg_name, function.wants_context, function.is_async) == ("msg", True, False)
    assert [s.name for s in loaded.skipped] == ["tick"]


def test_load_app_honours_disabled_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, "function_app", None)
    settings = AppSettings({"BASIC_QUEUE": "q1", "AzureWebJobs.record.Disabled": "true"})
    loaded = load_app(HOST_APPS / "basic", settings)
    assert loaded.queue_functions == ()
    assert {s.name for s in loaded.skipped} == {"record", "tick"}


def test_load_app_reports_an_import_error_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, "function_app", None)
    (tmp_path / "function_app.py").write_text("raise RuntimeError('broken app')\n")
    with pytest.raises(HostStartupError, match="RuntimeError: broken app"):
        load_app(tmp_path, AppSettings({}))


# leases and functionTimeout, with a fake clock and a fake queue


@dataclass
class _Receipt:
    pop_receipt: str


@dataclass
class _FakeQueue:
    calls: list[tuple[str, str, int]] = field(default_factory=list)
    gone: bool = False

    def update_message(
        self, message_id: str, *, pop_receipt: str, visibility_timeout: int
    ) -> _Receipt:
        if self.gone:
            raise ResourceNotFoundError("MessageNotFound")
        self.calls.append((message_id, pop_receipt, visibility_timeout))
        return _Receipt(f"receipt-{len(self.calls) + 1}")


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lease_is_renewed_at_half_time_with_the_newest_pop_receipt() -> None:
    clock, queue = _Clock(), _FakeQueue()
    keeper = LeaseKeeper(10, None, "-1", clock)
    delivery = keeper.new_delivery(_function(), queue, _message(), "inv")  # type: ignore[arg-type]
    clock.now += 4.9
    keeper.check(delivery)
    assert queue.calls == []
    clock.now += 0.2
    keeper.check(delivery)
    clock.now += 5.0
    keeper.check(delivery)
    assert queue.calls == [("m1", "receipt-1", 10), ("m1", "receipt-2", 10)]
    assert delivery.pop_receipt == "receipt-3"


def test_a_lost_message_is_not_renewed_again() -> None:
    clock, queue = _Clock(), _FakeQueue(gone=True)
    keeper = LeaseKeeper(10, None, "-1", clock)
    delivery = keeper.new_delivery(_function(), queue, _message(), "inv")  # type: ignore[arg-type]
    clock.now += 6
    keeper.check(delivery)
    assert delivery.lease_lost


def test_function_timeout_abandons_cancels_and_stops_renewing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, queue = _Clock(), _FakeQueue()
    keeper = LeaseKeeper(10, 3.0, "00:00:03", clock)
    delivery = keeper.new_delivery(_function(), queue, _message(), "inv-9")  # type: ignore[arg-type]
    cancelled: list[bool] = []
    abandoned: list[object] = []
    delivery.cancel = lambda: cancelled.append(True)
    delivery.on_abandoned = abandoned.append
    clock.now += 3.0
    with caplog.at_level("INFO", logger="functions_host"):
        keeper.check(delivery)
    assert delivery.state is DeliveryState.ABANDONED
    assert cancelled == [True] and abandoned == [delivery]
    assert (
        "Timeout value of 00:00:03 exceeded by function 'Functions.f' (Id: 'inv-9')" in caplog.text
    )
    assert "Executed 'Functions.f' (Failed, Id=inv-9, Duration=3000ms)" in caplog.text
    assert not delivery.begin_settling()  # its late result no longer counts
    clock.now += 10
    keeper.check(delivery)
    assert queue.calls == []
