"""Azure Functions entry points: triggers only; the work lives in `shared/`.

Settings are read at import, so a bad or missing one fails the app at start-up with one line
naming it, not on the first message.
"""

from __future__ import annotations

import azure.functions as func

from shared.settings import Settings
from shared.telemetry import Delivery
from shared.worker.pipeline import process_message
from shared.worker.poisoned import record_poisoned
from shared.worker.runtime import Runtime

app = func.FunctionApp()
runtime = Runtime.from_settings(Settings.from_env())


@app.queue_trigger(
    arg_name="msg", queue_name="%IMAGE_REQUESTS_QUEUE%", connection="AzureWebJobsStorage"
)
def process_image_request(msg: func.QueueMessage, context: func.Context) -> None:
    """One generation request: images and manifest.json, or error.json, or a continuation."""
    process_message(msg.get_body(), msg.id, runtime, delivery=Delivery.of(msg, context))


@app.queue_trigger(
    arg_name="msg", queue_name="%IMAGE_REQUESTS_QUEUE%-poison", connection="AzureWebJobsStorage"
)
def record_poisoned_request(msg: func.QueueMessage) -> None:
    """A request the host gave up on: error.json kind `poisoned`, keeping the body for requeue."""
    record_poisoned(msg.get_body(), msg.id, runtime)
