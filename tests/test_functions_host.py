"""The Functions host stand-in against real Azurite, each scenario with its own small app.

Every host runs as a child process (`python -m emulators.functions_host`), as `make demo` runs it.
Leases, polling intervals and visibility timeouts are shortened so the file runs in well under a minute.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient

from devtools.services import REPO_ROOT, Service, python_module, start, wait_until

HOST_APPS = Path(__file__).parent / "host_apps"
MODULE = "emulators.functions_host"


class Harness:
    """Builds per-test app folders, starts hosts, and talks to the test's queues."""

    def __init__(self, tmp_path: Path, connection_string: str) -> None:
        self.tmp_path = tmp_path
        self.connection_string = connection_string
        self.probe = tmp_path / "probe"
        self.probe.mkdir()
        self.services: list[Service] = []

    def app(
        self,
        name: str,
        values: dict[str, str],
        queues: dict[str, object] | None = None,
        function_timeout: str | None = None,
    ) -> Path:
        app_dir = self.tmp_path / f"app-{name}"
        shutil.copytree(HOST_APPS / name, app_dir)
        host: dict[str, object] = {"version": "2.0", "extensions": {"queues": queues or {}}}
        if function_timeout is not None:
            host["functionTimeout"] = function_timeout
        (app_dir / "host.json").write_text(json.dumps(host))
        settings = {"IsEncrypted": False, "Values": {"PROBE_DIR": str(self.probe), **values}}
        (app_dir / "local.settings.json").write_text(json.dumps(settings))
        return app_dir

    def start_host(self, app_dir: Path, *args: str, env: dict[str, str] | None = None) -> Service:
        log = self.tmp_path / f"host-{len(self.services)}.log"
        service = start(
            "functions_host",
            python_module(MODULE, "--app-dir", str(app_dir), *args),
            ready=lambda: log.exists() and "Host started" in log.read_text(errors="replace"),
            timeout=30,
            env=env,
            log_path=log,
        )
        self.services.append(service)
        return service

    def queue(self, name: str, create: bool = True) -> QueueClient:
        client = QueueClient.from_connection_string(self.connection_string, name)
        if create:
            client.create_queue()
        return client

    def files(self, prefix: str) -> list[str]:
        return sorted(
            p.name
            for p in self.probe.iterdir()
            if p.name.startswith(prefix) and not p.name.endswith(".tmp")
        )

    def records(self) -> list[dict[str, object]]:
        found = [p for p in self.probe.glob("*.json")]
        return [json.loads(p.read_text()) for p in found]

    def release(self) -> None:
        (self.probe / "release").write_text("")


@pytest.fixture
def harness(tmp_path: Path, azurite_connection_string: str) -> Iterator[Harness]:
    h = Harness(tmp_path, azurite_connection_string)
    yield h
    for service in h.services:
        service.kill()


def log_of(service: Service) -> str:
    assert service.log_path is not None
    return service.log_path.read_text(errors="replace")


def count(queue: QueueClient) -> int:
    return queue.get_queue_properties().approximate_message_count or 0


def peek_all(queue: QueueClient) -> list[str]:
    return [m.content for m in queue.peek_messages(max_messages=32)]


def _exit_of_start_up(
    app_dir: Path, unset: Callable[[str], bool]
) -> subprocess.CompletedProcess[str]:
    """Run a host expected to stop at start-up, without the environment variables `unset` picks."""
    return subprocess.run(
        python_module(MODULE, "--app-dir", str(app_dir)),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not unset(k)},
    )


def test_success_deletes_and_the_function_gets_the_message_and_context(
    harness: Harness, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("basic")
    queue = harness.queue(name)
    app_dir = harness.app(
        "basic",
        {"BASIC_QUEUE": name, "MyStorage": harness.connection_string, "FROM_LOCAL_SETTINGS": "yes"},
        {"messageEncoding": "none", "maxPollingInterval": "00:00:00.500"},
    )
    host = harness.start_host(app_dir)
    sent = queue.send_message('{"hello": "wörld"}')

    wait_until(lambda: "Succeeded" in log_of(host), 15, what="a successful invocation")
    wait_until(lambda: count(queue) == 0, 10, what="the message to be deleted")

    [record] = harness.records()
    assert record["id"] == sent.id
    assert bytes.fromhex(str(record["body_hex"])).decode() == '{"hello": "wörld"}'
    assert record["dequeue_count"] == 1
    assert record["pop_receipt"] and record["insertion_time"] and record["expiration_time"]
    assert record["time_next_visible"]
    assert record["function_name"] == "record"
    assert record["function_directory"] == str(app_dir)
    assert record["setting_from_file"] == "yes"  # local.settings.json reaches the app's environment
    log = log_of(host)
    invocation_id = record["invocation_id"]
    assert (
        f"Executing 'Functions.record' (Reason='New queue message detected on '{name}'.', Id={invocation_id})"
        in log
    )
    assert re.search(
        rf"Executed 'Functions.record' \(Succeeded, Id={invocation_id}, Duration=\d+ms\)", log
    )
    assert f"record saw message {sent.id}" in log  # the app's own logging reaches the console
    assert "'Functions.tick' is not run locally" in log


def test_base64_encoding_decodes_and_an_invalid_body_fails_into_poison(
    harness: Harness, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("b64")
    queue = harness.queue(name)
    poison = harness.queue(name + "-poison", create=False)
    app_dir = harness.app(
        "basic",
        {"BASIC_QUEUE": name, "AzureWebJobsMyStorage": harness.connection_string},
        {"maxDequeueCount": 1, "maxPollingInterval": "00:00:00.500"},  # base64 is the default
    )
    host = harness.start_host(app_dir)
    payload = b"\x00\xffbinary \xe2\x9c\x93"
    good = queue.send_message(base64.b64encode(payload).decode())
    bad = queue.send_message("this is not base64!")

    wait_until(lambda: peek_all(poison) if _exists(poison) else False, 15, what="the poison copy")
    wait_until(lambda: count(queue) == 0, 10, what="both messages to leave the queue")

    records = harness.records()
    assert [r["id"] for r in records] == [good.id]  # the bad body never reached the function
    assert bytes.fromhex(str(records[0]["body_hex"])) == payload
    assert peek_all(poison) == ["this is not base64!"]
    log = log_of(host)
    assert "not a valid Base-64 string" in log
    assert f"Moving message {bad.id} to queue '{name}-poison'" in log


def _exists(queue: QueueClient) -> bool:
    try:
        queue.get_queue_properties()
    except Exception:
        return False
    return True


def test_failure_is_redelivered_after_visibility_timeout_then_poisoned_with_body_intact(
    harness: Harness, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("fail")
    queue = harness.queue(name)
    poison = harness.queue(name + "-poison", create=False)
    app_dir = harness.app(
        "basic",
        {"BASIC_QUEUE": name, "MyStorage": harness.connection_string},
        {
            "messageEncoding": "none",
            "maxDequeueCount": 3,
            "visibilityTimeout": "00:00:01",
            "maxPollingInterval": "00:00:00.200",
        },
    )
    host = harness.start_host(app_dir)
    body = 'fail {"prompt": "ünïcode ✓", "n": 2}'
    queue.send_message(body)

    wait_until(lambda: _exists(poison) and peek_all(poison) == [body], 20, what="the poison copy")
    wait_until(lambda: count(queue) == 0, 10, what="the original to be deleted")

    records = sorted(harness.records(), key=lambda r: int(str(r["dequeue_count"])))
    assert [r["dequeue_count"] for r in records] == [1, 2, 3]
    assert log_of(host).count("(Failed, Id=") == 3
    assert "ValueError: asked to fail" in log_of(host)
    # Redelivery waited for visibilityTimeout (1 s) each time; without it the host re-polls at once.
    times = [float(str(r["at"])) for r in records]
    assert all(later - earlier >= 0.5 for earlier, later in itertools.pairwise(times)), times


def test_message_already_past_max_dequeue_count_goes_to_poison_without_running(
    harness: Harness, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("over")
    queue = harness.queue(name)
    poison = harness.queue(name + "-poison", create=False)
    queue.send_message("already tried")
    for _ in range(2):  # two receives by someone else push dequeue_count to 2 > maxDequeueCount 1
        [message] = list(
            next(queue.receive_messages(messages_per_page=1, visibility_timeout=30).by_page())
        )
        queue.update_message(message.id, pop_receipt=message.pop_receipt, visibility_timeout=0)
    app_dir = harness.app(
        "basic",
        {"BASIC_QUEUE": name, "MyStorage": harness.connection_string},
        {"messageEncoding": "none", "maxDequeueCount": 1, "maxPollingInterval": "00:00:00.500"},
    )
    host = harness.start_host(app_dir)

    wait_until(lambda: _exists(poison) and peek_all(poison) == ["already tried"], 15, what="poison")
    wait_until(lambda: count(queue) == 0, 10, what="the original to be deleted")
    assert harness.records() == []
    assert "Executing" not in log_of(host)


def _limit_app(harness: Harness, name: str, queues: dict[str, object], threads: str) -> Path:
    return harness.app(
        "slow",
        {
            "SLOW_QUEUE": name,
            "AzureWebJobsStorage": harness.connection_string,
            "PYTHON_THREADPOOL_THREAD_COUNT": threads,
        },
        {"messageEncoding": "none", "maxPollingInterval": "00:00:00.200", **queues},
    )


def _running_ids(harness: Harness) -> list[str]:
    return [name.removeprefix("running-").rsplit("-", 1)[0] for name in harness.files("running-")]


def _wait_at_capacity(harness: Harness, host: Service, running: int) -> None:
    # A deadline, not a time claim: a busy machine may take a while to start the host's first batch.
    wait_until(lambda: len(harness.files("running-")) == running, 60, what=f"{running} running")
    # The host said it stopped fetching because it was full, not because the queue looked empty.
    wait_until(lambda: f"at capacity: {running} in flight" in log_of(host), 10, what="capacity")
    assert len(harness.files("running-")) == running


def _send_held(queue: QueueClient, messages: int) -> None:
    for _ in range(messages):
        queue.send_message(json.dumps({"hold": True}))


def _measure_max_running(
    harness: Harness,
    host: Service,
    queue: QueueClient,
    messages: int,
    steps: list[int],
    sent: bool = False,
) -> int:
    """Hold every message; at each step release enough running ones to let the next batch in."""
    if not sent:
        _send_held(queue, messages)
    for running, release in zip(steps, [*[steps[0] - 2] * (len(steps) - 1), 0], strict=True):
        _wait_at_capacity(harness, host, running)
        for message_id in _running_ids(harness)[:release]:
            (harness.probe / f"release-{message_id}").write_text("")
    harness.release()
    wait_until(lambda: len(harness.files("done-")) == messages, 30, what="every message done")
    wait_until(lambda: count(queue) == 0, 10, what="an empty queue")
    return int((harness.probe / "max_running").read_text())


def test_in_flight_limit_is_batch_size_plus_new_batch_threshold(
    harness: Harness, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("limit")
    queue = harness.queue(name)
    app_dir = _limit_app(harness, name, {"batchSize": 4, "newBatchThreshold": 2}, threads="16")
    # All 12 queued before the host starts: a poll racing the sends could get fewer than 4, and
    # then fetch again below the threshold, so "4 running" would never be seen.
    _send_held(queue, 12)
    host = harness.start_host(app_dir, "--verbose")
    # The host fetches 4, then another 4 once in-flight falls to 2: at most 4 + 2 run at once.
    assert _measure_max_running(harness, host, queue, messages=12, steps=[4, 6], sent=True) == 6


def test_in_flight_limit_is_the_thread_pool_for_def_functions(
    harness: Harness, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("pool")
    queue = harness.queue(name)
    app_dir = _limit_app(harness, name, {"batchSize": 16}, threads="16")
    # The environment wins over local.settings.json, as with Core Tools.
    host = harness.start_host(app_dir, "--verbose", env={"PYTHON_THREADPOOL_THREAD_COUNT": "2"})
    assert _measure_max_running(harness, host, queue, messages=5, steps=[2]) == 2


def test_async_functions_run_concurrently_up_to_the_batch_limit(
    harness: Harness, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("async")
    queue = harness.queue(name)
    app_dir = harness.app(
        "async_app",
        {
            "ASYNC_QUEUE": name,
            "AzureWebJobsStorage": harness.connection_string,
            "PYTHON_THREADPOOL_THREAD_COUNT": "1",
        },
        {
            "messageEncoding": "none",
            "batchSize": 2,
            "newBatchThreshold": 1,
            "maxPollingInterval": "00:00:00.200",
        },
    )
    host = harness.start_host(app_dir, "--verbose")
    ids = [queue.send_message(f"item {i}").id for i in range(5)]
    # Batches of 2, the next once one is left: 3 at once, although the pool has one thread.
    wait_until(lambda: "at capacity: 2 in flight" in log_of(host), 20, what="first batch")
    wait_until(lambda: len(harness.files("started-")) == 2, 10, what="two started")
    first = harness.files("started-")[0].removeprefix("started-")
    (harness.probe / f"release-{first}").write_text("")
    wait_until(lambda: "at capacity: 3 in flight" in log_of(host), 10, what="second batch")
    wait_until(lambda: len(harness.files("started-")) == 4, 10, what="four started")
    assert len(harness.files("done-")) == 1
    harness.release()
    wait_until(lambda: len(harness.files("done-")) == 5, 20, what="all done")
    wait_until(lambda: count(queue) == 0, 10, what="an empty queue")
    assert (harness.probe / "max_running").read_text() == "3"
    done = (harness.probe / f"done-{ids[0]}").read_text().split(" ", 1)
    assert done[1] == "item 0"
    assert f"Executed 'Functions.wait_async' (Succeeded, Id={done[0]}," in log_of(host)


def test_renewal_keeps_the_message_hidden_while_the_function_outlives_the_lease(
    harness: Harness, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("renew")
    queue = harness.queue(name)
    app_dir = _limit_app(harness, name, {}, threads="4")
    host = harness.start_host(app_dir, "--lease-s", "2", "--verbose")
    message = queue.send_message(json.dumps({"seconds": 5}))  # 2.5 leases

    wait_until(lambda: "Succeeded" in log_of(host), 20, what="the invocation to succeed")
    wait_until(lambda: count(queue) == 0, 10, what="the message to be deleted")
    # Had the lease lapsed, the host would have received the message again (dequeue count 2).
    assert harness.files("started-") == [f"started-{message.id}-1"]
    assert "Renewed the lease" in log_of(host)
    assert "Could not" not in log_of(host)


def test_host_killed_mid_invocation_the_message_reappears_and_a_new_host_completes_it(
    harness: Harness, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("kill")
    queue = harness.queue(name)
    app_dir = _limit_app(harness, name, {}, threads="4")
    env = {"FUNCTIONS_HOST_LEASE_S": "3"}
    first = harness.start_host(app_dir, env=env)
    message = queue.send_message(json.dumps({"hold": True}))
    wait_until(lambda: harness.files("started-") == [f"started-{message.id}-1"], 15, what="start")
    os.kill(first.pid, signal.SIGKILL)
    first.process.wait(10)
    harness.release()

    second = harness.start_host(app_dir, env=env)
    wait_until(lambda: harness.files("done-") == [f"done-{message.id}-2"], 20, what="redelivery")
    wait_until(lambda: count(queue) == 0, 10, what="the message to be deleted")
    assert "Succeeded" in log_of(second)


def test_function_timeout_abandons_the_invocation_and_the_message_reappears(
    harness: Harness, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("timeout")
    queue = harness.queue(name)
    app_dir = harness.app(
        "slow",
        {"SLOW_QUEUE": name, "AzureWebJobsStorage": harness.connection_string},
        {"messageEncoding": "none", "maxPollingInterval": "00:00:00.200"},
        function_timeout="00:00:01",
    )
    host = harness.start_host(app_dir, "--lease-s", "2")
    message = queue.send_message(json.dumps({"hold": True}))

    wait_until(
        lambda: f"started-{message.id}-2" in harness.files("started-"), 20, what="redelivery"
    )
    log = log_of(host)
    assert "Timeout value of 00:00:01 exceeded by function 'Functions.hold'" in log
    assert "(Failed, Id=" in log
    harness.release()
    wait_until(lambda: count(queue) == 0, 20, what="the message to be deleted at last")


def test_sigterm_lets_running_invocations_finish_within_grace_and_leaves_the_rest(
    harness: Harness, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("term")
    queue = harness.queue(name)
    app_dir = _limit_app(harness, name, {}, threads="4")
    host = harness.start_host(app_dir, "--grace-s", "1.5", "--lease-s", "2")
    quick = queue.send_message(json.dumps({"seconds": 0.5}))
    queue.send_message(json.dumps({"hold": True}))
    wait_until(lambda: len(harness.files("started-")) == 2, 15, what="both started")

    host.process.send_signal(signal.SIGTERM)
    assert host.process.wait(20) == 0
    assert harness.files("done-") == [f"done-{quick.id}-1"]
    assert count(queue) == 1  # the unfinished one is still there, invisible until its lease lapses
    assert "did not finish within 1.5s" in log_of(host)
    # Not deleted: once its lease lapses it is back for the next host.
    wait_until(lambda: peek_all(queue) == ['{"hold": true}'], 10, what="the message to reappear")


def test_drain_exits_zero_once_every_queue_is_empty(
    harness: Harness, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("drain")
    queue = harness.queue(name)
    app_dir = harness.app(
        "basic",
        {"BASIC_QUEUE": name, "MyStorage": harness.connection_string},
        {"messageEncoding": "none", "maxDequeueCount": 1, "maxPollingInterval": "00:00:00.200"},
    )
    for body in ("one", "two", "fail three"):
        queue.send_message(body)
    queue.send_message("later", visibility_timeout=2)  # invisible work still counts as pending

    host = harness.start_host(app_dir, "--drain")
    assert host.process.wait(30) == 0
    assert count(queue) == 0
    assert len(harness.records()) == 4
    assert peek_all(harness.queue(name + "-poison", create=False)) == ["fail three"]
    assert "Drained" in log_of(host)


def test_missing_setting_is_one_clear_line_at_start_up(harness: Harness) -> None:
    app_dir = harness.app("basic", {"MyStorage": "UseDevelopmentStorage=true"})
    result = _exit_of_start_up(app_dir, lambda k: k == "BASIC_QUEUE")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "BASIC_QUEUE" in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_connection_setting_names_it(harness: Harness) -> None:
    app_dir = harness.app("basic", {"BASIC_QUEUE": "whatever-queue"})
    result = _exit_of_start_up(app_dir, lambda k: "MyStorage" in k)
    assert result.returncode == 2
    assert "Missing app setting 'MyStorage'" in result.stderr
    assert "Traceback" not in result.stderr
