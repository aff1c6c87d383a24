"""Scripted outcomes (`POST /_emulator/script`) and the random faults of large images.

An outcome is a frozen value parsed and validated once. The script is a queue: a request takes the
first outcome whose `deployment` and `prompt_contains` match it. Durations (`duration_s`, `seconds`,
`retry_after_ms`) are in emulated time like everything else, so they scale with `--time-scale`.

Outcomes (fields in brackets are optional):
- `ok`; `server_error` [after_partials]; `http_error` [status]; `rate_limited` [retry_after_ms];
  `gateway_timeout`; `drop` [after_partials]; `slow` duration_s; `stall` [after_partials, seconds].
- `content_filter` [shape, category, severity]: a 400 refusal of the prompt. `shape` is `azure`
  (default: content_policy_violation with `inner_error`), `azure_legacy` (`contentFilter`, as older
  deployments answer) or `openai` (moderation_blocked with `moderation_details`); `category` (hate,
  self_harm, sexual (default), violence) is the one filtered, at `severity` low, medium or high.
- `resource_blocked` [reason]: Azure's 403 "resource temporarily blocked"; `reason` is
  `content_policy` (default) or `unusual_behavior`.
- `fewer_partials` [partials]: only `partials` (default 0) of the partial images asked, then the
  completed event when it was due ("the final image may be sent before the full number of partial
  images"); the gateway's 408 still fires if nothing comes within its timeout.
- `late_first_partial` seconds: nothing before `seconds`, then the stream as planned from there
  (past the gateway timeout, the 408 comes instead).
- `bad_completed` payload: the completed event (or the JSON result) carries a bad image:
  `broken_base64`, `not_an_image` (valid base64, not PNG or JPEG), `wrong_format` (JPEG when PNG was
  asked, PNG otherwise) or `no_image` (no `b64_json` at all).
- `bad_partial_index`: the first partial image's `partial_image_index` is the string "x".
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
    "content_filter", "slow", "stall", "resource_blocked", "fewer_partials",
    "late_first_partial", "bad_completed", "bad_partial_index",
)  # fmt: skip
_ALLOWED = {
    "ok": (),
    "server_error": ("after_partials",),
    "http_error": ("status",),
    "rate_limited": ("retry_after_ms",),
    "gateway_timeout": (),
    "drop": ("after_partials",),
    "content_filter": ("shape", "category", "severity"),
    "slow": ("duration_s",),
    "stall": ("after_partials", "seconds"),
    "resource_blocked": ("reason",),
    "fewer_partials": ("partials",),
    "late_first_partial": ("seconds",),
    "bad_completed": ("payload",),
    "bad_partial_index": (),
}
# The allowed values of the text fields, the first being the default.
_TEXTS: dict[str, tuple[str, ...]] = {
    "shape": ("azure", "azure_legacy", "openai"),
    "category": ("sexual", "hate", "self_harm", "violence"),
    "severity": ("high", "medium", "low"),
    "reason": ("content_policy", "unusual_behavior"),
    "payload": ("broken_base64", "not_an_image", "wrong_format", "no_image"),
}
_REQUIRED = {"slow": "duration_s", "late_first_partial": "seconds", "bad_completed": "payload"}
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
    shape: str = "azure"
    category: str = "sexual"
    severity: str = "high"
    reason: str = "content_policy"
    partials: int = 0
    payload: str = "broken_base64"
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
    if "partials" in entry:
        values["partials"] = int(_number(entry, "partials", where, 0, 3))
    for name, allowed in _TEXTS.items():
        if name in entry:
            if entry[name] not in allowed:
                raise ScriptError(f"{where}: {name} must be one of {', '.join(allowed)}")
            values[name] = entry[name]
    required = _REQUIRED.get(kind)
    if required is not None and required not in entry:
        raise ScriptError(f"{where}: {kind} needs {required}")
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
