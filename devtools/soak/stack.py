"""The soak's own services: an on-disk Azurite on free ports, the blob tap, the emulator, two hosts.

Nothing here touches the Azurite on 10000-10002 that other test runs share: stopping ours for the
outage disturbs no one. Every process is ours, stopped by its pid.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient, QueueServiceClient

from devtools import azurite
from devtools.services import Service, distinct_free_ports
from devtools.soak.blobtap import BlobTap
from devtools.soak.budget import Budget
from devtools.soak.config import SoakConfig
from devtools.soak.workload import BLOCKED_PHRASE
from devtools.stack import (
    FAST_QUEUE_POLLING,
    emulator_url,
    host_settings,
    start_emulator,
    start_host,
)

log = logging.getLogger("soak.stack")

QUEUE = "soak-requests"
CONTAINER = "soak-images"
DEPLOYMENT = "gpt-image-2-1"
EMULATOR_TIMEOUT_S = 5.0


def app_settings(config: SoakConfig) -> dict[str, str]:
    """The hosts' tuning beyond `host_settings`: scaled like tests/product_stack.py's."""
    return {
        "IMAGE_MAX_ATTEMPTS": str(config.max_attempts),
        "IMAGE_BACKOFF_BASE_S": "0.05",
        "IMAGE_BACKOFF_MAX_S": "0.5",
        "IMAGE_INLINE_WAIT_MAX_S": "5",
        "IMAGE_CONNECT_TIMEOUT_S": "2",
        "IMAGE_READ_TIMEOUT_S": "6",
        "IMAGE_LOCK_LEASE_S": str(config.lock_lease_s),
        "AZURE_OPENAI_RPM": "10",
        "AZURE_OPENAI_RPM_WINDOW_S": str(60 * config.time_scale),
        "PYTHON_THREADPOOL_THREAD_COUNT": str(config.threads),
        **FAST_QUEUE_POLLING,
    }


@dataclass
class HostSlot:
    """One scaled-out instance; each incarnation (after a kill) logs to its own file."""

    name: str
    incarnations: list[Service] = field(default_factory=list)

    @property
    def current(self) -> Service:
        return self.incarnations[-1]

    @property
    def logs(self) -> list[Path]:
        return [s.log_path for s in self.incarnations if s.log_path is not None]


@dataclass
class SoakStack:
    config: SoakConfig
    workdir: Path
    azurite: Service
    tap: BlobTap
    emulator: Service
    emulator_url: str
    ports: tuple[int, int, int]  # Azurite's blob, queue, table
    hosts: list[HostSlot]
    api_key: str = field(repr=False)
    budget: Budget = field(repr=False, default_factory=lambda: Budget(840.0, 60.0))
    _host_env: dict[str, str] = field(repr=False, default_factory=dict)

    # -- clients (straight to Azurite, not through the tap: only the hosts' writes are logged) --

    @property
    def connection_string(self) -> str:
        return azurite.connection_string(*self.ports)

    @property
    def host_storage_connection_string(self) -> str:
        """What the hosts use: blobs through the tap, so a write made with it is logged."""
        return self._host_env["AzureWebJobsStorage"]

    def queue(self, name: str = QUEUE, **kwargs: object) -> QueueClient:
        service = QueueServiceClient.from_connection_string(self.connection_string, **kwargs)
        return service.get_queue_client(name)

    def container(self, **kwargs: object) -> ContainerClient:
        service = BlobServiceClient.from_connection_string(self.connection_string, **kwargs)
        return service.get_container_client(CONTAINER)

    # -- emulator -------------------------------------------------------------------------------

    def emulator_requests(self) -> list[dict[str, object]]:
        r = requests.get(self.emulator_url + "/_emulator/requests", timeout=EMULATOR_TIMEOUT_S)
        r.raise_for_status()
        return list(r.json()["requests"])

    def emulator_script(self, entries: list[dict[str, object]]) -> None:
        r = requests.post(
            self.emulator_url + "/_emulator/script", json=entries, timeout=EMULATOR_TIMEOUT_S
        )
        r.raise_for_status()

    def emulator_pending_script(self) -> list[dict[str, object]]:
        r = requests.get(self.emulator_url + "/_emulator/script", timeout=EMULATOR_TIMEOUT_S)
        r.raise_for_status()
        return list(r.json()["pending"])

    # -- hosts ----------------------------------------------------------------------------------

    def start_host(self, slot: HostSlot) -> Service:
        log_path = self.workdir / f"host-{slot.name}-{len(slot.incarnations) + 1}.log"
        service = start_host(
            self._host_env,
            log_path,
            "--lease-s", str(self.config.message_lease_s),
            name=f"host-{slot.name}",
        )  # fmt: skip
        slot.incarnations.append(service)
        return service

    def kill_host(self, slot: HostSlot) -> None:
        slot.current.kill()  # SIGKILL: no grace, no settlement, sockets cut by the kernel

    # -- storage outage -------------------------------------------------------------------------

    def stop_storage(self) -> None:
        """Azurite stops (gracefully, so its data is on disk) and the tap refuses connections."""
        self.tap.pause()
        self.azurite.stop()

    def start_storage(self) -> None:
        # From the reserve if need be: the evidence is read from this Azurite.
        timeout = self.budget.final(self.config.service_start_s)
        self.azurite = _start_azurite(self.workdir, self.ports, len(self._azurite_logs()), timeout)
        self.tap.resume()

    def _azurite_logs(self) -> list[Path]:
        return sorted(self.workdir.glob("azurite-*.log"))

    def close(self) -> None:
        # Each stop waits at most twice its timeout (SIGTERM, then SIGKILL): small, from the reserve.
        for slot in self.hosts:
            for service in slot.incarnations:
                with contextlib.suppress(Exception):
                    service.stop(timeout=min(5.0, self.budget.final(5.0)))
        with contextlib.suppress(Exception):
            self.emulator.stop(timeout=min(5.0, self.budget.final(5.0)))
        self.tap.stop()
        with contextlib.suppress(Exception):
            self.azurite.stop(timeout=min(10.0, self.budget.final(10.0)))


def _start_azurite(
    workdir: Path, ports: tuple[int, int, int], generation: int, timeout: float
) -> Service:
    blob, queue, table = ports
    return azurite.start_azurite(
        timeout=timeout,
        blob_port=blob,
        queue_port=queue,
        table_port=table,
        location=workdir / "azurite-data",
        log_path=workdir / f"azurite-{generation + 1}.log",
    )


def start_stack(config: SoakConfig, workdir: Path, budget: Budget) -> SoakStack:
    """Azurite, tap and emulator; the hosts are added by `start_hosts` once work is queued."""
    workdir.mkdir(parents=True, exist_ok=True)
    blob, queue, table, tap_port, emulator_port = distinct_free_ports(5)
    ports = (blob, queue, table)
    services: list[Service] = []
    tap: BlobTap | None = None
    try:
        store = _start_azurite(workdir, ports, 0, budget.allow(config.service_start_s))
        services.append(store)
        tap = BlobTap(tap_port, upstream_port=ports[0]).start()
        url = emulator_url(emulator_port)
        api_key = f"soak-{uuid.uuid4().hex}"
        emulator = start_emulator(
            emulator_port,
            api_key=api_key,
            deployment=DEPLOYMENT,
            log_path=workdir / "emulator.log",
            timeout=budget.allow(config.service_start_s),
            args=(
                "--time-scale", str(config.time_scale),
                "--fault-rate", str(config.fault_rate),
                "--payload-scale", str(config.payload_scale),
                "--blocked-phrase", BLOCKED_PHRASE,
                "--rpm", "10",
                "--seed", str(config.seed),
            ),
        )  # fmt: skip
        services.append(emulator)
    except BaseException:
        for service in services:
            service.stop()
        if tap is not None:
            tap.stop()
        raise
    stack = SoakStack(
        config, workdir, store, tap, emulator, url, ports,
        [HostSlot("a"), HostSlot("b")], api_key, budget,
    )  # fmt: skip
    stack._host_env = {
        **host_settings(
            # Blobs through the tap, queues straight to Azurite.
            storage=azurite.connection_string(tap.port, ports[1], ports[2]),
            endpoint=url,
            api_key=api_key,
            deployment=DEPLOYMENT,
            queue=QUEUE,
            container=CONTAINER,
            quota_container="soak-quota",
        ),
        **app_settings(config),
    }
    return stack


def start_hosts(stack: SoakStack) -> None:
    for slot in stack.hosts:
        stack.start_host(slot)
