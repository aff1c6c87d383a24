"""Checks a Microsoft Entra ID bearer token as the service does, when given the key to check it.

The real service verifies an RS256 token against Entra ID's published keys; locally, the test's
managed-identity stand-in signs HS256 tokens with a key it shares with the emulator
(`--entra-key`). What is checked is what the service checks: the signature, the audience
(`https://cognitiveservices.azure.com`, the resource the product's scope names) and the expiry.
Without a key, any non-empty bearer token passes, as before.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

AUDIENCES = frozenset(
    {"https://cognitiveservices.azure.com", "https://cognitiveservices.azure.com/"}
)
CLOCK_SKEW_S = 0.0  # the stand-in and the emulator share one clock


@dataclass(frozen=True, slots=True)
class TokenCheck:
    ok: bool
    reason: str  # why it failed ("" when ok): for the request log, never the token itself
    token_id: str | None = None  # its `jti`, so a test can tell one token from the next


def _segment(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check(token: str, key: str, now: float) -> TokenCheck:
    parts = token.split(".")
    if len(parts) != 3:
        return TokenCheck(False, "not a JWT")
    try:
        header: Any = json.loads(_segment(parts[0]))
        claims: Any = json.loads(_segment(parts[1]))
        signature = _segment(parts[2])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return TokenCheck(False, "not a JWT")
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return TokenCheck(False, "not a JWT")
    token_id = str(claims.get("jti")) if claims.get("jti") is not None else None
    if header.get("alg") != "HS256":
        return TokenCheck(False, f"alg {header.get('alg')!r} is not accepted", token_id)
    expected = hmac.new(key.encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        return TokenCheck(False, "bad signature", token_id)
    if claims.get("aud") not in AUDIENCES:
        return TokenCheck(False, f"audience {claims.get('aud')!r}", token_id)
    expires = claims.get("exp")
    if not isinstance(expires, int | float) or expires + CLOCK_SKEW_S <= now:
        return TokenCheck(False, "expired", token_id)
    return TokenCheck(True, "", token_id)
