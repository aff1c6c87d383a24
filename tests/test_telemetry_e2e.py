"""Telemetry end to end: function_app.py in the host stand-in exports OTLP/HTTP to a local receiver.

Every emulator call's apim-request-id must be found on an attempt span, the failed attempt's span
must say ERROR, the attempts of a retried request must share one trace (in one delivery, and
across a continuation through the message's traceparent), and the metrics and logs must arrive.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from conftest import Emulator
from otlp_receiver import OtlpReceiver, Received, Span
from product_stack import Product

from devtools.services import wait_until

pytestmark = pytest.mark.slow

STATUS_ERROR = 2
SPAN_KIND_CONSUMER = 5


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture
def traced_product(product_factory: Callable[..., Product], receiver: OtlpReceiver) -> Product:
    return product_factory(
        overrides={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_SERVICE_NAME": "imagegen-e2e",
            # The SDK's own tuning variables: export within moments, not every 5 s / 60 s.
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_BLRP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "300",
            # A 1.5 s retry-after is longer than this: the request continues by a new message.
            "IMAGE_INLINE_WAIT_MAX_S": "1",
        }
    )


def attempt_spans(received: Received, request_id: str) -> list[Span]:
    deliveries = {
        s.span_id
        for s in received.spans
        if s.name == "process_image_request"
        and s.attributes.get("imagegen.request.id") == request_id
    }
    return [
        s
        for s in received.spans
        if s.name == "image_api.attempt" and s.parent_span_id in deliveries
    ]


def wait_for(
    receiver: OtlpReceiver, what: str, ready: Callable[[Received], bool], product: Product
) -> Received:
    try:
        wait_until(lambda: ready(receiver.received.snapshot()), 30, interval=0.1, what=what)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n--- host log ---\n{product.host.log_tail(40)}") from None
    return receiver.received.snapshot()


def test_every_call_is_an_attempt_span_and_a_retried_request_is_one_trace(
    traced_product: Product, emulator: Emulator, receiver: OtlpReceiver
) -> None:
    text = f"crash {uuid.uuid4().hex[:8]}"
    emulator.script({"outcome": "server_error", "after_partials": 1, "prompt_contains": text})
    rid = traced_product.client.submit({"prompt": text, "size": "1024x1024", "quality": "low"})
    manifest = traced_product.wait_terminal(rid)
    assert manifest["status"] == "succeeded"
    calls = emulator.calls_for(text)
    assert len(calls) == 2

    received = wait_for(
        receiver, "two attempt spans", lambda r: len(attempt_spans(r, rid)) == 2, traced_product
    )
    spans = attempt_spans(received, rid)
    by_apim = {s.attributes.get("imagegen.apim_request_id"): s for s in spans}
    assert set(by_apim) == {c["apim_request_id"] for c in calls}
    failed, succeeded = (by_apim[c["apim_request_id"]] for c in calls)
    assert failed.attributes["imagegen.outcome"] == "server_error"
    assert failed.status_code == STATUS_ERROR
    assert succeeded.attributes["imagegen.outcome"] == "succeeded"
    assert succeeded.status_code != STATUS_ERROR
    assert failed.trace_id == succeeded.trace_id
    assert [
        failed.attributes["imagegen.attempt.number"],
        succeeded.attributes["imagegen.attempt.number"],
    ] == [1, 2]
    (delivery,) = [s for s in received.spans if s.span_id == failed.parent_span_id]
    assert delivery.kind == SPAN_KIND_CONSUMER
    assert delivery.service == "imagegen-e2e"
    assert delivery.attributes["imagegen.delivery.dequeue_count"] == 1
    assert delivery.attributes["imagegen.result"] == "succeeded"
    writes = [
        s for s in received.spans if s.name == "blob.write" and s.trace_id == delivery.trace_id
    ]
    assert {"image", "manifest", "status"} <= {s.attributes["imagegen.blob.kind"] for s in writes}
    for span in received.spans:
        assert text not in str(span.attributes), "no prompt in any attribute"

    received = wait_for(
        receiver,
        "metrics and correlated logs",
        lambda r: (
            {"imagegen.attempts", "imagegen.queue.wait", "imagegen.images.written"}
            <= r.metric_names
            and any(log["trace_id"] == delivery.trace_id for log in r.logs)
        ),
        traced_product,
    )
    outcomes = {
        next(kv.value.string_value for kv in p.attributes if kv.key == "imagegen.outcome")
        for p in received.metric_points["imagegen.attempts"]
    }
    assert {"server_error", "succeeded"} <= outcomes
    attempt_logs = [
        log
        for log in received.logs
        if log["trace_id"] == delivery.trace_id and "attempt id=" in str(log["body"])
    ]
    assert len(attempt_logs) == 2, "each attempt's log line carries the delivery's trace"


def test_a_continuation_s_delivery_joins_the_request_s_trace(
    traced_product: Product, emulator: Emulator, receiver: OtlpReceiver
) -> None:
    text = f"busy {uuid.uuid4().hex[:8]}"
    # Emulated time: 150 s at the x0.01 clock is a retry-after-ms of 1500 on the wire.
    emulator.script({"outcome": "rate_limited", "retry_after_ms": 150_000, "prompt_contains": text})
    rid = traced_product.client.submit({"prompt": text, "size": "1024x1024", "quality": "low"})
    manifest = traced_product.wait_terminal(rid)
    assert manifest["status"] == "succeeded"
    assert [a["outcome"] for a in manifest["attempts"]] == ["rate_limited", "succeeded"]

    def two_deliveries(r: Received) -> bool:
        return len(attempt_spans(r, rid)) == 2 and len(deliveries_of(r, rid)) == 2

    received = wait_for(receiver, "two deliveries", two_deliveries, traced_product)
    first, second = sorted(
        deliveries_of(received, rid), key=lambda s: s.attributes["imagegen.result"] != "requeued"
    )
    assert first.attributes["imagegen.result"] == "requeued"
    assert second.attributes["imagegen.result"] == "succeeded"
    assert second.trace_id == first.trace_id
    assert second.parent_span_id == first.span_id
    limited, succeeded = sorted(
        attempt_spans(received, rid), key=lambda s: s.attributes["imagegen.attempt.number"]
    )
    assert limited.attributes["http.response.status_code"] == 429
    assert limited.status_code == STATUS_ERROR
    assert (limited.trace_id, succeeded.trace_id) == (first.trace_id, first.trace_id)
    assert {c["apim_request_id"] for c in emulator.calls_for(text)} == {
        s.attributes["imagegen.apim_request_id"] for s in (limited, succeeded)
    }
    received = wait_for(
        receiver,
        "429 metrics",
        lambda r: {"imagegen.rate_limited", "imagegen.retry_after"} <= r.metric_names,
        traced_product,
    )


def deliveries_of(received: Received, request_id: str) -> list[Span]:
    return [
        s
        for s in received.spans
        if s.name == "process_image_request"
        and s.attributes.get("imagegen.request.id") == request_id
    ]
