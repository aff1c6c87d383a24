"""A local stand-in for App Service's managed identity endpoint (IDENTITY_ENDPOINT/IDENTITY_HEADER),
so `DefaultAzureCredential` really runs in tests."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ManagedIdentityEndpoint:
    """App Service's managed identity endpoint, as `ManagedIdentityCredential` calls it.

    `fail_first` answers that many token requests with a 500 first, as an endpoint that is not up yet.
    """

    def __init__(self, token: str, header: str, *, fail_first: int = 0) -> None:
        self.calls: list[str] = []
        self.failures_left = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("X-IDENTITY-HEADER") != header:
                    self.send_error(401)
                    return
                outer.calls.append(self.path)
                if outer.failures_left > 0:
                    outer.failures_left -= 1
                    self.send_error(500, "identity endpoint unavailable")
                    return
                body = json.dumps(
                    {
                        "access_token": token,
                        "expires_on": str(int(time.time()) + 3600),
                        "resource": "https://cognitiveservices.azure.com",
                        "token_type": "Bearer",
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: pytest's output is not where secrets should be looked for either

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/msi/token"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
