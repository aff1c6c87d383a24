"""API calls against the attempt cap: what the emulator served versus what the records list.

The product counts its attempts in status.json after each call returns. A call in flight when its
host is SIGKILLed (or whose result could not be stored while Storage was down) is in no record, and
the redelivery makes it again: the cap cannot see it. So the bound checked is:

  for every request: billable calls at the emulator
      = calls its terminal record lists (each image's counted attempts <= IMAGE_MAX_ATTEMPTS)
      + calls in no record, each of which must be explained by a disruption:
          kill   - the killed process's log shows it working on the request from before the
                   call arrived until the SIGKILL (cut mid-stream, or finished while its result
                   was still to be stored)
          outage - it overlapped the Azurite outage, widened by what Storage's client retries
                   and the request lease can add (`OUTAGE_LEAD_S`, `OUTAGE_TAIL_S`)
  and a call in no record that no disruption explains is a violation.

"Billable" follows DESIGN.md section 7: 429s, connection errors (never at the emulator) and
401/403/404 do not count; everything else the emulator answered does.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from devtools.soak.chaos import Disruptions
from devtools.soak.observe import CallTimes, HostLog, call_id

OUTAGE_LEAD_S = 20.0  # a lease renewal failing before the outage ended shows up to a lease later
OUTAGE_TAIL_S = 90.0  # Storage's client retries a write for about a minute after the outage
UNCOUNTED_OUTCOMES = frozenset({"rate_limited", "connect_error"})
CONFIGURATION_STATUSES = frozenset({401, 403, 404})


def billable(call: dict[str, Any]) -> bool:
    status = call.get("status")
    return (
        status != 429
        and call.get("outcome") != "rate_limited"
        and status not in CONFIGURATION_STATUSES
    )


def counts_toward_cap(attempt: dict[str, Any]) -> bool:
    return (
        attempt.get("outcome") not in UNCOUNTED_OUTCOMES
        and attempt.get("http_status") not in CONFIGURATION_STATUSES
        and attempt.get("http_status") != 429
    )


@dataclass
class CallAccount:
    billable_calls: int = 0
    recorded: int = 0
    lost_to_kills: int = 0
    lost_to_outage: int = 0
    unexplained: list[str] = field(default_factory=list)  # apim-request-ids
    phantom: list[str] = field(default_factory=list)  # recorded ids the emulator never served
    over_cap: list[str] = field(default_factory=list)  # "id image k: m counted attempts"
    max_counted_per_image: int = 0
    max_billable_per_image: float = 0.0  # billable calls of a request / its n
    by_outcome: Counter[str] = field(default_factory=Counter)
    recorded_by_outcome: Counter[str] = field(default_factory=Counter)
    cut_by_kill: list[int] = field(default_factory=list)  # per kill: in-flight calls cut


@dataclass(frozen=True, slots=True)
class KilledProcess:
    at: float  # when it was SIGKILLed
    log: HostLog


def lost_reason(
    request_id: str,
    times: CallTimes | None,
    killed: list[KilledProcess],
    disruptions: Disruptions,
) -> str | None:
    """Which disruption can explain a call that no record lists, if any."""
    if times is None:
        return None
    for process in killed:
        if times.arrived <= process.at and any(
            began <= times.arrived and (ended is None or ended >= process.at)
            for began, ended in process.log.deliveries.get(request_id, [])
        ):
            return "kill"
    ended = times.first_done if times.first_done is not None else float("inf")
    for outage in disruptions.outages:
        if (
            times.arrived <= outage.up_at + OUTAGE_TAIL_S
            and ended >= outage.down_at - OUTAGE_LEAD_S
        ):
            return "outage"
    return None


def account_calls(
    calls: list[dict[str, Any]],
    times: dict[str, CallTimes],
    records: dict[str, dict[str, Any]],
    n_by_id: dict[str, int],
    disruptions: Disruptions,
    max_attempts: int,
    killed: list[KilledProcess],
) -> CallAccount:
    """`records`: the terminal record of each request (manifest or error), by id; `killed`: the
    host processes we SIGKILLed, with their logs."""
    account = CallAccount()
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
            reason = lost_reason(request_id, times.get(key), killed, disruptions)
            if reason == "kill":
                account.lost_to_kills += 1
            elif reason == "outage":
                account.lost_to_outage += 1
            else:
                account.unexplained.append(f"{request_id}: {key} ({call.get('outcome')})")
    return account
