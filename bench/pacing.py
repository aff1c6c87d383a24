"""Benchmark 5: pacing against a deployment that counts like Azure, and the n images at once.

The emulator counts in periods of 10 emulated seconds (Azure's way: RPM x 10 / 60 per period,
rounded up, a 429 beyond it) at 10 RPM. Each run submits a batch at once and judges it by the
emulator's request log:
- `paced`: the product as it is (AZURE_OPENAI_BURST=1: one send per 6 s, across instances);
- `burst`: AZURE_OPENAI_BURST=10, the whole minute's budget at once, as the sliding-window client
  before this change sent it;
against a deployment that admits its RPM (`even`) and one that admits 60 % of it (`strict`), with
1 and 3 host instances. Then one request with n=4 at 2048x2048 high, its images made one after
another (IMAGE_MAX_STREAMS=1) against all four at once.

Columns: accepted calls per (emulated) minute over the RPM; the share of calls answered 429; p50 and
p95 request latency; the batch's span against the goal `requests / RPM minutes + one generation`.

    python -m bench pacing [--requests 60] [--time-scale 0.1]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TextIO

from bench._common import bench_parser, epoch_from_iso, format_table, percentile, run_cli, verdict
from bench.stack import StackOptions, add_stack_options, bench_stack

EMULATED_MINUTE_S = 60.0
ONE_GENERATION_S = 14.0  # 1024x640 low, emulated
PROMPT = "a kite over a beach, pacing benchmark"


@dataclass(frozen=True, slots=True)
class Config:
    requests: int = 60
    rpm: int = 10
    time_scale: float = 0.1
    payload_scale: float = 0.05
    scenarios: tuple[str, ...] = ("even:1:paced", "even:1:burst", "even:3:paced", "even:3:burst",
                                  "strict:1:paced", "strict:1:burst")  # fmt: skip
    fan_out_scale: float = 0.05
    connection_string: str | None = None
    timeout_s: float = 600.0

    @property
    def minute_s(self) -> float:
        return EMULATED_MINUTE_S * self.time_scale


@dataclass(frozen=True, slots=True)
class Row:
    deployment: str
    hosts: int
    client: str
    requests: int
    succeeded: int
    calls: int
    refused: int
    accepted_per_min: float
    latencies: tuple[float, ...]
    span_s: float
    goal_s: float

    @property
    def refused_share(self) -> float:
        return self.refused / self.calls if self.calls else 0.0


def measure(config: Config, scenario: str) -> Row:
    deployment, hosts, client = scenario.split(":")
    fraction = "0.6" if deployment == "strict" else "1"
    options = StackOptions(
        time_scale=config.time_scale,
        payload_scale=config.payload_scale,
        emulator_rpm=config.rpm,
        app_rpm=config.rpm,
        rate_window_s=config.minute_s,
        connection_string=config.connection_string,
        thread_count=32,
        hosts=int(hosts),
        extra_emulator_args=("--rate-model", "periods", "--rate-admit-fraction", fraction),
        extra_settings={"AZURE_OPENAI_BURST": "1" if client == "paced" else "10"},
    )
    request = {"prompt": PROMPT, "size": "1024x640", "quality": "low"}
    with bench_stack(options) as stack:
        submitted = stack.submit_and_wait(
            request, config.requests, config.timeout_s, f"{scenario}: "
        )
        records = stack.read_records(submitted)
        calls = [r for r in stack.emulator_requests() if r["status"]]
    done = {rid: epoch_from_iso(r["completed_at"]) for rid, r in records.items()}
    latencies = tuple(sorted(done[rid] - at for rid, at in submitted.items()))
    accepted = [epoch_from_iso(c["time"]) for c in calls if c["status"] == 200]
    span = max(done.values()) - min(submitted.values())
    minutes = (max(accepted) - min(accepted)) / config.minute_s if len(accepted) > 1 else 0.0
    admitted_rpm = config.rpm * float(fraction)
    goal = (config.requests / admitted_rpm) * config.minute_s + ONE_GENERATION_S * config.time_scale
    return Row(
        deployment, int(hosts), client, config.requests,
        sum(r.get("status") == "succeeded" for r in records.values()),
        len(calls), sum(1 for c in calls if c["status"] == 429),
        (len(accepted) - 1) / minutes if minutes else 0.0, latencies, span, goal,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class FanOut:
    mode: str
    latency_s: float
    overlapping: bool


def fan_out(config: Config, streams: int) -> FanOut:
    scale = config.fan_out_scale
    options = StackOptions(
        time_scale=scale,
        payload_scale=config.payload_scale,
        emulator_rpm=config.rpm,
        app_rpm=config.rpm,
        rate_window_s=EMULATED_MINUTE_S * scale,
        connection_string=config.connection_string,
        extra_emulator_args=("--rate-model", "periods"),
        extra_settings={"IMAGE_MAX_STREAMS": str(streams)},
    )
    request = {"prompt": PROMPT, "size": "2048x2048", "quality": "high", "n": 4}
    with bench_stack(options) as stack:
        submitted = stack.submit_and_wait(
            request, 1, config.timeout_s, f"n=4, {streams} stream(s): "
        )
        (rid,) = submitted
        record = stack.read_record(rid)
        calls = sorted(stack.emulator_requests(), key=lambda c: c["time"])
    latency = (epoch_from_iso(record["completed_at"]) - submitted[rid]) / scale
    overlapping = len(calls) > 1 and all(c["time"] < calls[0]["ended"] for c in calls[1:])
    return FanOut("sequential" if streams == 1 else "concurrent", latency, overlapping)


def run(config: Config, out: TextIO = sys.stdout) -> tuple[list[Row], list[FanOut]]:
    rows = [measure(config, scenario) for scenario in config.scenarios]
    fan = [fan_out(config, 1), fan_out(config, 32)]
    print(render(config, rows, fan), file=out)
    return rows, fan


def render(config: Config, rows: Sequence[Row], fan: Sequence[FanOut]) -> str:
    table = format_table(
        ["deployment", "hosts", "client", "succeeded", "calls", "429 share", "accepted /min / RPM",
         "p50 s", "p95 s", "span s", "goal s"],
        [[
            r.deployment, str(r.hosts), r.client, f"{r.succeeded}/{r.requests}", str(r.calls),
            f"{r.refused_share:.0%}", f"{r.accepted_per_min / config.rpm:.2f}",
            f"{percentile(r.latencies, 0.5) / config.time_scale:.0f}",
            f"{percentile(r.latencies, 0.95) / config.time_scale:.0f}",
            f"{r.span_s / config.time_scale:.0f}", f"{r.goal_s / config.time_scale:.0f}",
        ] for r in rows],
    )  # fmt: skip
    lines = [table, "", "(seconds and minutes are emulated: wall time / time scale)"]
    for r in rows:
        if r.client != "paced":
            continue
        if r.deployment == "even":
            met = r.refused == 0 and r.span_s <= 1.05 * r.goal_s
            goal = "0 429s and span <= 1.05 x goal"
        else:
            met = r.refused_share <= 0.15
            goal = "<= 15 % of calls answered 429"
        lines.append(f"target ({r.deployment}, {r.hosts} host(s), paced): {goal}: {verdict(met)}")
    lines += ["", format_table(
        ["n=4 2048x2048 high", "latency s", "calls overlap"],
        [[f.mode, f"{f.latency_s:.0f}", "yes" if f.overlapping else "no"] for f in fan],
    )]  # fmt: skip
    if len(fan) == 2:
        one = fan[0].latency_s / 4
        lines.append(
            f"target: concurrent <= 1.3 x one generation ({one:.0f} s) + 3 pacing steps (18 s): "
            f"{verdict(fan[1].latency_s <= 1.3 * one + 18)}"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    defaults = Config()
    p = bench_parser("pacing", __doc__)
    p.add_argument("--requests", type=int, default=defaults.requests)
    p.add_argument("--time-scale", type=float, default=defaults.time_scale)
    p.add_argument(
        "--scenarios",
        type=_scenarios,
        default=defaults.scenarios,
        help="DEPLOYMENT:HOSTS:CLIENT,... with even|strict, a host count, paced|burst",
    )
    add_stack_options(p, defaults.timeout_s)
    return p


def _scenarios(text: str) -> tuple[str, ...]:
    found = tuple(s.strip() for s in text.split(",") if s.strip())
    for scenario in found:
        parts = scenario.split(":")
        if (
            len(parts) != 3
            or parts[0] not in ("even", "strict")
            or not parts[1].isdigit()
            or (parts[2] not in ("paced", "burst"))
        ):
            raise argparse.ArgumentTypeError(f"expected DEPLOYMENT:HOSTS:CLIENT, got {scenario!r}")
    return found


def describe(config: Config) -> str:
    return f"{config.requests} requests a run at {config.rpm} RPM, clock x{config.time_scale:g}"


def main(argv: Iterable[str] | None = None) -> int:
    return run_cli("pacing", parser(), argv, Config, describe, run)
