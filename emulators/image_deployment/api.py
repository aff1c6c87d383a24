"""The image endpoints' checks, in the service's order, ending in a `Plan`.

auth → deployment → api-version → validation (none of these count against the quota) → rate limit
→ scripted outcome or random fault. A rate-limited request does not use up a scripted outcome.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import entra, events, limiter, multipart
from .clock import ScaledClock
from .config import Config, ConfigHolder
from .entra import TokenCheck
from .images import ImageCache
from .limiter import Decision, RateLimiter
from .plan import Answer, Plan, plan, rate_limited
from .requestlog import RequestLog, RequestRecord, now_iso
from .script import FaultDice, Script
from .validation import ImageRequest, InvalidRequest, ModerationBlocked, Upload, validate


@dataclass
class State:
    """Everything the routes share; each part guards itself."""

    config: ConfigHolder
    clock: ScaledClock
    limiter: RateLimiter
    script: Script
    dice: FaultDice
    log: RequestLog
    images: ImageCache
    stopping: threading.Event
    initial: Config

    @classmethod
    def create(cls, config: Config) -> State:
        return cls(
            ConfigHolder(config), ScaledClock(config.time_scale), RateLimiter(), Script(),
            FaultDice(config.seed), RequestLog(), ImageCache(), threading.Event(), config,
        )  # fmt: skip

    def reset(self) -> None:
        """Script, log and rate windows cleared, and options changed at run time undone."""
        self.config.swap(self.initial)
        self.script.clear()
        self.log.clear()
        self.limiter.reset()


@dataclass(frozen=True, slots=True)
class Incoming:
    deployment: str
    endpoint: str  # generations | edits
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # case-insensitive (an email.message.Message)
    body: bytes


@dataclass(frozen=True, slots=True)
class Routed:
    plan: Plan
    request: ImageRequest | None
    headers: dict[str, str]
    log_key: int
    arrived_s: float  # emulated clock at arrival; the plan's times count from here


def _auth(headers: Mapping[str, str], config: Config) -> tuple[str, TokenCheck]:
    api_key = headers.get("api-key")
    bearer = headers.get("authorization") or ""
    if api_key is not None:
        return "api-key", TokenCheck(api_key == config.api_key, "")
    scheme, _, token = bearer.strip().partition(" ")
    if scheme.lower() == "bearer":
        token = token.strip()
        if not token:
            return "bearer", TokenCheck(False, "empty token")
        if config.entra_key is None:
            return "bearer", TokenCheck(True, "")  # unchecked: any Entra ID token passes
        return "bearer", entra.check(token, config.entra_key, time.time())
    return "none", TokenCheck(False, "")


def _fields(incoming: Incoming) -> tuple[dict[str, Any], list[Upload], bool]:
    """(body fields, uploads, from_form); raises InvalidRequest for an unreadable body."""
    content_type = incoming.headers.get("content-type") or ""
    if incoming.endpoint == "edits":
        fields, uploads = multipart.parse(content_type, incoming.body)
        return dict(fields), uploads, True
    try:
        body = json.loads(incoming.body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest(
            "We could not parse the JSON body of your request.", None, "invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", None, "invalid_json")
    return body, [], False


def request_ids() -> dict[str, str]:
    """Fresh ids and the region: what the gateway puts on every answer."""
    ids = {"apim-request-id": str(uuid.uuid4()), "x-request-id": str(uuid.uuid4())}
    return ids | {"x-ms-region": events.REGION}


def _headers(decision: Decision, scale: float) -> dict[str, str]:
    return request_ids() | limiter.headers(decision, scale)


def route(state: State, incoming: Incoming) -> Routed:
    config = state.config.get()
    now = state.clock.now()
    deployment = config.deployment(incoming.deployment)
    rule = config.rate_rule(deployment)
    headers = _headers(state.limiter.peek(incoming.deployment, now, rule), config.time_scale)
    auth, checked = _auth(incoming.headers, config)
    api_version = (incoming.query.get("api-version") or [""])[0]
    try:
        fields, uploads, from_form = _fields(incoming)
        parse_error: InvalidRequest | None = None
    except InvalidRequest as error:
        fields, uploads, from_form, parse_error = {}, [], False, error
    record = RequestRecord(
        time=now_iso(),
        deployment=incoming.deployment,
        endpoint=incoming.endpoint,
        auth=auth,
        body=fields,
        parts=tuple(
            {"name": u.name, "filename": u.filename, "bytes": len(u.data)} for u in uploads
        ),
        apim_request_id=headers["apim-request-id"],
        x_request_id=headers["x-request-id"],
        token_id=checked.token_id,
        auth_failure=checked.reason or None,
    )
    log_key = state.log.add(record)

    def done(answer: Plan, request: ImageRequest | None = None) -> Routed:
        return Routed(answer, request, headers, log_key, now)

    if not checked.ok:
        body = events.unauthorized_token() if auth == "bearer" else events.unauthorized()
        return done(Answer(401, body, "auth_error"))
    if deployment is None:
        return done(Answer(404, events.deployment_not_found(), "not_found"))
    if not api_version:
        return done(Answer(404, events.resource_not_found(), "not_found"))
    try:
        if parse_error is not None:
            raise parse_error
        request = validate(
            incoming.endpoint, fields, uploads, from_form=from_form,
            blocked_phrase=config.blocked_phrase, model=deployment.model,
        )  # fmt: skip
    except InvalidRequest as error:
        body = events.invalid_request(error.message, error.code, error.param)
        return done(Answer(400, body, "invalid_request"))
    except ModerationBlocked as error:
        return done(Answer(400, events.moderation_blocked(str(error)), "content_filter"))

    decision = state.limiter.admit(deployment.name, now, rule)
    headers.update(limiter.headers(decision, config.time_scale))
    if not decision.allowed:
        return done(
            rate_limited(incoming.endpoint, decision.retry_after_s, api_version, config.time_scale)
        )
    outcome = state.script.take(deployment.name, request.prompt)
    if outcome is None:
        outcome = state.dice.roll(request.long_side, deployment.fault_rate)
    if outcome is not None:
        shown = outcome.describe() | ({"random_fault": True} if outcome.random_fault else {})
        state.log.update(log_key, scripted=shown)
    answer = plan(
        request, outcome, config.gateway_timeout_s, api_version=api_version,
        time_scale=config.time_scale,
    )  # fmt: skip
    return done(answer, request)
