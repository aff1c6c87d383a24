"""Test app for the host stand-in: a `def` function that holds its thread, to observe concurrency.

Body: {"seconds": s} sleeps s seconds; {"hold": true} waits until the file PROBE_DIR/release or
PROBE_DIR/release-<message id> exists.
Files under PROBE_DIR: started-<id>-<dequeue>, done-<id>-<dequeue>, running-<id>-<dequeue> while
running, and max_running (the most invocations seen running at once in this process).
"""

import json
import os
import threading
import time
from pathlib import Path

import azure.functions as func

app = func.FunctionApp()

_lock = threading.Lock()
_running = 0
_max_running = 0


def _touch(path: Path, text: str = "") -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.rename(path)


@app.queue_trigger(arg_name="msg", queue_name="%SLOW_QUEUE%", connection="")
def hold(msg: func.QueueMessage) -> None:
    global _running, _max_running
    probe = Path(os.environ["PROBE_DIR"])
    spec = json.loads(msg.get_body())
    key = f"{msg.id}-{msg.dequeue_count}"
    with _lock:
        _running += 1
        _max_running = max(_max_running, _running)
        _touch(probe / "max_running", str(_max_running))
    _touch(probe / f"started-{key}")
    _touch(probe / f"running-{key}")
    try:
        if "seconds" in spec:
            time.sleep(spec["seconds"])
        else:
            deadline = time.monotonic() + 120
            releases = (probe / "release", probe / f"release-{msg.id}")
            while not any(p.exists() for p in releases) and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        (probe / f"running-{key}").unlink()
        with _lock:
            _running -= 1
    _touch(probe / f"done-{key}")
