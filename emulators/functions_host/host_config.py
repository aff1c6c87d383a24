"""host.json: the queues extension options and functionTimeout, with the host's defaults.

Defaults are those of the Storage Queues extension 5.x (docs/design.md §6), except
`maxPollingInterval`, which is 2 s as when Core Tools runs the host locally. Keys are matched
case-insensitively, as .NET configuration binding does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulators.functions_host.errors import HostStartupError
from emulators.functions_host.json_file import read_json_object

HOST_FILE = "host.json"
MAX_BATCH_SIZE = 32  # the queue service returns at most 32 messages per request
DEFAULT_FUNCTION_TIMEOUT_S = 30 * 60.0  # Flex Consumption / Premium / Dedicated default
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


@dataclass(frozen=True, slots=True)
class QueueOptions:
    batch_size: int = 16
    new_batch_threshold: int = 8
    max_dequeue_count: int = 5
    visibility_timeout_s: float = 0.0
    max_polling_interval_s: float = 2.0
    message_encoding: str = "base64"

    @property
    def max_in_flight(self) -> int:
        return self.batch_size + self.new_batch_threshold


@dataclass(frozen=True, slots=True)
class HostConfig:
    queues: QueueOptions = QueueOptions()
    function_timeout_s: float | None = DEFAULT_FUNCTION_TIMEOUT_S  # None: unbounded ("-1")
    function_timeout_text: str = "00:30:00"


def parse_timespan(text: str, key: str) -> float:
    """Seconds in a .NET TimeSpan string: `HH:MM:SS[.fff]` or `D.HH:MM:SS`."""
    match = _TIMESPAN.match(text.strip())
    if match is None:
        raise HostStartupError(f"host.json: {key} must be a time span like 00:05:00, got {text!r}")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _lower_keys(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in mapping.items()}


def _int(options: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = options.get(key.lower(), default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HostStartupError(
            f"host.json: extensions.queues.{key} must be an integer in {low}..{high}, got {value!r}"
        )
    return value


def _timespan(options: Mapping[str, Any], key: str, default: float) -> float:
    value = options.get(key.lower())
    if value is None:
        return default
    if not isinstance(value, str):
        raise HostStartupError(f"host.json: extensions.queues.{key} must be a string like 00:00:30")
    return parse_timespan(value, f"extensions.queues.{key}")


def parse_queue_options(raw: Mapping[str, Any]) -> QueueOptions:
    options = _lower_keys(raw)
    batch_size = _int(options, "batchSize", 16, 1, MAX_BATCH_SIZE)
    threshold = _int(options, "newBatchThreshold", batch_size // 2, 0, 10_000)
    max_dequeue = _int(options, "maxDequeueCount", 5, 1, 10_000)
    visibility = _timespan(options, "visibilityTimeout", 0.0)
    polling = _timespan(options, "maxPollingInterval", 2.0)
    if polling < 0.1:
        raise HostStartupError("host.json: extensions.queues.maxPollingInterval must be >= 100 ms")
    encoding = str(options.get("messageencoding", "base64")).lower()
    if encoding not in ("base64", "none"):
        raise HostStartupError(
            f"host.json: extensions.queues.messageEncoding must be base64 or none, got {encoding!r}"
        )
    return QueueOptions(batch_size, threshold, max_dequeue, visibility, polling, encoding)


def parse_host_config(document: Mapping[str, Any]) -> HostConfig:
    top = _lower_keys(document)
    extensions = _lower_keys(top.get("extensions") or {})
    queues = parse_queue_options(extensions.get("queues") or {})
    timeout = top.get("functiontimeout")
    if timeout is None:
        return HostConfig(queues)
    if not isinstance(timeout, str):
        raise HostStartupError("host.json: functionTimeout must be a string like 00:05:00")
    if timeout.strip() == "-1":
        return HostConfig(queues, None, "-1")
    return HostConfig(queues, parse_timespan(timeout, "functionTimeout"), timeout.strip())


OVERRIDE_PREFIX = "azurefunctionsjobhost__"


def apply_overrides(document: Mapping[str, Any], settings: Mapping[str, str]) -> dict[str, Any]:
    """host.json with `AzureFunctionsJobHost__a__b` app settings laid over it, as the host does.

    Azure reads these from app settings (e.g. `AzureFunctionsJobHost__extensions__queues__batchSize`),
    which is how one deployment tunes host.json without a new build. Whole-number values become
    integers, so they bind like the JSON numbers of host.json.
    """
    merged: dict[str, Any] = json.loads(json.dumps(document))
    for name, value in settings.items():
        if not name.lower().startswith(OVERRIDE_PREFIX):
            continue
        path = [part for part in name[len(OVERRIDE_PREFIX) :].split("__") if part]
        if not path:
            continue
        node = merged
        for part in path[:-1]:
            key = next((k for k in node if k.lower() == part.lower()), part)
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        leaf = next((k for k in node if k.lower() == path[-1].lower()), path[-1])
        node[leaf] = int(value) if value.strip().lstrip("-").isdigit() else value
    return merged


def load_host_config(app_dir: Path, settings: Mapping[str, str] | None = None) -> HostConfig:
    """host.json of the app (defaults when there is none), with app-setting overrides applied."""
    document = read_json_object(app_dir / HOST_FILE) or {}
    return parse_host_config(apply_overrides(document, settings or {}))
