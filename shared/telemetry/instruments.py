"""The metrics, fed from attempt records and blob writes.

Attributes stay few and bounded (deployment, outcome, kind of blob): every distinct combination
is a time series someone pays for. Durations are in seconds, as the OpenTelemetry conventions say.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.metrics import Counter, Histogram, Meter
from opentelemetry.metrics import _Gauge as Gauge  # the synchronous gauge (still experimental)

from shared.records.attempts import AttemptRecord, Outcome

# Buckets for calls that take from a fraction of a second (a 429) to minutes (a large image).
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


@dataclass(frozen=True, slots=True)
class Instruments:
    attempts: Counter
    rate_limited: Counter
    retry_after: Histogram
    attempt_duration: Histogram
    first_partial: Histogram
    headers: Histogram
    queue_wait: Histogram
    deliveries: Counter
    images_written: Counter
    bytes_written: Counter
    quota_used: Gauge
    rpm: Mapping[str, int]  # configured requests per minute by deployment name

    @classmethod
    def create(cls, meter: Meter, rpm: Mapping[str, int]) -> Instruments:
        def seconds(name: str, description: str) -> Histogram:
            return meter.create_histogram(
                name,
                unit="s",
                description=description,
                explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
            )

        return cls(
            attempts=meter.create_counter(
                "imagegen.attempts", unit="{attempt}", description="Calls to the image API"
            ),
            rate_limited=meter.create_counter(
                "imagegen.rate_limited", unit="{attempt}", description="Calls answered 429"
            ),
            retry_after=seconds(
                "imagegen.retry_after",
                "The wait a 429 asked for; the planner waits it out before the next call there",
            ),
            attempt_duration=seconds("imagegen.attempt.duration", "One call, start to end"),
            first_partial=seconds(
                "imagegen.attempt.time_to_first_partial", "From sending a call to its first partial"
            ),
            headers=seconds("imagegen.attempt.time_to_headers", "From sending a call to headers"),
            queue_wait=seconds(
                "imagegen.queue.wait", "From the message's enqueue to the delivery's first call"
            ),
            deliveries=meter.create_counter(
                "imagegen.deliveries", unit="{delivery}", description="Queue deliveries handled"
            ),
            images_written=meter.create_counter(
                "imagegen.images.written", unit="{image}", description="Images stored"
            ),
            bytes_written=meter.create_counter(
                "imagegen.blob.bytes_written", unit="By", description="Bytes uploaded, by kind"
            ),
            quota_used=meter.create_gauge(
                "imagegen.quota.used",
                unit="1",
                description="Share of the deployment's requests-per-minute budget in use, "
                "from its x-ratelimit-* headers at the last call",
            ),
            rpm=dict(rpm),
        )

    def attempt(self, record: AttemptRecord, *, queue_wait_s: float | None) -> None:
        deployment = {"imagegen.deployment": record.deployment}
        self.attempts.add(1, {**deployment, "imagegen.outcome": record.outcome.value})
        self.attempt_duration.record(
            record.elapsed_s, {**deployment, "imagegen.outcome": record.outcome.value}
        )
        if record.outcome is Outcome.RATE_LIMITED:
            self.rate_limited.add(1, deployment)
            if record.retry_after_s is not None:
                self.retry_after.record(record.retry_after_s, deployment)
        if record.headers_s is not None:
            self.headers.record(record.headers_s, deployment)
        if record.partials_received and record.first_event_s is not None:
            self.first_partial.record(record.first_event_s, deployment)
        if queue_wait_s is not None:
            # A later attempt means an earlier delivery ran: the wait includes a continuation's
            # deliberate delay, so it is told apart from a first delivery's.
            self.queue_wait.record(queue_wait_s, {"imagegen.continued": record.attempt > 1})
        used = quota_used(record.ratelimit, self.rpm.get(record.deployment))
        if used is not None:
            self.quota_used.set(used, deployment)

    def delivery(self, result: str) -> None:
        self.deliveries.add(1, {"imagegen.result": result})

    def written(self, kind: str, size: int) -> None:
        self.bytes_written.add(size, {"imagegen.blob.kind": kind})
        if kind == "image":
            self.images_written.add(1)


def quota_used(ratelimit: Mapping[str, str], configured_rpm: int | None) -> float | None:
    """1 - remaining / limit from the headers (the configured RPM when no limit header came)."""
    remaining = _number(ratelimit.get("x-ratelimit-remaining-requests"))
    limit = _number(ratelimit.get("x-ratelimit-limit-requests")) or configured_rpm
    if remaining is None or not limit:
        return None
    return min(1.0, max(0.0, 1 - remaining / limit))


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
