"""The disruptions, each started when a condition holds (never after a guessed sleep).

- kill: when host A has a call open at the emulator (its log says it is working on the request,
  the emulator says the call is unfinished), SIGKILL it and start a new incarnation at once.
- outage: stop the soak's Azurite (and the blob tap) for `outage_s`, then start it on the same
  ports and data folder. The hosts are not touched: they must ride it out.

Each waits first until a share of the requests has a terminal record, so the disruptions land in
the middle of the work, not before or after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from devtools.soak.observe import EmulatorWatch, HostLog, calls_in_flight_on
from devtools.soak.stack import SoakStack

log = logging.getLogger("soak.chaos")

POLL_S = 0.2
# A call picked for the kill has at least this long to run, by the emulator's timing model.
MIN_LEFT_S = 0.3


class SoakAborted(RuntimeError):
    """The soak could not do what it is for (e.g. the work ended before a disruption was due)."""


@dataclass(frozen=True, slots=True)
class Kill:
    at: float  # epoch seconds, just before SIGKILL
    host: str
    incarnation: int
    in_flight: tuple[str, ...]  # apim-request-ids of the calls the logs tie to the killed host
    pending_at_kill: tuple[str, ...]  # every unfinished call at the emulator then (both hosts)
    progress: int  # requests with a terminal record at the time


@dataclass(frozen=True, slots=True)
class Outage:
    down_at: float  # Azurite asked to stop
    up_at: float  # Azurite answering again
    progress: int

    @property
    def downtime_s(self) -> float:
        return self.up_at - self.down_at


@dataclass
class Disruptions:
    kills: list[Kill] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)


def run_disruptions(
    stack: SoakStack,
    watch: EmulatorWatch,
    progress: Callable[[], int | None],
    total: int,
    done: Disruptions | None = None,
) -> Disruptions:
    """Both kills and the outage, in the order of their thresholds, into `done` (so what happened
    before the budget ran out is kept); every wait comes out of `stack.budget`."""
    config = stack.config
    outages = [] if config.outage_at is None else [(config.outage_at, "outage")]
    plan: list[tuple[float, str]] = sorted([(share, "kill") for share in config.kill_at] + outages)
    done = Disruptions() if done is None else done
    for share, kind in plan:
        _wait_for_progress(stack, progress, share, total)
        if kind == "kill":
            done.kills.append(_kill_mid_stream(stack, watch, progress))
        else:
            done.outages.append(_outage(stack, progress))
    return done


def _wait_for_progress(
    stack: SoakStack, progress: Callable[[], int | None], share: float, total: int
) -> None:
    target = max(1, int(share * total))
    seen: dict[str, int] = {}

    def reached() -> bool:
        count = progress()
        if count is None:
            return False
        seen["count"] = count
        if count >= total:
            raise SoakAborted(
                f"all {total} requests finished before a disruption due at {share:.0%}"
            )
        return count >= target

    stack.budget.wait_until(
        reached,
        stack.config.disruption_timeout_s,
        POLL_S,
        what=f"{share:.0%} of the requests to finish",
    )


def _kill_mid_stream(
    stack: SoakStack, watch: EmulatorWatch, progress: Callable[[], int | None]
) -> Kill:
    slot = stack.hosts[0]
    found: dict[str, Any] = {}

    def host_a_mid_stream() -> bool:
        records = watch.poll()
        mine = calls_in_flight_on(
            HostLog.read(slot.logs[-1]),
            [HostLog.read(s.logs[-1]) for s in stack.hosts[1:]],
            records,
            time_scale=stack.config.time_scale,
            min_left_s=MIN_LEFT_S,
        )
        if mine:
            found["mine"] = mine
            found["pending"] = [r for r in records if r.get("outcome") == "pending"]
        return bool(mine)

    stack.budget.wait_until(
        host_a_mid_stream, stack.config.disruption_timeout_s, POLL_S, what="host A mid-stream"
    )
    at = time.time()
    stack.kill_host(slot)
    kill = Kill(
        at=at,
        host=slot.name,
        incarnation=len(slot.incarnations),
        in_flight=tuple(str(r["apim_request_id"]) for r in found["mine"]),
        pending_at_kill=tuple(str(r["apim_request_id"]) for r in found["pending"]),
        progress=progress() or 0,
    )
    log.info("killed host %s (%d calls in flight)", slot.name, len(kill.in_flight))
    watch.poll()
    stack.start_host(slot)
    return kill


def _outage(stack: SoakStack, progress: Callable[[], int | None]) -> Outage:
    count = progress() or 0
    # Begun, an outage must end: only start one the budget can see through.
    stack.budget.require(stack.config.outage_s + stack.config.service_start_s, "an outage")
    down_at = time.time()
    stack.stop_storage()
    log.info("Azurite stopped; restarting in %.0fs", stack.config.outage_s)
    try:
        # The outage's length is the point of the exercise, not a guess at readiness.
        time.sleep(max(0.0, down_at + stack.config.outage_s - time.time()))
    finally:
        stack.start_storage()
    up_at = time.time()
    log.info("Azurite back after %.1fs", up_at - down_at)
    return Outage(down_at, up_at, count)
