"""The product under test: function_app.py in the host stand-in, against Azurite and the emulator."""

from __future__ import annotations

import base64
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient, QueueServiceClient

from devtools.services import REPO_ROOT, Service, python_module, start, wait_until
from shared.client.producer import ImageRequestClient

HOST_STARTED = "Host started"  # the host stand-in's log line once its listeners run

# Waits the app makes are real seconds; the emulator's clock runs x0.01, so shrink them alike.
FAST_APP_SETTINGS = {
    "IMAGE_BACKOFF_BASE_S": "0.05",
    "IMAGE_BACKOFF_MAX_S": "0.5",
    "IMAGE_INLINE_WAIT_MAX_S": "5",
    "IMAGE_CONNECT_TIMEOUT_S": "2",
    "IMAGE_READ_TIMEOUT_S": "6",
    "IMAGE_LOCK_LEASE_S": "15",
    "AZURE_OPENAI_RPM": "10",
    "AZURE_OPENAI_RPM_WINDOW_S": "0.6",
    # Host.json overrides as app settings, the way Azure reads them: fail fast, poll fast.
    "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:00",
    "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.200",
}


@dataclass
class Product:
    settings: dict[str, str]
    host: Service
    client: ImageRequestClient
    queue: QueueClient
    poison: QueueClient
    container: ContainerClient
    blobs: BlobServiceClient

    def wait_terminal(self, request_id: str, timeout: float = 60.0) -> dict[str, Any]:
        try:
            return self.client.wait(request_id, timeout=timeout, poll_s=0.1).model_dump(mode="json")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- host log ---\n{self.host.log_tail(60)}") from None

    def send_raw(self, text: str, *, as_base64: bool = False) -> str:
        body = base64.b64encode(text.encode()).decode() if as_base64 else text
        return self.queue.send_message(body).id

    def read_json(self, request_id: str, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.container.download_blob(f"{request_id}/{name}").readall())
        except ResourceNotFoundError:
            return None

    def wait_record(self, request_id: str, name: str, timeout: float = 60.0) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def present() -> bool:
            record = self.read_json(request_id, name)
            if record is not None:
                found.update(record)
            return record is not None

        try:
            wait_until(present, timeout, interval=0.1, what=f"{request_id}/{name}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- host log ---\n{self.host.log_tail(60)}") from None
        return found

    def wait_until_queue_empty(self, timeout: float = 30.0) -> None:
        """Every message handled, the invisible ones (continuations, redeliveries) included."""

        def empty() -> bool:
            return self.queue.get_queue_properties().approximate_message_count == 0

        wait_until(empty, timeout, interval=0.1, what=f"queue {self.queue.queue_name} to drain")

    def blob_names(self, request_id: str) -> list[str]:
        return sorted(b.name for b in self.container.list_blobs(name_starts_with=f"{request_id}/"))

    def upload_input(self, name: str, data: bytes) -> str:
        """Put `data` in the allowed input container; returns the `container/name` a request names."""
        inputs = self.blobs.get_container_client(self.settings["IMAGE_INPUT_CONTAINERS"])
        with contextlib.suppress(ResourceExistsError):
            inputs.create_container()
        inputs.upload_blob(name, data)
        return f"{inputs.container_name}/{name}"

    def remove(self) -> None:
        """Stop the host and delete the containers it wrote, for module fixtures that outlive a test."""
        self.host.stop()
        for name in (
            self.container.container_name,
            self.settings["IMAGE_INPUT_CONTAINERS"],
            self.settings["IMAGE_QUOTA_CONTAINER"],
        ):
            with contextlib.suppress(ResourceNotFoundError):
                self.blobs.delete_container(name)


def start_product(
    *,
    connection_string: str,
    emulator_url: str,
    api_key: str,
    deployment: str,
    queue_name: str,
    container_name: str,
    log_path: Path,
    overrides: dict[str, str] | None = None,
) -> Product:
    settings = {
        "AzureWebJobsStorage": connection_string,
        "AZURE_OPENAI_ENDPOINT": emulator_url,
        "AZURE_OPENAI_DEPLOYMENT": deployment,
        "AZURE_OPENAI_API_KEY": api_key,
        "IMAGE_REQUESTS_QUEUE": queue_name,
        "IMAGES_CONTAINER": container_name,
        "IMAGE_INPUT_CONTAINERS": f"{container_name}-in",
        "IMAGE_QUOTA_CONTAINER": f"{container_name}-quota",
        **FAST_APP_SETTINGS,
        **(overrides or {}),
    }
    queues = QueueServiceClient.from_connection_string(connection_string)
    queue = queues.get_queue_client(queue_name)
    with contextlib.suppress(ResourceExistsError):
        queue.create_queue()
    poison = queues.get_queue_client(f"{queue_name}-poison")
    blobs = BlobServiceClient.from_connection_string(connection_string)
    # Ready once its listeners poll: a test that times a window or races hosts starts from there.
    host = start(
        "host",
        python_module("emulators.functions_host", "--app-dir", str(REPO_ROOT), "--lease-s", "20"),
        ready=lambda: log_path.exists() and HOST_STARTED in log_path.read_text(errors="replace"),
        env=settings,
        log_path=log_path,
    )
    client = ImageRequestClient(
        queue,
        blobs.get_container_client(container_name),
        input_containers=(f"{container_name}-in",),
    )
    return Product(
        settings, host, client, queue, poison, blobs.get_container_client(container_name), blobs
    )
