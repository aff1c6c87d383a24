"""API calls against the attempt cap: what the emulator served versus what the records list.

The product counts its attempts in status.json after each call returns. A call whose host was
SIGKILLed before that write (or whose write Storage could not take) is in no record, and the
redelivery makes it again: the cap cannot see it. So, for every request:

  billable calls at the emulator = calls its terminal record lists + excused calls

and every call in no record must be excused by a disruption it met, judged by the call's own times
in the emulator's request log (`time` = arrival, `ended` = last byte out or client gone):

  kill   - the killed incarnation's log shows it working on the request from before the call
           arrived until the SIGKILL, and the call was still open at the kill, or it had been
           answered but no status.json write of the request began between its end and the kill
           (the tap logs every write): its record was still to be written when the host died
  outage - the call was open while Azurite was down, or it had been answered before and no
           status.json write of the request was applied between its end and the outage

Anything else in no record is a violation. Per disruption, the excused calls are bounded by the
calls the emulator had open at that instant plus those answered and not yet recorded, and a kill
by the killed host's concurrency too.

Which calls are billed: an independent copy of the outcome table (`shared/policy/outcomes.py`), on
purpose: this is the check of the product's accounting, so a wrong row there must not silently
become a wrong row here. tests/test_soak.py compares the two, row by row, so they cannot drift.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from devtools.soak.blobtap import BlobWrite
from devtools.soak.chaos import Disruptions
from devtools.soak.observe import CallTimes, HostLog, call_id

FREE_OUTCOMES = frozenset({"rate_limited", "connect_error", "auth_error"})
CONFIGURATION_STATUSES = frozenset({401, 403, 404})


def billable(call: dict[str, Any]) -> bool:
    """A call the emulator answered that may have been billed: all but 429s and 401/403/404."""
    status = call.get("status")
    return (
        status != 429
        and call.get("outcome") != "rate_limited"
        and status not in CONFIGURATION_STATUSES
    )


def counts_toward_cap(attempt: dict[str, Any]) -> bool:
    """Whether a recorded attempt may have been billed (docs/design.md §7)."""
    outcome, status = attempt.get("outcome"), attempt.get("http_status")
    if outcome == "succeeded":
        return True
    if status in CONFIGURATION_STATUSES:
        return False
    if outcome == "client_error":
        return status is not None  # an answer came back: the request went out
    if outcome != "http_error":
        return outcome not in FREE_OUTCOMES
    return not (status == 429 or (isinstance(status, int) and 300 <= status < 400))


@dataclass(frozen=True, slots=True)
class Excused:
    request_id: str
    call: str  # apim-request-id
    outcome: str
    reason: str  # which disruption, and how the call met it
    disruption: str  # "kill 1", "outage 1": the key of the bound


@dataclass
class CallAccount:
    billable_calls: int = 0
    recorded: int = 0
    excused: list[Excused] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)  # apim-request-ids
    phantom: list[str] = field(default_factory=list)  # recorded ids the emulator never served
    over_cap: list[str] = field(default_factory=list)  # "id image k: m counted attempts"
    over_bound: list[str] = field(default_factory=list)  # a disruption excusing too many calls
    max_counted_per_image: int = 0
    max_billable_per_image: float = 0.0  # billable calls of a request / its n
    by_outcome: Counter[str] = field(default_factory=Counter)
    recorded_by_outcome: Counter[str] = field(default_factory=Counter)
    cut_by_kill: list[int] = field(default_factory=list)  # per kill: in-flight calls cut
    in_flight: dict[str, int] = field(default_factory=dict)  # per disruption: the bound

    @property
    def lost_to_kills(self) -> int:
        return sum(1 for e in self.excused if e.disruption.startswith("kill"))

    @property
    def lost_to_outage(self) -> int:
        return sum(1 for e in self.excused if e.disruption.startswith("outage"))


@dataclass(frozen=True, slots=True)
class KilledProcess:
    at: float  # when it was SIGKILLed
    log: HostLog
    threads: int = 0  # its thread pool: at most this many calls open at once (0: unbounded)


def _status_writes(writes: list[BlobWrite]) -> dict[str, list[BlobWrite]]:
    by_id: dict[str, list[BlobWrite]] = defaultdict(list)
    for write in writes:
        folder, _, rest = write.blob.partition("/")
        if rest == "status.json":
            by_id[folder].append(write)
    return by_id


def _unrecorded_at(
    times: CallTimes, at: float, status_writes: list[BlobWrite], *, applied_only: bool
) -> bool:
    """The call had been answered before `at`, and no status.json write (applied, or any) of its
    request began after its answer and before `at`: its record was still to be written then."""
    if times.ended is None or times.ended > at:
        return False
    return not any(
        times.ended <= w.started <= at and (w.applied or not applied_only) for w in status_writes
    )


def lost_reason(
    request_id: str,
    times: CallTimes | None,
    killed: list[KilledProcess],
    disruptions: Disruptions,
    status_writes: list[BlobWrite] | None = None,
) -> tuple[str, str] | None:
    """(disruption, reason) that excuses a call no record lists, or None."""
    if times is None:
        return None
    writes = status_writes or []
    for number, process in enumerate(killed, 1):
        at = process.at
        if times.arrived > at or not any(
            began <= times.arrived and (ended is None or ended >= at)
            for began, ended in process.log.deliveries.get(request_id, [])
        ):
            continue
        if times.ended is None or times.ended >= at:
            return f"kill {number}", f"open at kill {number} ({_span(times, at)})"
        if _unrecorded_at(times, at, writes, applied_only=False):
            return (
                f"kill {number}",
                f"answered {at - times.ended:.2f}s before kill {number}, no status write since",
            )
    for number, outage in enumerate(disruptions.outages, 1):
        open_during = times.arrived <= outage.up_at and (
            times.ended is None or times.ended >= outage.down_at
        )
        if open_during:
            return (
                f"outage {number}",
                f"open during outage {number} ({_span(times, outage.down_at)})",
            )
        if _unrecorded_at(times, outage.down_at, writes, applied_only=True):
            return (
                f"outage {number}",
                f"answered {outage.down_at - (times.ended or 0):.2f}s before outage {number}, "
                "no status write applied since",
            )
    return None


def _span(times: CallTimes, at: float) -> str:
    ended = "never ended" if times.ended is None else f"ended {times.ended - at:+.2f}s"
    return f"arrived {times.arrived - at:+.2f}s, {ended}"


def _in_flight(
    calls: list[dict[str, Any]],
    times: dict[str, CallTimes],
    status_writes: dict[str, list[BlobWrite]],
    at: float,
    *,
    applied_only: bool,
) -> int:
    """Calls open at `at` by the emulator's times, plus those answered and not yet recorded."""
    count = 0
    for call in calls:
        span = times.get(str(call["apim_request_id"]))
        request_id = call_id(call)
        if span is None or request_id is None or span.arrived > at or not billable(call):
            continue
        if (
            span.ended is None
            or span.ended >= at
            or _unrecorded_at(
                span, at, status_writes.get(request_id, []), applied_only=applied_only
            )
        ):
            count += 1
    return count


def account_calls(
    calls: list[dict[str, Any]],
    times: dict[str, CallTimes],
    records: dict[str, dict[str, Any]],
    n_by_id: dict[str, int],
    disruptions: Disruptions,
    max_attempts: int,
    killed: list[KilledProcess],
    writes: list[BlobWrite] | None = None,
) -> CallAccount:
    """`records`: the terminal record of each request (manifest or error), by id; `killed`: the
    host processes we SIGKILLed, with their logs; `writes`: the tap's log of blob writes."""
    account = CallAccount()
    status_writes = _status_writes(writes or [])
    calls_by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for call in calls:
        account.by_outcome[str(call.get("outcome"))] += 1
        request_id = call_id(call)
        if request_id is not None:
            calls_by_id[request_id].append(call)
    outcome_of = {str(c["apim_request_id"]): str(c.get("outcome")) for c in calls}
    for kill in disruptions.kills:
        account.cut_by_kill.append(
            sum(1 for key in kill.in_flight if outcome_of.get(key) == "client_closed")
        )
    for number, process in enumerate(killed, 1):
        account.in_flight[f"kill {number}"] = _in_flight(
            calls, times, status_writes, process.at, applied_only=False
        )
    for number, outage in enumerate(disruptions.outages, 1):
        during = sum(
            1
            for c in calls
            if billable(c)
            and (s := times.get(str(c["apim_request_id"]))) is not None
            and outage.down_at < s.arrived <= outage.up_at
        )
        account.in_flight[f"outage {number}"] = (
            _in_flight(calls, times, status_writes, outage.down_at, applied_only=True) + during
        )
    for request_id, n in n_by_id.items():
        record = records.get(request_id) or {}
        attempts = [a for a in record.get("attempts") or [] if isinstance(a, dict)]
        per_image: Counter[int] = Counter()
        recorded_keys = set()
        for attempt in attempts:
            account.recorded_by_outcome[str(attempt.get("outcome"))] += 1
            if counts_toward_cap(attempt):
                per_image[int(attempt.get("image_index") or 0)] += 1
            key = attempt.get("apim_request_id")
            if key:
                recorded_keys.add(str(key))
                if key not in outcome_of:
                    account.phantom.append(f"{request_id}: {key}")
        for index, counted in per_image.items():
            account.max_counted_per_image = max(account.max_counted_per_image, counted)
            if counted > max_attempts:
                account.over_cap.append(f"{request_id} image {index}: {counted} counted attempts")
        mine = [c for c in calls_by_id.get(request_id, []) if billable(c)]
        account.billable_calls += len(mine)
        account.max_billable_per_image = max(account.max_billable_per_image, len(mine) / n)
        for call in mine:
            key = str(call["apim_request_id"])
            if key in recorded_keys:
                account.recorded += 1
                continue
            found = lost_reason(
                request_id, times.get(key), killed, disruptions, status_writes.get(request_id)
            )
            if found is None:
                account.unexplained.append(f"{request_id}: {key} ({call.get('outcome')})")
            else:
                disruption, reason = found
                outcome = str(call.get("outcome"))
                account.excused.append(Excused(request_id, key, outcome, reason, disruption))
    excused_by = Counter(e.disruption for e in account.excused)
    for disruption, count in sorted(excused_by.items()):
        bound = account.in_flight.get(disruption, 0)
        if count > bound:
            account.over_bound.append(
                f"{disruption}: {count} calls excused, {bound} were in flight"
            )
    for number, process in enumerate(killed, 1):
        count = excused_by.get(f"kill {number}", 0)
        if process.threads and count > process.threads:
            account.over_bound.append(
                f"kill {number}: {count} calls excused, the host runs {process.threads} threads"
            )
    return account
