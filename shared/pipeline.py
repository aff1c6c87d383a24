"""One queue message, end to end: validate, lock, attempt each image, write the outcome.

Every path ends in exactly one of: a manifest (succeeded), an error.json (rejected or failed), a
continuation message (the work goes on later), or an exception the host turns into a redelivery and,
after `maxDequeueCount`, a poison message. Nothing is acknowledged without a record.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from shared.attempts import AttemptRecord, iso_utc
from shared.contract import (
    ID_PATTERN,
    GenerationRequest,
    InvalidMessage,
    body_id,
    excerpt,
    parse_message,
)
from shared.image_api import ImageCall, InputFile
from shared.records import (
    ErrorKind,
    Status,
    attempts_from_status,
    error_doc,
    manifest_doc,
    status_doc,
)
from shared.retry import FailInvocation, GiveUp, Requeue, RetryNow, Succeeded
from shared.router import NoneUsable, Use, WaitFor
from shared.runtime import Runtime
from shared.store import ImageInfo, InputNotFound, LockHeld, RequestLock

log = logging.getLogger("imagegen.pipeline")

PROMPT_LOG_CHARS = 80
# WaitFor(0) means another thread took the slot a moment ago: ask again, but do not spin.
MIN_PICK_PAUSE_S = 0.02
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


def process_message(body: bytes | str, message_id: str, rt: Runtime) -> Result:
    rt.ensure_ready()
    try:
        request = parse_message(
            body, message_id=message_id, input_containers=rt.settings.input_containers
        )
    except InvalidMessage as exc:
        return _reject_invalid(body, message_id, exc, rt)
    return _Job(request, message_id, rt).run()


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


@dataclass
class _Job:
    request: GenerationRequest
    message_id: str
    rt: Runtime
    attempts: list[AttemptRecord] = field(default_factory=list)
    images: dict[int, ImageInfo] = field(default_factory=dict)
    created_at: str = ""
    lock: RequestLock | None = None
    status: dict[str, Any] | None = None  # status.json as the last check under the lock read it
    started: float | None = None  # monotonic start of this delivery
    calls_made: int = 0  # attempts made by this delivery

    @property
    def id(self) -> str:
        return self.request.id or self.message_id

    def run(self) -> Result:
        self.started = self.rt.monotonic()
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
            attempts=attempts_from_status(record),
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
        status = self.status  # read under the lock by _finished_or_reused, just before
        self.attempts = attempts_from_status(status)
        self.created_at = (status or {}).get("created_at") or iso_utc(self.rt.now())
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
        for index in range(request.n):
            if index in self.images:
                continue
            result = self._generate(index, inputs)
            if result is not None:
                return result
        return self._succeed()

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

    def _generate(self, index: int, inputs: _Inputs) -> Result | None:
        """Attempt image `index` until it exists, or return how this delivery ends."""
        while True:
            self._check_lock()  # A call made without the lease may be made again by its new holder.
            if self._over_budget():
                # Stay well inside functionTimeout: the rest continues in a fresh invocation.
                return self._continue_later(1, "the invocation's time budget is used")
            history = [a for a in self.attempts if a.image_index == index]
            match self.rt.policy.decide(history, self.rt.rng):
                case Succeeded() if index in self.images:
                    return None
                case GiveUp(kind=kind, message=message):
                    return self._fail(Status.FAILED, ErrorKind(kind), message)
                case RetryNow(delay_s=wait):
                    later = False
                case Requeue(delay_s=wait):
                    later = True
                case Succeeded() | FailInvocation():
                    # A configuration error from an earlier delivery (or process) is not final:
                    # the router knows whether the deployment is still out of rotation.
                    wait, later = 0.0, False
            choice = self._failover(history) if wait > 0 else None
            if choice is None:
                if later:
                    return self._continue_later(wait, f"image {index} retries in {wait:.1f}s")
                if wait > 0:
                    self._write_status(Status.RETRYING)
                    self.rt.sleep(wait)
                picked = self._pick()
                if isinstance(picked, Result):
                    return picked
                choice = picked
            self._attempt(index, choice, history, inputs)

    def _over_budget(self) -> bool:
        if self.started is None or self.calls_made == 0:
            return False
        return self.rt.monotonic() - self.started > self.rt.settings.invocation_budget_s

    def _failover(self, history: list[AttemptRecord]) -> Use | None:
        """A retry goes at once to another usable deployment; backoff only when there is none."""
        last = history[-1] if history else None
        if last is None or last.succeeded or len(self.rt.router.deployments) < 2:
            return None
        choice = self.rt.router.pick(self.rt.monotonic(), exclude={last.deployment})
        return choice if isinstance(choice, Use) else None

    def _pick(self) -> Use | Result:
        """A deployment with budget now; short waits inline, long ones by a continuation."""
        while True:
            choice = self.rt.router.pick(self.rt.monotonic())
            match choice:
                case Use():
                    return choice
                case NoneUsable(message=message):
                    self._write_status(Status.RETRYING, detail=message)
                    raise InvocationFailed(f"request {self.id}: {message}")
                case WaitFor(seconds=seconds, reason=reason):
                    if seconds > self.rt.settings.inline_wait_max_s:
                        return self._continue_later(seconds, reason)
                    self.rt.sleep(max(seconds, MIN_PICK_PAUSE_S))

    def _continue_later(self, delay_s: float, reason: str) -> Result:
        self._write_status(Status.RETRYING, detail=reason)
        self._send_continuation(delay_s)
        log.info("request %s continues in %.1fs by a new message: %s", self.id, delay_s, reason)
        return Result.REQUEUED

    def _attempt(self, index: int, use: Use, history: list[AttemptRecord], inputs: _Inputs) -> None:
        request = self.request
        deployment = use.deployment
        partial_images = self.rt.policy.partial_images(request.partial_images, history)
        call = ImageCall(
            operation=request.operation,
            fields=_api_fields(request),
            partial_images=partial_images,
            images=inputs[0],
            mask=inputs[1],
        )
        on_partial = None
        if request.save_partials:

            def on_partial(partial_index: int, data: bytes) -> None:
                self.rt.store.write_partial(
                    self.id, index, partial_index, data, request.output_format
                )

        result = self.rt.api.attempt(
            deployment,
            call,
            attempt_no=len(self.attempts) + 1,
            image_index=index,
            on_partial=on_partial,
        )
        self.calls_made += 1
        record = result.record
        self.rt.router.report(deployment.name, record, self.rt.monotonic(), ticket=use.ticket)
        self.attempts.append(record)
        log.info(
            "attempt id=%s image=%d attempt=%d deployment=%s status=%s apim-request-id=%s seconds=%.1f outcome=%s",
            self.id, index, record.attempt, record.deployment, record.http_status,
            record.apim_request_id, record.elapsed_s, record.outcome.value,
        )  # fmt: skip
        self._check_lock()
        # The history first, then the image: a manifest must never list an image without the
        # call that made it. A crash in between costs a call (the image is made again), not truth.
        self._write_status(Status.RUNNING if record.succeeded else Status.RETRYING)
        if result.image is not None:
            self.images[index] = self.rt.store.write_image(
                self.id,
                index,
                result.image,
                request.output_format,
                request_id=self.id,
                usage=result.usage,
            )

    def _check_lock(self) -> None:
        if self.lock is not None and self.lock.lost:
            raise LockLost(
                f"request {self.id}: the lease on status.json was lost; stopping this delivery"
            )

    def _succeed(self) -> Result:
        self._check_lock()
        now = iso_utc(self.rt.now())
        doc = manifest_doc(
            self.id,
            request=self.request.model_dump(mode="json"),
            request_hash=self.request.request_hash(),
            images=[self.images[i].to_json() for i in sorted(self.images)],
            attempts=self.attempts,
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
            len(self.attempts),
        )
        return Result.SUCCEEDED

    def _fail(self, status: Status, kind: ErrorKind, message: str) -> Result:
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
            attempts=self.attempts,
            metadata=dict(self.request.metadata),
            input_text=excerpt(self.request.to_message()) if status is Status.REJECTED else None,
            queue_message_id=self.message_id,
        )
        self.rt.store.create_record(self.id, "error.json", doc)
        self._write_status(status, detail=message)
        log.warning("request %s %s (%s): %s", self.id, status.value, kind.value, message)
        return Result.REJECTED if status is Status.REJECTED else Result.FAILED

    def _write_status(self, status: Status, detail: str | None = None) -> None:
        doc = status_doc(
            self.id,
            status,
            updated_at=iso_utc(self.rt.now()),
            images_done=len(self.images),
            attempts=self.attempts,
            request_hash=self.request.request_hash(),
            created_at=self.created_at or None,
            detail=detail,
        )
        self.rt.store.write_status(self.id, doc, lease=self.lock)

    def _send_continuation(self, delay_s: float) -> None:
        """Re-enqueue this request (with its id, so it keeps its folder) to run after `delay_s`."""
        visibility = max(1, math.ceil(delay_s))
        self.rt.requests_queue.send_message(
            self.request.to_message(), visibility_timeout=visibility
        )


def _api_fields(request: GenerationRequest) -> dict[str, Any]:
    """The request's fields as the image API names them (no `n`: streaming makes one per call)."""
    fields: dict[str, Any] = {
        "prompt": request.prompt,
        "size": request.size,
        "quality": request.quality,
        "output_format": request.output_format,
        "output_compression": request.output_compression,
        "background": request.background,
        "moderation": request.moderation,
        "user": request.user,
    }
    if request.operation == "edit":
        fields["input_fidelity"] = request.input_fidelity
        fields.pop("moderation")
    return fields
