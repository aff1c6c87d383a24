"""Test app for the host stand-in: records each delivery as a JSON file under PROBE_DIR.

A body starting with `fail` raises, so the host's failure path (redelivery, poison) can be seen.
The timer function is there to be skipped: the stand-in runs queue triggers only.
"""

import json
import logging
import os
import time
import uuid
from pathlib import Path

import azure.functions as func

app = func.FunctionApp()
log = logging.getLogger(__name__)


@app.queue_trigger(arg_name="msg", queue_name="%BASIC_QUEUE%", connection="MyStorage")
def record(msg: func.QueueMessage, context: func.Context) -> None:
    body = msg.get_body()
    entry = {
        "id": msg.id,
        "body_hex": body.hex(),
        "dequeue_count": msg.dequeue_count,
        "pop_receipt": msg.pop_receipt,
        "insertion_time": msg.insertion_time.isoformat() if msg.insertion_time else None,
        "expiration_time": msg.expiration_time.isoformat() if msg.expiration_time else None,
        "time_next_visible": msg.time_next_visible.isoformat() if msg.time_next_visible else None,
        "invocation_id": context.invocation_id,
        "function_name": context.function_name,
        "function_directory": context.function_directory,
        "setting_from_file": os.environ.get("FROM_LOCAL_SETTINGS"),
        "at": time.time(),
    }
    probe = Path(os.environ["PROBE_DIR"])
    name = f"{msg.id}-{msg.dequeue_count}-{uuid.uuid4().hex[:6]}.json"
    (probe / (name + ".tmp")).write_text(json.dumps(entry))
    (probe / (name + ".tmp")).rename(probe / name)
    log.info("record saw message %s (dequeue %s)", msg.id, msg.dequeue_count)
    if body.startswith(b"fail"):
        raise ValueError(f"asked to fail: {body[:20]!r}")


@app.timer_trigger(schedule="0 */5 * * * *", arg_name="timer", run_on_startup=False)
def tick(timer: func.TimerRequest) -> None:
    log.info("never run by the local host")
