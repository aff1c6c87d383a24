"""One queue message, end to end: validate, lock, attempt each image, write the outcome.

Every path ends in exactly one of: a manifest (succeeded), an error.json (rejected or failed), a
continuation message (the work goes on later), or an exception the host turns into a redelivery and,
after `maxDequeueCount`, a poison message. Nothing is acknowledged without a record.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from shared.azure_openai.image_api import InputFile
from shared.contract.request import (
    ID_PATTERN,
    GenerationRequest,
    InvalidMessage,
    body_id,
    excerpt,
    parse_message,
)
from shared.policy.planner import (
    FailInvocation,
    GiveUp,
    Requeue,
)
from shared.records.attempts import iso_utc
from shared.records.documents import (
    ErrorKind,
    Status,
    error_doc,
    manifest_doc,
    status_doc,
)
from shared.records.history import CallHistory
from shared.storage.store import ImageInfo, InputNotFound, LockHeld, RequestLock
from shared.telemetry import NO_TRACE, Delivery, DeliveryTrace
from shared.worker.images import Ending, ImageSteps, Inputs
from shared.worker.runtime import Runtime

log = logging.getLogger("imagegen.pipeline")

PROMPT_LOG_CHARS = 80
INPUT_CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}


class Result(StrEnum):
    """What one delivery did; the host acknowledges the message for each of these."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    SKIPPED = "skipped"  # already finished: a redelivery or a duplicate
    REQUEUED = "requeued"  # a continuation message carries the work on


class InvocationFailed(RuntimeError):
    """Fail the invocation so the host redelivers it and, in the end, poisons it.

    Raised for configuration errors (401, 403, 404): deleting the message would lose the request,
    and a fixed setting plus `requeue-poison` brings it back.
    """


class LockLost(RuntimeError):
    """The request's lease lapsed mid-work; another delivery may own it now."""


def process_message(
    body: bytes | str, message_id: str, rt: Runtime, *, delivery: Delivery | None = None
) -> Result:
    rt.ensure_ready()
    try:
        request = parse_message(
            body,
            message_id=message_id,
            input_containers=rt.settings.input_containers,
            models=deployment_models(rt),
        )
    except InvalidMessage as exc:
        with rt.telemetry.delivery(message_id, None, delivery) as trace:
            result = _reject_invalid(body, message_id, exc, rt)
            trace.result(result)
            return result
    with rt.telemetry.delivery(message_id, request, delivery) as trace:
        result = _Job(request, message_id, rt, trace=trace).run()
        trace.result(result)
        return result


def deployment_models(rt: Runtime) -> tuple[str, ...]:
    """Every configured deployment's model: with failover the request may be sent to any of them."""
    return tuple(dict.fromkeys(d.model for d in rt.settings.deployments))


def _reject_invalid(body: bytes | str, message_id: str, exc: InvalidMessage, rt: Runtime) -> Result:
    """No retry can fix a message that breaks the contract: record why and acknowledge it."""
    record_id = _valid_own_id(body) or message_id
    now = iso_utc(rt.now())
    doc = error_doc(
        record_id,
        status=Status.REJECTED,
        kind=ErrorKind.INVALID_REQUEST,
        message=exc.message,
        created_at=now,
        completed_at=now,
        input_text=exc.input_excerpt or excerpt(body),
        queue_message_id=message_id,
    )
    if not rt.store.create_record(record_id, "error.json", doc) and record_id != message_id:
        # The id already names a finished request: file the rejection under the message id instead.
        record_id = message_id
        doc["id"] = message_id
        rt.store.create_record(record_id, "error.json", doc)
    log.warning("message %s rejected (%s): %s", message_id, record_id, exc.message)
    return Result.REJECTED


def _valid_own_id(body: bytes | str) -> str | None:
    """The message's own id if it is a valid id, so a producer finds the rejection where it looks."""
    candidate = body_id(body)
    return candidate if candidate is not None and re.fullmatch(ID_PATTERN, candidate) else None


@dataclass
class _Job(ImageSteps):
    """One delivery of one request: the lifecycle (duplicates, the lease, the records); the
    images' own steps are `ImageSteps`."""

    request: GenerationRequest
    message_id: str
    rt: Runtime
    history: CallHistory = field(default_factory=CallHistory)
    images: dict[int, ImageInfo] = field(default_factory=dict)
    created_at: str = ""
    first_delivery_at: str = ""  # the deadline counts from here, across every delivery
    lock: RequestLock | None = None
    status: dict[str, Any] | None = None  # status.json as the last check under the lock read it
    started: float = 0.0  # monotonic start of this delivery, for the invocation's time budget
    delivery_started: float = 0.0  # the same moment on the wall clock (epoch seconds, ms floor)
    delivery_calls: int = 0
    # The n images run on threads of their own (`ImageSteps`): their shared state changes under
    # this lock, and the first image to end the delivery stops the others' next step.
    _mutex: threading.RLock = field(default_factory=threading.RLock)
    _stop: threading.Event = field(default_factory=threading.Event)
    trace: DeliveryTrace = NO_TRACE  # this delivery's span (telemetry); does nothing when off

    @property
    def id(self) -> str:
        return self.request.id or self.message_id

    def run(self) -> Result:
        self.started = self.rt.monotonic()
        self.delivery_started = math.floor(self.rt.now().timestamp() * 1000) / 1000
        duplicate = self._finished_or_reused()
        if duplicate is not None:
            return duplicate
        try:
            lock = self.rt.store.lock(self.id, self.rt.settings.lock_lease_s)
        except LockHeld:
            # The holder renews every third of the lease; look again about when it would have lapsed.
            delay = max(1, self.rt.settings.lock_lease_s // 3)
            log.info("request %s is being worked on elsewhere; re-enqueued in %ss", self.id, delay)
            self._send_continuation(delay)
            return Result.REQUEUED
        with lock:
            self.lock = lock
            duplicate = self._finished_or_reused()  # The holder we waited for may have finished.
            if duplicate is not None:
                return duplicate
            return self._work()

    def _finished_or_reused(self) -> Result | None:
        store = self.rt.store
        terminal = store.terminal(self.id)
        if terminal is None:
            status = self.status = store.read_json(self.id, "status.json")
            known_hash = (status or {}).get("request_hash")
            if known_hash and known_hash != self.request.request_hash():
                return self._reject_reused()
            return None
        record = (
            store.read_json(self.id, "manifest.json" if terminal == "manifest" else "error.json")
            or {}
        )
        known_hash = record.get("request_hash")
        if known_hash is not None and known_hash != self.request.request_hash():
            return self._reject_reused()
        self._repair_status(record)
        log.info(
            "request %s already has %s.json; delivery acknowledged without work", self.id, terminal
        )
        return Result.SKIPPED

    def _repair_status(self, record: dict[str, Any]) -> None:
        """Make status.json agree with the terminal record a dead or lease-less delivery left.

        The record is written before the final status; a delivery killed in between, or whose
        lease lapsed (a Storage outage), leaves `running` behind. Its redelivery ends here.
        """
        final = record.get("status")
        status = self.rt.store.read_json(self.id, "status.json") or {}
        if status.get("status") == final or final not in {s.value for s in Status}:
            return
        doc = status_doc(
            self.id,
            Status(final),
            updated_at=iso_utc(self.rt.now()),
            images_done=len(record.get("images") or []),
            attempts=CallHistory.from_doc(record),
            request_hash=record.get("request_hash"),
            created_at=record.get("created_at"),
        )
        try:
            self.rt.store.write_status(self.id, doc)
        except LockHeld:
            log.info("request %s: status.json is leased; its holder will finish it", self.id)

    def _reject_reused(self) -> Result:
        message = f"id: {self.id!r} is already used by a different request; choose a new id"
        now = iso_utc(self.rt.now())
        doc = error_doc(
            self.message_id,
            status=Status.REJECTED,
            kind=ErrorKind.INVALID_REQUEST,
            message=message,
            created_at=now,
            completed_at=now,
            request=self.request.model_dump(mode="json"),
            input_text=excerpt(self.request.to_message()),
            queue_message_id=self.message_id,
        )
        self.rt.store.create_record(self.message_id, "error.json", doc)
        log.warning("message %s rejected: %s", self.message_id, message)
        return Result.REJECTED

    def _work(self) -> Result:
        request = self.request
        status = self.status or {}  # read under the lock by _finished_or_reused, just before
        self.history = CallHistory.from_doc(status)
        now = iso_utc(self.rt.now())
        self.created_at = status.get("created_at") or now
        self.first_delivery_at = status.get("first_delivery_at") or now
        log.info(
            "request %s: %s %s %s n=%d partial_images=%d prompt=%r",
            self.id, request.operation, request.size, request.quality, request.n,
            request.partial_images, request.prompt[:PROMPT_LOG_CHARS],
        )  # fmt: skip
        try:
            inputs = self._load_inputs()
        except InputNotFound as exc:
            return self._fail(Status.REJECTED, ErrorKind.INVALID_REQUEST, str(exc))
        fmt = request.output_format
        for index in range(request.n):
            existing = self.rt.store.existing_image(self.id, index, fmt)
            if existing is not None:
                self.images[index] = existing
        self._write_status(Status.RUNNING)
        missing = [index for index in range(request.n) if index not in self.images]
        endings = self._generate_all(missing, inputs)
        if endings:
            return self._end(endings)
        return self._succeed()

    def _end(self, endings: list[Ending]) -> Result:
        """How the delivery ends when an image did not finish: the gravest ending wins."""
        for ending in endings:
            if isinstance(ending, FailInvocation):
                self._write_status(Status.RETRYING, detail=ending.message)
                raise InvocationFailed(f"request {self.id}: {ending.message}")
        for ending in endings:
            if isinstance(ending, GiveUp):
                filtered = ending.kind is ErrorKind.CONTENT_FILTER
                verdict = self._verdict() if filtered else None
                return self._fail(
                    Status.FAILED, ending.kind, ending.message, content_filter=verdict
                )
        soonest = min((e for e in endings if isinstance(e, Requeue)), key=lambda e: e.seconds)
        return self._continue_later(soonest.seconds, soonest.reason)

    def _load_inputs(self) -> Inputs:
        if self.request.operation != "edit":
            return (), None
        paths = self.request.input_images or []
        images = tuple(self._input_file(path, f"input_images[{i}]") for i, path in enumerate(paths))
        mask = self._input_file(self.request.mask, "mask") if self.request.mask else None
        return images, mask

    def _input_file(self, path: str, field_name: str) -> InputFile:
        try:
            name, data = self.rt.store.read_input(path)
        except InputNotFound as exc:
            raise InputNotFound(f"{field_name}: {exc}") from None
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else "png"
        return InputFile(name, data, INPUT_CONTENT_TYPES.get(ext, "application/octet-stream"))

    def _continue_later(self, delay_s: float, reason: str) -> Result:
        self._write_status(Status.RETRYING, detail=reason)
        self._send_continuation(delay_s)
        log.info("request %s continues in %.1fs by a new message: %s", self.id, delay_s, reason)
        return Result.REQUEUED

    def _check_lock(self) -> None:
        if self.lock is not None and self.lock.lost:
            raise LockLost(
                f"request {self.id}: the lease on status.json was lost; stopping this delivery"
            )

    def _succeed(self) -> Result:
        self._check_lock()
        missing = sorted(set(range(self.request.n)) - set(self.images))
        if missing:  # a bug, not a state: fail loudly rather than write a manifest that lies
            raise RuntimeError(f"request {self.id}: images {missing} are not stored")
        now = iso_utc(self.rt.now())
        doc = manifest_doc(
            self.id,
            request=self.request.model_dump(mode="json"),
            request_hash=self.request.request_hash(),
            images=[self.images[i].to_json() for i in sorted(self.images)],
            attempts=self.history,
            created_at=self.created_at,
            completed_at=now,
            metadata=dict(self.request.metadata),
        )
        self.rt.store.create_record(self.id, "manifest.json", doc)
        self._write_status(Status.SUCCEEDED)
        log.info(
            "request %s succeeded: %d image(s), %d attempt(s)",
            self.id,
            len(self.images),
            self.history.calls,
        )
        return Result.SUCCEEDED

    def _fail(
        self,
        status: Status,
        kind: ErrorKind,
        message: str,
        content_filter: dict[str, Any] | None = None,
    ) -> Result:
        now = iso_utc(self.rt.now())
        doc = error_doc(
            self.id,
            status=status,
            kind=kind,
            message=message,
            created_at=self.created_at or now,
            completed_at=now,
            request=self.request.model_dump(mode="json"),
            request_hash=self.request.request_hash(),
            images=[self.images[i].to_json() for i in sorted(self.images)],
            attempts=self.history,
            metadata=dict(self.request.metadata),
            input_text=excerpt(self.request.to_message()) if status is Status.REJECTED else None,
            queue_message_id=self.message_id,
            content_filter=content_filter,
        )
        self.rt.store.create_record(self.id, "error.json", doc)
        self._write_status(status, detail=message)
        log.warning("request %s %s (%s): %s", self.id, status.value, kind.value, message)
        return Result.REJECTED if status is Status.REJECTED else Result.FAILED

    def _write_status(self, status: Status, detail: str | None = None) -> None:
        with self._mutex:  # the images' threads write it in turn, never a half-updated history
            self._write_status_locked(status, detail)

    def _write_status_locked(self, status: Status, detail: str | None) -> None:
        doc = status_doc(
            self.id,
            status,
            updated_at=iso_utc(self.rt.now()),
            images_done=len(self.images),
            attempts=self.history,
            request_hash=self.request.request_hash(),
            created_at=self.created_at or None,
            detail=detail,
            first_delivery_at=self.first_delivery_at or None,
        )
        self.rt.store.write_status(self.id, doc, lease=self.lock)

    def _send_continuation(self, delay_s: float) -> None:
        """Re-enqueue this request (with its id, so it keeps its folder) to run after `delay_s`."""
        visibility = max(1, math.ceil(delay_s))
        message = self.trace.carry(self.request).to_message()  # with this delivery's traceparent
        self.rt.requests_queue.send_message(message, visibility_timeout=visibility)
