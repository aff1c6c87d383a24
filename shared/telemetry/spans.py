"""The spans: one per delivery of a request, one per attempt under it, one per blob write.

A delivery's span is the parent of everything the delivery does. Its parent in turn is the trace
the request carries (`traceparent` in the message: a producer's, or the previous delivery's when a
continuation re-enqueued the work), so every delivery of one request lands in one trace; the
host's own invocation span, when the host passes one, is linked instead. Without a traceparent the
host's span is the parent.

An attempt span is built after the call, from its `AttemptRecord` (which knows the start, the
duration and everything else), so the wire stays free of telemetry. Attributes carry ids, sizes,
counts and outcomes: never a prompt, a key, a token or a connection string.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.contract.request import GenerationRequest
from shared.records.attempts import AttemptRecord, epoch_s
from shared.telemetry.instruments import Instruments

DELIVERY_SPAN = "process_image_request"
ATTEMPT_SPAN = "image_api.attempt"
BLOB_SPAN = "blob.write"
_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the host tells about one delivery: the queue message's metadata, its trace context."""

    dequeue_count: int | None = None
    inserted_at: datetime | None = None
    host_traceparent: str | None = None

    @classmethod
    def of(cls, message: Any, context: Any = None) -> Delivery:
        """From an `azure.functions.QueueMessage` and the invocation's `func.Context`, if any."""
        trace_context = getattr(context, "trace_context", None)
        return cls(
            dequeue_count=getattr(message, "dequeue_count", None),
            inserted_at=getattr(message, "insertion_time", None),
            host_traceparent=getattr(trace_context, "trace_parent", None) or None,
        )


class DeliveryTrace:
    """What the pipeline reports to a delivery's span; this base does nothing (telemetry off)."""

    def attempt(self, record: AttemptRecord, *, enqueued_at: str | None = None) -> None:
        """One call made, as its record says; `enqueued_at` (status.json's created_at) stands in
        for the message's insertion time when the host gave none."""

    def carry(self, request: GenerationRequest) -> GenerationRequest:
        """`request` to re-enqueue, carrying this delivery's trace context."""
        return request

    def result(self, result: str) -> None:
        """How the delivery ended (`pipeline.Result`)."""


NO_TRACE = DeliveryTrace()


class _LiveTrace(DeliveryTrace):
    def __init__(
        self,
        telemetry: Telemetry,
        span: trace.Span,
        delivery: Delivery,
    ) -> None:
        self._telemetry = telemetry
        self._span = span
        self._context = trace.set_span_in_context(span)
        self._delivery = delivery
        self._first_call_seen = False
        self._lock = threading.Lock()  # image calls may run on several threads

    def attempt(self, record: AttemptRecord, *, enqueued_at: str | None = None) -> None:
        start_ns = int(epoch_s(record.started_at) * 1e9)
        span = self._telemetry.tracer.start_span(
            ATTEMPT_SPAN,
            context=self._context,  # explicit: the call may have run on another thread
            kind=SpanKind.CLIENT,
            start_time=start_ns,
            attributes=attempt_attributes(record),
        )
        if not record.succeeded:
            span.set_status(Status(StatusCode.ERROR, _failure(record)))
        span.end(end_time=start_ns + int(record.elapsed_s * 1e9))
        with self._lock:
            first, self._first_call_seen = not self._first_call_seen, True
        queue_wait_s = None
        if first:
            enqueued = (
                self._delivery.inserted_at.timestamp() if self._delivery.inserted_at else None
            )
            if enqueued is None and enqueued_at:
                enqueued = epoch_s(enqueued_at)
            if enqueued is not None:
                queue_wait_s = max(0.0, epoch_s(record.started_at) - enqueued)
        self._telemetry.instruments.attempt(record, queue_wait_s=queue_wait_s)

    def carry(self, request: GenerationRequest) -> GenerationRequest:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=self._context)
        traceparent = carrier.get("traceparent")
        if traceparent is None:
            return request
        # Validated by construction: the propagator writes the W3C form the contract accepts.
        return request.model_copy(update={"traceparent": traceparent})

    def result(self, result: str) -> None:
        self._span.set_attribute("imagegen.result", result)
        if result == "failed":
            self._span.set_status(Status(StatusCode.ERROR, "the request failed"))
        self._telemetry.instruments.delivery(result)


@dataclass(frozen=True, slots=True)
class Telemetry:
    """The process's tracer and instruments; `disabled()` has neither and calls nothing."""

    tracer: Tracer | None = None
    instruments: Instruments | None = None
    queue_name: str | None = None

    @classmethod
    def disabled(cls) -> Telemetry:
        return cls()

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @contextlib.contextmanager
    def delivery(
        self, message_id: str, request: GenerationRequest | None, delivery: Delivery | None
    ) -> Iterator[DeliveryTrace]:
        """The span of one delivery, current while the pipeline works on it."""
        if self.tracer is None:
            yield NO_TRACE
            return
        delivery = delivery or Delivery()
        parent, links = _parent_and_links(request, delivery)
        attributes = delivery_attributes(message_id, request, delivery, self.queue_name)
        with self.tracer.start_as_current_span(
            DELIVERY_SPAN,
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
        ) as span:
            yield _LiveTrace(self, span, delivery)

    @contextlib.contextmanager
    def blob_write(self, kind: str, blob: str, size: int) -> Iterator[None]:
        """A span around one blob upload; counts the bytes once it succeeded."""
        if self.tracer is None or self.instruments is None:
            yield
            return
        attributes = {
            "imagegen.blob.kind": kind,
            "imagegen.blob.name": blob,
            "imagegen.bytes": size,
        }
        with self.tracer.start_as_current_span(
            BLOB_SPAN, kind=SpanKind.CLIENT, attributes=attributes
        ):
            yield
        self.instruments.written(kind, size)


def _parent_and_links(
    request: GenerationRequest | None, delivery: Delivery
) -> tuple[Context | None, list[Link]]:
    host = _context_of(delivery.host_traceparent)
    carried = _context_of(request.traceparent if request is not None else None)
    if carried is None:
        return host, []  # None: the current context (a host that set one), else a new trace
    host_span = trace.get_current_span(host) if host is not None else trace.get_current_span()
    links = [Link(host_span.get_span_context())] if host_span.get_span_context().is_valid else []
    return carried, links


def _context_of(traceparent: str | None) -> Context | None:
    if not traceparent:
        return None
    context = _PROPAGATOR.extract({"traceparent": traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def delivery_attributes(
    message_id: str,
    request: GenerationRequest | None,
    delivery: Delivery,
    queue_name: str | None,
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "messaging.system": "azure_storage_queue",
        "messaging.operation.type": "process",
        "messaging.message.id": message_id,
        "messaging.destination.name": queue_name,
        "imagegen.delivery.dequeue_count": delivery.dequeue_count,
    }
    if request is not None:
        values.update(
            {
                "imagegen.request.id": request.id or message_id,
                "imagegen.request.operation": request.operation,
                "imagegen.request.size": request.size,
                "imagegen.request.quality": request.quality,
                "imagegen.request.n": request.n,
                "imagegen.request.output_format": request.output_format,
            }
        )
    return _present(values)


def attempt_attributes(record: AttemptRecord) -> dict[str, Any]:
    error = record.error
    return _present(
        {
            "http.request.method": "POST",
            "http.response.status_code": record.http_status,
            "imagegen.image.index": record.image_index,
            "imagegen.attempt.number": record.attempt,
            "imagegen.deployment": record.deployment,
            "imagegen.outcome": record.outcome.value,
            "imagegen.apim_request_id": record.apim_request_id,
            "imagegen.x_request_id": record.x_request_id,
            "imagegen.attempt.headers_s": record.headers_s,
            "imagegen.attempt.first_event_s": record.first_event_s,
            "imagegen.partials.sent": record.partial_images_sent,
            "imagegen.partials.received": record.partials_received,
            "imagegen.retry_after_s": record.retry_after_s,
            "imagegen.error.type": error.type if error else None,
            "imagegen.error.code": error.code if error else None,
        }
    )


def _failure(record: AttemptRecord) -> str:
    """The span's error description: the outcome and the service's error code, no free text."""
    code = record.error.code or record.error.type if record.error else None
    status = f" {record.http_status}" if record.http_status is not None else ""
    return f"{record.outcome.value}{status}" + (f" ({code})" if code else "")


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}
