"""Benchmark 3: how much of a deployment's request quota the product actually uses.

N requests (60 by default) are submitted at once against one emulated deployment allowing L
requests per minute (10, as gpt-image on Azure). The clock is scaled: the emulator runs x0.1, so
its minute is 6 s, and the app's window (`AZURE_OPENAI_RPM_WINDOW_S`) is set to the same 6 s.
Images are the smallest gpt-image-2 takes (1024x640 low: about 14 emulated seconds, 1.4 s real),
short against the window, so the quota, not the model or the host's threads, bounds the throughput. (At x0.01 a minute is 0.6 s, shorter than the
storage round trips of ten requests on a 2-core machine: the benchmark then measures the CPU.)

The measure. A sliding window grants L requests at once, then L more per window: N requests need
at least (N - L) / L further windows after the first burst. So the sustained rate is the completions
after the first one, N - L of them that needed a new window, over the time from the first completion
to the last; divided by L it is 1.0 when every window is used in full. The overall rate (N over
submit-to-last-completion) is printed too; it flatters, because the first burst is free.
429s are counted from the emulator's request log: every one is a round trip the client-side
limiter should have saved.

    python -m bench.quota_use [--requests 60] [--rpm 10] [--time-scale 0.1]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from bench._common import bench_parser, epoch_from_iso, format_table, run_cli, verdict
from bench.stack import StackOptions, add_stack_options, bench_stack

TARGET = 0.95
EMULATED_MINUTE_S = 60.0
PROMPT = "a paper boat on a pond, quota benchmark"


@dataclass(frozen=True, slots=True)
class Config:
    requests: int = 60
    rpm: int = 10
    time_scale: float = 0.1
    # (size, quality): 1024x640 low (gpt-image-2's smallest) is a short call against the window;
    # 1024x1024 low is 22 s, as on Azure, where a stream outlasts its rate-limit headers' freshness.
    workloads: tuple[tuple[str, str], ...] = (("1024x640", "low"), ("1024x1024", "low"))
    payload_scale: float = 0.2
    # IMAGE_QUOTA_SCOPE: "shared" (the default: a window blob every instance reads and writes)
    # and "process" (a window in memory) are both measured, one stack each.
    scopes: tuple[str, ...] = ("shared", "process")
    # PYTHON_THREADPOOL_THREAD_COUNT: enough threads that they are never what holds a send back.
    threads: int = 32
    connection_string: str | None = None
    timeout_s: float = 300.0

    @property
    def window_s(self) -> float:
        """The deployment's minute on the scaled clock, in real seconds."""
        return EMULATED_MINUTE_S * self.time_scale


@dataclass(frozen=True, slots=True)
class Report:
    scope: str
    workload: str
    requests: int
    succeeded: int
    rpm: int
    window_s: float
    completions: tuple[float, ...]  # epoch seconds, sorted
    first_submit: float
    emulator_statuses: dict[int, int]  # HTTP status -> count, from the emulator's log
    attempts_rate_limited: int  # what the product recorded as 429s

    @property
    def sustained_per_window(self) -> float:
        span = self.completions[-1] - self.completions[0]
        return (len(self.completions) - self.rpm) / (span / self.window_s) if span > 0 else 0.0

    @property
    def overall_per_window(self) -> float:
        span = self.completions[-1] - self.first_submit
        return len(self.completions) / (span / self.window_s)

    @property
    def use(self) -> float:
        return self.sustained_per_window / self.rpm

    @property
    def met(self) -> bool:
        return self.use >= TARGET and self.succeeded == self.requests


def _records(records: dict[str, dict[str, Any]]) -> tuple[list[float], int, int]:
    completions = sorted(epoch_from_iso(r["completed_at"]) for r in records.values())
    succeeded = sum(r.get("status") == "succeeded" for r in records.values())
    limited = sum(
        a.get("outcome") == "rate_limited" for r in records.values() for a in r.get("attempts", [])
    )
    return completions, succeeded, limited


def run(config: Config, out: TextIO = sys.stdout) -> tuple[Report, ...]:
    """One run per quota scope; prints one table with a row each."""
    if config.requests <= config.rpm:
        raise ValueError("requests must exceed the limit, or the quota is never the bound")
    reports = tuple(
        measure(config, scope, size, quality)
        for size, quality in config.workloads
        for scope in config.scopes
    )
    print(render(reports), file=out)
    return reports


def measure(config: Config, scope: str, size: str, quality: str) -> Report:
    options = StackOptions(
        time_scale=config.time_scale,
        payload_scale=config.payload_scale,
        emulator_rpm=config.rpm,
        app_rpm=config.rpm,
        rate_window_s=config.window_s,
        connection_string=config.connection_string,
        thread_count=config.threads,
        extra_settings={"IMAGE_QUOTA_SCOPE": scope},
    )
    request = {"prompt": PROMPT, "size": size, "quality": quality}
    with bench_stack(options) as stack:
        submitted = stack.submit_and_wait(
            request, config.requests, config.timeout_s, label=f"{size} {quality}, {scope}: "
        )
        records = stack.read_records(submitted)
        statuses = Counter(int(r["status"]) for r in stack.emulator_requests() if r["status"])
    completions, succeeded, limited = _records(records)
    return Report(
        scope,
        f"{size} {quality}",
        config.requests,
        succeeded,
        config.rpm,
        config.window_s,
        tuple(completions),
        min(submitted.values()),
        dict(statuses),
        limited,
    )


def render(reports: Iterable[Report]) -> str:
    reports = tuple(reports)
    table = format_table(
        ["calls", "quota scope", "requests", "succeeded", "limit /min", "sustained /min", "use of limit",
         "overall /min", "429 answers", "429s recorded", "HTTP calls"],
        [[
            r.workload, r.scope, str(r.requests), str(r.succeeded), str(r.rpm),
            f"{r.sustained_per_window:.2f}", f"{r.use:.3f}",
            f"{r.overall_per_window:.2f}", str(r.emulator_statuses.get(429, 0)),
            str(r.attempts_rate_limited), str(sum(r.emulator_statuses.values())),
        ] for r in reports],
    )  # fmt: skip
    lines = [table, "", f"(minutes are the scaled clock's: {reports[0].window_s:g} s)"]
    for r in reports:
        lines.append(
            f"target ({r.workload}, {r.scope}): use of limit >= {TARGET} with every request "
            f"succeeded: {verdict(r.met)}"
        )
    return "\n".join(lines)


def _workloads(text: str) -> tuple[tuple[str, str], ...]:
    """`1024x640:low,1024x1024:low` -> (size, quality) pairs."""
    return tuple(
        (size, quality) for size, _, quality in (w.strip().partition(":") for w in text.split(","))
    )


def _scopes(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parser() -> argparse.ArgumentParser:
    parser = bench_parser("quota_use", __doc__)
    defaults = Config()
    parser.add_argument("--requests", type=int, default=defaults.requests)
    parser.add_argument("--rpm", type=int, default=defaults.rpm)
    parser.add_argument("--time-scale", type=float, default=defaults.time_scale)
    parser.add_argument(
        "--workloads",
        type=_workloads,
        default=",".join(f"{size}:{quality}" for size, quality in defaults.workloads),
        help="SIZE:QUALITY,... e.g. 1024x640:low,1024x1024:low",
    )
    parser.add_argument(
        "--scopes",
        type=_scopes,
        default=",".join(defaults.scopes),
        help="IMAGE_QUOTA_SCOPE values to measure",
    )
    add_stack_options(parser, defaults.timeout_s)
    return parser


def config_line(config: Config) -> str:
    return (
        f"{config.requests} requests at once per row, one deployment at "
        f"{config.rpm} RPM (emulator --rpm {config.rpm} --time-scale {config.time_scale:g}; "
        f"AZURE_OPENAI_RPM={config.rpm}, AZURE_OPENAI_RPM_WINDOW_S={config.window_s:g}, "
        f"PYTHON_THREADPOOL_THREAD_COUNT={config.threads})"
    )


def main(argv: Iterable[str] | None = None) -> int:
    return run_cli("quota_use", parser(), argv, Config, config_line, run)


if __name__ == "__main__":
    sys.exit(main())
