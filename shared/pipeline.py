"""One queue message, end to end: validate, lock, attempt each image, write the outcome.

Every path ends in exactly one of: a manifest (succeeded), an error.json (rejected or failed), a
continuation message (the work goes on later), or an exception the host turns into a redelivery and,
after `maxDequeueCount`, a poison message. Nothing is acknowledged without a record.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from shared.attempts import AttemptRecord, Outcome, iso_utc
from shared.contract import (
    ID_PATTERN,
    GenerationRequest,
    InvalidMessage,
    decode_body,
    parse_message,
)
from shared.image_api import ImageCall, InputFile
from shared.ratelimit import parse_reset_duration
from shared.records import (
    ErrorKind,
    Status,
    attempts_from_status,
    error_doc,
    manifest_doc,
    quote_input,
    status_doc,
)
from shared.retry import FailInvocation, GiveUp, Requeue, RetryNow, Succeeded
from shared.runtime import Runtime
from shared.settings import DeploymentConfig
from shared.store import ImageInfo, InputNotFound, LockHeld, RequestLock

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


def process_message(body: bytes | str, message_id: str, rt: Runtime) -> Result:
    rt.ensure_ready()
    try:
        request = parse_message(
            body, message_id=message_id, input_containers=rt.settings.input_containers
        )
    except InvalidMessage as exc:
        return _reject_invalid(body, message_id, exc, rt)
    return _Job(request, message_id, rt).run()


def record_poisoned(body: bytes | str, message_id: str, rt: Runtime) -> Result:
    """Turn a poison message into error.json kind `poisoned` (unless the request succeeded).

    Never raises because of the message's content: whatever is on the poison queue gets a record.
    The whole body is kept in `input` so `requeue-poison` can send it again.
    """
    rt.ensure_ready()
    request: GenerationRequest | None = None
    with contextlib.suppress(InvalidMessage):
        request = parse_message(
            body, message_id=message_id, input_containers=rt.settings.input_containers
        )
    request_id = request.id if request is not None and _has_own_id(body) else None
    record_id = request_id or message_id
    if rt.store.terminal(record_id) == "manifest":
        log.info(
            "poisoned message %s: request %s already succeeded; nothing to record",
            message_id,
            record_id,
        )
        return Result.SKIPPED
    status = rt.store.read_json(record_id, "status.json") if request_id else None
    attempts = attempts_from_status(status)
    last = attempts[-1] if attempts else None
    reason = (
        f"the host gave up after repeated failed deliveries; last attempt: {last.outcome.value}"
        + (f" (HTTP {last.http_status}: {last.error.message})" if last and last.error else "")
        if last
        else "the host gave up after repeated failed deliveries"
    )
    if request_id is None:
        reason += "; the original id is unknown (the message carried none), so this record is filed under the poison message's id"
    now = iso_utc(rt.now())
    doc = error_doc(
        record_id,
        status=Status.FAILED,
        kind=ErrorKind.POISONED,
        message=reason,
        created_at=(status or {}).get("created_at", now),
        completed_at=now,
        request=request.model_dump(mode="json") if request else None,
        request_hash=request.request_hash() if request else None,
        attempts=attempts,
        metadata=dict(request.metadata) if request else None,
        input_text=quote_input(body, limit=None),
        queue_message_id=message_id,
    )
    if not rt.store.create_record(record_id, "error.json", doc):
        log.info("poisoned message %s: %s already has a terminal record", message_id, record_id)
        return Result.SKIPPED
    rt.store.write_status(
        record_id,
        status_doc(
            record_id,
            Status.FAILED,
            updated_at=now,
            images_done=0,
            attempts=attempts,
            detail=reason,
        ),
    )
    log.warning("request %s poisoned: %s", record_id, reason)
    return Result.FAILED


def _has_own_id(body: bytes | str) -> bool:
    try:
        data = decode_body(body)
    except InvalidMessage:
        return False
    return isinstance(data.get("id"), str) and bool(data["id"])


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
        input_text=exc.input_excerpt or quote_input(body),
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
    try:
        candidate = decode_body(body).get("id")
    except InvalidMessage:
        return None
    if isinstance(candidate, str) and re.fullmatch(ID_PATTERN, candidate):
        return candidate
    return None


@dataclass
class _Job:
    request: GenerationRequest
    message_id: str
    rt: Runtime
    attempts: list[AttemptRecord] = field(default_factory=list)
    images: dict[int, ImageInfo] = field(default_factory=dict)
    created_at: str = ""
    lock: RequestLock | None = None

    @property
    def id(self) -> str:
        return self.request.id or self.message_id

    def run(self) -> Result:
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
            status = store.read_json(self.id, "status.json")
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
        log.info(
            "request %s already has %s.json; delivery acknowledged without work", self.id, terminal
        )
        return Result.SKIPPED

    def _reject_reused(self) -> Result:
        message = f"id: {self.id!r} is already used by a different request; choose a new id"
        exc = InvalidMessage.__new__(InvalidMessage)
        ValueError.__init__(exc, message)
        exc.message, exc.errors, exc.input_excerpt = (
            message,
            (message,),
            quote_input(self.request.to_message()),
        )
        now = iso_utc(self.rt.now())
        doc = error_doc(
            self.message_id,
            status=Status.REJECTED,
            kind=ErrorKind.INVALID_REQUEST,
            message=message,
            created_at=now,
            completed_at=now,
            request=self.request.model_dump(mode="json"),
            input_text=quote_input(self.request.to_message()),
            queue_message_id=self.message_id,
        )
        self.rt.store.create_record(self.message_id, "error.json", doc)
        log.warning("message %s rejected: %s", self.message_id, message)
        return Result.REJECTED

    def _work(self) -> Result:
        request = self.request
        status = self.rt.store.read_json(self.id, "status.json")
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

    def _load_inputs(self) -> tuple[tuple[InputFile, ...], InputFile | None]:
        if self.request.operation != "edit":
            return (), None
        images = tuple(self._input_file(path) for path in self.request.input_images or ())
        mask = self._input_file(self.request.mask) if self.request.mask else None
        return images, mask

    def _input_file(self, path: str) -> InputFile:
        name, data = self.rt.store.read_input(path)
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else "png"
        return InputFile(name, data, INPUT_CONTENT_TYPES.get(ext, "application/octet-stream"))

    def _generate(
        self, index: int, inputs: tuple[tuple[InputFile, ...], InputFile | None]
    ) -> Result | None:
        """Attempt image `index` until it exists, or return how this delivery ends."""
        policy = self.rt.policy
        while True:
            history = [a for a in self.attempts if a.image_index == index]
            decision = policy.decide(history, self.rt.rng)
            match decision:
                case Succeeded() if index in self.images:
                    return None
                case Succeeded() | RetryNow():
                    wait = decision.delay_s if isinstance(decision, RetryNow) else 0.0
                    if wait > 0:
                        self._write_status(Status.RETRYING)
                        self.rt.sleep(wait)
                case Requeue(delay_s=delay):
                    self._write_status(Status.RETRYING)
                    self._send_continuation(delay)
                    log.info(
                        "request %s image %d: retry in %.1fs by a continuation message",
                        self.id,
                        index,
                        delay,
                    )
                    return Result.REQUEUED
                case GiveUp(kind=kind, message=message):
                    return self._fail(Status.FAILED, ErrorKind(kind), message)
                case FailInvocation(message=message):
                    self._write_status(Status.RETRYING, detail=message)
                    raise InvocationFailed(f"request {self.id}: {message}")
            deployment = self._deployment()
            if not self._admitted(deployment):
                return Result.REQUEUED
            self._attempt(index, deployment, history, inputs)

    def _deployment(self) -> DeploymentConfig:
        return self.rt.settings.deployments[0]

    def _admitted(self, deployment: DeploymentConfig) -> bool:
        """Wait for the deployment's request budget; hand long waits to a continuation."""
        while True:
            wait = self.rt.limiter.acquire_wait(deployment.name, deployment.rpm)
            if wait <= 0:
                return True
            if wait > self.rt.settings.inline_wait_max_s:
                self._write_status(Status.RETRYING)
                self._send_continuation(wait)
                log.info(
                    "request %s: %s is at its request limit; continues in %.1fs",
                    self.id,
                    deployment.name,
                    wait,
                )
                return False
            self.rt.sleep(wait)

    def _attempt(
        self,
        index: int,
        deployment: DeploymentConfig,
        history: list[AttemptRecord],
        inputs: tuple[tuple[InputFile, ...], InputFile | None],
    ) -> None:
        request = self.request
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
        record = result.record
        self.attempts.append(record)
        log.info(
            "attempt id=%s image=%d attempt=%d deployment=%s status=%s apim-request-id=%s seconds=%.1f outcome=%s",
            self.id, index, record.attempt, record.deployment, record.http_status,
            record.apim_request_id, record.elapsed_s, record.outcome.value,
        )  # fmt: skip
        self._observe_quota(deployment, record)
        self._check_lock()
        if result.image is not None:
            self.images[index] = self.rt.store.write_image(
                self.id,
                index,
                result.image,
                request.output_format,
                request_id=self.id,
                usage=result.usage,
            )
        self._write_status(Status.RUNNING if record.succeeded else Status.RETRYING)

    def _observe_quota(self, deployment: DeploymentConfig, record: AttemptRecord) -> None:
        """Tell the limiter what the deployment said, so other threads hold back too."""
        if record.outcome is Outcome.RATE_LIMITED:
            self.rt.limiter.observe(deployment.name, deployment.rpm, 0, record.retry_after_s)
            return
        remaining = record.ratelimit.get("x-ratelimit-remaining-requests")
        if remaining is not None and remaining.isdigit():
            reset_s = parse_reset_duration(record.ratelimit.get("x-ratelimit-reset-requests"))
            self.rt.limiter.observe(deployment.name, deployment.rpm, int(remaining), reset_s)

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
            input_text=quote_input(self.request.to_message())
            if status is Status.REJECTED
            else None,
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
