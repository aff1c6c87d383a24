"""The images of one delivery: each runs the planner's steps on a thread of its own.

`ImageSteps` is the part of a delivery (`shared.worker.pipeline._Job`) that makes calls: it asks the
planner (`shared.policy.planner`) for the next step of each missing image and carries it out. Send:
claim the deployment from the router, make the call, report it whatever happened, record it in
status.json, then store the image. The steps that end a delivery are returned, not carried out: the
job does that once every image has stopped, so nothing is written after a terminal record.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from shared.azure_openai.image_api import AttemptResult, ImageCall, InputFile, OnPartial
from shared.contract.request import GenerationRequest
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
from shared.records.attempts import AttemptRecord, epoch_s
from shared.records.documents import Status
from shared.records.history import CallHistory
from shared.storage.store import ImageInfo
from shared.telemetry import DeliveryTrace
from shared.worker.router import Use

if TYPE_CHECKING:
    from shared.worker.runtime import Runtime

log = logging.getLogger("imagegen.pipeline")

# A claim refused with no wait means another thread took the slot a moment ago: ask again, no spin.
MIN_PICK_PAUSE_S = 0.02
# Waits at least this long are shown in status.json (`retrying`); shorter quota waits are not.
SHOWN_WAIT_S = 1.0

Inputs = tuple[tuple[InputFile, ...], InputFile | None]  # edit: the images and the mask
Ending = Requeue | GiveUp | FailInvocation  # the planner's steps that end a delivery


class ImageSteps:
    """The image-making half of a delivery; the job supplies the state below and two hooks."""

    request: GenerationRequest
    rt: Runtime
    history: CallHistory
    images: dict[int, ImageInfo]
    first_delivery_at: str
    created_at: str
    started: float
    delivery_started: float
    delivery_calls: int
    trace: DeliveryTrace
    _mutex: threading.RLock
    _stop: threading.Event

    @property
    def id(self) -> str:
        raise NotImplementedError

    def _check_lock(self) -> None:
        raise NotImplementedError

    def _write_status(self, status: Status, detail: str | None = None) -> None:
        raise NotImplementedError

    def _generate_all(self, missing: list[int], inputs: Inputs) -> list[Ending]:
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

    def _generate(self, index: int, inputs: Inputs) -> Ending | None:
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

    def _send(self, index: int, send: Send, inputs: Inputs) -> None:
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

    def _call(self, partial_images: int, inputs: Inputs) -> ImageCall:
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
