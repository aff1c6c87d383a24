"""A pass-through HTTP proxy in front of Azurite's blob endpoint that logs every blob write.

Why: "no image blob was written with two different contents" needs the history of each blob, and
Azurite keeps no versions. The hosts' `BlobEndpoint` points here; each request is forwarded as it
is (Shared Key signatures cover the path and headers, not the host and port) and every Put Blob is
logged with the sha256 of its body, whether Storage answered, and when. A write whose answer never
came (Azurite went down under it) is logged as `unknown`: it may have been applied.

While Azurite is down the tap stops listening too, so the hosts see refused connections on both
endpoints, as they would from a dead Storage account.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import threading
import time
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("soak.blobtap")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
    }
)
UPSTREAM_TIMEOUT_S = 60.0
IDLE_REUSE_S = 2.0


@dataclass(frozen=True, slots=True)
class BlobWrite:
    """One Put Blob (or a block upload, which we cannot hash as a whole: `kind` says so)."""

    container: str
    blob: str
    kind: str  # put_blob | put_block | put_block_list
    sha256: str
    size: int
    started: float  # epoch seconds
    ended: float
    status: int | None  # None: the answer never came, the write may or may not have happened

    @property
    def applied(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def maybe_applied(self) -> bool:
        return self.applied or self.status is None


def _blob_path(path: str) -> tuple[str, str] | None:
    """(container, blob) from `/account/container/blob`, or None for account/container calls."""
    parts = unquote(path).split("/", 3)
    if len(parts) < 4 or not parts[3]:
        return None
    return parts[2], parts[3]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like Azurite itself
    server: _TapServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # the hosts log their own storage errors; ours would only be noise

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        # Only a PUT can write a blob's content; reads, leases' bodies and deletes are not logged.
        write = _write_target(url.path, url.query) if self.command == "PUT" else None
        started = time.time()
        status: int | None = None
        try:
            response, data = self.server.tap.forward(self.command, self.path, self.headers, body)
            status = response.status
        except OSError as exc:
            # Storage is unreachable: hang up without an answer, as a dead endpoint would.
            log.debug("upstream failed for %s %s: %s", self.command, url.path, exc)
            self.close_connection = True
            return
        finally:
            if write is not None:
                container, blob, kind = write
                digest = hashlib.sha256(body).hexdigest()
                self.server.tap.record(
                    BlobWrite(
                        container, blob, kind, digest, len(body), started, time.time(), status
                    )
                )
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        has_body = self.command != "HEAD" and response.status not in (204, 304)
        if has_body:
            self.send_header("Content-Length", str(len(data)))
        else:
            self.send_header("Content-Length", response.getheader("Content-Length") or "0")
        self.end_headers()
        if has_body:
            self.wfile.write(data)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _relay


def _write_target(path: str, query: str) -> tuple[str, str, str] | None:
    """(container, blob, kind) of a PUT that writes blob content, else None (lease, metadata...)."""
    target = _blob_path(path)
    if target is None:
        return None
    comp = (parse_qs(query).get("comp") or [""])[0]
    kind = {"": "put_blob", "block": "put_block", "blocklist": "put_block_list"}.get(comp)
    return None if kind is None else (target[0], target[1], kind)


class _TapServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, tap: BlobTap) -> None:
        self.tap = tap
        super().__init__(("127.0.0.1", port), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # A killed host resets its connections: expected here, not worth a traceback.
        log.debug("connection from %s ended abruptly", client_address)


class BlobTap:
    """The proxy: `start()`, `pause()` while Storage is down, `resume()`, `stop()`; `writes()`."""

    def __init__(self, port: int, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.port = port
        self._upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._writes: list[BlobWrite] = []
        self._server: _TapServer | None = None
        self._thread: threading.Thread | None = None
        self._local = threading.local()  # one upstream connection per handler thread

    def start(self) -> BlobTap:
        server = _TapServer(self.port, self)
        thread = threading.Thread(target=server.serve_forever, name="blobtap", daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        return self

    def pause(self) -> None:
        """Stop accepting connections (they are refused) until `resume()`."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def resume(self) -> None:
        if self._server is None:
            self.start()

    stop = pause

    def record(self, write: BlobWrite) -> None:
        with self._lock:
            self._writes.append(write)

    def writes(self) -> list[BlobWrite]:
        with self._lock:
            return list(self._writes)

    def forward(
        self, method: str, path: str, headers: Message, body: bytes
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """Send one request upstream on this thread's connection; never re-sends it.

        A failed request is not retried here: the client's own retry policy decides, as it would
        against Azurite directly (a re-send by us could apply a write twice behind its back).
        """
        outgoing = {
            name: value
            for name, value in headers.items()
            if name.lower() not in HOP_BY_HOP and name.lower() != "host"
        }
        outgoing["Host"] = f"{self._upstream[0]}:{self._upstream[1]}"
        conn = self._connection()
        try:
            conn.request(method, path, body=body or None, headers=outgoing)
            response = conn.getresponse()
            data = response.read()
        except OSError:
            self._drop_connection()
            raise
        except http.client.HTTPException as exc:
            self._drop_connection()
            raise ConnectionError(str(exc)) from exc
        self._local.used = time.monotonic()
        return response, data

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and time.monotonic() - self._local.used > IDLE_REUSE_S:
            # Node closes idle keep-alive sockets after 5 s; a request racing that close would
            # fail for a reason of ours, not Storage's. Start afresh instead.
            self._drop_connection()
            conn = None
        if conn is None:
            conn = http.client.HTTPConnection(*self._upstream, timeout=UPSTREAM_TIMEOUT_S)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None
