"""A request's call history as status.json, manifest.json and error.json carry it, kept bounded.

Every call is counted (`calls`, `outcome_counts`); every call that may have been billed is kept whole;
of the free ones (429s, connect errors: they never reached the model) only the most recent are kept.
A request meeting hundreds of 429s then keeps a status.json of a fixed size, rewritten after each call,
while the records still list every call anyone may be charged for. Which calls are billed is the
outcome table's business (`shared.policy.outcomes`); it is passed in, not imported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.records.attempts import AttemptRecord

__all__ = ["KEEP_FREE_ATTEMPTS", "CallHistory"]

# More than the largest per-delivery connect cap (50), so that cap always sees its own delivery's calls.
KEEP_FREE_ATTEMPTS = 60


@dataclass(slots=True)
class CallHistory:
    attempts: list[AttemptRecord] = field(default_factory=list)
    outcome_counts: dict[str, int] = field(default_factory=dict)
    calls: int = 0  # every call made for the request, so the next one is number calls + 1

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> CallHistory:
        """The history a status.json (or a terminal record) carries; unreadable entries are skipped."""
        if not doc:
            return cls()
        attempts: list[AttemptRecord] = []
        for entry in doc.get("attempts") or []:
            try:
                attempts.append(AttemptRecord.from_json(entry))
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
        raw_counts = doc.get("outcome_counts")
        counts: dict[str, int] = {}
        if isinstance(raw_counts, dict):
            counts = {str(k): v for k, v in raw_counts.items() if isinstance(v, int) and v >= 0}
        else:  # written before counts existed: the attempts are all there is
            for record in attempts:
                counts[record.outcome.value] = counts.get(record.outcome.value, 0) + 1
        calls = doc.get("calls")
        numbered = max((a.attempt for a in attempts), default=0)
        total = calls if isinstance(calls, int) and calls >= numbered else numbered
        return cls(attempts, counts, max(total, sum(counts.values())))

    def reserve_number(self) -> int:
        """The next call's number, taken before the call: calls made at once never share one.

        A number whose call left no record (it raised before sending) stays unused: numbers may
        have gaps, never repeats.
        """
        self.calls += 1
        return self.calls

    def add(self, record: AttemptRecord, billed: Callable[[AttemptRecord], bool]) -> None:
        """Record a finished call, in number order (calls made at once finish in any order)."""
        position = len(self.attempts)
        while position and self.attempts[position - 1].attempt > record.attempt:
            position -= 1
        self.attempts.insert(position, record)
        self.outcome_counts[record.outcome.value] = (
            self.outcome_counts.get(record.outcome.value, 0) + 1
        )
        self.calls = max(self.calls, record.attempt)
        free = [a for a in self.attempts if not billed(a)]
        if len(free) > KEEP_FREE_ATTEMPTS:
            dropped = {id(a) for a in free[: len(free) - KEEP_FREE_ATTEMPTS]}
            self.attempts = [a for a in self.attempts if id(a) not in dropped]

    def for_image(self, index: int) -> tuple[AttemptRecord, ...]:
        return tuple(a for a in self.attempts if a.image_index == index)

    def to_json(self) -> dict[str, Any]:
        """The three fields every record carries, in the order they are written."""
        return {
            "attempts": [a.to_json() for a in self.attempts],
            "outcome_counts": dict(sorted(self.outcome_counts.items())),
            "calls": self.calls,
        }
