"""Storage service clients from `StorageConfig`: a connection string, or Entra ID for service URIs.

Shared by the worker, the operators' tools and the producers' client, so every part of the app reaches
Storage the same way.
"""

from __future__ import annotations

from typing import Any

from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from shared.settings import StorageConfig


def blob_service(config: StorageConfig, **client_kwargs: Any) -> BlobServiceClient:
    """`client_kwargs` go to the SDK client as they are (retry_total, connection_timeout, ...)."""
    if config.connection_string is not None:
        return BlobServiceClient.from_connection_string(config.connection_string, **client_kwargs)
    return BlobServiceClient(config.blob_service_uri or "", credential=_identity(), **client_kwargs)


def queue_service(config: StorageConfig, **client_kwargs: Any) -> QueueServiceClient:
    """`client_kwargs` go to the SDK client as they are (retry_total, connection_timeout, ...)."""
    if config.connection_string is not None:
        return QueueServiceClient.from_connection_string(config.connection_string, **client_kwargs)
    return QueueServiceClient(
        config.queue_service_uri or "", credential=_identity(), **client_kwargs
    )


def _identity():  # type: ignore[no-untyped-def]
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()
