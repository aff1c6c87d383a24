"""Sends a plan over HTTP: waits for each step's time, then writes it.

The gateway rule holds because nothing, not even the status line, is written before the first step.
Streams use HTTP/1.1 chunked encoding in writes of about 16 KiB, each flushed, so a `drop` (the
connection closed inside a chunk) reaches the client as an incomplete chunked body.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, BinaryIO

from . import events
from .api import Routed, State
from .images import ImageKey
from .limiter import client_seconds
from .plan import Answer, Delivery, Step, StepKind
from .validation import ImageRequest

CHUNK = 16 * 1024


class ClientGone(Exception):
    """The client closed the connection; nothing more can be sent."""


class Sender:
    """The handler's side of the socket, as deliver() needs it."""

    def __init__(
        self,
        wfile: BinaryIO,
        connection: socket.socket,
        start: Callable[[int, dict[str, str]], None],
        record: Callable[[Sender, str], None],
    ) -> None:
        self.wfile, self.connection, self._start = wfile, connection, start
        self._record = record
        self.status: int | None = None  # once the status line is out
        self.partials = 0

    def start(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        try:
            self._start(status, headers)
        except OSError as error:
            raise ClientGone from error

    def outcome(self, outcome: str) -> None:
        """Record the outcome before the last bytes go out, so a client that reads the request log
        as soon as its response ends finds it there."""
        self._record(self, outcome)

    def write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError as error:
            raise ClientGone from error

    def chunk(self, data: bytes) -> None:
        for offset in range(0, len(data), CHUNK):
            piece = data[offset : offset + CHUNK]
            self.write(b"%x\r\n%s\r\n" % (len(piece), piece))

    def cut(self, data: bytes) -> None:
        """Half of `data` as chunks, the last one announced in full but cut short; then hang up."""
        half = len(data) // 2
        whole = half - half % CHUNK
        self.chunk(data[:whole])
        piece = data[whole : whole + CHUNK]
        self.write(b"%x\r\n%s" % (len(piece), piece[: max(1, half - whole)]))
        self.hang_up()

    def hang_up(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def json_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _image_key(request: ImageRequest, stage: int, variant: int = 0) -> ImageKey:
    return ImageKey(
        request.prompt, request.width, request.height, request.output_format,
        request.reported_quality, request.background == "transparent", stage, variant,
        request.output_compression,
    )  # fmt: skip


def _b64(state: State, key: ImageKey, call_id: str) -> str:
    """The image stamped with the call's apim-request-id: no two calls send the same bytes."""
    data = state.images.get(key, state.config.get().payload_scale, call_id)
    return base64.b64encode(data).decode()


_NOT_AN_IMAGE = b"This is not an image: the emulator was scripted to send text. " * 32


def _final_b64(state: State, request: ImageRequest, tamper: str | None, call_id: str, variant: int = 0) -> str | None:  # fmt: skip
    """The final image's base64, or the scripted bad payload (`bad_completed`) in its place."""
    key = _image_key(request, -1, variant)
    if tamper == "no_image":
        return None
    if tamper == "not_an_image":
        return base64.b64encode(_NOT_AN_IMAGE).decode()
    if tamper == "wrong_format":
        other = "png" if request.output_format == "jpeg" else "jpeg"
        return _b64(state, replace(key, output_format=other, compression=None), call_id)
    good = _b64(state, key, call_id)
    if tamper == "broken_base64":
        # Characters outside the alphabet and a length that is not a multiple of 4: a strict
        # decoder refuses the first, a lenient one (which skips them) the padding.
        half = len(good) // 2
        return good[:half] + "*%" + good[half:-1]
    return good


def _frame(
    state: State, request: ImageRequest, step: Step, sequence: int, partials: int, call_id: str
) -> bytes:
    created = int(time.time())
    if step.kind is StepKind.ERROR:
        return events.error_event(request, sequence)
    if step.partial_index is not None:
        b64 = _b64(state, _image_key(request, step.partial_index), call_id)
        index = "x" if step.tamper == "bad_index" else step.partial_index
        return events.partial_event(request, b64, index, created)
    b64_final = _final_b64(state, request, step.tamper, call_id)
    return events.completed_event(request, b64_final, created, partials)


def _wait(state: State, routed: Routed, at_s: float) -> None:
    if not state.clock.wait_until(routed.arrived_s + at_s, state.stopping):
        raise ClientGone("emulator stopping")


def deliver(state: State, routed: Routed, sender: Sender) -> str:
    """Carry out the plan; returns the outcome for the request log (status: `sender.status`)."""
    plan = routed.plan
    if isinstance(plan, Answer):
        return _answer(state, routed, plan, sender)
    assert routed.request is not None
    if plan.stream:
        return _stream(state, routed, routed.request, plan, sender)
    return _json(state, routed, routed.request, plan, sender)


def _answer(state: State, routed: Routed, answer: Answer, sender: Sender) -> str:
    _wait(state, routed, answer.at_s)
    headers = dict(routed.headers)
    if answer.retry_after_s is not None:
        seconds, ms = client_seconds(answer.retry_after_s, state.clock.scale)
        headers |= {"retry-after": str(seconds), "retry-after-ms": str(ms)}
    body = json_bytes(answer.body)
    headers |= {"Content-Type": "application/json", "Content-Length": str(len(body))}
    sender.start(answer.status, headers)
    sender.outcome(answer.outcome)
    sender.write(body)
    return answer.outcome


def _json(
    state: State, routed: Routed, request: ImageRequest, plan: Delivery, sender: Sender
) -> str:
    step = plan.steps[-1]
    if step.kind is StepKind.ERROR:
        body = json_bytes({"error": events.server_error(request)})
        status = 500
    else:
        call_id = routed.headers["apim-request-id"]
        images = [_final_b64(state, request, step.tamper, call_id, k) for k in range(request.n)]
        body = json_bytes(events.json_result(request, images, int(time.time())))
        status = 200
    _wait(state, routed, step.at_s)
    headers = routed.headers | {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
    }
    sender.start(status, headers)
    sender.outcome(plan.outcome)
    if step.kind is StepKind.DROP:
        sender.write(body[: len(body) // 2])
        sender.hang_up()
        return plan.outcome
    sender.write(body)
    return plan.outcome


def _stream(
    state: State, routed: Routed, request: ImageRequest, plan: Delivery, sender: Sender
) -> str:
    started = False
    for sequence, step in enumerate(plan.steps):
        # Drawn before the wait, so the wait alone decides when it is sent.
        frame = _frame(
            state, request, step, sequence, plan.partials, routed.headers["apim-request-id"]
        )
        _wait(state, routed, step.at_s)
        if not started:
            headers = routed.headers | {
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "Transfer-Encoding": "chunked",
            }
            sender.start(200, headers)
            started = True
        if step is plan.steps[-1]:
            sender.outcome(plan.outcome)
        if step.kind is StepKind.DROP:
            sender.cut(frame)
            return plan.outcome
        sender.chunk(frame)
        if step.kind is StepKind.PARTIAL:
            sender.partials += 1
    sender.write(b"0\r\n\r\n")
    return plan.outcome
