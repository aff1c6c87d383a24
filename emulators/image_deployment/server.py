"""HTTP transport: a threading HTTP/1.1 server whose handler routes to the API or the control API.

One daemon thread per connection, so at least 32 long streams run at once; the listen backlog is
raised for the same reason.
"""

from __future__ import annotations

import json
import logging
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import admin, events
from .api import Incoming, State, request_ids, route
from .delivery import ClientGone, Sender, deliver
from .requestlog import now_iso

log = logging.getLogger("emulator")
_API = re.compile(r"^/openai/deployments/([^/]+)/images/(generations|edits)$")
MAX_BODY = 200 * 1024 * 1024


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: State) -> None:
        self.state = state
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EmulatorServer
    server_version = "imagegen-emulator"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        # The request line only; headers (which carry the key) are never logged.
        log.info("%s %s", self.address_string(), format % args)

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(
        self,
        status: int,
        body: Any,
        *,
        newline: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(body, separators=(",", ":")).encode() + (b"\n" if newline else b"")
        length = {"Content-Type": "application/json", "Content-Length": str(len(data))}
        self._start(status, (headers or {}) | length)
        self.wfile.write(data)
        self.wfile.flush()

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()

    def _handle(self, method: str) -> None:
        try:
            body = self._body()
        except ValueError:
            self.close_connection = True
            self._send_json(413, {"error": {"code": "413", "message": "Request body too large"}})
            return
        url = urlsplit(self.path)
        state = self.server.state
        if url.path.startswith("/_emulator/"):
            status, reply = admin.handle(state, method, url.path, body)
            self._send_json(status, reply, newline=True)  # ends the line in a terminal
            return
        match = _API.match(url.path)
        if not match or method != "POST":
            self._send_json(404, events.resource_not_found(), headers=request_ids())
            return
        incoming = Incoming(match[1], match[2], parse_qs(url.query), self.headers, body)
        routed = route(state, incoming)

        def record(sender: Sender, outcome: str) -> None:
            state.log.update(
                routed.log_key,
                status=sender.status,
                outcome=outcome,
                partials_sent=sender.partials,
            )

        sender = Sender(self.wfile, self.connection, self._start, record)
        try:
            outcome = deliver(state, routed, sender)
        except ClientGone:
            outcome = "client_closed"
            record(sender, outcome)
        state.log.update(routed.log_key, ended=now_iso())
        # After a drop, an error frame or a gone client the service hangs up.
        if outcome in ("client_closed", "dropped", "server_error"):
            self.close_connection = True

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")
