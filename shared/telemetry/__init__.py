"""OpenTelemetry for the worker: spans per delivery, attempt and blob write, and the metrics.

Set up once per process from `Settings` (`telemetry_from_settings`): Azure Monitor when
APPLICATIONINSIGHTS_CONNECTION_STRING is set, OTLP over HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is,
both when both are, and nothing at all when neither is: then `Telemetry.disabled()` makes no
OpenTelemetry call, and the wire (`shared.azure_openai`) never knows telemetry exists.
"""

from shared.telemetry.setup import telemetry_from_settings as telemetry_from_settings
from shared.telemetry.spans import NO_TRACE as NO_TRACE
from shared.telemetry.spans import Delivery as Delivery
from shared.telemetry.spans import DeliveryTrace as DeliveryTrace
from shared.telemetry.spans import Telemetry as Telemetry
