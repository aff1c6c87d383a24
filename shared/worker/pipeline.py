"""One queue message, end to end: validate, lock, attempt each image, write the outcome.

Every path ends in exactly one of: a manifest (succeeded), an error.json (rejected or failed), a
continuation message (the work goes on later), or an exception the host turns into a redelivery and,
after `maxDequeueCount`, a poison message. Nothing is acknowledged without a record.
"""

from __future__ import annotations

import contextvars
import logging
import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from shared.azure_openai.image_api import AttemptResult, ImageCall, InputFile, OnPartial
from shared.contract.request import (
    ID_PATTERN,
    GenerationRequest,
    InvalidMessage,
    body_id,
    excerpt,
    parse_message,
)
from shared.policy.outcomes import judge
from shared.policy.planner import (
    Done,
    FailInvocation,
    GiveUp,
    Requeue,
    Send,
    Situation,
    Wait,
)
from shared.records.attempts import AttemptRecord, epoch_s, iso_utc
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
from shared.worker.router import Use
from shared.worker.runtime import Runtime

log = logging.getLogger("imagegen.pipeline")

PROMPT_LOG_CHARS = 80
# A claim refused with no wait means another thread took the slot a moment ago: ask again, no spin.
MIN_PICK_PAUSE_S = 0.02
# Waits at least this long are shown in status.json (`retrying`); shorter quota waits are not.
SHOWN_WAIT_S = 1.0
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


_Inputs = tuple[tuple[InputFile, ...], InputFile | None]  # edit: the images and the mask
_Ending = Requeue | GiveUp | FailInvocation  # the planner's steps that end a delivery


@dataclass
class _Job:
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
    # The n images run on threads of their own: their shared state changes under this lock, and
    # the first image to end the delivery (give up, re-enqueue, fail) stops the others' next step.
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

    def _generate_all(self, missing: list[int], inputs: _Inputs) -> list[_Ending]:
        """Every missing image at once, each paced like any other call; what ended the delivery.

        One slow or failing image does not hold the others' blobs back: each is written when done.
        The invocation's thread waits; the streams count against the process's stream slots.
        """
        if len(missing) <= 1:
            return [e for e in (self._generate(i, inputs) for i in missing) if e is not None]
        with ThreadPoolExecutor(len(missing), thread_name_prefix=f"image-{self.id}") as pool:
            # Each thread in a copy of this one's context: blob-write spans nest under the delivery.
            futures = [
                pool.submit(contextvars.copy_context().run, self._generate, index, inputs)
                for index in missing
            ]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]  # type: ignore[misc]  # LockLost, or a storage error: redeliver
        return [e for e in (f.result() for f in futures) if e is not None]

    def _end(self, endings: list[_Ending]) -> Result:
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

    def _load_inputs(self) -> _Inputs:
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

    def _generate(self, index: int, inputs: _Inputs) -> _Ending | None:
        """Carry out the planner's steps for image `index` until it is stored or the delivery ends.

        Returns the step that ends the delivery (carried out by `_end` once every image stopped, so
        nothing is written after a terminal record), or None: stored, or stopped by another image.
        """
        try:
            while not self._stop.is_set():
                self._check_lock()  # A call made without the lease may be made again elsewhere.
                match self.rt.planner.next_step(self._situation(index)):
                    case Done():
                        return None
                    case Send() as send:
                        self._send(index, send, inputs)
                    case Wait(seconds=seconds, reason=reason):
                        if seconds >= SHOWN_WAIT_S:
                            self._write_status(Status.RETRYING, detail=reason)
                        # A sleep that ends early when another image ends the delivery.
                        self._stop.wait(max(seconds, MIN_PICK_PAUSE_S))
                    case Requeue() | GiveUp() | FailInvocation() as ending:
                        self._stop.set()
                        return ending
            return None
        except BaseException:
            self._stop.set()
            raise

    def _verdict(self) -> dict[str, Any] | None:
        """The safety system's verdict on the latest refused attempt, for error.json."""
        with self._mutex:
            for attempt in reversed(self.history.attempts):
                if attempt.error is not None and attempt.error.content_filter is not None:
                    return attempt.error.content_filter
        return None

    def _situation(self, index: int) -> Situation:
        monotonic = self.rt.monotonic()
        with self._mutex:
            history = self.history.for_image(index)
        return Situation(
            history=history,
            deployments=self.rt.router.view(monotonic),
            now=self.rt.now().timestamp(),
            deadline=epoch_s(self.first_delivery_at) + self.rt.settings.request_deadline_s,
            delivery_started=self.delivery_started,
            budget_left_s=self.rt.settings.invocation_budget_s - (monotonic - self.started),
            delivery_calls=self.delivery_calls,
            requested_partials=self.request.partial_images,
            image_stored=index in self.images,
        )

    def _continue_later(self, delay_s: float, reason: str) -> Result:
        self._write_status(Status.RETRYING, detail=reason)
        self._send_continuation(delay_s)
        log.info("request %s continues in %.1fs by a new message: %s", self.id, delay_s, reason)
        return Result.REQUEUED

    def _send(self, index: int, send: Send, inputs: _Inputs) -> None:
        """One call as the planner named it; its record reaches the router whatever happens."""
        with self.rt.streams:  # the process's stream slots: memory per stream decides the instance
            claim = self.rt.router.claim(send.deployment, self.rt.monotonic())
            if not isinstance(claim, Use):
                # Another thread or instance took the slot first; the router's view now says when.
                self._stop.wait(MIN_PICK_PAUSE_S)
                return
            if self.lock is not None and self.lock.lost:
                # The claim may have waited out a storage outage that cost the lease: a call now
                # could be made again by the delivery that holds it next. Found by the soak.
                self.rt.router.release(claim)
                self._check_lock()
            with self._mutex:
                number = self.history.reserve_number()
            result: AttemptResult | None = None
            try:
                result = self.rt.api.attempt(
                    claim.deployment,
                    self._call(send.partial_images, inputs),
                    attempt_no=number,
                    image_index=index,
                    on_partial=self._partial_writer(index),
                )
            finally:
                if result is None:
                    self.rt.router.release(claim)  # it raised before a record existed
                else:
                    self.rt.router.report(
                        claim.deployment.name, result.record, self.rt.monotonic(),
                        ticket=claim.ticket,
                    )  # fmt: skip
        record = result.record
        self.trace.attempt(record, enqueued_at=self.created_at or None)
        _log_attempt(self.id, record)
        with self._mutex:
            self.delivery_calls += 1
            self.history.add(record, billed=lambda r: judge(r).billed)
            self._check_lock()
            # The history first, then the image: a manifest must never list an image without the
            # call that made it. A crash in between costs a call (made again), not truth.
            self._write_status(Status.RUNNING if record.succeeded else Status.RETRYING)
        if result.image is not None:
            info = self.rt.store.write_image(
                self.id,
                index,
                result.image,
                self.request.output_format,
                request_id=self.id,
                usage=result.usage,
            )
            with self._mutex:
                self.images[index] = info

    def _call(self, partial_images: int, inputs: _Inputs) -> ImageCall:
        return ImageCall(
            operation=self.request.operation,
            fields=_api_fields(self.request),
            partial_images=partial_images,
            images=inputs[0],
            mask=inputs[1],
        )

    def _partial_writer(self, index: int) -> OnPartial | None:
        if not self.request.save_partials:
            return None
        fmt = self.request.output_format

        def write(partial_index: int, data: bytes) -> None:
            self.rt.store.write_partial(self.id, index, partial_index, data, fmt)

        return write

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


def _log_attempt(request_id: str, record: AttemptRecord) -> None:
    log.info(
        "attempt id=%s image=%d attempt=%d deployment=%s status=%s apim-request-id=%s seconds=%.1f outcome=%s",
        request_id, record.image_index, record.attempt, record.deployment, record.http_status,
        record.apim_request_id, record.elapsed_s, record.outcome.value,
    )  # fmt: skip


def _api_fields(request: GenerationRequest) -> dict[str, Any]:
    """The request's fields as the image API names them (no `n`: streaming makes one per call).

    Each endpoint gets only its own fields: `moderation` is a field of generations, `input_fidelity`
    of edits. The contract refuses an edit whose moderation is not 'auto' (the service's default
    without the field), so leaving it out of an edit changes nothing.
    """
    fields: dict[str, Any] = {
        "prompt": request.prompt,
        "size": request.size,
        "quality": request.quality,
        "output_format": request.output_format,
        "output_compression": request.output_compression,
        "background": request.background,
        "user": request.user,
    }
    if request.operation == "edit":
        fields["input_fidelity"] = request.input_fidelity
    else:
        fields["moderation"] = request.moderation
    return fields
