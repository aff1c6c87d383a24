"""What an Azure OpenAI response's headers say about waiting: Retry-After.

Parsing only; what to do with the numbers is the policy's business.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["parse_retry_after", "parse_should_retry"]


def parse_should_retry(headers: Mapping[str, str]) -> bool | None:
    """`x-should-retry` as openai-python reads it: exactly "true" or "false", else no opinion."""
    folded = {name.lower(): value for name, value in headers.items()}
    return {"true": True, "false": False}.get(folded.get("x-should-retry", ""))


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds the service asks us to wait: `retry-after-ms` first, then `retry-after`.

    `retry-after` may be seconds or an HTTP-date (relative to `now`, default the current time).
    Header names are matched case-insensitively, whatever mapping the caller has. Returns None when
    neither header is present or parses; a wait in the past is 0, never negative.
    """
    folded = {name.lower(): value for name, value in headers.items()}
    millis = _number(folded.get("retry-after-ms"))
    if millis is not None:
        return max(0.0, millis / 1000.0)
    raw = folded.get("retry-after")
    if raw is None:
        return None
    seconds = _number(raw)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # RFC 9110 dates are GMT
    moment = now if now is not None else datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (when - moment).total_seconds())


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None
