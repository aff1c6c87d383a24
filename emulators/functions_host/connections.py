"""Storage connections named by a binding's `connection`, resolved as the Functions host does.

`connection` names a setting; empty means `AzureWebJobsStorage`; `AzureWebJobs<name>` is tried
before `<name>`. The value is a connection string (`UseDevelopmentStorage=true` is Azurite's
well-known account on 127.0.0.1), or the setting is identity-based (`<name>__queueServiceUri`,
`<name>__serviceUri` or `<name>__accountName`) and uses DefaultAzureCredential.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
)


@dataclass(frozen=True, slots=True)
class QueueConnection:
    """Either a connection string or a queue service URI used with DefaultAzureCredential."""

    setting: str
    connection_string: str | None = field(default=None, repr=False)
    queue_service_uri: str | None = None

    def service_client(self) -> QueueServiceClient:
        if self.connection_string is not None:
            return QueueServiceClient.from_connection_string(self.connection_string)
        from azure.identity import DefaultAzureCredential  # only identity-based apps need it

        return QueueServiceClient(str(self.queue_service_uri), credential=DefaultAzureCredential())


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
        uri = settings.get(f"{candidate}__queueServiceUri") or settings.get(
            f"{candidate}__serviceUri"
        )
        if uri:
            return QueueConnection(candidate, queue_service_uri=uri)
        account = settings.get(f"{candidate}__accountName")
        if account:
            return QueueConnection(
                candidate, queue_service_uri=f"https://{account}.queue.core.windows.net"
            )
    raise MissingSettingError(name, needed_for)
