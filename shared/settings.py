"""App settings (docs/design.md §8), read once into a typed object and passed down.

This is the only module that reads the environment. A bad or missing value raises `SettingsError`
with one line that names the setting, so the host's start-up log says exactly what to fix.

Each field says once where it comes from, what it defaults to and what it accepts:
`Annotated[int, _env("IMAGE_MAX_ATTEMPTS"), _within(1, 20)] = 4`. pydantic validates the raw
strings against those annotations; this module only gathers the strings (names case-insensitive,
blank = absent) and turns pydantic's first error into the one line. The values stay plain frozen
dataclasses: code and tests build them directly, and no validation runs on that path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, TypeVar, get_type_hints
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    SkipValidation,
    TypeAdapter,
    ValidationError,
)
from pydantic.fields import FieldInfo

T = TypeVar("T")

STORAGE_SETTING = "AzureWebJobsStorage"
DEPLOYMENTS_SETTING = "AZURE_OPENAI_DEPLOYMENTS"
MODEL_SETTING = "AZURE_OPENAI_MODEL"
DEFAULT_API_VERSION = "2025-04-01-preview"
IMAGE_MODELS = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message is one line naming it."""


# --- what a field accepts (validators raise ValueError with the text after "NAME: ") -------------


def _env(name: str) -> FieldInfo:
    """The app setting a field is read from."""
    return Field(validation_alias=name)


def _within(lo: T, hi: T) -> AfterValidator:
    def check(value: Any) -> Any:
        if not lo <= value <= hi:  # also refuses nan
            raise ValueError(f"{value} is outside {lo}..{hi}")
        return value

    return AfterValidator(check)


def _one_of(*allowed: str) -> Callable[[object], str]:
    """Case-insensitive choice; the lowercase spelling is kept."""

    def check(value: object) -> str:
        shown = value.lower() if isinstance(value, str) else value
        if shown not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {shown!r}")
        return str(shown)

    return check


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s) URL, got {value!r}")
    return value.rstrip("/")


def _name_rule(value: str, what: str) -> str:
    """Queue and container names share a rule: 3..63 lowercase letters, digits and hyphens."""
    if not (3 <= len(value) <= 63) or not all(
        c.islower() or c.isdigit() or c == "-" for c in value
    ):
        raise ValueError(f"{value!r} is not a valid {what} name")
    return value


def _storage_name(what: str) -> AfterValidator:
    return AfterValidator(lambda value: _name_rule(value, what))


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return tuple(name.strip() for name in value.split(",") if name.strip())
    return value


def check_storage_name(setting: str, value: str, what: str) -> str:
    """`value` if it is a valid queue or container name, else a `SettingsError` naming `setting`."""
    try:
        return _name_rule(value, what)
    except ValueError as exc:
        raise SettingsError(f"{setting}: {exc}") from None


_Url = Annotated[str, AfterValidator(_url)]


def _appinsights(value: str) -> str:
    # The Azure Monitor exporter would refuse it only at its first export, in a log line.
    if "instrumentationkey=" not in value.replace(" ", "").lower():
        raise ValueError(
            "expected an Application Insights connection string "
            "(InstrumentationKey=...;IngestionEndpoint=...)"
        )
    return value


def _service_name(value: str) -> str:
    if len(value) > 128 or not all(c.isalnum() or c in "._-" for c in value):
        raise ValueError(f"expected up to 128 letters, digits, '.', '_' or '-', got {value!r}")
    return value


_AppInsights = Annotated[str, AfterValidator(_appinsights)]
_Container = Annotated[str, _storage_name("container")]
_model_name = _one_of(*IMAGE_MODELS)
_Model = Annotated[str, PlainValidator(_model_name)]
_Scope = Annotated[str, PlainValidator(_one_of("shared", "process"))]


# --- the values --------------------------------------------------------------------------------


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
    """One gpt-image deployment. `api_key` None means Microsoft Entra ID (DefaultAzureCredential).

    The settings named here are the single-deployment form; entries of AZURE_OPENAI_DEPLOYMENTS
    are read by `_Entry` and fall back to the defaults written here.
    """

    name: Annotated[str, _env("AZURE_OPENAI_DEPLOYMENT")]
    endpoint: Annotated[_Url, _env("AZURE_OPENAI_ENDPOINT")]
    deployment: Annotated[str, _env("AZURE_OPENAI_DEPLOYMENT")]
    api_key: Annotated[str | None, _env("AZURE_OPENAI_API_KEY")] = field(default=None, repr=False)
    priority: int = 0
    rpm: Annotated[int, _env("AZURE_OPENAI_RPM"), _within(1, 100_000)] = 10
    # Which gpt-image model the deployment serves; set by AZURE_OPENAI_MODEL or an entry's "model".
    model: _Model = "gpt-image-2"


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """The storage half of `Settings`: what an operator needs, without the deployment settings."""

    storage: Annotated[StorageConfig, SkipValidation]  # from several settings, see `_storage`
    requests_queue: Annotated[str, _env("IMAGE_REQUESTS_QUEUE"), _storage_name("queue")] = (
        "image-requests"
    )
    images_container: Annotated[_Container, _env("IMAGES_CONTAINER")] = "images"
    input_containers: Annotated[
        tuple[_Container, ...], _env("IMAGE_INPUT_CONTAINERS"), BeforeValidator(_comma_list)
    ] = ("inputs",)
    api_version: Annotated[str, _env("AZURE_OPENAI_API_VERSION")] = DEFAULT_API_VERSION

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """Same names, defaults and checks as `Settings.from_env`, minus AZURE_OPENAI_* deployments.

        For tools (the operator CLI) that never call the image API.
        """
        values = _Env(os.environ if env is None else env)
        return _validate(cls, values, storage=_storage(values))


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings(OperatorSettings):
    """Everything the app runs with: the operator's half plus the deployments and the policies."""

    deployments: Annotated[tuple[DeploymentConfig, ...], SkipValidation]  # see `_deployments`
    min_partial_images: Annotated[int, _env("IMAGE_MIN_PARTIAL_IMAGES"), _within(0, 3)] = 1
    max_attempts: Annotated[int, _env("IMAGE_MAX_ATTEMPTS"), _within(1, 20)] = 4
    backoff_base_s: Annotated[float, _env("IMAGE_BACKOFF_BASE_S"), _within(0.0, 600.0)] = 2.0
    backoff_max_s: Annotated[float, _env("IMAGE_BACKOFF_MAX_S"), _within(0.0, 3600.0)] = 60.0
    inline_wait_max_s: Annotated[float, _env("IMAGE_INLINE_WAIT_MAX_S"), _within(0.0, 600.0)] = 30.0
    connect_timeout_s: Annotated[float, _env("IMAGE_CONNECT_TIMEOUT_S"), _within(0.01, 300.0)] = (
        10.0
    )
    read_timeout_s: Annotated[float, _env("IMAGE_READ_TIMEOUT_S"), _within(0.01, 3600.0)] = 600.0
    lock_lease_s: Annotated[int, _env("IMAGE_LOCK_LEASE_S"), _within(15, 60)] = 60
    breaker_failures: Annotated[int, _env("IMAGE_BREAKER_FAILURES"), _within(1, 3)] = 3
    breaker_cooldown_s: Annotated[float, _env("IMAGE_BREAKER_COOLDOWN_S"), _within(0.0, 3600.0)] = (
        30.0
    )
    # The quota's window: 60 s on Azure; tests shrink it with the emulator's clock.
    rate_window_s: Annotated[float, _env("AZURE_OPENAI_RPM_WINDOW_S"), _within(0.01, 3600.0)] = 60.0
    # "shared": the request budget lives in Storage, seen by every instance of the app;
    # "process": each process keeps its own (one instance only, or a quota it does not share).
    quota_scope: Annotated[_Scope, _env("IMAGE_QUOTA_SCOPE")] = "shared"
    # No new attempt starts after this long in one invocation; a continuation message carries on.
    # 15 min plus one long call stays inside the 30 min functionTimeout of host.json.
    invocation_budget_s: Annotated[
        float, _env("IMAGE_INVOCATION_BUDGET_S"), _within(1.0, 86400.0)
    ] = 900.0
    quota_container: Annotated[_Container, _env("IMAGE_QUOTA_CONTAINER")] = "imagegen-quota"
    # A request not done this long after its first delivery fails instead of being retried further.
    request_deadline_s: Annotated[
        float, _env("IMAGE_REQUEST_DEADLINE_S"), _within(10.0, 30 * 86400.0)
    ] = 86400.0
    # Attempts that could not reach the service at all (connect errors) allowed per delivery
    # before the invocation fails and the queue's own redelivery takes over.
    max_connect_errors: Annotated[int, _env("IMAGE_MAX_CONNECT_ERRORS"), _within(1, 50)] = 5
    # Sends to a deployment may run this many ahead of the even pace (1: strictly one per interval).
    rate_burst: Annotated[int, _env("AZURE_OPENAI_BURST"), _within(1, 10)] = 1
    # Streams (calls in flight) one process holds at once, across the images of every invocation:
    # host.json's batchSize + newBatchThreshold invocations, fanned out to their n images.
    max_streams: Annotated[int, _env("IMAGE_MAX_STREAMS"), _within(1, 256)] = 32
    # Telemetry (README "Telemetry"): Azure Monitor, OTLP over HTTP, both, or neither (nothing set
    # up at all). The connection string only names the resource; it stays out of repr all the same.
    appinsights_connection_string: Annotated[
        _AppInsights | None, _env("APPLICATIONINSIGHTS_CONNECTION_STRING")
    ] = field(default=None, repr=False)
    otlp_endpoint: Annotated[_Url | None, _env("OTEL_EXPORTER_OTLP_ENDPOINT")] = None
    service_name: Annotated[str, _env("OTEL_SERVICE_NAME"), AfterValidator(_service_name)] = (
        "imagegen-functions"
    )

    @property
    def poison_queue(self) -> str:
        return f"{self.requests_queue}-poison"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        values = _Env(os.environ if env is None else env)
        return _validate(cls, values, storage=_storage(values), deployments=_deployments(values))


# --- reading -------------------------------------------------------------------------------------


class _Env:
    """The raw strings: names case-insensitive, values stripped, blank the same as absent."""

    def __init__(self, env: Mapping[str, str]) -> None:
        # App settings are case-insensitive on Windows plans and in Core Tools; be lenient alike.
        self._env = env
        self._folded = {k.lower(): v for k, v in env.items()}

    def get(self, name: str) -> str | None:
        value = self._env.get(name, self._folded.get(name.lower()))
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def pick(self, names: Iterable[str]) -> dict[str, str]:
        return {name: value for name in names if (value := self.get(name)) is not None}


@cache
def _adapter(cls: type[T]) -> tuple[TypeAdapter[T], tuple[str, ...]]:
    """The validator for `cls` and the settings its fields name (base classes' included)."""
    hints = get_type_hints(cls, include_extras=True)
    names = {
        meta.validation_alias
        for hint in hints.values()
        for meta in getattr(hint, "__metadata__", ())
        if isinstance(meta, FieldInfo) and isinstance(meta.validation_alias, str)
    }
    return TypeAdapter(cls), tuple(sorted(names))


def _validate(cls: type[T], env: _Env, **given: object) -> T:
    adapter, names = _adapter(cls)
    try:
        return adapter.validate_python({**env.pick(names), **given})
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        raise SettingsError(f"{error['loc'][0]}: {_setting_problem(error)}") from None


def _setting_problem(error: Any) -> str:
    if error["type"] == "missing":
        return "required setting is missing"
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    if error["type"].endswith("_parsing"):
        return f"expected a number, got {error['input']!r}"
    return str(error["msg"])


def _storage(env: _Env) -> StorageConfig:
    """A connection string, or identity-based service URIs (from the account name or given)."""
    conn = env.get(STORAGE_SETTING)
    if conn is not None:
        if conn.replace(" ", "").lower() != "usedevelopmentstorage=true" and (
            "AccountName=" not in conn and "BlobEndpoint=" not in conn
        ):
            raise SettingsError(f"{STORAGE_SETTING}: not a storage connection string")
        return StorageConfig(connection_string=conn)
    account = env.get(f"{STORAGE_SETTING}__accountName")
    blob = env.get(f"{STORAGE_SETTING}__blobServiceUri")
    queue = env.get(f"{STORAGE_SETTING}__queueServiceUri")
    if account is not None:
        blob = blob or f"https://{account}.blob.core.windows.net"
        queue = queue or f"https://{account}.queue.core.windows.net"
    if blob is None or queue is None:
        raise SettingsError(
            f"{STORAGE_SETTING}: required setting is missing (set a connection string, "
            f"{STORAGE_SETTING}__accountName, or __blobServiceUri and __queueServiceUri)"
        )
    return StorageConfig(
        blob_service_uri=_named(f"{STORAGE_SETTING}__blobServiceUri", _url, blob),
        queue_service_uri=_named(f"{STORAGE_SETTING}__queueServiceUri", _url, queue),
    )


def _named(name: str, check: Callable[[str], str], value: str) -> str:
    """`check(value)`, its ValueError as the one line naming the setting."""
    try:
        return check(value)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None


def _deployments(env: _Env) -> tuple[DeploymentConfig, ...]:
    """AZURE_OPENAI_DEPLOYMENTS (a JSON list) if set, else the single AZURE_OPENAI_* deployment."""
    raw_model = env.get(MODEL_SETTING)
    model = _named(MODEL_SETTING, _model_name, raw_model) if raw_model else None
    raw = env.get(DEPLOYMENTS_SETTING)
    if raw is None:
        return (_validate(DeploymentConfig, env, **_present(model=model)),)
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{DEPLOYMENTS_SETTING}: not JSON ({exc.msg})") from None
    if not isinstance(entries, list) or not entries:
        raise SettingsError(f"{DEPLOYMENTS_SETTING}: expected a non-empty JSON list")
    try:
        parsed = _ENTRIES.validate_python(entries)
    except ValidationError as exc:
        raise _entry_error(exc) from None
    deployments = [
        entry.config(f"{DEPLOYMENTS_SETTING}[{i}]", env, model) for i, entry in enumerate(parsed)
    ]
    names = [d.name for d in deployments]
    if len(set(names)) != len(names):
        raise SettingsError(f"{DEPLOYMENTS_SETTING}: entry names must be unique")
    return tuple(sorted(deployments, key=lambda d: d.priority))


def _present(**values: object) -> dict[str, object]:
    return {key: value for key, value in values.items() if value is not None}


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError("must be at least 1")
    return value


_NonNegative = Annotated[int, Field(ge=0)]


class _Entry(BaseModel):
    """One AZURE_OPENAI_DEPLOYMENTS object; a key left out (or null) takes DeploymentConfig's
    default, `model` AZURE_OPENAI_MODEL's value."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    endpoint: Annotated[str, Field(min_length=1), AfterValidator(_url)]
    deployment: Annotated[str, Field(min_length=1)]
    name: str | None = None
    api_key_setting: str | None = None
    priority: _NonNegative | None = None
    rpm: Annotated[_NonNegative, AfterValidator(_at_least_one)] | None = None
    model: _Model | None = None

    def config(self, where: str, env: _Env, model: str | None) -> DeploymentConfig:
        api_key = None
        if self.api_key_setting is not None:
            api_key = env.get(self.api_key_setting)
            if api_key is None:
                raise SettingsError(
                    f"{self.api_key_setting}: required setting is missing (named by {where})"
                )
        return DeploymentConfig(
            name=self.name or self.deployment,
            endpoint=self.endpoint,
            deployment=self.deployment,
            api_key=api_key,
            **_present(priority=self.priority, rpm=self.rpm, model=self.model or model),
        )


_ENTRIES: TypeAdapter[list[_Entry]] = TypeAdapter(list[_Entry])
# What a wrong type (or a missing key) in an entry is called, by key; validators speak for
# themselves (their ValueError's text).
_ENTRY_PROBLEMS = {
    "endpoint": "required string is missing",
    "deployment": "required string is missing",
    "name": "expected a string",
    "api_key_setting": "expected the name of a setting",
    "priority": "expected a non-negative integer",
    "rpm": "expected a non-negative integer",
}


def _unknown_first(error: Any) -> tuple[int, bool, str]:
    unknown = error["type"] == "extra_forbidden"
    return error["loc"][0], not unknown, str(error["loc"][1]) if unknown else ""


def _entry_error(exc: ValidationError) -> SettingsError:
    # A misspelt key explains a "missing" one next to it, so unknown keys are named first.
    errors = sorted(exc.errors(include_url=False), key=_unknown_first)
    error = errors[0]
    index, *rest = error["loc"]
    where = f"{DEPLOYMENTS_SETTING}[{index}]"
    if not rest:
        return SettingsError(f"{where}: expected an object")
    key = str(rest[0])
    if error["type"] == "extra_forbidden":
        return SettingsError(f"{where}: unknown field {key!r}")
    if error["type"] == "value_error":
        return SettingsError(f"{where}.{key}: {error['ctx']['error']}")
    return SettingsError(f"{where}.{key}: {_ENTRY_PROBLEMS.get(key, error['msg'])}")
