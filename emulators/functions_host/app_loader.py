"""Import function_app.py and describe its functions the way the Python worker indexes them.

The worker imports `function_app.py` with the app directory on `sys.path`, takes the one
`FunctionRegister` instance it defines (a `FunctionApp`, `AsyncFunctionApp`, ...) and reads
`get_functions()`. We do the same, and keep what running a queue or blob trigger needs.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from azure.functions.decorators.blob import BlobTrigger
from azure.functions.decorators.function_app import Function, FunctionRegister
from azure.functions.decorators.queue import QueueTrigger

from emulators.functions_host.app_settings import AppSettings
from emulators.functions_host.blob_path import BlobPathPattern, resolve_blob_path
from emulators.functions_host.errors import HostStartupError

APP_FILE = "function_app.py"
CONTEXT_PARAMETER = "context"
_QUEUE_NAME = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")


@dataclass(frozen=True, slots=True)
class QueueFunction:
    """A queue-triggered function, ready to run: names resolved, callable and parameters known."""

    name: str
    queue_name: str
    connection: str
    arg_name: str
    wants_context: bool
    is_async: bool
    user_function: Callable[..., Any]
    directory: str

    @property
    def full_name(self) -> str:
        return f"Functions.{self.name}"


EVENT_GRID = "EventGrid"
LOGS_AND_CONTAINER_SCAN = "LogsAndContainerScan"  # the binding's default when `source` is unset


@dataclass(frozen=True, slots=True)
class BlobFunction:
    """A blob-triggered function: the resolved path pattern, its source and how to call it."""

    name: str
    path: BlobPathPattern
    source: str
    connection: str
    arg_name: str
    wants_context: bool
    is_async: bool
    user_function: Callable[..., Any]
    directory: str

    @property
    def full_name(self) -> str:
        return f"Functions.{self.name}"


@dataclass(frozen=True, slots=True)
class SkippedFunction:
    """A function this host does not run, and why (another trigger type, or disabled)."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class LoadedApp:
    queue_functions: tuple[QueueFunction, ...]
    skipped: tuple[SkippedFunction, ...]
    blob_functions: tuple[BlobFunction, ...] = ()


def import_app_module(app_dir: Path) -> ModuleType:
    path = app_dir / APP_FILE
    if not path.exists():
        raise HostStartupError(f"{path} not found (pass --app-dir)")
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))  # the app imports its own packages (shared/), as in Azure
    spec = importlib.util.spec_from_file_location("function_app", path)
    if spec is None or spec.loader is None:
        raise HostStartupError(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules["function_app"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the app's own bug: show its traceback, then fail start-up
        logging.getLogger("functions_host").exception("Importing %s failed", path)
        raise HostStartupError(f"{path}: import failed: {type(error).__name__}: {error}") from None
    return module


def find_function_app(module: ModuleType) -> FunctionRegister:
    apps = [v for v in vars(module).values() if isinstance(v, FunctionRegister)]
    if not apps:
        raise HostStartupError(f"{module.__file__}: no azure.functions.FunctionApp instance found")
    if len(apps) > 1:
        raise HostStartupError(f"{module.__file__}: more than one FunctionApp instance found")
    return apps[0]


def _is_disabled(name: str, settings: AppSettings) -> bool:
    return (settings.get(f"AzureWebJobs.{name}.Disabled") or "").strip().lower() in ("true", "1")


def _check_parameters(function: Function, trigger: QueueTrigger | BlobTrigger) -> bool:
    """Only the trigger and `context` can be bound locally; True if the function wants `context`."""
    name = function.get_function_name()
    other = [b for b in function.get_bindings() if b is not trigger]
    if other:
        raise HostStartupError(
            f"function '{name}': binding {other[0].name!r} of type "
            f"{type(other[0]).get_binding_name()!r} is not supported by the local host"
        )
    user_function = function.get_user_function()
    parameters = inspect.signature(user_function).parameters
    if trigger.name not in parameters:
        raise HostStartupError(f"function '{name}': no parameter named {trigger.name!r}")
    unbound = [
        p
        for p in parameters
        if p not in (trigger.name, CONTEXT_PARAMETER)
        and parameters[p].default is inspect.Parameter.empty
    ]
    if unbound:
        raise HostStartupError(f"function '{name}': parameter {unbound[0]!r} has no binding")
    return CONTEXT_PARAMETER in parameters


def describe_queue_function(
    function: Function, trigger: QueueTrigger, settings: AppSettings, directory: str
) -> QueueFunction:
    name = function.get_function_name()
    where = f"the queue name of function '{name}'"
    queue_name = settings.resolve(trigger.queue_name, where).lower()
    if not _QUEUE_NAME.match(queue_name):
        raise HostStartupError(f"function '{name}': invalid queue name {queue_name!r}")
    wants_context = _check_parameters(function, trigger)
    user_function = function.get_user_function()
    return QueueFunction(
        name=name,
        queue_name=queue_name,
        connection=trigger.connection or "",
        arg_name=trigger.name,
        wants_context=wants_context,
        is_async=inspect.iscoroutinefunction(user_function),
        user_function=user_function,
        directory=directory,
    )


def describe_blob_function(
    function: Function, trigger: BlobTrigger, settings: AppSettings, directory: str
) -> BlobFunction:
    """The function.json view: `source` is absent (polling) or "EventGrid"/"LogsAndContainerScan"."""
    name = function.get_function_name()
    path = resolve_blob_path(trigger.path, settings, f"the blob path of function '{name}'")
    source = str(getattr(trigger, "source", None) or LOGS_AND_CONTAINER_SCAN)
    if source not in (EVENT_GRID, LOGS_AND_CONTAINER_SCAN):
        raise HostStartupError(
            f"function '{name}': blob trigger source must be {EVENT_GRID} or "
            f"{LOGS_AND_CONTAINER_SCAN}, got {source!r}"
        )
    wants_context = _check_parameters(function, trigger)
    user_function = function.get_user_function()
    return BlobFunction(
        name=name,
        path=path,
        source=source,
        connection=trigger.connection or "",
        arg_name=trigger.name,
        wants_context=wants_context,
        is_async=inspect.iscoroutinefunction(user_function),
        user_function=user_function,
        directory=directory,
    )


def load_app(app_dir: Path, settings: AppSettings) -> LoadedApp:
    """Import the app and sort its functions into those we run and those we skip."""
    app = find_function_app(import_app_module(app_dir))
    queue_functions: list[QueueFunction] = []
    blob_functions: list[BlobFunction] = []
    skipped: list[SkippedFunction] = []
    for function in app.get_functions():
        name = function.get_function_name()
        trigger = function.get_trigger()
        if _is_disabled(name, settings):
            skipped.append(SkippedFunction(name, "it is disabled"))
        elif isinstance(trigger, QueueTrigger):
            queue_functions.append(
                describe_queue_function(function, trigger, settings, str(app_dir))
            )
        elif isinstance(trigger, BlobTrigger):
            blob_functions.append(describe_blob_function(function, trigger, settings, str(app_dir)))
        else:
            kind = type(trigger).get_binding_name() if trigger is not None else "no"
            skipped.append(
                SkippedFunction(name, f"its {kind} trigger is not a queue or blob trigger")
            )
    return LoadedApp(tuple(queue_functions), tuple(skipped), tuple(blob_functions))
