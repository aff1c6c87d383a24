"""One streaming call to one gpt-image deployment, turned into an attempt record.

Every call streams (`stream: true`) so that partial images keep the gateway's 60 s timer from firing.
Nothing here decides whether to retry: it reports what happened, classified into an `Outcome`, and
`retry` judges it. Secrets travel only in request headers and never reach the record or a log.
"""

from __future__ import annotations

import binascii
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import requests
import urllib3.exceptions

from shared.azure_openai import errors
from shared.azure_openai.headers import parse_retry_after, parse_should_retry
from shared.azure_openai.sse import Event, TruncatedStream, iter_events
from shared.records.attempts import AttemptRecord, ErrorInfo, Outcome, iso_utc, utc_now
from shared.records.imageinfo import (
    UnknownImageFormat,
    image_dimensions,
    image_format,
    normalise_format,
)
from shared.settings import DeploymentConfig

ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
CHUNK_BYTES = 64 * 1024
# A token is refreshed this long before it expires, so a call never starts with one about to lapse.
TOKEN_REFRESH_MARGIN_S = 300.0
RATELIMIT_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)

OnPartial = Callable[[int, bytes], None]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InputFile:
    filename: str
    data: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class ImageCall:
    """What to ask for: the API fields (prompt, size, ...) without `stream`/`partial_images`."""

    operation: Literal["generate", "edit"]
    fields: Mapping[str, Any]
    partial_images: int
    images: tuple[InputFile, ...] = ()
    mask: InputFile | None = None


@dataclass(frozen=True, slots=True)
class AttemptResult:
    record: AttemptRecord
    image: bytes | None = None
    usage: dict[str, Any] | None = None


class AccessToken(Protocol):
    token: str
    expires_on: int


class TokenCredential(Protocol):
    def get_token(self, *scopes: str) -> AccessToken: ...


class EntraTokenCache:
    """Bearer tokens for Microsoft Entra ID, fetched once and reused until near expiry.

    `DefaultAzureCredential` is built lazily: importing and probing it costs seconds, and
    key-authenticated deployments never need it.
    """

    def __init__(
        self,
        credential_factory: Callable[[], TokenCredential] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._factory = credential_factory or _default_credential
        self._credential: TokenCredential | None = None
        self._token: AccessToken | None = None
        self._wall_clock = wall_clock
        self._lock = threading.Lock()

    def bearer(self) -> str:
        with self._lock:
            now = self._wall_clock()
            if self._token is None or self._token.expires_on - now < TOKEN_REFRESH_MARGIN_S:
                if self._credential is None:
                    self._credential = self._factory()
                self._token = self._credential.get_token(ENTRA_SCOPE)
            return self._token.token


def _default_credential() -> TokenCredential:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


class ImageApi:
    """Makes attempts. Thread-safe: each thread gets its own HTTP session (connection pool)."""

    def __init__(
        self,
        *,
        api_version: str,
        connect_timeout_s: float,
        read_timeout_s: float,
        tokens: EntraTokenCache | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._api_version = api_version
        self._timeout = (connect_timeout_s, read_timeout_s)
        self._tokens = tokens or EntraTokenCache()
        self._monotonic = monotonic
        self._now = now
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def url(self, deployment: DeploymentConfig, operation: str) -> str:
        path = "images/edits" if operation == "edit" else "images/generations"
        return (
            f"{deployment.endpoint.rstrip('/')}/openai/deployments/{deployment.deployment}/{path}"
            f"?api-version={self._api_version}"
        )

    def _auth_headers(self, deployment: DeploymentConfig) -> dict[str, str]:
        if deployment.api_key is not None:
            return {"api-key": deployment.api_key}
        return {"Authorization": f"Bearer {self._tokens.bearer()}"}

    def attempt(
        self,
        deployment: DeploymentConfig,
        call: ImageCall,
        *,
        attempt_no: int,
        image_index: int,
        on_partial: OnPartial | None = None,
    ) -> AttemptResult:
        trace = _Trace(
            attempt=attempt_no,
            image_index=image_index,
            deployment=deployment.name,
            started_at=iso_utc(self._now()),
            start=self._monotonic(),
            partial_images_sent=call.partial_images,
            monotonic=self._monotonic,
        )
        try:
            return self._attempt(deployment, call, trace, on_partial)
        except Exception as exc:
            # Whatever failed (a token request, a partial's blob write, a bug), the call still ends as
            # a record: the caller reports it to the router and counts it when it may be billed.
            log.warning(
                "attempt %d on %s: the client failed: %s: %s",
                attempt_no, deployment.name, type(exc).__name__, exc,
            )  # fmt: skip
            return trace.fail(Outcome.CLIENT_ERROR, _transport_error(type(exc).__name__, exc))

    def _attempt(
        self,
        deployment: DeploymentConfig,
        call: ImageCall,
        trace: _Trace,
        on_partial: OnPartial | None,
    ) -> AttemptResult:
        try:
            response = self._send(deployment, call)
        except requests.exceptions.ConnectTimeout as exc:
            return trace.fail(Outcome.CONNECT_ERROR, _transport_error("connect_timeout", exc))
        except requests.exceptions.ReadTimeout as exc:
            return trace.fail(Outcome.READ_TIMEOUT, _transport_error("read_timeout", exc))
        except requests.exceptions.ConnectionError as exc:
            if _reached_server(exc):
                return trace.fail(Outcome.DROPPED, _transport_error("connection_closed", exc))
            return trace.fail(Outcome.CONNECT_ERROR, _transport_error("connect_error", exc))
        with response:
            trace.response(response)
            if response.status_code != 200:
                return trace.http_failure(response)
            return self._read_stream(response, trace, call, on_partial)

    def _send(self, deployment: DeploymentConfig, call: ImageCall) -> requests.Response:
        headers = {"Accept": "text/event-stream", **self._auth_headers(deployment)}
        url = self.url(deployment, call.operation)
        if call.operation == "edit":
            form = {k: _form_value(v) for k, v in call.fields.items() if v is not None}
            form |= {"stream": "true", "partial_images": str(call.partial_images)}
            image_field = "image" if len(call.images) == 1 else "image[]"
            files = [(image_field, (f.filename, f.data, f.content_type)) for f in call.images]
            if call.mask is not None:
                files.append(("mask", (call.mask.filename, call.mask.data, call.mask.content_type)))
            return self._session().post(
                url, headers=headers, data=form, files=files, stream=True, timeout=self._timeout
            )
        body = {k: v for k, v in call.fields.items() if v is not None}
        body |= {"stream": True, "partial_images": call.partial_images}
        return self._session().post(
            url, headers=headers, json=body, stream=True, timeout=self._timeout
        )

    def _read_stream(
        self,
        response: requests.Response,
        trace: _Trace,
        call: ImageCall,
        on_partial: OnPartial | None,
    ) -> AttemptResult:
        expected = normalise_format(str(call.fields.get("output_format") or "png"))
        try:
            for event in iter_events(_chunks(response)):
                trace.event()
                result = _handle_event(event, trace, expected, on_partial)
                if result is not None:
                    return result
        except TruncatedStream:
            return trace.fail(
                Outcome.DROPPED,
                ErrorInfo(None, "stream_truncated", "the stream ended inside an event"),
            )
        except _StreamReadTimeout as exc:
            return trace.fail(Outcome.READ_TIMEOUT, _transport_error("read_timeout", exc))
        except _StreamDropped as exc:
            return trace.fail(Outcome.DROPPED, _transport_error("connection_closed", exc))
        return trace.fail(
            Outcome.TRUNCATED,
            ErrorInfo(None, "no_completed_event", "the stream ended without a completed event"),
        )


class _StreamReadTimeout(Exception):
    pass


class _StreamDropped(Exception):
    pass


def _chunks(response: requests.Response) -> Iterator[bytes]:
    """The body's bytes, with transport failures turned into our two stream errors.

    `requests` wraps a read timeout inside the body as a ConnectionError, so the cause decides.
    """
    try:
        yield from response.iter_content(chunk_size=CHUNK_BYTES)
    except requests.exceptions.ConnectionError as exc:
        if _caused_by(exc, urllib3.exceptions.ReadTimeoutError, TimeoutError):
            raise _StreamReadTimeout(str(exc)) from exc
        raise _StreamDropped(str(exc)) from exc
    except (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError) as exc:
        raise _StreamDropped(str(exc)) from exc


def _handle_event(
    event: Event, trace: _Trace, expected: str, on_partial: OnPartial | None
) -> AttemptResult | None:
    try:
        payload = json.loads(event.data)
    except json.JSONDecodeError:
        return None  # Not ours to judge (a keep-alive or an unknown frame); keep reading.
    if not isinstance(payload, dict):
        return None
    kind = str(payload.get("type", ""))
    if kind == "error" or event.event == "error" or isinstance(payload.get("error"), dict):
        error = errors.from_event(payload)
        return trace.fail(errors.event_outcome(error), error)
    if kind.endswith(".partial_image"):
        trace.partials_received += 1
        data = payload.get("b64_json")
        if on_partial is not None and isinstance(data, str):
            image = _b64(data)
            if image is not None:  # a broken partial is only a missed preview, not a failure
                on_partial(_partial_index(payload, trace.partials_received - 1), image)
        return None
    if kind.endswith(".completed"):
        return _completed(payload, trace, expected)
    return None


def _completed(payload: Mapping[str, Any], trace: _Trace, expected: str) -> AttemptResult:
    """The final event: a success only when it carries an image of the format asked for."""
    data = payload.get("b64_json")
    if not isinstance(data, str) or not data:
        return trace.fail(
            Outcome.INVALID_IMAGE, ErrorInfo(None, "no_image", "the completed event has no image")
        )
    image = _b64(data)
    if image is None:
        return trace.fail(
            Outcome.INVALID_IMAGE,
            ErrorInfo(None, "invalid_base64", "the completed event's b64_json is not base64"),
        )
    try:
        found = image_format(image)
        image_dimensions(image)
    except UnknownImageFormat as exc:
        return trace.fail(Outcome.INVALID_IMAGE, ErrorInfo(None, "not_an_image", str(exc)))
    if found != expected:
        return trace.fail(
            Outcome.INVALID_IMAGE,
            ErrorInfo(None, "wrong_format", f"asked for {expected}, the image is {found}"),
        )
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else None
    return AttemptResult(trace.record(Outcome.SUCCEEDED), image=image, usage=usage)


def _partial_index(payload: Mapping[str, Any], fallback: int) -> int:
    """`partial_image_index` when it is a non-negative integer; else the count received so far."""
    index = payload.get("partial_image_index")
    if isinstance(index, int) and not isinstance(index, bool) and index >= 0:
        return index
    return fallback


def _b64(text: str) -> bytes | None:
    """Strictly decoded base64, or None. No lenient fallback: a damaged image must not be stored.

    a2b_base64 reads an ASCII str in place; b64decode would first copy it to bytes (30 MB).
    strict_mode=True is exactly what b64decode(validate=True) passes down.
    """
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def _error_from_body(response: requests.Response) -> ErrorInfo:
    try:
        body = response.json()
    except ValueError:
        body = None
    return errors.from_body(response.status_code, body, response.text if body is None else "")


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _caused_by(exc: BaseException, *types: type[BaseException]) -> bool:
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, types):
            return True
        stack += [
            current.__cause__,
            current.__context__,
            *[a for a in current.args if isinstance(a, BaseException)],
        ]
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
    return False


def _reached_server(exc: requests.exceptions.ConnectionError) -> bool:
    """True when the connection was made and then closed: the request may have reached the model."""
    if _caused_by(
        exc, urllib3.exceptions.NewConnectionError, urllib3.exceptions.NameResolutionError
    ):
        return False
    return _caused_by(exc, urllib3.exceptions.ProtocolError, ConnectionResetError)


def _transport_error(code: str, exc: BaseException) -> ErrorInfo:
    return ErrorInfo(None, code, str(exc)[:300] or type(exc).__name__)


@dataclass(slots=True)
class _Trace:
    """What one attempt has seen so far; turns into the immutable record at the end."""

    attempt: int
    image_index: int
    deployment: str
    started_at: str
    start: float
    partial_images_sent: int
    monotonic: Callable[[], float]
    http_status: int | None = None
    apim_request_id: str | None = None
    x_request_id: str | None = None
    first_event_s: float | None = None
    partials_received: int = 0
    retry_after_s: float | None = None
    ratelimit: dict[str, str] | None = None
    headers_s: float | None = None
    should_retry: bool | None = None

    def response(self, response: requests.Response) -> None:
        headers = response.headers
        self.http_status = response.status_code
        self.apim_request_id = headers.get("apim-request-id")
        self.x_request_id = headers.get("x-request-id")
        self.ratelimit = {k: headers[k] for k in RATELIMIT_HEADERS if k in headers}
        self.retry_after_s = parse_retry_after(headers)
        self.should_retry = parse_should_retry(headers)
        self.headers_s = round(self.monotonic() - self.start, 3)

    def event(self) -> None:
        if self.first_event_s is None:
            self.first_event_s = round(self.monotonic() - self.start, 3)

    def http_failure(self, response: requests.Response) -> AttemptResult:
        error = _error_from_body(response)
        return self.fail(errors.status_outcome(response.status_code, error), error)

    def fail(self, outcome: Outcome, error: ErrorInfo) -> AttemptResult:
        return AttemptResult(self.record(outcome, error))

    def record(self, outcome: Outcome, error: ErrorInfo | None = None) -> AttemptRecord:
        return AttemptRecord(
            attempt=self.attempt,
            image_index=self.image_index,
            deployment=self.deployment,
            started_at=self.started_at,
            elapsed_s=round(self.monotonic() - self.start, 3),
            first_event_s=self.first_event_s,
            http_status=self.http_status,
            apim_request_id=self.apim_request_id,
            x_request_id=self.x_request_id,
            partial_images_sent=self.partial_images_sent,
            partials_received=self.partials_received,
            outcome=outcome,
            error=error,
            retry_after_s=self.retry_after_s,
            ratelimit=dict(self.ratelimit or {}),
            headers_s=self.headers_s,
            should_retry=self.should_retry,
        )
