"""Benchmark 2: what the product adds around the model, end to end through the real stack.

N requests (200 by default) go through `ImageRequestClient.submit` into a private Azurite queue; the
host stand-in runs the real function_app.py; the emulator answers with its clock scaled to almost
nothing (x0.0001: a 1024x1024 high image takes 9 ms) but with full-size bytes (a 4 MiB PNG plus the
keep-alive partial of 2 MiB, 8 MiB of base64 per request). What remains is the product's own cost:
queue polling, the lock, status writes, SSE decoding, the image upload and the manifest.

Times come from the records, not from polling: a request's latency is its manifest's `completed_at`
minus the moment the benchmark called `submit`; the time inside the HTTP call is the sum of its
attempts' `elapsed_s` (the product's own measure of each call: the emulator's answer plus reading and
decoding it). Everything else is "outside the emulator". All requests are submitted at once, so queue
wait is part of the latency, as it is for a producer that enqueues a batch.

    python -m bench.end_to_end [--requests 200] [--image-mib 4] [--time-scale 0.0001]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from bench._common import (
    MIB,
    bench_parser,
    epoch_from_iso,
    format_table,
    percentile,
    proc_cpu_seconds,
    run_cli,
)
from bench.stack import StackOptions, add_stack_options, bench_stack
from emulators.image_deployment.images import ImageKey, target_bytes

PROMPT = "a lighthouse on a cliff at dusk, benchmark"  # one prompt: the emulator draws it once


@dataclass(frozen=True, slots=True)
class Config:
    requests: int = 200
    image_mib: float = 4.0
    size: str = "1024x1024"
    quality: str = "high"
    time_scale: float = 0.0001
    thread_count: int | None = None
    connection_string: str | None = None
    timeout_s: float = 600.0

    @property
    def payload_scale(self) -> float:
        """The emulator's --payload-scale that makes the final PNG `image_mib` MiB."""
        width, height = (int(side) for side in self.size.split("x"))
        at_scale_one = target_bytes(
            ImageKey("", width, height, "png", self.quality, False, -1), 1.0
        )
        return self.image_mib * MIB / at_scale_one


@dataclass(frozen=True, slots=True)
class Timing:
    """One request, in seconds from its submit call."""

    latency_s: float  # submit -> manifest completed_at
    queue_wait_s: float  # submit -> first attempt started
    in_calls_s: float  # sum of the attempts' elapsed_s
    attempts: int
    succeeded: bool


@dataclass(frozen=True, slots=True)
class Report:
    timings: tuple[Timing, ...]
    span_s: float  # first submit -> last completed_at
    host_cpu_s: float
    emulator_cpu_s: float
    storage_cpu_s: float | None  # Azurite's, when the benchmark started it
    image_bytes: int

    @property
    def requests_per_s(self) -> float:
        return len(self.timings) / self.span_s

    @property
    def outside_share(self) -> float:
        total = sum(t.latency_s for t in self.timings)
        return (total - sum(t.in_calls_s for t in self.timings)) / total


def timing_of(record: dict[str, Any], submitted_at: float) -> Timing:
    attempts = record.get("attempts") or []
    first_start = epoch_from_iso(attempts[0]["started_at"]) if attempts else submitted_at
    return Timing(
        latency_s=epoch_from_iso(record["completed_at"]) - submitted_at,
        queue_wait_s=first_start - submitted_at,
        in_calls_s=sum(float(a["elapsed_s"]) for a in attempts),
        attempts=len(attempts),
        succeeded=record.get("status") == "succeeded",
    )


def run(config: Config, out: TextIO = sys.stdout) -> Report:
    options = StackOptions(
        time_scale=config.time_scale,
        payload_scale=config.payload_scale,
        thread_count=config.thread_count,
        connection_string=config.connection_string,
    )
    request = {"prompt": PROMPT, "size": config.size, "quality": config.quality}
    with bench_stack(options) as stack:
        # One request first, not counted: the emulator draws and caches the picture, the host
        # opens its connection pools. The benchmark is about the steady state.
        stack.wait_finished({stack.client.submit(request)}, config.timeout_s)
        processes = {"host": stack.host, "emulator": stack.emulator}
        if stack.azurite is not None:
            processes["storage"] = stack.azurite
        cpu0 = {name: proc_cpu_seconds(p.pid) for name, p in processes.items()}
        submitted = stack.submit_and_wait(request, config.requests, config.timeout_s)
        cpu = {name: proc_cpu_seconds(p.pid) - cpu0[name] for name, p in processes.items()}
        records = stack.read_records(submitted)
    timings = tuple(timing_of(records[rid], at) for rid, at in submitted.items())
    last = max(epoch_from_iso(r["completed_at"]) for r in records.values())
    image_bytes = max(
        (int(i["bytes"]) for r in records.values() for i in r.get("images", [])), default=0
    )
    report = Report(
        timings,
        last - min(submitted.values()),
        cpu["host"],
        cpu["emulator"],
        cpu.get("storage"),
        image_bytes,
    )
    print(render(report), file=out)
    return report


def render(report: Report) -> str:
    timings = report.timings
    latencies = [t.latency_s for t in timings]
    ok = sum(t.succeeded for t in timings)
    summary = format_table(
        ["requests", "succeeded", "attempts", "image MiB", "wall s", "req/s", "p50 s", "p95 s",
         "max s", "outside emulator", "host CPU s/req"],
        [[
            str(len(timings)), str(ok), str(sum(t.attempts for t in timings)),
            f"{report.image_bytes / MIB:.2f}", f"{report.span_s:.2f}",
            f"{report.requests_per_s:.2f}", f"{percentile(latencies, 0.5):.3f}",
            f"{percentile(latencies, 0.95):.3f}", f"{max(latencies):.3f}",
            f"{report.outside_share:.1%}", f"{report.host_cpu_s / len(timings):.3f}",
        ]],
    )  # fmt: skip
    total = sum(latencies)
    waits = sum(t.queue_wait_s for t in timings)
    calls = sum(t.in_calls_s for t in timings)
    rest = total - waits - calls
    breakdown = format_table(
        ["where the latency went (sum over requests)", "seconds", "share"],
        [
            ["queue wait: submit -> first call starts", f"{waits:.1f}", f"{waits / total:.1%}"],
            ["HTTP calls: attempts' elapsed_s", f"{calls:.1f}", f"{calls / total:.1%}"],
            ["after the call: upload, records, manifest", f"{rest:.1f}", f"{rest / total:.1%}"],
        ],
    )
    storage = "" if report.storage_cpu_s is None else f", Azurite {report.storage_cpu_s:.1f} s"
    cpu = (
        f"CPU during the run: host {report.host_cpu_s:.1f} s, emulator {report.emulator_cpu_s:.1f} s"
        f"{storage} over {report.span_s:.1f} s of wall time"
    )
    return f"{summary}\n\n{breakdown}\n\n{cpu}"


def parser() -> argparse.ArgumentParser:
    parser = bench_parser("end_to_end", __doc__)
    defaults = Config()
    parser.add_argument("--requests", type=int, default=defaults.requests)
    parser.add_argument("--image-mib", type=float, default=defaults.image_mib)
    parser.add_argument("--size", default=defaults.size)
    parser.add_argument("--quality", default=defaults.quality)
    parser.add_argument("--time-scale", type=float, default=defaults.time_scale)
    parser.add_argument(
        "--threads",
        dest="thread_count",
        metavar="THREADS",
        type=int,
        default=None,
        help="PYTHON_THREADPOOL_THREAD_COUNT",
    )
    add_stack_options(parser, defaults.timeout_s)
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    return run_cli("end_to_end", parser(), argv, Config, config_line, run)


def config_line(config: Config) -> str:
    threads = config.thread_count if config.thread_count is not None else "worker default"
    return (
        f"{config.requests} requests at once, {config.size} {config.quality} PNG of "
        f"{config.image_mib:g} MiB (emulator --payload-scale {config.payload_scale:.3f}, "
        f"--time-scale {config.time_scale:g}), host threads: {threads}"
    )


if __name__ == "__main__":
    sys.exit(main())
