"""A local OTLP/HTTP receiver: decodes what an app exports with the opentelemetry-proto definitions.

Accepts `POST /v1/traces`, `/v1/metrics` and `/v1/logs` (protobuf, optionally gzip), answers 200
with an empty response message as a collector does, and keeps every span, metric name and log.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_SIGNALS: dict[str, tuple[type[Message], type[Message]]] = {
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse),
    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse),
    "/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse),
}


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    status_code: int  # 2 = ERROR
    attributes: dict[str, Any]
    links: tuple[str, ...]  # linked trace ids
    service: str


@dataclass
class Received:
    spans: list[Span] = field(default_factory=list)
    metric_names: set[str] = field(default_factory=set)
    metric_points: dict[str, list[Any]] = field(default_factory=dict)
    logs: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, message: Any) -> None:
        with self.lock:
            if path == "/v1/traces":
                self._add_spans(message)
            elif path == "/v1/metrics":
                for resource in message.resource_metrics:
                    for scope in resource.scope_metrics:
                        for metric in scope.metrics:
                            self.metric_names.add(metric.name)
                            kind = metric.WhichOneof("data")
                            points = list(getattr(metric, kind).data_points) if kind else []
                            self.metric_points.setdefault(metric.name, []).extend(points)
            else:
                for resource in message.resource_logs:
                    for scope in resource.scope_logs:
                        for record in scope.log_records:
                            self.logs.append(
                                {
                                    "body": _value(record.body),
                                    "trace_id": record.trace_id.hex(),
                                    "span_id": record.span_id.hex(),
                                }
                            )

    def _add_spans(self, message: Any) -> None:
        for resource in message.resource_spans:
            service = attributes(resource.resource.attributes).get("service.name", "")
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        Span(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            status_code=span.status.code,
                            attributes=attributes(span.attributes),
                            links=tuple(link.trace_id.hex() for link in span.links),
                            service=service,
                        )
                    )

    def snapshot(self) -> Received:
        with self.lock:
            return Received(
                list(self.spans),
                set(self.metric_names),
                {k: list(v) for k, v in self.metric_points.items()},
                list(self.logs),
            )


class OtlpReceiver:
    def __init__(self) -> None:
        self.received = Received()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                signal = _SIGNALS.get(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if signal is None:
                    self.send_error(404)
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request_type, response_type = signal
                message = request_type()
                message.ParseFromString(body)
                received.add(self.path, message)
                payload = response_type().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
