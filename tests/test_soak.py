"""The crash soak (issue 7): its checks on hand-made evidence, its blob tap against Azurite, and the
soak itself: the full 300 requests (slow), or the 90-request run with SOAK_QUICK=1."""

from __future__ import annotations

import hashlib
import os
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.storage.blob import BlobServiceClient

from devtools import azurite
from devtools.services import distinct_free_ports
from devtools.soak import CI, FULL, run_soak
from devtools.soak.accounting import KilledProcess, account_calls, counts_toward_cap
from devtools.soak.blobtap import BlobTap
from devtools.soak.budget import Budget, OutOfBudget
from devtools.soak.chaos import Disruptions, Kill, Outage
from devtools.soak.checks import (
    check_calls,
    check_generations,
    check_images,
    check_statuses,
    check_terminal_records,
    check_writes,
)
from devtools.soak.evidence import Evidence, StatusBlob, StoredImage
from devtools.soak.observe import CallTimes, HostLog, calls_in_flight_on
from devtools.soak.report import render
from devtools.soak.workload import plan_workload, tag

SHA_A, SHA_B = "a" * 64, "b" * 64


def _evidence(**changes: Any) -> Evidence:
    base = Evidence(
        manifests={}, errors={}, statuses={}, images={}, folders=frozenset(), calls=[],
        call_times={}, writes=[], disruptions=Disruptions(), hosts=[], queue_left=0,
        poison_left=0, script_left=0, duration_s=1.0,
    )  # fmt: skip
    return replace(base, **changes)


def _manifest(request_id: str, sha: str = SHA_A, size: int = 10) -> dict[str, Any]:
    return {
        "id": request_id,
        "status": "succeeded",
        "images": [{"index": 0, "blob": f"{request_id}/0.png", "sha256": sha, "bytes": size}],
        "attempts": [],
    }


def _write(blob: str, sha: str, start: float, status: int | None = 201) -> Any:
    from devtools.soak.blobtap import BlobWrite

    return BlobWrite("c", blob, "put_blob", sha, 10, start, start + 0.01, status)


def _workload(n: int = 10) -> Any:
    return plan_workload(replace(CI, requests=n))


# -- checks on hand-made evidence ----------------------------------------------------------------


def test_both_terminal_records_and_a_missing_one_are_violations() -> None:
    workload = _workload()
    ids = [r.id for r in workload.requests]
    manifests = {i: _manifest(i) for i in ids[1:]}
    errors = {ids[2]: {"id": ids[2], "status": "failed", "error": {"kind": "poisoned"}}}
    found = check_terminal_records(_evidence(manifests=manifests, errors=errors), workload)
    details = sorted(v.detail for v in found)
    assert details == [
        f"{ids[0]}: no terminal record",
        f"{ids[2]}: both manifest.json and error.json",
    ]


def test_a_stray_record_under_another_name_is_a_violation() -> None:
    workload = _workload()
    manifests = {r.id: _manifest(r.id) for r in workload.requests}
    errors = {"msg-123": {"error": {"message": "id reused"}}}
    found = check_terminal_records(_evidence(manifests=manifests, errors=errors), workload)
    assert [v.detail for v in found] == ["stray record under 'msg-123': id reused"]


def test_an_image_whose_content_differs_from_its_manifest_is_a_violation() -> None:
    workload = _workload()
    request = next(r for r in workload.requests if r.n == 1)
    manifests = {request.id: _manifest(request.id, SHA_A)}
    images = {f"{request.id}/0.png": StoredImage(SHA_B, 10, {"request_id": request.id})}
    found = check_images(_evidence(manifests=manifests, images=images), workload)
    assert len(found) == 1 and "stored sha256 bbbbbbbbbbbb" in found[0].detail


def test_two_contents_for_one_blob_are_a_violation_even_if_one_write_got_no_answer() -> None:
    blob = "r1/0.png"
    writes = [_write(blob, SHA_A, 1.0), _write(blob, SHA_B, 2.0, status=None)]
    images = {blob: StoredImage(SHA_A, 10, {})}
    found = check_writes(_evidence(writes=writes, images=images), "c")
    assert [v.detail for v in found] == [f"{blob}: written with 2 different contents"]


def test_a_refused_write_with_other_content_is_not_a_violation() -> None:
    blob = "r1/0.png"
    writes = [_write(blob, SHA_A, 1.0), _write(blob, SHA_B, 2.0, status=412)]
    found = check_writes(_evidence(writes=writes, images={blob: StoredImage(SHA_A, 10, {})}), "c")
    assert found == []


def test_an_image_written_after_its_manifest_is_a_violation() -> None:
    writes = [
        _write("r1/0.png", SHA_A, 1.0),
        _write("r1/manifest.json", SHA_B, 2.0),
        _write("r1/0.png", SHA_A, 3.0),
    ]
    found = check_writes(
        _evidence(writes=writes, images={"r1/0.png": StoredImage(SHA_A, 10, {})}), "c"
    )
    assert len(found) == 1 and "after its record" in found[0].detail


def test_an_image_the_tap_never_saw_written_is_a_violation() -> None:
    found = check_writes(_evidence(images={"r1/0.png": StoredImage(SHA_A, 10, {})}), "c")
    assert [v.detail for v in found] == ["r1/0.png: stored, but the tap saw no write of it"]


def test_a_status_left_running_beside_a_manifest_is_a_violation() -> None:
    workload = _workload()
    ids = [r.id for r in workload.requests]
    manifests = {i: _manifest(i) for i in ids}
    statuses = {i: StatusBlob({"status": "succeeded"}, "available") for i in ids}
    statuses[ids[3]] = StatusBlob({"status": "running", "updated_at": "t"}, "expired")
    statuses[ids[4]] = StatusBlob({"status": "succeeded"}, "leased")
    found = check_statuses(_evidence(manifests=manifests, statuses=statuses), workload)
    assert sorted(v.detail.split(":")[0] for v in found) == [ids[3], ids[4]]


def _call(
    request_id: str, key: str, outcome: str = "succeeded", status: int = 200
) -> dict[str, Any]:
    return {
        "apim_request_id": key,
        "time": "2026-01-01T00:00:10.000Z",
        "outcome": outcome,
        "status": status,
        "body": {"prompt": f"{tag(request_id)} a cat"},
    }


ARRIVED = 1767225610.0  # 2026-01-01T00:00:10Z


def test_calls_over_the_cap_and_calls_in_no_record_are_violations() -> None:
    attempts = [
        {"attempt": i, "image_index": 0, "outcome": "server_error", "apim_request_id": f"k{i}"}
        for i in range(1, 6)
    ]
    calls = [_call("r1", f"k{i}", "server_error") for i in range(1, 6)]
    calls += [_call("r1", "lost"), _call("r1", "t", "rate_limited", 429)]
    times = {
        c["apim_request_id"]: CallTimes(ARRIVED, None, ARRIVED + 1, ARRIVED + 0.5) for c in calls
    }
    account = account_calls(
        calls, times, {"r1": {"attempts": attempts}}, {"r1": 1}, Disruptions(), 4, []
    )
    assert account.billable_calls == 6 and account.recorded == 5
    found = [v.detail for v in check_calls(account)]
    assert found == [
        "r1 image 0: 5 counted attempts",
        "call in no record and no disruption: r1: lost (succeeded)",
    ]


def test_a_call_the_killed_host_was_making_is_lost_to_the_kill(tmp_path: Path) -> None:
    log = tmp_path / "host.log"
    log.write_text(
        "[2026-01-01T00:00:09.000Z] request r1: generate 1024x1024 low n=1 partial_images=0\n"
    )
    kill = Kill(ARRIVED + 5, "a", 1, ("lost",), ("lost",), 0)
    calls = [_call("r1", "lost", "client_closed")]
    times = {"lost": CallTimes(ARRIVED, ARRIVED + 4, ARRIVED + 6, ARRIVED + 5.5)}
    account = account_calls(
        calls, times, {"r1": {"attempts": []}}, {"r1": 1}, Disruptions(kills=[kill]), 4,
        [KilledProcess(kill.at, HostLog.read(log))],
    )  # fmt: skip
    assert (account.lost_to_kills, account.unexplained, account.cut_by_kill) == (1, [], [1])


def test_a_call_after_the_killed_delivery_ended_is_not_explained_by_the_kill(
    tmp_path: Path,
) -> None:
    log = tmp_path / "host.log"
    log.write_text(
        textwrap.dedent("""\
        [2026-01-01T00:00:05.000Z] request r1: generate 1024x1024 low n=1 partial_images=0
        [2026-01-01T00:00:06.000Z] Executed 'Functions.process_image_request' (Failed, Id=1, Duration=1ms)
        Result: Failure
        Exception: LockLost: request r1: the lease on status.json was lost; stopping this delivery
        """)
    )
    kill = Kill(ARRIVED + 5, "a", 1, (), (), 0)
    outage = Outage(ARRIVED + 500, ARRIVED + 510, 0)
    # The host wrote status.json after the call: the call was on the record before any disruption.
    writes = [_write("r1/status.json", SHA_A, ARRIVED + 0.6)]
    account = account_calls(
        [_call("r1", "k")], {"k": CallTimes(ARRIVED, None, ARRIVED + 1, ARRIVED + 0.5)}, {"r1": {}},
        {"r1": 1}, Disruptions(kills=[kill], outages=[outage]), 4,
        [KilledProcess(kill.at, HostLog.read(log))], writes,
    )  # fmt: skip
    assert account.unexplained == ["r1: k (succeeded)"]


def _times(arrived: float, ended: float | None) -> CallTimes:
    return CallTimes(ARRIVED + arrived, None, None, None if ended is None else ARRIVED + ended)


def test_an_outage_excuses_only_calls_open_during_it_or_answered_and_not_yet_recorded() -> None:
    outage = Outage(ARRIVED + 10, ARRIVED + 20, 0)
    calls = [_call(f"r{i}", f"k{i}") for i in range(5)]
    times = {
        "k0": _times(5, 12),  # open when Azurite went down
        "k1": _times(15, 16),  # made and answered while it was down
        "k2": _times(8, 9),  # answered before; its status write never got through
        "k3": _times(8, 9),  # answered before and written: it should be on the record
        "k4": _times(21, 22),  # after the outage: nothing excuses it
    }
    writes = [
        _write("r2/status.json", SHA_A, ARRIVED + 9.5, status=None),
        _write("r3/status.json", SHA_A, ARRIVED + 9.5),
    ]
    n_by_id = {f"r{i}": 1 for i in range(5)}
    account = account_calls(calls, times, {}, n_by_id, Disruptions(outages=[outage]), 4, [], writes)
    assert [(x.call, x.disruption) for x in account.excused] == [
        ("k0", "outage 1"), ("k1", "outage 1"), ("k2", "outage 1"),
    ]  # fmt: skip
    assert account.unexplained == ["r3: k3 (succeeded)", "r4: k4 (succeeded)"]
    assert account.in_flight["outage 1"] == 3 and account.over_bound == []
    assert "open during outage 1" in account.excused[0].reason


def test_a_kill_excuses_no_more_calls_than_its_host_can_have_open(tmp_path: Path) -> None:
    log = tmp_path / "host.log"
    log.write_text(
        "".join(
            f"[2026-01-01T00:00:09.000Z] request r{i}: generate 1024x1024 low n=1 partial_images=0\n"
            for i in range(3)
        )
    )
    calls = [_call(f"r{i}", f"k{i}", "client_closed") for i in range(3)]
    times = {f"k{i}": _times(0, 5.5) for i in range(3)}
    killed = [KilledProcess(ARRIVED + 5, HostLog.read(log), threads=2)]
    account = account_calls(
        calls, times, {}, {f"r{i}": 1 for i in range(3)}, Disruptions(), 4, killed, []
    )
    assert len(account.excused) == 3 and account.unexplained == []
    assert account.over_bound == ["kill 1: 3 calls excused, the host runs 2 threads"]


def test_the_soaks_cap_rule_agrees_with_the_products_outcome_table() -> None:
    """The soak keeps its own copy on purpose (it checks the product); it must not drift."""
    from shared.policy.outcomes import judge
    from shared.records.attempts import AttemptRecord, Outcome

    for outcome in Outcome:
        for status in (None, 200, 301, 400, 401, 403, 404, 408, 429, 500, 503):
            doc = {"outcome": outcome.value, "http_status": status}
            record = AttemptRecord(
                attempt=1, image_index=0, deployment="d", started_at="2026-01-01T00:00:00Z",
                elapsed_s=0.1, first_event_s=None, http_status=status, apim_request_id=None,
                x_request_id=None, partial_images_sent=0, partials_received=0, outcome=outcome,
            )  # fmt: skip
            assert counts_toward_cap(doc) == judge(record).billed, (outcome, status)


def test_host_log_tracks_deliveries_and_logged_calls(tmp_path: Path) -> None:
    log = tmp_path / "host.log"
    log.write_text(
        textwrap.dedent("""\
        [2026-01-01T00:00:01.000Z] Executing 'Functions.process_image_request' (Reason='x', Id=0a1b-2c3d)
        [2026-01-01T00:00:01.100Z] request r1: generate 1024x1024 low n=1 partial_images=0 prompt='p'
        [2026-01-01T00:00:02.000Z] attempt id=r1 image=0 attempt=1 deployment=d status=200 apim-request-id=k1 seconds=0.4 outcome=succeeded
        [2026-01-01T00:00:02.100Z] request r1 succeeded: 1 image(s), 1 attempt(s)
        [2026-01-01T00:00:02.200Z] request r2: generate 1024x1024 low n=1 partial_images=0 prompt='p'
        """)
    )
    host = HostLog.read(log)
    assert host.working_on("r1") is None
    assert host.working_on("r2") is not None
    assert host.logged_calls == frozenset({"k1"})
    assert host.running_invocations == 1


def test_calls_in_flight_on_a_host_are_the_pending_ones_it_is_working_on(tmp_path: Path) -> None:
    now = time.time()
    stamp = datetime.fromtimestamp(now - 1, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    mine, theirs = tmp_path / "a.log", tmp_path / "b.log"
    mine.write_text(f"[{stamp}] request r1: generate 2048x2048 high n=1 partial_images=0\n")
    theirs.write_text(f"[{stamp}] request r2: generate 2048x2048 high n=1 partial_images=0\n")
    calls = [
        {
            **_call(r, k, "pending"),
            "time": stamp,
            "body": {"prompt": tag(r), "size": "2048x2048", "quality": "high"},
        }
        for r, k in (("r1", "k1"), ("r2", "k2"))
    ]
    others = [HostLog.read(theirs)]
    found = calls_in_flight_on(HostLog.read(mine), others, calls, time_scale=1.0, min_left_s=5.0)
    assert [c["apim_request_id"] for c in found] == ["k1"]
    # 2048x2048 high takes about 2.4 s at x0.01: begun 1 s ago, it has less than 5 s to go.
    assert (
        calls_in_flight_on(HostLog.read(mine), others, calls, time_scale=0.01, min_left_s=5.0) == []
    )


# -- the blob tap against an Azurite -----------------------------------------------------


@pytest.fixture(scope="module")
def private_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """An Azurite of this module's own (its blob port): the tap's timing is not at the mercy of
    whatever load the other test runs put on the shared one."""
    blob, queue, table = distinct_free_ports(3)
    service = azurite.start_azurite(
        blob_port=blob, queue_port=queue, table_port=table,
        log_path=tmp_path_factory.mktemp("azurite") / "azurite.log",
    )  # fmt: skip
    try:
        yield blob
    finally:
        service.stop()


def test_blob_tap_logs_each_write_with_its_content_and_refuses_while_paused(
    private_azurite: int,
) -> None:
    (port,) = distinct_free_ports(1)
    tap = BlobTap(port, upstream_port=private_azurite).start()
    try:
        via_tap = azurite.connection_string(blob_port=port)
        # No client retries: a write the tap mishandled must show up as itself, not as a 409.
        service = BlobServiceClient.from_connection_string(via_tap, retry_total=0)
        container = service.get_container_client("tap")
        container.create_container()
        container.upload_blob("r1/0.png", b"first", overwrite=True)
        container.upload_blob("r1/0.png", b"second", overwrite=True)
        assert container.download_blob("r1/0.png").readall() == b"second"
        writes = [w for w in tap.writes() if w.blob == "r1/0.png"]
        assert [(w.sha256, w.status, w.kind) for w in writes] == [
            (hashlib.sha256(b"first").hexdigest(), 201, "put_blob"),
            (hashlib.sha256(b"second").hexdigest(), 201, "put_blob"),
        ]
        tap.pause()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/", timeout=2)
        tap.resume()
        assert container.download_blob("r1/0.png").readall() == b"second"
    finally:
        tap.stop()


# -- the soak ------------------------------------------------------------------------------------


def _assert_soak_holds(config: Any, tmp_path: Path) -> None:
    result = run_soak(config, tmp_path / "soak")
    print(render(result))  # the counts table, in the test log
    assert result.violations == [], render(result)
    evidence = result.evidence
    assert len(evidence.disruptions.kills) == config.kills
    assert all(cut >= 1 for cut in result.account.cut_by_kill), "a kill landed between calls"
    assert evidence.disruptions.outages[0].downtime_s >= config.outage_s
    assert len(evidence.manifests) + len(evidence.errors) == config.requests


# Issue 7 asks for the 300-request soak in CI when it fits in 10 minutes: it takes 75-160 s here.
# SOAK_QUICK=1 swaps in the 90-request run for a quicker local loop.
QUICK = os.environ.get("SOAK_QUICK") == "1"
# Between the soak's budget and the test's timeout: pytest's own setup and the report's printing.
# The soak stops itself (and reports) at its budget, so pytest-timeout never has to.
TEST_MARGIN_S = 40
# Ten requests, no kill, no outage: the quickest whole soak, for what the hooks must show.
MINI = replace(CI, requests=10, kills=0, kill_at=(), outage_at=None, budget_s=200.0)


@pytest.mark.slow
@pytest.mark.timeout(int(CI.budget_s + TEST_MARGIN_S))
@pytest.mark.skipif(not QUICK, reason="the 90-request soak runs with SOAK_QUICK=1")
def test_soak_ci(tmp_path: Path) -> None:
    _assert_soak_holds(CI, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(int(FULL.budget_s + TEST_MARGIN_S))
@pytest.mark.skipif(QUICK, reason="SOAK_QUICK=1 runs the 90-request soak instead")
def test_soak_full(tmp_path: Path) -> None:
    _assert_soak_holds(FULL, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(int(MINI.budget_s + TEST_MARGIN_S))
def test_a_planted_double_generation_is_caught(tmp_path: Path) -> None:
    """The soak's test hook stores a second generation over a finished image, as a product that
    billed an image twice would: the checks name that image and its unrecorded call."""
    result = run_soak(replace(MINI, plant_double_generation=True), tmp_path / "soak")
    report = render(result)
    print(report)
    [note] = [n for n in result.notes if n.startswith("test hook")]
    planted = note.rsplit(" ", 1)[-1]
    stored = result.evidence.images[planted]
    caught = [v.detail for v in result.violations if v.check == "generations"]
    assert caught == [
        f"{planted}: drawn by {stored.call}, but its record's success for image 0 is "
        f"{_recorded_success(result, planted)}: generated again after it was recorded"
    ], report
    unexplained = [v.detail for v in result.violations if v.check == "calls"]
    assert unexplained == [
        f"call in no record and no disruption: {planted.split('/')[0]}: {stored.call} (succeeded)"
    ], report
    assert "images by generations (from the bytes)" in report and "2x 1" in report


def _recorded_success(result: Any, blob: str) -> str:
    manifest = result.evidence.manifests[blob.split("/")[0]]
    return next(a["apim_request_id"] for a in manifest["attempts"] if a["outcome"] == "succeeded")


@pytest.mark.slow
@pytest.mark.timeout(int(60 + TEST_MARGIN_S))
def test_a_soak_out_of_budget_fails_itself_and_reports_what_it_saw(tmp_path: Path) -> None:
    """At the emulator's real speed ten images take minutes: a 60 s budget cannot drain them."""
    config = replace(MINI, time_scale=1.0, budget_s=60.0, reserve_s=30.0)
    result = run_soak(config, tmp_path / "soak")
    report = render(result)
    [budget] = [v.detail for v in result.violations if v.check == "budget"]
    assert budget.startswith("the soak's 60s budget ran out") and "the soak to drain" in budget
    assert "VIOLATION budget (1):" in report and "API calls by outcome (emulator)" in report
    assert result.evidence.calls, "what the emulator saw before the budget ran out is reported"


def test_the_budget_cuts_a_wait_and_keeps_its_reserve() -> None:
    budget = Budget(total_s=10.0, reserve_s=9.5)
    assert budget.allow(60.0) <= 0.5
    with pytest.raises(OutOfBudget, match=r"ran out after .* waiting for never"):
        budget.wait_until(lambda: False, 60.0, 0.05, "never")
    with pytest.raises(OutOfBudget):
        budget.require(5.0, "an outage")
    assert budget.final(60.0) > 9.0  # gathering and stopping may use the reserve
    with pytest.raises(TimeoutError) as raised:  # its own deadline, not the budget's
        Budget(100.0, 10.0).wait_until(lambda: False, 0.2, 0.05, "briefly")
    assert not isinstance(raised.value, OutOfBudget)


def test_two_recorded_successes_of_an_image_need_a_disruption_between_them() -> None:
    attempts = [
        {"attempt": i, "image_index": 0, "outcome": "succeeded", "apim_request_id": f"k{i}"}
        for i in (1, 2)
    ]
    manifests = {"r1": {"id": "r1", "status": "succeeded", "images": [], "attempts": attempts}}
    times = {
        "k1": CallTimes(ARRIVED, None, None, ARRIVED + 1),
        "k2": CallTimes(ARRIVED + 10, None, None, ARRIVED + 11),
    }
    calls = [_call("r1", "k1"), _call("r1", "k2")]
    plain = _evidence(manifests=manifests, calls=calls, call_times=times)
    assert [v.detail for v in check_generations(plain)] == [
        "r1 image 0: generated 2 times on the record (k1, k2)"
    ]
    killed = replace(plain, disruptions=Disruptions(kills=[Kill(ARRIVED + 5, "a", 1, (), (), 0)]))
    assert check_generations(killed) == []
