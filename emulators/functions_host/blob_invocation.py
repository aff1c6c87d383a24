"""One blob-triggered invocation: the blob as `func.InputStream`, functionTimeout, the host's log lines.

The worker hands a blob trigger's function an `InputStream` whose `name` is `container/blob` (the
`BlobTrigger` metadata), with `length`, `uri`, the blob's properties and metadata. A `def` function
runs on a worker thread and an `async def` one on an event loop of that thread; past functionTimeout
the invocation counts as failed (a thread cannot be killed, so it is left to finish unobserved).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func

from emulators.functions_host.app_loader import BlobFunction
from emulators.functions_host.invocation import InvocationContext, log_executed

log = logging.getLogger("functions_host")


@dataclass(frozen=True, slots=True)
class BlobVersion:
    """One blob as listed: the version (ETag) a trigger fires for, and what the binding exposes."""

    container: str
    name: str
    etag: str
    url: str
    length: int
    content_type: str | None
    blob_type: str
    bindings: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"{self.container}/{self.name}"


def input_stream(blob: BlobVersion, data: bytes, properties: dict[str, Any],
                 metadata: dict[str, str]) -> func.InputStream:  # fmt: skip
    return func.blob.InputStream(
        data=data, name=blob.path, uri=blob.url, length=len(data),
        blob_properties=properties, metadata=metadata,
    )  # fmt: skip


def _call(function: BlobFunction, arguments: dict[str, Any]) -> None:
    if function.is_async:
        asyncio.run(function.user_function(**arguments))
    else:
        function.user_function(**arguments)


@dataclass(frozen=True, slots=True)
class BlobInvoker:
    """Runs a blob function with the host's timeout and logs; returns the error, None on success."""

    function: BlobFunction
    pool: Executor
    function_timeout_s: float | None
    function_timeout_text: str
    clock: Callable[[], float] = time.monotonic

    def invoke(self, blob: BlobVersion, stream: func.InputStream) -> BaseException | None:
        invocation_id = str(uuid.uuid4())
        log.info(
            "Executing '%s' (Reason='New blob detected(%s): %s', Id=%s)",
            self.function.full_name, self.function.source, blob.path, invocation_id,
        )  # fmt: skip
        arguments: dict[str, Any] = {self.function.arg_name: stream}
        if self.function.wants_context:
            arguments["context"] = InvocationContext(
                invocation_id, self.function.name, self.function.directory
            )
        started = self.clock()
        future = self.pool.submit(_call, self.function, arguments)
        error: BaseException | None
        try:
            future.result(timeout=self.function_timeout_s)
            error = None
        except FutureTimeout:
            log.error(
                "Timeout value of %s exceeded by function '%s' (Id: '%s'). Initiating cancellation.",
                self.function_timeout_text, self.function.full_name, invocation_id,
            )  # fmt: skip
            error = TimeoutError(
                f"Timeout value of {self.function_timeout_text} was exceeded by function: "
                f"{self.function.full_name}"
            )
        except BaseException as raised:  # the worker reports whatever the function raised
            error = raised
        log_executed(self.function, invocation_id, self.clock() - started, error)
        return error
