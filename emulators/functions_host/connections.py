"""Storage connections named by a binding's `connection`, resolved as the Functions host does.

`connection` names a setting; empty means `AzureWebJobsStorage`; `AzureWebJobs<name>` is tried
before `<name>`. The value is a connection string (`UseDevelopmentStorage=true` is Azurite's
well-known account on 127.0.0.1), or the setting is identity-based (`<name>__queueServiceUri`,
`<name>__serviceUri` or `<name>__accountName`; `<name>__blobServiceUri` for blob triggers) and
uses DefaultAzureCredential.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from emulators.functions_host.app_settings import AppSettings
from emulators.functions_host.errors import MissingSettingError

DEFAULT_CONNECTION = "AzureWebJobsStorage"

# Azurite's development account: public and documented by Microsoft, not a secret.
_DEV_ACCOUNT = "devstoreaccount1"
_DEV_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
DEVELOPMENT_STORAGE = (
    f"DefaultEndpointsProtocol=http;AccountName={_DEV_ACCOUNT};AccountKey={_DEV_KEY};"
    f"QueueEndpoint=http://127.0.0.1:10001/{_DEV_ACCOUNT};"
    f"BlobEndpoint=http://127.0.0.1:10000/{_DEV_ACCOUNT};"
)


@dataclass(frozen=True, slots=True)
class QueueConnection:
    """Either a connection string or service URIs used with DefaultAzureCredential."""

    setting: str
    connection_string: str | None = field(default=None, repr=False)
    queue_service_uri: str | None = None
    blob_service_uri: str | None = None

    def service_client(self) -> QueueServiceClient:
        if self.connection_string is not None:
            return QueueServiceClient.from_connection_string(self.connection_string)
        from azure.identity import DefaultAzureCredential  # only identity-based apps need it

        return QueueServiceClient(str(self.queue_service_uri), credential=DefaultAzureCredential())

    def blob_service_client(self) -> BlobServiceClient:
        if self.connection_string is not None:
            return BlobServiceClient.from_connection_string(self.connection_string)
        if self.blob_service_uri is None:
            raise MissingSettingError(f"{self.setting}__blobServiceUri", "a blob trigger")
        from azure.identity import DefaultAzureCredential

        return BlobServiceClient(self.blob_service_uri, credential=DefaultAzureCredential())


def _is_development_storage(value: str) -> bool:
    parts = dict(p.split("=", 1) for p in value.split(";") if "=" in p)
    return parts.get("UseDevelopmentStorage", "").strip().lower() == "true"


def resolve_connection(
    connection: str | None, settings: AppSettings, needed_for: str
) -> QueueConnection:
    name = connection or DEFAULT_CONNECTION
    candidates = [name] if name.startswith("AzureWebJobs") else [f"AzureWebJobs{name}", name]
    for candidate in candidates:
        value = settings.get(candidate)
        if value:
            if _is_development_storage(value):
                return QueueConnection(candidate, DEVELOPMENT_STORAGE)
            return QueueConnection(candidate, value)
        account = settings.get(f"{candidate}__accountName")
        queue_uri = settings.get(f"{candidate}__queueServiceUri") or settings.get(
            f"{candidate}__serviceUri"
        )
        blob_uri = settings.get(f"{candidate}__blobServiceUri")
        if account:
            queue_uri = queue_uri or f"https://{account}.queue.core.windows.net"
            blob_uri = blob_uri or f"https://{account}.blob.core.windows.net"
        if queue_uri or blob_uri:
            return QueueConnection(
                candidate, queue_service_uri=queue_uri, blob_service_uri=blob_uri
            )
    raise MissingSettingError(name, needed_for)
