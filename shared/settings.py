"""App settings (DESIGN.md section 8), read once into a typed object and passed down.

This is the only module that reads the environment. A bad or missing value raises `SettingsError`
with one line that names the setting, so the host's start-up log says exactly what to fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T", int, float)

STORAGE_SETTING = "AzureWebJobsStorage"
DEFAULT_API_VERSION = "2025-04-01-preview"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message is one line naming it."""


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Where Blob and Queue Storage live: a connection string, or service URIs for Entra ID."""

    connection_string: str | None = field(default=None, repr=False)
    blob_service_uri: str | None = None
    queue_service_uri: str | None = None

    @property
    def uses_identity(self) -> bool:
        return self.connection_string is None


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    """One gpt-image deployment. `api_key` None means Microsoft Entra ID (DefaultAzureCredential)."""

    name: str
    endpoint: str
    deployment: str
    api_key: str | None = field(default=None, repr=False)
    priority: int = 0
    rpm: int = 10


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """The storage half of `Settings`: what an operator needs, without the deployment settings."""

    storage: StorageConfig
    requests_queue: str = "image-requests"
    images_container: str = "images"
    input_containers: tuple[str, ...] = ("inputs",)
    api_version: str = DEFAULT_API_VERSION

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """Same names, defaults and checks as `Settings.from_env`, minus AZURE_OPENAI_* deployments.

        For tools (the operator CLI) that never call the image API.
        """
        return _Reader(os.environ if env is None else env).operator()


@dataclass(frozen=True, slots=True)
class Settings:
    storage: StorageConfig
    deployments: tuple[DeploymentConfig, ...]
    api_version: str = DEFAULT_API_VERSION
    requests_queue: str = "image-requests"
    images_container: str = "images"
    input_containers: tuple[str, ...] = ("inputs",)
    min_partial_images: int = 1
    max_attempts: int = 4
    backoff_base_s: float = 2.0
    backoff_max_s: float = 60.0
    inline_wait_max_s: float = 30.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 600.0
    lock_lease_s: int = 60
    breaker_failures: int = 3
    breaker_cooldown_s: float = 30.0
    # The quota's window: 60 s on Azure; tests shrink it with the emulator's clock.
    rate_window_s: float = 60.0
    # "shared": the request budget lives in Storage, seen by every instance of the app;
    # "process": each process keeps its own (one instance only, or a quota it does not share).
    quota_scope: str = "shared"
    # No new attempt starts after this long in one invocation; a continuation message carries on.
    # 15 min plus one long call stays inside the 30 min functionTimeout of host.json.
    invocation_budget_s: float = 900.0
    quota_container: str = "imagegen-quota"
    request_deadline_s: float = 86400.0
    max_connect_errors: int = 5

    @property
    def poison_queue(self) -> str:
        return f"{self.requests_queue}-poison"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        return _Reader(os.environ if env is None else env).settings()


def check_storage_name(setting: str, value: str, what: str) -> str:
    """Queue and container names share a rule: 3..63 lowercase letters, digits and hyphens."""
    if not (3 <= len(value) <= 63) or not all(
        c.islower() or c.isdigit() or c == "-" for c in value
    ):
        raise SettingsError(f"{setting}: {value!r} is not a valid {what} name")
    return value


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        # App settings are case-insensitive on Windows plans and in Core Tools; be lenient alike.
        self._env = env
        self._folded = {k.lower(): v for k, v in env.items()}

    def get(self, name: str) -> str | None:
        value = self._env.get(name, self._folded.get(name.lower()))
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def required(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise SettingsError(f"{name}: required setting is missing")
        return value

    def number(self, name: str, default: T, lo: T, hi: T, parse: Callable[[str], T]) -> T:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = parse(raw)
        except ValueError:
            raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
        if not lo <= value <= hi:
            raise SettingsError(f"{name}: {value} is outside {lo}..{hi}")
        return value

    def operator(self) -> OperatorSettings:
        return OperatorSettings(
            storage=self.storage(),
            api_version=self.get("AZURE_OPENAI_API_VERSION") or DEFAULT_API_VERSION,
            requests_queue=self.queue_name("IMAGE_REQUESTS_QUEUE", "image-requests"),
            images_container=self.container_name("IMAGES_CONTAINER", "images"),
            input_containers=tuple(
                check_storage_name("IMAGE_INPUT_CONTAINERS", name.strip(), "container")
                for name in (self.get("IMAGE_INPUT_CONTAINERS") or "inputs").split(",")
                if name.strip()
            ),
        )

    def settings(self) -> Settings:
        common = self.operator()
        return Settings(
            storage=common.storage,
            deployments=self.deployments(),
            api_version=common.api_version,
            requests_queue=common.requests_queue,
            images_container=common.images_container,
            input_containers=common.input_containers,
            min_partial_images=self.number("IMAGE_MIN_PARTIAL_IMAGES", 1, 0, 3, int),
            max_attempts=self.number("IMAGE_MAX_ATTEMPTS", 4, 1, 20, int),
            backoff_base_s=self.number("IMAGE_BACKOFF_BASE_S", 2.0, 0.0, 600.0, float),
            backoff_max_s=self.number("IMAGE_BACKOFF_MAX_S", 60.0, 0.0, 3600.0, float),
            inline_wait_max_s=self.number("IMAGE_INLINE_WAIT_MAX_S", 30.0, 0.0, 600.0, float),
            connect_timeout_s=self.number("IMAGE_CONNECT_TIMEOUT_S", 10.0, 0.01, 300.0, float),
            read_timeout_s=self.number("IMAGE_READ_TIMEOUT_S", 600.0, 0.01, 3600.0, float),
            lock_lease_s=self.number("IMAGE_LOCK_LEASE_S", 60, 15, 60, int),
            breaker_failures=self.number("IMAGE_BREAKER_FAILURES", 3, 1, 3, int),
            breaker_cooldown_s=self.number("IMAGE_BREAKER_COOLDOWN_S", 30.0, 0.0, 3600.0, float),
            rate_window_s=self.number("AZURE_OPENAI_RPM_WINDOW_S", 60.0, 0.01, 3600.0, float),
            invocation_budget_s=self.number(
                "IMAGE_INVOCATION_BUDGET_S", 900.0, 1.0, 86400.0, float
            ),
            quota_scope=self.choice("IMAGE_QUOTA_SCOPE", ("shared", "process")),
            quota_container=self.container_name("IMAGE_QUOTA_CONTAINER", "imagegen-quota"),
            request_deadline_s=self.number(
                "IMAGE_REQUEST_DEADLINE_S", 86400.0, 10.0, 30 * 86400.0, float
            ),
            max_connect_errors=self.number("IMAGE_MAX_CONNECT_ERRORS", 5, 1, 50, int),
        )

    def choice(self, name: str, allowed: tuple[str, ...]) -> str:
        value = (self.get(name) or allowed[0]).lower()
        if value not in allowed:
            raise SettingsError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
        return value

    def storage(self) -> StorageConfig:
        conn = self.get(STORAGE_SETTING)
        if conn is not None:
            if conn.replace(" ", "").lower() != "usedevelopmentstorage=true" and (
                "AccountName=" not in conn and "BlobEndpoint=" not in conn
            ):
                raise SettingsError(f"{STORAGE_SETTING}: not a storage connection string")
            return StorageConfig(connection_string=conn)
        account = self.get(f"{STORAGE_SETTING}__accountName")
        blob = self.get(f"{STORAGE_SETTING}__blobServiceUri")
        queue = self.get(f"{STORAGE_SETTING}__queueServiceUri")
        if account is not None:
            blob = blob or f"https://{account}.blob.core.windows.net"
            queue = queue or f"https://{account}.queue.core.windows.net"
        if blob is None or queue is None:
            raise SettingsError(
                f"{STORAGE_SETTING}: required setting is missing (set a connection string, "
                f"{STORAGE_SETTING}__accountName, or __blobServiceUri and __queueServiceUri)"
            )
        return StorageConfig(
            blob_service_uri=self.url(f"{STORAGE_SETTING}__blobServiceUri", blob),
            queue_service_uri=self.url(f"{STORAGE_SETTING}__queueServiceUri", queue),
        )

    def url(self, name: str, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError(f"{name}: expected an http(s) URL, got {value!r}")
        return value.rstrip("/")

    def queue_name(self, name: str, default: str) -> str:
        return check_storage_name(name, self.get(name) or default, "queue")

    def container_name(self, name: str, default: str) -> str:
        return check_storage_name(name, self.get(name) or default, "container")

    def deployments(self) -> tuple[DeploymentConfig, ...]:
        raw = self.get("AZURE_OPENAI_DEPLOYMENTS")
        if raw is None:
            return (self.single_deployment(),)
        try:
            entries = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"AZURE_OPENAI_DEPLOYMENTS: not JSON ({exc.msg})") from None
        if not isinstance(entries, list) or not entries:
            raise SettingsError("AZURE_OPENAI_DEPLOYMENTS: expected a non-empty JSON list")
        parsed = [self.deployment_entry(i, entry) for i, entry in enumerate(entries)]
        names = [d.name for d in parsed]
        if len(set(names)) != len(names):
            raise SettingsError("AZURE_OPENAI_DEPLOYMENTS: entry names must be unique")
        return tuple(sorted(parsed, key=lambda d: d.priority))

    def single_deployment(self) -> DeploymentConfig:
        name = self.required("AZURE_OPENAI_DEPLOYMENT")
        return DeploymentConfig(
            name=name,
            endpoint=self.url("AZURE_OPENAI_ENDPOINT", self.required("AZURE_OPENAI_ENDPOINT")),
            deployment=name,
            api_key=self.get("AZURE_OPENAI_API_KEY"),
            rpm=self.number("AZURE_OPENAI_RPM", 10, 1, 100_000, int),
        )

    def deployment_entry(self, index: int, entry: Any) -> DeploymentConfig:
        where = f"AZURE_OPENAI_DEPLOYMENTS[{index}]"
        if not isinstance(entry, dict):
            raise SettingsError(f"{where}: expected an object")
        unknown = set(entry) - {
            "name",
            "endpoint",
            "deployment",
            "api_key_setting",
            "priority",
            "rpm",
        }
        if unknown:
            raise SettingsError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        for key in ("endpoint", "deployment"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise SettingsError(f"{where}.{key}: required string is missing")
        key_setting = entry.get("api_key_setting")
        api_key = None
        if key_setting is not None:
            if not isinstance(key_setting, str):
                raise SettingsError(f"{where}.api_key_setting: expected the name of a setting")
            api_key = self.get(key_setting)
            if api_key is None:
                raise SettingsError(
                    f"{key_setting}: required setting is missing (named by {where})"
                )
        for key, default in (("priority", 0), ("rpm", 10)):
            value = entry.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SettingsError(f"{where}.{key}: expected a non-negative integer")
        if entry.get("rpm", 10) < 1:
            raise SettingsError(f"{where}.rpm: must be at least 1")
        return DeploymentConfig(
            name=str(entry.get("name") or entry["deployment"]),
            endpoint=self.url(f"{where}.endpoint", entry["endpoint"]),
            deployment=entry["deployment"],
            api_key=api_key,
            priority=entry.get("priority", 0),
            rpm=entry.get("rpm", 10),
        )
