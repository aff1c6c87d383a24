"""Watching the soak from outside: the emulator's calls over time, the hosts' logs, the progress.

The emulator's request log says when a call arrived and when it ended (its last byte out, or the
client found gone); polling it twice a second also shows which calls are open right now, which is
what picking a moment to kill a host needs.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from emulators.image_deployment.timing import QUALITY_SECONDS, duration_s

log = logging.getLogger("soak.observe")

TAG = re.compile(r"\[soak ([A-Za-z0-9._-]+)\]")
# `[2026-11-26T00:37:37.200Z] request soak-0006: generate 1536x1024 ...` (the pipeline's log)
_LINE = re.compile(r"^\[(?P<at>[0-9T:.\-]+Z)\] (?P<text>.*)$")
_STARTED = re.compile(r"^request (?P<id>\S+): (generate|edit) ")
_ENDED = re.compile(
    r"^request (?P<id>\S+) (succeeded|failed|rejected|continues in|is being worked)"
)
# `Exception: LockLost: request soak-0033: ...`, `Exception: LeaseLost: lease on soak-0033/status.json`
_FAILED = re.compile(r"^Exception: \w+: (?:request |lease on )(?P<id>[A-Za-z0-9._-]+)[:/ ]")
_ATTEMPT = re.compile(r"^attempt id=\S+ .* apim-request-id=(?P<apim>\S+) ")
_EXECUTING = re.compile(r"^Executing '[^']+' \(.*Id=(?P<inv>[0-9a-f-]+)\)")
_EXECUTED = re.compile(r"^Executed '[^']+' \((Succeeded|Failed), Id=(?P<inv>[0-9a-f-]+)")


def epoch(iso: str) -> float:
    """`2026-11-26T00:37:37.832Z` → seconds since the epoch."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def call_id(record: dict[str, Any]) -> str | None:
    """The soak request a call served, from the tag in its prompt."""
    body = record.get("body")
    prompt = body.get("prompt") if isinstance(body, dict) else None
    found = TAG.search(prompt) if isinstance(prompt, str) else None
    return found.group(1) if found else None


@dataclass(frozen=True, slots=True)
class CallTimes:
    arrived: float
    last_pending: float | None  # last poll that saw it unfinished
    first_done: float | None  # first poll that saw it finished (None: never seen finished)
    # The emulator's own time for its end: last byte out, or the client found gone (None: open).
    ended: float | None = None


class EmulatorWatch:
    """Polls the emulator's request log on a thread; `calls()` has each call's end bracket."""

    def __init__(self, fetch: Callable[[], list[dict[str, Any]]], interval_s: float = 0.5) -> None:
        self._fetch = fetch
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        self._last_pending: dict[str, float] = {}
        self._first_done: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="emulator-watch", daemon=True)

    def start(self) -> EmulatorWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()

    def poll(self) -> list[dict[str, Any]]:
        """One poll now (also used right before and after a kill); returns the records."""
        records = self._fetch()
        now = time.time()
        with self._lock:
            for record in records:
                key = str(record["apim_request_id"])
                self._records[key] = record
                if record.get("outcome") == "pending":
                    self._last_pending[key] = now
                else:
                    self._first_done.setdefault(key, now)
        return records

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records.values())

    def times(self) -> dict[str, CallTimes]:
        with self._lock:
            return {
                key: CallTimes(
                    epoch(str(record["time"])),
                    self._last_pending.get(key),
                    self._first_done.get(key),
                    epoch(str(record["ended"])) if record.get("ended") else None,
                )
                for key, record in self._records.items()
            }

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.poll()
            except Exception as exc:  # the emulator is ours and should answer; note and go on
                log.warning("emulator log poll failed: %s", exc)


@dataclass(frozen=True, slots=True)
class HostLog:
    """What one host incarnation's log says about its work."""

    deliveries: dict[str, list[tuple[float, float | None]]]  # id → (began, ended or None)
    logged_calls: frozenset[str]  # apim-request-ids whose outcome this process logged
    running_invocations: int  # Executing lines without their Executed line

    @classmethod
    def read(cls, path: Path) -> HostLog:
        deliveries: dict[str, list[tuple[float, float | None]]] = {}
        logged: set[str] = set()
        running: set[str] = set()
        last_at = 0.0
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            m = _LINE.match(line)
            body = m["text"] if m else line  # a traceback's lines carry no timestamp
            at = epoch(m["at"]) if m else None
            if at is not None and (s := _STARTED.match(body)):
                deliveries.setdefault(s["id"], []).append((at, None))
            elif (e := _ENDED.match(body) or _FAILED.match(body)) and deliveries.get(e["id"]):
                began, ended = deliveries[e["id"]][-1]
                if ended is None:
                    # A traceback line has no time of its own: the Executed line just before it.
                    deliveries[e["id"]][-1] = (began, at if at is not None else last_at)
            elif a := _ATTEMPT.match(body):
                logged.add(a["apim"])
            elif x := _EXECUTING.match(body):
                running.add(x["inv"])
            elif y := _EXECUTED.match(body):
                running.discard(y["inv"])
            if at is not None:
                last_at = at
        return cls(deliveries, frozenset(logged), len(running))

    def working_on(self, request_id: str) -> float | None:
        """When this host's current delivery of `request_id` began, if it has not ended here."""
        spans = self.deliveries.get(request_id)
        if not spans or spans[-1][1] is not None:
            return None
        return spans[-1][0]

    def was_working_on(self, request_id: str, at: float) -> bool:
        """Whether a delivery of `request_id` here had begun and not ended at time `at`."""
        return any(
            began <= at and (ended is None or ended >= at)
            for began, ended in self.deliveries.get(request_id, [])
        )

    def latest_start(self, request_id: str) -> float:
        spans = self.deliveries.get(request_id)
        return spans[-1][0] if spans else -1.0


def expected_end(record: dict[str, Any], time_scale: float) -> float:
    """When the emulator will finish a call, by its own timing model (epoch seconds)."""
    body = record.get("body") if isinstance(record.get("body"), dict) else {}
    try:
        width, height = (int(v) for v in str(body.get("size")).split("x"))
        quality = str(body.get("quality") or "auto")
        seconds = duration_s(width, height, quality if quality in QUALITY_SECONDS else "auto")
    except ValueError:
        seconds = 0.0
    return epoch(str(record["time"])) + seconds * time_scale


def calls_in_flight_on(
    host: HostLog,
    others: list[HostLog],
    records: list[dict[str, Any]],
    *,
    time_scale: float,
    min_left_s: float = 0.0,
) -> list[dict[str, Any]]:
    """Pending emulator calls that `host` made, as far as the logs can tell, with at least
    `min_left_s` to go (so a SIGKILL sent now lands mid-stream, not after the last byte).

    A call for request X is `host`'s when `host` began work on X before the call arrived and has
    not finished it, and no other host began work on X later (the request's lease admits one
    delivery at a time, so the latest starter is the one calling).
    """
    mine = []
    now = time.time()
    for record in records:
        if record.get("outcome") != "pending":
            continue
        if expected_end(record, time_scale) - now < min_left_s:
            continue
        request_id = call_id(record)
        if request_id is None:
            continue
        began = host.working_on(request_id)
        if began is None or began > epoch(str(record["time"])):
            continue
        if any(other.latest_start(request_id) > began for other in others):
            continue
        mine.append(record)
    return mine
