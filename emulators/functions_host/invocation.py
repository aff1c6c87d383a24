"""One invocation: decode the body, build the worker's arguments, call the user code, log like the host.

The function receives what the Python worker would hand it: an `azure.functions.queue.QueueMessage`
with the message's metadata, and a `context` if it declares a parameter of that name.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import logging
import threading
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from azure.functions.queue import QueueMessage

from emulators.functions_host.app_loader import BlobFunction, QueueFunction
from emulators.functions_host.errors import MessageDecodeError

log = logging.getLogger("functions_host")


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A queue message as received: its raw text and the metadata the trigger exposes."""

    id: str
    content: str
    dequeue_count: int
    pop_receipt: str
    insertion_time: datetime.datetime | None
    expiration_time: datetime.datetime | None
    time_next_visible: datetime.datetime | None


class InvocationContext(func.Context):
    """The `context` argument; distributed tracing and retry policies are not emulated (None)."""

    def __init__(self, invocation_id: str, function_name: str, function_directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._thread_local_storage = threading.local()
        self._thread_local_storage.invocation_id = invocation_id

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._thread_local_storage

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def retry_context(self) -> Any:
        return None


def decode_body(content: str, encoding: str) -> bytes:
    """The body the function sees: UTF-8 of the text (`none`) or its base64 decoding (`base64`)."""
    if encoding == "none":
        return content.encode("utf-8")
    try:
        # .NET's Convert.FromBase64String ignores whitespace; so do we.
        return base64.b64decode("".join(content.split()), validate=True)
    except (binascii.Error, ValueError):
        raise MessageDecodeError(
            "The input is not a valid Base-64 string: host.json extensions.queues.messageEncoding "
            "is 'base64', but the queue message body is not base64"
        ) from None


def build_arguments(
    function: QueueFunction, message: ReceivedMessage, encoding: str, invocation_id: str
) -> dict[str, Any]:
    """Keyword arguments for the user function; raises MessageDecodeError before any user code."""
    queue_message = QueueMessage(
        id=message.id,
        body=decode_body(message.content, encoding),
        dequeue_count=message.dequeue_count,
        expiration_time=message.expiration_time,
        insertion_time=message.insertion_time,
        time_next_visible=message.time_next_visible,
        pop_receipt=message.pop_receipt,
    )
    arguments: dict[str, Any] = {function.arg_name: queue_message}
    if function.wants_context:
        arguments["context"] = InvocationContext(invocation_id, function.name, function.directory)
    return arguments


def call_sync(
    function: QueueFunction, message: ReceivedMessage, encoding: str, invocation_id: str
) -> BaseException | None:
    """Run a `def` function in the calling (worker pool) thread; the error it raised, if any."""
    try:
        function.user_function(**build_arguments(function, message, encoding, invocation_id))
    except BaseException as error:  # the worker reports whatever the function raised
        return error
    return None


async def call_async(
    function: QueueFunction, message: ReceivedMessage, encoding: str, invocation_id: str
) -> BaseException | None:
    """Await an `async def` function on the host's event loop; the error it raised, if any."""
    try:
        await function.user_function(**build_arguments(function, message, encoding, invocation_id))
    except BaseException as error:  # includes CancelledError after functionTimeout
        return error
    return None


def log_executing(function: QueueFunction, invocation_id: str) -> None:
    log.info(
        "Executing '%s' (Reason='New queue message detected on '%s'.', Id=%s)",
        function.full_name,
        function.queue_name,
        invocation_id,
    )


def log_executed(
    function: QueueFunction | BlobFunction,
    invocation_id: str,
    duration_s: float,
    error: BaseException | None,
) -> None:
    duration_ms = round(duration_s * 1000)
    if error is None:
        log.info(
            "Executed '%s' (Succeeded, Id=%s, Duration=%dms)",
            function.full_name,
            invocation_id,
            duration_ms,
        )
        return
    log.error(
        "Executed '%s' (Failed, Id=%s, Duration=%dms)\nResult: Failure\nException: %s: %s",
        function.full_name,
        invocation_id,
        duration_ms,
        type(error).__name__,
        error,
        # A timeout was never raised: it has no traceback worth printing.
        exc_info=(type(error), error, error.__traceback__) if error.__traceback__ else None,
    )
