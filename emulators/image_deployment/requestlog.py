"""Every call the emulator received, for tests and demos (`GET /_emulator/requests`).

A record never holds a secret: `auth` says only how the caller authenticated, and `body` holds the
request fields without image data.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any


def now_iso() -> str:
    """Now, as the log writes times: ISO 8601 UTC to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    time: str  # ISO 8601 UTC, arrival
    deployment: str
    endpoint: str  # generations | edits
    auth: str  # api-key | bearer | none
    body: dict[str, Any]
    parts: tuple[dict[str, Any], ...]  # edits: name, filename, bytes
    apim_request_id: str
    x_request_id: str
    status: int | None = None  # None while the answer is pending
    outcome: str = "pending"
    scripted: dict[str, Any] | None = None  # the script entry or random fault applied
    partials_sent: int = 0
    # When the last byte went out or the client was found gone (None while it lasts): with `time`,
    # the span a client's crash or an outage must overlap to explain a call it never recorded.
    ended: str | None = None
    token_id: str | None = None  # a checked bearer token's `jti` (never the token)
    auth_failure: str | None = None  # why a bearer token was refused (never the token)

    def public(self) -> dict[str, Any]:
        shown = asdict(self)
        shown["parts"] = list(self.parts)
        return shown


class RequestLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._records: dict[int, RequestRecord] = {}

    def add(self, record: RequestRecord) -> int:
        with self._lock:
            key = next(self._ids)
            self._records[key] = record
            return key

    def update(self, key: int, **changes: Any) -> None:
        """Changes to a record cleared by a reset in the meantime are dropped."""
        with self._lock:
            if key in self._records:
                self._records[key] = replace(self._records[key], **changes)

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.public() for _, r in sorted(self._records.items())]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
