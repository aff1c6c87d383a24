"""One soak, start to finish: services, submit, disrupt, drain, gather the evidence, judge it."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from devtools.soak import checks
from devtools.soak.accounting import CallAccount, KilledProcess, account_calls
from devtools.soak.budget import Budget, OutOfBudget
from devtools.soak.chaos import Disruptions, run_disruptions
from devtools.soak.config import SoakConfig
from devtools.soak.evidence import Evidence, HostLogSummary, count_lines, read_storage
from devtools.soak.observe import EmulatorWatch, HostLog
from devtools.soak.plant import plant_double_generation
from devtools.soak.stack import CONTAINER, QUEUE, SoakStack, start_hosts, start_stack
from devtools.soak.workload import Workload, plan_workload
from shared.client.producer import ImageRequestClient

log = logging.getLogger("soak")

# Reads while Azurite may be down must fail fast instead of retrying for a minute.
QUICK = {"retry_total": 0, "connection_timeout": 2, "read_timeout": 10}


@dataclass
class SoakResult:
    config: SoakConfig
    workload: Workload
    evidence: Evidence
    account: CallAccount
    violations: list[checks.Violation]
    workdir: Path
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def run_soak(config: SoakConfig, workdir: Path | None = None) -> SoakResult:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    if workdir.exists() and any(workdir.iterdir()):
        # Azurite data or logs of another run would be judged as this run's.
        raise ValueError(f"workdir {workdir} is not empty")
    workload = plan_workload(config)
    started = time.monotonic()
    budget = Budget(config.budget_s, config.reserve_s)
    stack = start_stack(config, workdir, budget)
    watch: EmulatorWatch | None = None
    notes: list[str] = []
    out_of_budget: list[checks.Violation] = []
    disruptions = Disruptions()
    try:
        stack.emulator_script(list(workload.script))
        _submit_all(stack, workload)
        start_hosts(stack)
        watch = EmulatorWatch(stack.emulator_requests).start()
        progress = _progress_counter(stack)
        try:
            run_disruptions(stack, watch, progress, config.requests, disruptions)
            drained = _drain(stack, progress, config)
            if not drained:
                notes.append(
                    f"did not drain within {config.drain_timeout_s:.0f}s; judged as it stood"
                )
            if config.plant_double_generation:
                planted = plant_double_generation(stack, workload)
                notes.append(f"test hook: planted a second generation of {planted}")
        except OutOfBudget as exc:
            # Judge what there is: the report says what was seen before the time ran out.
            out_of_budget.append(checks.Violation("budget", str(exc)))
        stopped, watch = watch, None
        stopped.stop()
        evidence = _gather(stack, stopped, disruptions, time.monotonic() - started)
    finally:
        if watch is not None:
            watch.stop()
        stack.close()
    n_by_id = {r.id: r.n for r in workload.requests}
    records = {**evidence.errors, **evidence.manifests}
    # A host runs `threads` deliveries at once, each with up to n images in flight.
    concurrency = config.threads * max(r.n for r in workload.requests)
    killed = [
        KilledProcess(kill.at, HostLog.read(stack.hosts[0].logs[kill.incarnation - 1]), concurrency)
        for kill in disruptions.kills
    ]
    account = account_calls(
        evidence.calls,
        evidence.call_times,
        records,
        n_by_id,
        disruptions,
        config.max_attempts,
        killed,
        evidence.writes,
    )
    violations = [
        *out_of_budget,
        *checks.check_terminal_records(evidence, workload),
        *checks.check_expected_outcomes(evidence, workload),
        *checks.check_images(evidence, workload),
        *checks.check_writes(evidence, CONTAINER),
        *checks.check_generations(evidence),
        *checks.check_script_served(evidence),
        *checks.check_statuses(evidence, workload),
        *checks.check_calls(account),
        *checks.check_hosts(evidence),
        *checks.check_drained(evidence),
    ]
    _dump(workdir / "evidence.json", evidence, violations, account)
    return SoakResult(config, workload, evidence, account, violations, workdir, notes)


def _dump(
    path: Path, evidence: Evidence, violations: list[checks.Violation], account: CallAccount
) -> None:
    """The raw evidence beside the logs, for a post-mortem of a failed run."""
    doc = {
        "violations": [asdict(v) for v in violations],
        "kills": [asdict(k) for k in evidence.disruptions.kills],
        "outages": [asdict(o) for o in evidence.disruptions.outages],
        "calls": [
            {**call, "times": asdict(evidence.call_times[str(call["apim_request_id"])])}
            for call in evidence.calls
            if str(call["apim_request_id"]) in evidence.call_times
        ],
        "writes": [asdict(w) for w in evidence.writes],
        "excused": [asdict(x) for x in account.excused],
    }
    path.write_text(json.dumps(doc, indent=1, default=str))


def _submit_all(stack: SoakStack, workload: Workload) -> None:
    """Everything is queued before the hosts start, so the outage cannot hit the producer."""
    queue = stack.queue()
    with contextlib.suppress(Exception):
        queue.create_queue()
    client = ImageRequestClient(queue, stack.container(), input_containers=(f"{CONTAINER}-in",))
    for request in workload.requests:
        client.submit(request.body)


def _progress_counter(stack: SoakStack) -> Callable[[], int | None]:
    """Requests with a terminal record, or None while Storage does not answer."""
    container = stack.container(**QUICK)

    def count() -> int | None:
        try:
            names = container.list_blob_names()
            return sum(1 for n in names if n.endswith(("/manifest.json", "/error.json")))
        except Exception:
            return None

    return count


def _drain(stack: SoakStack, progress: Callable[[], int | None], config: SoakConfig) -> bool:
    """Every request terminal, both queues empty (invisible messages included), no lock held."""
    queue, poison = stack.queue(**QUICK), stack.queue(f"{QUEUE}-poison", **QUICK)
    container = stack.container(**QUICK)

    def settled() -> bool:
        try:
            if (progress() or 0) < config.requests:
                return False
            if queue.get_queue_properties().approximate_message_count:
                return False
            with contextlib.suppress(Exception):
                if poison.get_queue_properties().approximate_message_count:
                    return False
            return not any(
                b.lease.state == "leased"
                for b in container.list_blobs()
                if b.name.endswith("/status.json")
            )
        except Exception:
            return False

    try:
        stack.budget.wait_until(settled, config.drain_timeout_s, 0.5, what="the soak to drain")
    except OutOfBudget:
        raise
    except TimeoutError:
        return False
    return True


def _gather(
    stack: SoakStack, watch: EmulatorWatch, disruptions: Disruptions, duration_s: float
) -> Evidence:
    manifests, errors, statuses, images, folders = read_storage(stack.container())
    queue = stack.queue()
    poison = stack.queue(f"{QUEUE}-poison")
    poison_left = 0
    with contextlib.suppress(Exception):  # no poison queue: nothing was poisoned
        poison_left = poison.get_queue_properties().approximate_message_count
    killed = Counter(k.incarnation for k in disruptions.kills)
    hosts = []
    for slot in stack.hosts:
        for number, service in enumerate(slot.incarnations, 1):
            path = service.log_path
            hosts.append(
                HostLogSummary(
                    name=slot.name,
                    incarnation=number,
                    executed_ok=count_lines(path, "(Succeeded, Id=") if path else 0,
                    executed_failed=count_lines(path, "(Failed, Id=") if path else 0,
                    alive_at_end=service.alive(),
                    killed=slot.name == "a" and killed.get(number, 0) > 0,
                    exit_code=service.process.poll(),
                )
            )
    return Evidence(
        manifests=manifests,
        errors=errors,
        statuses=statuses,
        images=images,
        folders=folders,
        calls=watch.records(),
        call_times=watch.times(),
        writes=stack.tap.writes(),
        disruptions=disruptions,
        hosts=hosts,
        queue_left=queue.get_queue_properties().approximate_message_count,
        poison_left=poison_left,
        script_left=len(stack.emulator_pending_script()),
        duration_s=duration_s,
    )
