"""The fault matrix of issue 7: every failure the emulator can produce, on the first attempt and on
the last allowed one, ends in the state docs/design.md §7 prescribes, with the right attempt records.

"First" scripts the fault for the first call; "last" scripts three retryable failures (HTTP 502) and
then the fault, so it meets the fourth call (IMAGE_MAX_ATTEMPTS=4). Every case has its own prompt
and its script entries name it (`prompt_contains`), so all of them run at once through one host and
one emulator; only the cases that need different settings (a wrong key, an unknown deployment) get
a host of their own.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from azure.core.exceptions import ResourceNotFoundError
from conftest import TIME_SCALE, Emulator, EmulatorFactory
from PIL import Image
from product_stack import Product, start_product

from devtools.services import wait_until

pytestmark = pytest.mark.slow

MAX_ATTEMPTS = 4
REQUESTED_PARTIALS = 2  # so that a server error after the second partial has two to send
READ_TIMEOUT_S = 4.0  # the stall (1000 emulated s = 10 s) outlasts it; a healthy stream never does
# The shared host's quota, high enough that every 429 it meets is a scripted one. (Not 100_000:
# the product pads its window one placeholder at a time after a 429, quadratic in the RPM.)
RPM = 1000
RETRY_AFTER_MS = 20_000  # emulated: 0.2 s on the wire
# The earlier retryable failures of a "last attempt" case.
FILLER: dict[str, object] = {"outcome": "http_error", "status": 502}
FIVE_XX = frozenset(
    {"server_error", "http_error"}
)  # docs/design.md allows either name for a 5xx answer
# The host redelivers a failed invocation up to maxDequeueCount (5) times; a configuration fault
# is scripted that often, so the request ends poisoned whether or not each delivery calls again.
MAX_DELIVERIES = 5

Kind = Literal["retryable", "throttled", "permanent", "configuration"]
Position = Literal["first", "last"]


@dataclass(frozen=True)
class Fault:
    """One failure as the emulator scripts it and as the attempt record must describe it."""

    name: str
    script: Mapping[str, object]
    kind: Kind
    outcomes: frozenset[str]
    http_status: int
    partials_received: int = 0
    operation: Literal["generate", "edit"] = "generate"
    error_type: str | None = None
    error_code: str | None = None


def _fault(name: str, script: Mapping[str, object], kind: Kind, outcome: str | frozenset[str],
           http_status: int, **rest: Any) -> Fault:  # fmt: skip
    outcomes = frozenset({outcome}) if isinstance(outcome, str) else outcome
    return Fault(name, dict(script), kind, outcomes, http_status, **rest)


FAULTS: tuple[Fault, ...] = (
    _fault("server_error_0", {"outcome": "server_error", "after_partials": 0}, "retryable",
           "server_error", 200, error_type="server_error"),
    _fault("server_error_1", {"outcome": "server_error", "after_partials": 1}, "retryable",
           "server_error", 200, partials_received=1, error_type="server_error"),
    _fault("server_error_2", {"outcome": "server_error", "after_partials": 2}, "retryable",
           "server_error", 200, partials_received=2, error_type="server_error"),
    _fault("edit_server_error", {"outcome": "server_error", "after_partials": 1}, "retryable",
           "server_error", 200, partials_received=1, operation="edit",
           error_type="image_generation_server_error", error_code="image_generation_failed"),
    _fault("http_500", {"outcome": "http_error", "status": 500}, "retryable", FIVE_XX, 500),
    _fault("http_503", {"outcome": "http_error", "status": 503}, "retryable", FIVE_XX, 503),
    _fault("gateway_timeout_408", {"outcome": "gateway_timeout"}, "retryable",
           "gateway_timeout", 408),
    _fault("drop", {"outcome": "drop", "after_partials": 1}, "retryable", "dropped", 200,
           partials_received=1),
    _fault("stall", {"outcome": "stall", "after_partials": 1, "seconds": 1000}, "retryable",
           "read_timeout", 200, partials_received=1),
    _fault("rate_limited_429", {"outcome": "rate_limited", "retry_after_ms": RETRY_AFTER_MS},
           "throttled", "rate_limited", 429),
    _fault("content_filter", {"outcome": "content_filter"}, "permanent", "content_filter", 400),
    # On the last attempt a 401 or 404 can only be scripted: a wrong key or deployment name fails
    # every call, the earlier ones included. The first-attempt cases below use the real thing.
    _fault("auth_401", {"outcome": "http_error", "status": 401}, "configuration",
           "auth_error", 401),
    _fault("not_found_404", {"outcome": "http_error", "status": 404}, "configuration",
           frozenset({"http_error", "auth_error"}), 404),
)  # fmt: skip
# A 401 or 404 takes the deployment out of rotation for the whole process (section 7), which
# would fail every other case in flight: those run on hosts of their own.
CASES: tuple[tuple[Fault, Position], ...] = tuple(
    (f, position) for position in ("first", "last") for f in FAULTS if f.kind != "configuration"
)


@dataclass(frozen=True)
class Expected:
    """The end state section 7 prescribes for a fault at a position."""

    status: str  # succeeded | failed
    error_kind: str | None  # content_filter | retries_exhausted | poisoned
    fault_at: int  # 1-based attempt number of the fault
    then_succeeds: bool  # one more attempt, which succeeds
    repeats: bool = False  # configuration: the fault may repeat once per delivery


def expected(fault: Fault, position: Position) -> Expected:
    fault_at = 1 if position == "first" else MAX_ATTEMPTS
    if fault.kind == "retryable" and position == "first":
        return Expected("succeeded", None, fault_at, then_succeeds=True)
    if fault.kind == "retryable":
        return Expected("failed", "retries_exhausted", fault_at, then_succeeds=False)
    if fault.kind == "throttled":  # a 429 does not count, so even the fourth slot retries
        return Expected("succeeded", None, fault_at, then_succeeds=True)
    if fault.kind == "permanent":
        return Expected("failed", "content_filter", fault_at, then_succeeds=False)
    return Expected("failed", "poisoned", fault_at, then_succeeds=False, repeats=True)


@dataclass
class Run:
    """One submitted case: its id, prompt, and what the product and the emulator recorded."""

    fault: Fault
    position: Position
    request_id: str
    prompt: str
    record: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (64, 64), "green").save(out, "PNG")
    return out.getvalue()


def _script_for(fault: Fault, position: Position, prompt: str) -> list[dict[str, object]]:
    earlier = [FILLER] * (MAX_ATTEMPTS - 1) if position == "last" else []
    times = MAX_DELIVERIES if fault.kind == "configuration" else 1
    return [{**entry, "prompt_contains": prompt} for entry in [*earlier, *[fault.script] * times]]


def _submit(product: Product, fault: Fault, prompt: str) -> str:
    request: dict[str, Any] = {
        "prompt": prompt,
        "size": "1024x1024",
        "quality": "low",
        "partial_images": REQUESTED_PARTIALS,
    }
    if fault.operation == "edit":
        inputs = product.settings["IMAGE_INPUT_CONTAINERS"]
        request |= {"operation": "edit", "input_images": [f"{inputs}/source.png"]}
    return product.client.submit(request)


def _prompt(fault: Fault, position: Position) -> str:
    return f"fault matrix {fault.name} {position} {uuid.uuid4().hex}"


def _settle(product: Product, emulator: Emulator, runs: list[Run], timeout: float) -> None:
    for run in runs:
        run.record = product.wait_terminal(run.request_id, timeout=timeout)

        def status_final(run: Run = run) -> bool:
            # status.json is overwritten just after the terminal record is created.
            run.status = product.read_json(run.request_id, "status.json") or {}
            return run.status.get("status") == run.record["status"]

        try:
            wait_until(status_final, 15, interval=0.1, what=f"{run.request_id}/status.json")
        except TimeoutError:
            pass  # check_run reports the mismatch with the record beside it
    # A stalled call is logged by the emulator when it arrives; every call has arrived by now.
    for run in runs:
        run.calls = emulator.calls_for(run.prompt)


def _overrides(**more: str) -> dict[str, str]:
    return {
        "IMAGE_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "IMAGE_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
        **more,
        # Every case runs at once; the stalled ones hold a thread for the read timeout.
        "PYTHON_THREADPOOL_THREAD_COUNT": "32",
    }


@pytest.fixture(scope="module")
def matrix(
    azurite_connection_string: str,
    emulator_factory: EmulatorFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Product, dict[str, Run]]]:
    """Every shared-host case submitted at once to one host; waits until each has its record."""
    emulator = emulator_factory(deployment="fault-matrix", extra_args=("--rpm", str(RPM)))
    suffix = uuid.uuid4().hex[:10]
    product = start_product(
        connection_string=azurite_connection_string,
        emulator_url=emulator.base_url,
        api_key=emulator.api_key,
        deployment=emulator.deployment,
        queue_name=f"fm-req-{suffix}",
        container_name=f"fm-img-{suffix}",
        log_path=tmp_path_factory.mktemp("fault-matrix") / "host.log",
        overrides=_overrides(AZURE_OPENAI_RPM=str(RPM)),
    )
    try:
        product.upload_input("source.png", _png())
        runs: dict[str, Run] = {}
        for fault, position in CASES:
            prompt = _prompt(fault, position)
            emulator.script(*_script_for(fault, position, prompt))
            runs[f"{fault.name}-{position}"] = Run(fault, position, "", prompt)
        for run in runs.values():
            run.request_id = _submit(product, run.fault, run.prompt)
        _settle(product, emulator, list(runs.values()), timeout=90)
        yield product, runs
    finally:
        product.remove()


def check_run(run: Run) -> None:
    """Everything the matrix asserts about one case, from its record, status.json and the calls."""
    fault, want = run.fault, expected(run.fault, run.position)
    record, attempts = run.record, run.record["attempts"]
    where = f"{fault.name} on the {run.position} attempt: {json.dumps(record)[:3000]}"

    assert record["status"] == want.status, where
    assert (record.get("error") or {}).get("kind") == want.error_kind, where
    assert run.status.get("status") == want.status, where

    # One record per HTTP call, numbered from 1, in the order the emulator received them.
    assert len(attempts) == len(run.calls), where
    assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1)), where
    assert {a["image_index"] for a in attempts} == {0}, where
    assert [a["apim_request_id"] for a in attempts] == [c["apim_request_id"] for c in run.calls]
    assert [a["x_request_id"] for a in attempts] == [c["x_request_id"] for c in run.calls]
    assert all(a["apim_request_id"] for a in attempts), where

    earlier, rest = attempts[: want.fault_at - 1], attempts[want.fault_at - 1 :]
    for attempt in earlier:
        assert attempt["outcome"] in FIVE_XX and attempt["http_status"] == 502, where
    faults = rest[:-1] if want.then_succeeds else rest
    if want.repeats:  # each delivery may call again; at most one call per delivery
        assert 1 <= len(faults) <= MAX_DELIVERIES, where
    else:
        assert len(faults) == 1, where
    for attempt in faults:
        assert attempt["outcome"] in fault.outcomes, where
        assert attempt["http_status"] == fault.http_status, where
        assert attempt["partials_received"] == fault.partials_received, where
        if fault.error_type is not None:
            assert attempt["error"]["type"] == fault.error_type, where
        if fault.error_code is not None:
            assert attempt["error"]["code"] == fault.error_code, where
        if fault.kind == "throttled":
            assert attempt["retry_after_s"] == pytest.approx(RETRY_AFTER_MS / 1000 * TIME_SCALE), (
                where
            )

    sent = [a["partial_images_sent"] for a in attempts]
    assert sent[0] == REQUESTED_PARTIALS, where
    for before, now in zip(attempts, sent[1:], strict=False):
        # After a 408 the next call asks for one more partial image (section 7), else as requested.
        raised = before["outcome"] == "gateway_timeout" or before["http_status"] == 408
        bump = min(3, before["partial_images_sent"] + 1)
        assert now == (bump if raised else REQUESTED_PARTIALS), where

    counted = [a for a in attempts if a["outcome"] not in ("rate_limited", "connect_error")]
    counted = [a for a in counted if a["http_status"] not in (401, 403, 404)]
    assert len(counted) <= MAX_ATTEMPTS, where
    if want.error_kind == "retries_exhausted":
        assert len(counted) == MAX_ATTEMPTS, where

    if want.then_succeeds:
        last = attempts[-1]
        assert last["outcome"] == "succeeded" and last["http_status"] == 200, where
        assert last["partials_received"] == last["partial_images_sent"], where
        (image,) = record["images"]
        assert image["blob"] == f"{run.request_id}/0.png", where
    else:
        assert record.get("images", []) == [], where


@pytest.mark.parametrize(
    ("fault", "position"),
    CASES,
    ids=[f"{fault.name}-{position}" for fault, position in CASES],
)
def test_fault_ends_as_section_7_prescribes(
    matrix: tuple[Product, dict[str, Run]], fault: Fault, position: Position
) -> None:
    product, runs = matrix
    run = runs[f"{fault.name}-{position}"]
    check_run(run)
    if run.record["status"] == "failed":
        assert product.read_json(run.request_id, "manifest.json") is None
    if (run.record.get("error") or {}).get("kind") == "poisoned":
        assert json.loads(run.record["input"])["id"] == run.request_id  # kept for requeue-poison


def test_nothing_is_left_in_the_queues(matrix: tuple[Product, dict[str, Run]]) -> None:
    product, _ = matrix
    product.wait_until_queue_empty(timeout=30)

    def poison_drained() -> bool:
        try:
            return product.poison.get_queue_properties().approximate_message_count == 0
        except ResourceNotFoundError:
            return True  # the host creates it on the first poisoned message; there was none

    wait_until(poison_drained, 30, interval=0.1, what="the poison queue to be recorded")
    assert product.host.alive()


# --- configuration errors (401, 404): each on a host of its own ---------------------------------

AUTH_401 = next(f for f in FAULTS if f.name == "auth_401")
NOT_FOUND_404 = next(f for f in FAULTS if f.name == "not_found_404")
CONFIG_CASES = (
    # On the first attempt, the real thing: a wrong key, a deployment the emulator does not know.
    pytest.param(AUTH_401, "first", {"api_key": "not-the-key-0a1b2c"}, id="auth_401-first"),
    pytest.param(
        NOT_FOUND_404,
        "first",
        {"overrides": {"AZURE_OPENAI_DEPLOYMENT": "nope"}},
        id="not_found_404-first",
    ),
    # On the last attempt they can only be scripted: a wrong key would fail the earlier calls too.
    pytest.param(AUTH_401, "last", {}, id="auth_401-last"),
    pytest.param(NOT_FOUND_404, "last", {}, id="not_found_404-last"),
)


@pytest.mark.parametrize(("fault", "position", "settings"), CONFIG_CASES)
def test_configuration_error_is_poisoned_never_deleted(
    product_factory: Callable[..., Product],
    emulator: Emulator,
    fault: Fault,
    position: Position,
    settings: dict[str, Any],
) -> None:
    overrides = {**_overrides(), **settings.get("overrides", {})}
    product = product_factory(overrides=overrides, api_key=settings.get("api_key"))
    prompt = _prompt(fault, position)
    if position == "last":
        emulator.script(*_script_for(fault, position, prompt))
    run = Run(fault, position, _submit(product, fault, prompt), prompt)
    _settle(product, emulator, [run], timeout=90)
    check_run(run)
    assert json.loads(run.record["input"])["id"] == run.request_id  # kept for requeue-poison
    assert product.read_json(run.request_id, "manifest.json") is None
    product.wait_until_queue_empty(timeout=30)
    assert product.host.alive()
    # Poisoned by the host after maxDequeueCount failed deliveries, not given up on by the app.
    assert product.host.log_path is not None
    log = product.host.log_path.read_text(errors="replace")
    assert "Message has reached MaxDequeueCount of 5" in log
    assert "Executing 'Functions.record_poisoned_request'" in log


def test_matrix_covers_every_emulator_failure() -> None:
    """Guard against a fault silently dropping out of the matrix."""
    scripted = {(f.script["outcome"], f.script.get("status")) for f in FAULTS}
    assert scripted >= {
        ("server_error", None), ("http_error", 500), ("http_error", 503), ("gateway_timeout", None),
        ("rate_limited", None), ("drop", None), ("stall", None), ("content_filter", None),
        ("http_error", 401), ("http_error", 404),
    }  # fmt: skip
    after = {
        f.script.get("after_partials") for f in FAULTS if f.script["outcome"] == "server_error"
    }
    assert after == {0, 1, 2}
    assert any(f.operation == "edit" for f in FAULTS)
    assert len(CASES) + len(CONFIG_CASES) == 2 * len(FAULTS)
