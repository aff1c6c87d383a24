"""Test app for the host stand-in: an `async def` function that waits, without a thread, for release.

Files under PROBE_DIR: started-<id>, done-<id> (with the context's invocation id), max_running.
"""

import asyncio
import os
from pathlib import Path

import azure.functions as func

app = func.FunctionApp()

_running = 0
_max_running = 0


@app.queue_trigger(arg_name="item", queue_name="%ASYNC_QUEUE%", connection="AzureWebJobsStorage")
async def wait_async(item: func.QueueMessage, context: func.Context) -> None:
    global _running, _max_running
    probe = Path(os.environ["PROBE_DIR"])
    _running += 1  # one event loop: no lock needed
    _max_running = max(_max_running, _running)
    (probe / "max_running").write_text(str(_max_running))
    (probe / f"started-{item.id}").write_text("")
    try:
        for _ in range(6000):
            if (probe / "release").exists() or (probe / f"release-{item.id}").exists():
                break
            await asyncio.sleep(0.02)
    finally:
        _running -= 1
    (probe / f"done-{item.id}").write_text(f"{context.invocation_id} {item.get_body().decode()}")
