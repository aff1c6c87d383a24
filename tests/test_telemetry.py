"""shared.telemetry with the SDK's in-memory exporter and reader: what each span and metric says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from shared.contract.request import GenerationRequest, validate_request
from shared.records.attempts import AttemptRecord, ErrorInfo, Outcome, iso_utc
from shared.settings import Settings
from shared.telemetry import NO_TRACE, Delivery, Telemetry, telemetry_from_settings
from shared.telemetry.instruments import Instruments, quota_used

PROMPT = "a secret garden at dawn"
HOST_TRACEPARENT = "00-11111111111111111111111111111111-2222222222222222-01"
STARTED = datetime(2026, 5, 7, 13, 46, 12, 190000, tzinfo=UTC)


@dataclass
class Recorded:
    telemetry: Telemetry
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name == name]

    def points(self, metric: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        found.extend(m.data.data_points)
        return found


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry = Telemetry(
        tracer=tracer_provider.get_tracer("test"),
        instruments=Instruments.create(meter_provider.get_meter("test"), {"d1": 10}),
        queue_name="image-requests",
    )
    yield Recorded(telemetry, spans, reader)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def request(**fields: Any) -> GenerationRequest:
    return validate_request(
        {"id": "req-1", "prompt": PROMPT, "size": "1024x1024", "quality": "low", "n": 2, **fields}
    )


def record(outcome: Outcome = Outcome.SUCCEEDED, **fields: Any) -> AttemptRecord:
    values: dict[str, Any] = {
        "attempt": 1,
        "image_index": 0,
        "deployment": "d1",
        "started_at": iso_utc(STARTED),
        "elapsed_s": 12.5,
        "first_event_s": 3.0,
        "http_status": 200,
        "apim_request_id": "apim-1",
        "x_request_id": "x-1",
        "partial_images_sent": 1,
        "partials_received": 1,
        "outcome": outcome,
        "headers_s": 0.4,
        "ratelimit": {"x-ratelimit-remaining-requests": "7", "x-ratelimit-limit-requests": "10"},
    }
    values.update(fields)
    return AttemptRecord(**values)


def test_a_delivery_span_holds_one_child_per_attempt_with_the_record_s_facts(
    recorded: Recorded,
) -> None:
    delivery = Delivery(dequeue_count=2, inserted_at=STARTED - timedelta(seconds=4))
    failed = record(
        Outcome.SERVER_ERROR,
        error=ErrorInfo("server_error", "server_error", f"it broke on {PROMPT}"),
        apim_request_id="apim-1",
    )
    succeeded = record(attempt=2, apim_request_id="apim-2", x_request_id="x-2")
    with recorded.telemetry.delivery("msg-1", request(), delivery) as tracing:
        tracing.attempt(failed)
        tracing.attempt(succeeded)
        tracing.result("succeeded")

    (root,) = recorded.named("process_image_request")
    assert root.kind is SpanKind.CONSUMER
    assert root.parent is None
    assert dict(root.attributes or {}) == {
        "messaging.system": "azure_storage_queue",
        "messaging.operation.type": "process",
        "messaging.message.id": "msg-1",
        "messaging.destination.name": "image-requests",
        "imagegen.delivery.dequeue_count": 2,
        "imagegen.request.id": "req-1",
        "imagegen.request.operation": "generate",
        "imagegen.request.size": "1024x1024",
        "imagegen.request.quality": "low",
        "imagegen.request.n": 2,
        "imagegen.request.output_format": "png",
        "imagegen.result": "succeeded",
    }
    first, second = recorded.named("image_api.attempt")
    for span in (first, second):
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert span.context.trace_id == root.context.trace_id
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "server_error 200 (server_error)"
    assert second.status.status_code is StatusCode.UNSET
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["imagegen.apim_request_id"] == "apim-1"
    assert second.attributes["imagegen.x_request_id"] == "x-2"
    assert first.attributes["imagegen.outcome"] == "server_error"
    assert first.attributes["imagegen.attempt.number"] == 1
    assert first.attributes["imagegen.image.index"] == 0
    assert first.attributes["http.response.status_code"] == 200
    assert first.attributes["imagegen.attempt.headers_s"] == 0.4
    assert first.attributes["imagegen.attempt.first_event_s"] == 3.0
    assert first.attributes["imagegen.partials.sent"] == 1
    assert first.attributes["imagegen.partials.received"] == 1
    # The span runs when the call ran, not when it was recorded.
    assert first.start_time == int(STARTED.timestamp() * 1e9)
    assert first.end_time == first.start_time + int(12.5 * 1e9)


def test_no_attribute_or_status_carries_the_prompt_or_the_error_text(recorded: Recorded) -> None:
    error = ErrorInfo("invalid_request_error", "moderation_blocked", f"refused: {PROMPT}")
    with recorded.telemetry.delivery("msg-1", request(user="alice"), None) as tracing:
        tracing.attempt(record(Outcome.CONTENT_FILTER, error=error, http_status=400))
        tracing.result("failed")
    for span in recorded.finished():
        text = json.dumps({**dict(span.attributes or {}), "status": span.status.description})
        assert PROMPT not in text and "refused" not in text and "alice" not in text


def test_a_continuation_carries_the_trace_and_the_next_delivery_joins_it(
    recorded: Recorded,
) -> None:
    original = request()
    with recorded.telemetry.delivery("msg-1", original, None) as tracing:
        carried = tracing.carry(original)
    assert carried.traceparent is not None
    assert carried.request_hash() == original.request_hash()
    # The next delivery parses the message it was given: the traceparent survives the round trip.
    next_request = validate_request(json.loads(carried.to_message()))
    host = Delivery(dequeue_count=1, host_traceparent=HOST_TRACEPARENT)
    with recorded.telemetry.delivery("msg-2", next_request, host) as tracing:
        tracing.result("succeeded")
    first, second = recorded.named("process_image_request")
    assert second.context.trace_id == first.context.trace_id
    assert second.parent is not None and second.parent.span_id == first.context.span_id
    # The host's invocation span is linked, not the parent.
    (link,) = second.links
    assert f"{link.context.trace_id:032x}" == "1" * 32


def test_without_a_carried_trace_the_host_s_span_is_the_parent(recorded: Recorded) -> None:
    host = Delivery(host_traceparent=HOST_TRACEPARENT)
    with recorded.telemetry.delivery("msg-1", request(), host):
        pass
    (span,) = recorded.finished()
    assert f"{span.context.trace_id:032x}" == "1" * 32
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "2" * 16
    assert span.links == ()


def test_an_exception_marks_the_delivery_failed(recorded: Recorded) -> None:
    with (
        pytest.raises(RuntimeError, match="lease lost"),
        recorded.telemetry.delivery("msg-1", request(), None),
    ):
        raise RuntimeError("lease lost")
    (span,) = recorded.finished()
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


def test_a_rejected_message_still_gets_a_span_without_request_attributes(
    recorded: Recorded,
) -> None:
    with recorded.telemetry.delivery("msg-9", None, None) as tracing:
        tracing.result("rejected")
    (span,) = recorded.finished()
    attributes = dict(span.attributes or {})
    assert attributes["messaging.message.id"] == "msg-9"
    assert "imagegen.request.id" not in attributes
    assert span.status.status_code is StatusCode.UNSET


def test_blob_writes_are_spans_under_the_current_delivery_and_count_bytes(
    recorded: Recorded,
) -> None:
    with recorded.telemetry.delivery("msg-1", request(), None):
        with recorded.telemetry.blob_write("image", "req-1/0.png", 2048):
            pass
        with recorded.telemetry.blob_write("status", "req-1/status.json", 100):
            pass
    root = recorded.named("process_image_request")[0]
    image, status = recorded.named("blob.write")
    assert image.parent is not None and image.parent.span_id == root.context.span_id
    assert dict(image.attributes or {}) == {
        "imagegen.blob.kind": "image",
        "imagegen.blob.name": "req-1/0.png",
        "imagegen.bytes": 2048,
    }
    assert status.attributes is not None and status.attributes["imagegen.blob.kind"] == "status"
    by_kind = {
        p.attributes["imagegen.blob.kind"]: p.value
        for p in recorded.points("imagegen.blob.bytes_written")
    }
    assert by_kind == {"image": 2048, "status": 100}
    (images,) = recorded.points("imagegen.images.written")
    assert images.value == 1


def test_a_failed_blob_write_is_an_error_span_and_counts_nothing(recorded: Recorded) -> None:
    with pytest.raises(OSError), recorded.telemetry.blob_write("manifest", "r/manifest.json", 9):
        raise OSError("storage down")
    (span,) = recorded.finished()
    assert span.status.status_code is StatusCode.ERROR
    assert recorded.points("imagegen.blob.bytes_written") == []


def test_attempt_metrics_by_outcome_and_deployment(recorded: Recorded) -> None:
    inserted = STARTED - timedelta(seconds=4)
    with recorded.telemetry.delivery("m", request(), Delivery(inserted_at=inserted)) as tracing:
        tracing.attempt(
            record(
                Outcome.RATE_LIMITED,
                http_status=429,
                retry_after_s=6.0,
                first_event_s=None,
                partials_received=0,
                ratelimit={"x-ratelimit-remaining-requests": "0"},
            )
        )
        tracing.attempt(record(attempt=2))
    counts = {
        (p.attributes["imagegen.deployment"], p.attributes["imagegen.outcome"]): p.value
        for p in recorded.points("imagegen.attempts")
    }
    assert counts == {("d1", "rate_limited"): 1, ("d1", "succeeded"): 1}
    (limited,) = recorded.points("imagegen.rate_limited")
    assert limited.value == 1
    (retry_after,) = recorded.points("imagegen.retry_after")
    assert (retry_after.count, retry_after.sum) == (1, 6.0)
    # Only the attempt that received a partial says when the first partial came.
    (first_partial,) = recorded.points("imagegen.attempt.time_to_first_partial")
    assert (first_partial.count, first_partial.sum) == (1, 3.0)
    # One queue wait per delivery: insertion to the first call.
    (wait,) = recorded.points("imagegen.queue.wait")
    assert (wait.count, wait.sum) == (1, pytest.approx(4.0))
    assert wait.attributes == {"imagegen.continued": False}
    # The last headers win: 7 of 10 remaining.
    (used,) = recorded.points("imagegen.quota.used")
    assert used.value == pytest.approx(0.3)


def test_queue_wait_falls_back_to_the_request_s_created_at(recorded: Recorded) -> None:
    created = iso_utc(STARTED - timedelta(seconds=90))
    with recorded.telemetry.delivery("m", request(), None) as tracing:
        tracing.attempt(record(attempt=3), enqueued_at=created)
    (wait,) = recorded.points("imagegen.queue.wait")
    assert wait.sum == pytest.approx(90.0)
    assert wait.attributes == {"imagegen.continued": True}


def test_quota_used_from_the_headers_or_the_configured_rpm() -> None:
    assert (
        quota_used({"x-ratelimit-remaining-requests": "2", "x-ratelimit-limit-requests": "8"}, 10)
        == 0.75
    )
    assert quota_used({"x-ratelimit-remaining-requests": "9"}, 10) == pytest.approx(0.1)
    assert quota_used({"x-ratelimit-remaining-requests": "nine"}, 10) is None
    assert quota_used({}, 10) is None
    assert quota_used({"x-ratelimit-remaining-requests": "3"}, None) is None


def test_disabled_telemetry_makes_no_span_and_changes_nothing() -> None:
    settings = Settings.from_env(
        {
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:8090",
            "AZURE_OPENAI_DEPLOYMENT": "d1",
        }
    )
    telemetry = telemetry_from_settings(settings)
    assert telemetry == Telemetry.disabled() and not telemetry.enabled
    original = request()
    with telemetry.delivery("msg-1", original, Delivery(dequeue_count=1)) as tracing:
        assert tracing is NO_TRACE
        assert tracing.carry(original) is original
        tracing.attempt(record())
        assert not trace.get_current_span().get_span_context().is_valid
    with telemetry.blob_write("image", "r/0.png", 1):
        assert not trace.get_current_span().get_span_context().is_valid
    # Nothing set the process's providers.
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)


def test_delivery_of_reads_what_the_host_passes() -> None:
    @dataclass
    class Message:
        dequeue_count: int
        insertion_time: datetime

    @dataclass
    class TraceContext:
        trace_parent: str

    @dataclass
    class Context:
        trace_context: TraceContext | None

    got = Delivery.of(Message(3, STARTED), Context(TraceContext(HOST_TRACEPARENT)))
    assert got == Delivery(3, STARTED, HOST_TRACEPARENT)
    assert Delivery.of(Message(1, STARTED), Context(None)).host_traceparent is None
    assert Delivery.of(Message(1, STARTED)).host_traceparent is None
