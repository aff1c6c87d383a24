"""The exporters, chosen by settings, set up once per process.

OpenTelemetry's providers are process-wide (they can be set once), so the first call decides and
later calls with the same settings get the same `Telemetry`. The SDK and the exporters are imported
only when a setting asks for them: with neither set, the app starts without loading them.

The Azure Monitor distro's library instrumentations (requests, urllib3, the Azure SDK) are turned
off: the app's own spans already cover each image call and each blob write, and the others would
count every call twice and every lease renewal once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from opentelemetry import metrics, trace

from shared.settings import Settings
from shared.telemetry.instruments import Instruments
from shared.telemetry.spans import Telemetry

INSTRUMENTATION_SCOPE = "imagegen"
# The app's own loggers (`imagegen.*` and the modules under `shared`): their records are exported
# with the trace and span id current when they were logged. The host's and libraries' are not.
APP_LOGGERS = ("imagegen", "shared")
_DISTRO_INSTRUMENTATIONS = (
    "azure_sdk",
    "requests",
    "urllib",
    "urllib3",
    "httpx",
    "django",
    "flask",
    "fastapi",
    "psycopg2",
)
_DISTRO_INSTRUMENTATIONS_OFF = {name: {"enabled": False} for name in _DISTRO_INSTRUMENTATIONS}

log = logging.getLogger("imagegen.telemetry")
_lock = threading.Lock()
_configured: dict[tuple[str | None, str | None, str], Telemetry] = {}


def telemetry_from_settings(settings: Settings) -> Telemetry:
    """This process's telemetry: exporters per the settings, or `Telemetry.disabled()`."""
    if settings.appinsights_connection_string is None and settings.otlp_endpoint is None:
        return Telemetry.disabled()
    key = (settings.appinsights_connection_string, settings.otlp_endpoint, settings.service_name)
    with _lock:
        if key not in _configured:
            if _configured:
                # The providers are set; a second configuration would be silently ignored.
                raise RuntimeError("telemetry is already set up with other settings")
            _configure(settings)
            _configured[key] = Telemetry(
                tracer=trace.get_tracer(INSTRUMENTATION_SCOPE),
                instruments=Instruments.create(
                    metrics.get_meter(INSTRUMENTATION_SCOPE),
                    {d.name: d.rpm for d in settings.deployments},
                ),
                queue_name=settings.requests_queue,
            )
        return _configured[key]


def _configure(settings: Settings) -> None:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create({SERVICE_NAME: settings.service_name})
    otlp = _otlp_pipeline(settings.otlp_endpoint) if settings.otlp_endpoint else None
    if settings.appinsights_connection_string is not None:
        from azure.monitor.opentelemetry import configure_azure_monitor

        # APPLICATIONINSIGHTS_AUTHENTICATION_STRING (Entra ID, the Bicep sets it) is read by the
        # exporter itself; the connection string is passed, never logged.
        configure_azure_monitor(
            connection_string=settings.appinsights_connection_string,
            resource=resource,
            logger_name=APP_LOGGERS[0],
            instrumentation_options=_DISTRO_INSTRUMENTATIONS_OFF,
            enable_live_metrics=False,
            **(otlp or {}),
        )
        _attach_log_handler(APP_LOGGERS[1:])
        log.info("telemetry: Azure Monitor%s", " and OTLP" if otlp else "")
        return
    if otlp is not None:
        _set_otlp_providers(resource, otlp)
        _attach_log_handler(APP_LOGGERS)
        log.info("telemetry: OTLP over HTTP")  # not the endpoint: a URL may hold credentials


def _otlp_pipeline(endpoint: str) -> dict[str, list[Any]]:
    """Processors and a reader sending to `endpoint`'s /v1/traces, /v1/metrics and /v1/logs.

    OTEL_EXPORTER_OTLP_HEADERS (a collector's token) and the OTEL_BSP_*, OTEL_BLRP_* and
    OTEL_METRIC_EXPORT_* tuning variables are the SDK's own: it reads them itself.
    """
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return {
        "span_processors": [BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"))],
        "metric_readers": [
            PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"))
        ],
        "log_record_processors": [
            BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{endpoint}/v1/logs"))
        ],
    }


def _set_otlp_providers(resource: Any, otlp: dict[str, list[Any]]) -> None:
    from opentelemetry._logs import set_logger_provider
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    tracer_provider = TracerProvider(resource=resource)
    for processor in otlp["span_processors"]:
        tracer_provider.add_span_processor(processor)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(
        MeterProvider(resource=resource, metric_readers=otlp["metric_readers"])
    )
    logger_provider = LoggerProvider(resource=resource)
    for log_processor in otlp["log_record_processors"]:
        logger_provider.add_log_record_processor(log_processor)
    set_logger_provider(logger_provider)


def _attach_log_handler(names: tuple[str, ...]) -> None:
    from opentelemetry.instrumentation.logging.handler import LoggingHandler

    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(h, LoggingHandler) for h in logger.handlers):
            logger.addHandler(LoggingHandler())
