"""Benchmark 4: the host's peak memory while 8 of the largest images stream at once.

8 requests for 3840x2160 high PNG with 3 partial images, at the service's real byte sizes (payload
scale 1: a 9.1 MB final and three 4.6 MB partials each), all streaming at the same time: the host
runs with PYTHON_THREADPOOL_THREAD_COUNT=8 so none waits for a thread. The host stand-in runs every
invocation in threads of one process, so that process's VmHWM (/proc/<pid>/status) at the end is the
peak of all 8 together. The idle host's VmRSS before the run is the baseline; the difference is what
8 streams cost, compared with 8 x the final image's bytes (what holding each image once would take).

The emulator has drawn and cached the images before the run (one request straight to it), so its
PNG encoding does not spread the 8 streams apart in time. A sampler reads the host's VmRSS every
50 ms, to show how many streams were in flight when the peak came.

    python -m bench.memory [--requests 8] [--time-scale 0.01]
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

import requests

from bench._common import MIB, bench_parser, format_table, proc_status_kib, run_cli
from bench.stack import (
    API_KEY,
    DEPLOYMENT,
    BenchStack,
    StackOptions,
    add_stack_options,
    bench_stack,
)
from shared.settings import DEFAULT_API_VERSION

PROMPT = "a harbour city at night, memory benchmark"
SAMPLE_S = 0.05


@dataclass(frozen=True, slots=True)
class Config:
    requests: int = 8
    size: str = "3840x2160"
    quality: str = "high"
    partial_images: int = 3
    payload_scale: float = 1.0
    time_scale: float = 0.01  # 400 s per image becomes 4 s
    connection_string: str | None = None
    timeout_s: float = 300.0


@dataclass(frozen=True, slots=True)
class Report:
    requests: int
    succeeded: int
    image_bytes: int  # the final image of one request
    baseline_kib: int  # VmRSS of the idle host
    peak_kib: int  # VmHWM of the host at the end
    sampled_peak_kib: int  # the largest VmRSS the sampler saw

    @property
    def added_mib(self) -> float:
        return (self.peak_kib - self.baseline_kib) / 1024

    @property
    def images_mib(self) -> float:
        return self.requests * self.image_bytes / MIB

    @property
    def ratio(self) -> float:
        return self.added_mib / self.images_mib if self.images_mib else float("nan")


class Sampler:
    """Reads a process's VmRSS on a daemon thread until stopped; keeps the largest."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._stop = threading.Event()
        self.peak_kib = 0
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            try:
                self.peak_kib = max(self.peak_kib, proc_status_kib(self._pid, "VmRSS"))
            except (OSError, KeyError):
                return  # the process is gone

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def warm_emulator(stack: BenchStack, config: Config) -> None:
    """One stream straight to the emulator, so every stage of the picture is drawn and cached."""
    url = (
        f"{stack.emulator_url}/openai/deployments/{DEPLOYMENT}/images/generations"
        f"?api-version={DEFAULT_API_VERSION}"
    )
    body = {
        "prompt": PROMPT,
        "size": config.size,
        "quality": config.quality,
        "stream": True,
        "partial_images": config.partial_images,
    }
    with requests.post(
        url, json=body, headers={"api-key": API_KEY}, stream=True, timeout=config.timeout_s
    ) as reply:
        reply.raise_for_status()
        for _ in reply.iter_content(1 << 20):
            pass


def run(config: Config, out: TextIO = sys.stdout) -> Report:
    options = StackOptions(
        time_scale=config.time_scale,
        payload_scale=config.payload_scale,
        thread_count=config.requests,
        connection_string=config.connection_string,
    )
    request = {
        "prompt": PROMPT,
        "size": config.size,
        "quality": config.quality,
        "partial_images": config.partial_images,
    }
    with bench_stack(options) as stack:
        warm_emulator(stack, config)
        baseline = stack.host_memory_kib("VmRSS")
        with Sampler(stack.host.pid) as sampler:
            ids = stack.submit_and_wait(request, config.requests, config.timeout_s)
        peak = stack.host_memory_kib("VmHWM")
        records = stack.read_records(ids).values()
    succeeded = sum(r.get("status") == "succeeded" for r in records)
    image_bytes = max((int(i["bytes"]) for r in records for i in r.get("images", [])), default=0)
    report = Report(config.requests, succeeded, image_bytes, baseline, peak, sampler.peak_kib)
    print(render(report), file=out)
    return report


def render(report: Report) -> str:
    table = format_table(
        ["requests", "succeeded", "image MiB", "8 x image MiB" if report.requests == 8
         else f"{report.requests} x image MiB", "idle host MiB", "peak (VmHWM) MiB",
         "peak - idle MiB", "x images", "sampled peak MiB"],
        [[
            str(report.requests), str(report.succeeded), f"{report.image_bytes / MIB:.2f}",
            f"{report.images_mib:.1f}", f"{report.baseline_kib / 1024:.1f}",
            f"{report.peak_kib / 1024:.1f}", f"{report.added_mib:.1f}", f"{report.ratio:.2f}",
            f"{report.sampled_peak_kib / 1024:.1f}",
        ]],
    )  # fmt: skip
    return table


def parser() -> argparse.ArgumentParser:
    parser = bench_parser("memory", __doc__)
    defaults = Config()
    parser.add_argument("--requests", type=int, default=defaults.requests)
    parser.add_argument("--size", default=defaults.size)
    parser.add_argument("--quality", default=defaults.quality)
    parser.add_argument("--partial-images", type=int, default=defaults.partial_images)
    parser.add_argument("--payload-scale", type=float, default=defaults.payload_scale)
    parser.add_argument("--time-scale", type=float, default=defaults.time_scale)
    add_stack_options(parser, defaults.timeout_s)
    return parser


def config_line(config: Config) -> str:
    return (
        f"{config.requests} requests at once, {config.size} {config.quality} PNG, "
        f"partial_images {config.partial_images}, payload scale {config.payload_scale:g}, emulator "
        f"--time-scale {config.time_scale:g}, PYTHON_THREADPOOL_THREAD_COUNT={config.requests}"
    )


def main(argv: Iterable[str] | None = None) -> int:
    return run_cli("memory", parser(), argv, Config, config_line, run)


if __name__ == "__main__":
    sys.exit(main())
