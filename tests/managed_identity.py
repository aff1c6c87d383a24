"""A local stand-in for App Service's managed identity endpoint (IDENTITY_ENDPOINT/IDENTITY_HEADER),
so `DefaultAzureCredential` really runs in tests.

Given a `signing_key`, it issues what Entra ID would: a signed token (HS256 here, with a key the
test shares with the emulator's `--entra-key`) for the resource it was asked for, with an expiry.
The emulator then checks signature, audience and expiry as the service does, so a product asking
for the wrong scope, or using a token past its expiry, is refused end to end.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_token(
    key: str, audience: str, expires_on: float, token_id: str | None = None, **claims: Any
) -> str:
    """An HS256 JWT as the emulator's `--entra-key` check expects it."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = {
        "aud": audience,
        "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000000/",
        "iat": int(time.time()),
        "nbf": int(time.time()),
        "exp": int(expires_on),
        "jti": token_id or uuid.uuid4().hex,
        **claims,
    }
    payload = _b64url(json.dumps(body).encode())
    signature = hmac.new(key.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(signature)}"


class ManagedIdentityEndpoint:
    """App Service's managed identity endpoint, as `ManagedIdentityCredential` calls it.

    `fail_first` answers that many token requests with a 500 first, as an endpoint that is not up yet.
    Without `signing_key` every answer carries `token` (opaque); with it, a fresh signed token for
    the `resource` asked (or `audience`, to hand out tokens for the wrong one) lasting `lifetime_s`.
    `resources` lists what was asked for, `issued` the (token id, expiry) of each token handed out.
    """

    def __init__(
        self,
        token: str,
        header: str,
        *,
        fail_first: int = 0,
        signing_key: str | None = None,
        lifetime_s: float = 3600.0,
        audience: str | None = None,
    ) -> None:
        self.calls: list[str] = []
        self.resources: list[str] = []
        self.issued: list[tuple[str, float]] = []
        self.failures_left = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("X-IDENTITY-HEADER") != header:
                    self.send_error(401)
                    return
                outer.calls.append(self.path)
                resource = (parse_qs(urlsplit(self.path).query).get("resource") or [""])[0]
                outer.resources.append(resource)
                if outer.failures_left > 0:
                    outer.failures_left -= 1
                    self.send_error(500, "identity endpoint unavailable")
                    return
                expires_on = int(time.time() + lifetime_s)
                access_token = token
                if signing_key is not None:
                    token_id = uuid.uuid4().hex
                    access_token = signed_token(
                        signing_key, audience or resource, expires_on, token_id
                    )
                    outer.issued.append((token_id, expires_on))
                body = json.dumps(
                    {
                        "access_token": access_token,
                        "expires_on": str(expires_on),
                        "resource": resource or "https://cognitiveservices.azure.com",
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
