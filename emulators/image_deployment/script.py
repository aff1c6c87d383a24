"""Scripted outcomes (`POST /_emulator/script`) and the random faults of large images.

An outcome is a frozen value parsed and validated once. The script is a queue: a request takes the
first outcome whose `deployment` and `prompt_contains` match it. Durations (`duration_s`, `seconds`,
`retry_after_ms`) are in emulated time like everything else, so they scale with `--time-scale`.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = (
    "ok", "server_error", "http_error", "rate_limited", "gateway_timeout", "drop",
    "content_filter", "slow", "stall",
)  # fmt: skip
_ALLOWED = {
    "ok": (),
    "server_error": ("after_partials",),
    "http_error": ("status",),
    "rate_limited": ("retry_after_ms",),
    "gateway_timeout": (),
    "drop": ("after_partials",),
    "content_filter": (),
    "slow": ("duration_s",),
    "stall": ("after_partials", "seconds"),
}
FAULT_MIN_LONG_SIDE = 2048


class ScriptError(ValueError):
    """A scripted outcome is malformed; the message names the entry and field."""


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str
    after_partials: int = 1
    status: int = 500
    retry_after_ms: float = 1000.0
    duration_s: float | None = None
    seconds: float = 400.0
    deployment: str | None = None
    prompt_contains: str | None = None
    random_fault: bool = False  # drawn by the fault rate, not scripted

    def matches(self, deployment: str, prompt: str) -> bool:
        if self.deployment is not None and self.deployment != deployment:
            return False
        return self.prompt_contains is None or self.prompt_contains in prompt

    def describe(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"outcome": self.kind}
        for name in _ALLOWED[self.kind]:
            shown[name] = getattr(self, name)
        if self.deployment is not None:
            shown["deployment"] = self.deployment
        if self.prompt_contains is not None:
            shown["prompt_contains"] = self.prompt_contains
        return shown


def _number(entry: Mapping[str, Any], name: str, where: str, low: float, high: float) -> float:
    value = entry[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScriptError(f"{where}: {name} must be a number")
    if not low <= value <= high:
        raise ScriptError(f"{where}: {name} must be between {low:g} and {high:g}")
    return float(value)


def parse_outcome(entry: object, where: str) -> Outcome:
    if not isinstance(entry, dict):
        raise ScriptError(f'{where}: expected an object like {{"outcome": "ok"}}')
    kind = entry.get("outcome")
    if kind not in KINDS:
        raise ScriptError(f"{where}: outcome must be one of {', '.join(KINDS)}")
    allowed = {"outcome", "deployment", "prompt_contains", *_ALLOWED[kind]}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ScriptError(f"{where}: {kind} does not take {', '.join(unknown)}")
    values: dict[str, Any] = {"kind": kind}
    for name in ("deployment", "prompt_contains"):
        if name in entry and entry[name] is not None:
            if not isinstance(entry[name], str) or not entry[name]:
                raise ScriptError(f"{where}: {name} must be a non-empty string")
            values[name] = entry[name]
    if "after_partials" in entry:
        values["after_partials"] = int(_number(entry, "after_partials", where, 0, 100))
    if "status" in entry:
        values["status"] = int(_number(entry, "status", where, 400, 599))
    if "retry_after_ms" in entry:
        values["retry_after_ms"] = _number(entry, "retry_after_ms", where, 0, 86_400_000)
    if "duration_s" in entry:
        values["duration_s"] = _number(entry, "duration_s", where, 0, 86_400)
    if "seconds" in entry:
        values["seconds"] = _number(entry, "seconds", where, 0, 86_400)
    if kind == "slow" and "duration_s" not in values:
        raise ScriptError(f"{where}: slow needs duration_s")
    return Outcome(**values)


def parse_script(body: object) -> list[Outcome]:
    entries = body if isinstance(body, list) else [body]
    return [parse_outcome(entry, f"script[{i}]") for i, entry in enumerate(entries)]


class Script:
    """Pending outcomes, in order; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[Outcome] = []

    def extend(self, outcomes: list[Outcome]) -> int:
        with self._lock:
            self._pending.extend(outcomes)
            return len(self._pending)

    def take(self, deployment: str, prompt: str) -> Outcome | None:
        with self._lock:
            for i, outcome in enumerate(self._pending):
                if outcome.matches(deployment, prompt):
                    return self._pending.pop(i)
            return None

    def pending(self) -> list[Outcome]:
        with self._lock:
            return list(self._pending)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()


class FaultDice:
    """The random mid-stream server errors of large images, from one seeded generator."""

    def __init__(self, seed: int | None) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def roll(self, long_side: int, fault_rate: float) -> Outcome | None:
        if long_side < FAULT_MIN_LONG_SIDE or fault_rate <= 0:
            return None
        with self._lock:
            if self._rng.random() >= fault_rate:
                return None
            # After the first or second partial (past the last partial it fires where the
            # completed event was due, i.e. before any event when there are no partials).
            return Outcome(
                "server_error", after_partials=self._rng.choice((1, 2)), random_fault=True
            )
