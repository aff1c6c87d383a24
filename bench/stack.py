"""The product as the benchmarks run it: Azurite, the emulator and the host stand-in, all real.

Everything is started on free ports with its own queue and container, so a benchmark neither
disturbs nor is disturbed by the Azurite other engineers' tests use (a connection string can still
be passed in, as the smoke tests do). Each process is stopped by its pid on the way out.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueServiceClient

from bench._common import proc_status_kib
from devtools import azurite
from devtools.services import Service, distinct_free_ports
from devtools.services import wait_until as _wait_until
from devtools.stack import (
    FAST_QUEUE_POLLING,
    emulator_url,
    host_settings,
    start_emulator,
    start_host,
)
from shared.client.producer import ImageRequestClient

__all__ = ["BenchStack", "StackOptions", "add_stack_options", "bench_stack"]

log = logging.getLogger(__name__)

DEPLOYMENT = "gpt-image-bench"
API_KEY = "bench-key"  # the emulator's, local only
HOST_READY_LINE = "Host started"

# The app's own waits are real seconds while the emulator's clock is scaled: shrink them alike, and
# poll the queue at most 200 ms apart (host.json says 2 s) so an idle poll does not dominate.
BASE_APP_SETTINGS = {
    "IMAGE_BACKOFF_BASE_S": "0.05",
    "IMAGE_BACKOFF_MAX_S": "0.5",
    "IMAGE_INLINE_WAIT_MAX_S": "10",
    "IMAGE_CONNECT_TIMEOUT_S": "5",
    "IMAGE_READ_TIMEOUT_S": "60",
    "IMAGE_LOCK_LEASE_S": "30",
    **FAST_QUEUE_POLLING,
}


@dataclass(frozen=True, slots=True)
class StackOptions:
    """What a benchmark varies; the rest is fixed above so runs compare."""

    time_scale: float
    payload_scale: float
    emulator_rpm: int = 1_000_000
    app_rpm: int = 100_000
    rate_window_s: float = 60.0
    # Emulated seconds; the benchmarks that do not study the gateway keep it out of the way.
    gateway_timeout_s: float = 60.0
    thread_count: int | None = None  # PYTHON_THREADPOOL_THREAD_COUNT; None = the worker default
    connection_string: str | None = None  # None: start a private in-memory Azurite
    extra_settings: Mapping[str, str] = field(default_factory=dict)
    hosts: int = 1  # instances of the app on one queue, container and pace blob
    extra_emulator_args: tuple[str, ...] = ()  # e.g. more `--deployment` entries, a rate model


@dataclass
class BenchStack:
    connection_string: str
    emulator_url: str
    host: Service
    emulator: Service
    client: ImageRequestClient
    container: ContainerClient
    log_dir: Path
    settings: dict[str, str]
    azurite: Service | None = None  # None when a connection string was given
    more_hosts: tuple[Service, ...] = ()  # StackOptions.hosts beyond the first

    def emulator_requests(self) -> list[dict[str, Any]]:
        """The emulator's request log: every call it answered, with status and outcome."""
        reply = requests.get(self.emulator_url + "/_emulator/requests", timeout=30)
        reply.raise_for_status()
        return list(reply.json()["requests"])

    def host_memory_kib(self, field_name: str = "VmHWM") -> int:
        return proc_status_kib(self.host.pid, field_name)

    def manifest_names(self) -> set[str]:
        """Request ids whose manifest.json or error.json exists, by one listing of the container."""
        return {
            blob.name.split("/", 1)[0]
            for blob in self.container.list_blobs()
            if blob.name.endswith(("/manifest.json", "/error.json"))
        }

    def wait_finished(self, ids: set[str], timeout: float, interval: float = 0.25) -> set[str]:
        """Wait until every id has a terminal record; returns them. The host log tail on timeout."""
        done: set[str] = set()

        def all_done() -> bool:
            if not self.host.alive():
                raise RuntimeError(f"the host exited early:\n{self.host.log_tail(30)}")
            done.update(self.manifest_names() & ids)
            return done >= ids

        try:
            _wait_until(all_done, timeout, interval=interval, what=f"{len(ids)} requests")
        except TimeoutError as exc:
            raise TimeoutError(
                f"{exc} ({len(done)} finished)\n--- host log ---\n{self.host.log_tail(30)}"
            ) from None
        return done

    def read_record(self, request_id: str) -> dict[str, Any]:
        record = self.client.status(request_id)
        if record is None:
            raise KeyError(request_id)
        return record.model_dump(mode="json")

    def read_records(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {request_id: self.read_record(request_id) for request_id in ids}

    def submit_and_wait(
        self, request: Mapping[str, Any], count: int, timeout: float, label: str = ""
    ) -> dict[str, float]:
        """Submit `count` copies of `request` at once, wait for all; id -> epoch just before its submit.

        Every benchmark measures from the moment the producer hands a request over, so the time is
        taken right before each `submit`, not once for the batch. `label` prefixes the progress line.
        """
        submitted: dict[str, float] = {}
        for _ in range(count):
            at = time.time()
            submitted[self.client.submit(request)] = at
        print(f"  {label}submitted {count} requests; waiting", file=sys.stderr)
        self.wait_finished(set(submitted), timeout)
        return submitted


def add_stack_options(parser: argparse.ArgumentParser, timeout_s: float) -> None:
    """The options every benchmark on the stack ends with: whose Azurite, and how long to wait."""
    parser.add_argument(
        "--connection-string", default=None, help="an Azurite to use (default: start one)"
    )
    parser.add_argument("--timeout-s", type=float, default=timeout_s)


def _emulator_args(options: StackOptions) -> tuple[str, ...]:
    return (
        "--time-scale", str(options.time_scale),
        "--payload-scale", str(options.payload_scale),
        "--rpm", str(options.emulator_rpm),
        "--gateway-timeout-s", str(options.gateway_timeout_s),
        "--fault-rate", "0",
        "--seed", "1",
        *options.extra_emulator_args,
    )  # fmt: skip


def _app_settings(
    connection_string: str, emulator_url: str, options: StackOptions
) -> dict[str, str]:
    name = f"bench-{uuid.uuid4().hex[:10]}"
    settings = {
        # Its own quota blob too: the default container is shared by everyone using this Azurite.
        **host_settings(
            storage=connection_string,
            endpoint=emulator_url,
            api_key=API_KEY,
            deployment=DEPLOYMENT,
            queue=name,
            container=name,
        ),
        "AZURE_OPENAI_RPM": str(options.app_rpm),
        "AZURE_OPENAI_RPM_WINDOW_S": str(options.rate_window_s),
        **BASE_APP_SETTINGS,
        # "{emulator_url}" in a value is the emulator's URL, known only once it has a port.
        **{k: v.replace("{emulator_url}", emulator_url) for k, v in options.extra_settings.items()},
    }
    if options.thread_count is not None:
        settings["PYTHON_THREADPOOL_THREAD_COUNT"] = str(options.thread_count)
    return settings


@contextmanager
def bench_stack(options: StackOptions, log_dir: Path | None = None) -> Iterator[BenchStack]:
    """Start what the options ask for, wait until the host has started its listeners, yield."""
    logs = log_dir or Path(tempfile.mkdtemp(prefix="bench-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as cleanup:
        connection_string = options.connection_string
        storage: Service | None = None
        blob, queue_port, table, port = distinct_free_ports(4)
        if connection_string is None:
            storage = azurite.start_azurite(
                blob_port=blob,
                queue_port=queue_port,
                table_port=table,
                log_path=logs / "azurite.log",
            )
            cleanup.callback(storage.stop)
            connection_string = azurite.connection_string(blob, queue_port, table)
        url = emulator_url(port)
        emulator = start_emulator(
            port,
            api_key=API_KEY,
            deployment=DEPLOYMENT,
            log_path=logs / "emulator.log",
            args=_emulator_args(options),
        )
        cleanup.callback(emulator.stop)
        settings = _app_settings(connection_string, url, options)
        queue = QueueServiceClient.from_connection_string(connection_string).get_queue_client(
            settings["IMAGE_REQUESTS_QUEUE"]
        )
        queue.create_queue()
        cleanup.callback(_delete_quietly, queue.delete_queue)
        container = BlobServiceClient.from_connection_string(
            connection_string
        ).get_container_client(settings["IMAGES_CONTAINER"])
        container.create_container()
        cleanup.callback(_delete_quietly, container.delete_container)
        quota = BlobServiceClient.from_connection_string(connection_string).get_container_client(
            settings["IMAGE_QUOTA_CONTAINER"]
        )
        cleanup.callback(_delete_quietly, quota.delete_container)
        hosts = []
        for index in range(options.hosts):
            host_log = logs / ("host.log" if index == 0 else f"host-{index}.log")
            started = start_host(settings, host_log, ready=_ready(host_log))
            cleanup.callback(started.stop)
            hosts.append(started)
        host = hosts[0]
        client = ImageRequestClient(
            queue, container, input_containers=(settings["IMAGE_INPUT_CONTAINERS"],)
        )
        yield BenchStack(
            connection_string, url, host, emulator, client, container, logs, settings, storage,
            tuple(hosts[1:]),
        )  # fmt: skip


def _ready(host_log: Path) -> Callable[[], bool]:
    return lambda: host_log.exists() and HOST_READY_LINE in host_log.read_text("utf-8", "replace")


def _delete_quietly(delete: Any) -> None:
    """Clean-up of a shared Azurite: a failure here must not hide the benchmark's own error."""
    try:
        delete()
    except ResourceNotFoundError:
        pass
    except Exception as exc:  # best effort on the way out
        log.warning("clean-up failed: %s", exc)
