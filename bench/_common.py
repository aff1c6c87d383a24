"""Helpers every benchmark needs: peak memory, children under a time limit, tables, the machine.

Each measured thing runs in a fresh child process, so one row's garbage, allocator state or imports
never change the next row's peak RSS, and a hopeless peer can be killed at its time limit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
# The child's result is the last stdout line that starts with this, so stray prints cannot break it.
RESULT_PREFIX = "BENCH-RESULT "

ConfigT = TypeVar("ConfigT")

__all__ = [
    "MIB",
    "REPO_ROOT",
    "ChildFailed",
    "ChildOutcome",
    "ChildResult",
    "ChildTimedOut",
    "bench_parser",
    "cpu_seconds",
    "current_rss_kib",
    "emit_result",
    "epoch_from_iso",
    "format_table",
    "machine_summary",
    "peak_rss_kib",
    "percentile",
    "print_header",
    "proc_cpu_seconds",
    "proc_status_kib",
    "run_child",
    "run_cli",
    "verdict",
]


def peak_rss_kib() -> int:
    """This process's peak resident set size so far, in KiB.

    `ru_maxrss` survives execve: Linux folds the high-water mark of the memory the child was forked
    from into it, so a child started by a parent holding a 128 MiB stream body reports at least the
    parent's peak. VmHWM is the high-water mark of this program's own address space, so it is read
    first; `ru_maxrss` is the fallback where /proc is missing.
    """
    own = _own_status_kib("VmHWM")
    return own if own is not None else int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def current_rss_kib() -> int:
    """Resident memory now, in KiB: a baseline that a transient peak during imports does not lift."""
    own = _own_status_kib("VmRSS")
    return own if own is not None else peak_rss_kib()


def _own_status_kib(field: str) -> int | None:
    """A memory line of this process's status; None where /proc is missing or lacks it."""
    try:
        return proc_status_kib("self", field)
    except (OSError, ValueError, IndexError, KeyError):
        return None


def cpu_seconds() -> float:
    """User plus system CPU time of this process: less disturbed by other load than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit_result(payload: dict[str, Any]) -> None:
    """Called in the child: hand the result to the parent on stdout."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


@dataclass(frozen=True, slots=True)
class ChildResult:
    payload: dict[str, Any]
    wall_s: float


@dataclass(frozen=True, slots=True)
class ChildTimedOut:
    limit_s: float


@dataclass(frozen=True, slots=True)
class ChildFailed:
    returncode: int
    stderr_tail: str


ChildOutcome = ChildResult | ChildTimedOut | ChildFailed


def run_child(args: Sequence[str], limit_s: float) -> ChildOutcome:
    """Run `python -m ...args` from the repo root; kill it (and only it) when `limit_s` passes."""
    command = [sys.executable, "-m", *args]
    start = time.monotonic()
    # Popen + communicate(timeout) rather than run(): run() would also kill, but we want the
    # outcome as a value, not an exception, and the child's stderr when it fails.
    with subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    ) as child:
        try:
            out, err = child.communicate(timeout=limit_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            return ChildTimedOut(limit_s)
    wall_s = time.monotonic() - start
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith(RESULT_PREFIX)]
    if child.returncode != 0 or not lines:
        tail = "\n".join(err.decode(errors="replace").splitlines()[-15:])
        return ChildFailed(child.returncode, tail)
    return ChildResult(json.loads(lines[-1][len(RESULT_PREFIX) :]), wall_s)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table, so the printed output can be pasted into BENCHMARKS.md."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def machine_summary() -> str:
    """nproc, CPU model and Python: what a reader needs to weigh the numbers."""
    model = "unknown CPU"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{len(os.sched_getaffinity(0))} CPUs ({model}), Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}"
    )


def percentile(values: Sequence[float], share: float) -> float:
    """The `share` (0..1) percentile by linear interpolation, like numpy's default; no numpy needed."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def epoch_from_iso(text: str) -> float:
    """Epoch seconds of the records' ISO 8601 UTC stamps (`2026-05-07T13:46:12.190Z`)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def proc_status_kib(pid: int | Literal["self"], field: str) -> int:
    """A memory line of a process's /proc/<pid>/status (`VmHWM`, `VmRSS`), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def proc_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of another process (its threads included), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime and stime: fields 14 and 15 of the line
    return ticks / os.sysconf("SC_CLK_TCK")


def print_header(
    module: str, setup: str, argv: Sequence[str] | None = None, label: str = "setup"
) -> None:
    """The lines BENCHMARKS.md records with every table: machine, command, setup.

    `label` names the setup line: the SSE benchmark's setup is the stream it serves.
    """
    args = sys.argv[1:] if argv is None else argv
    print(f"machine: {machine_summary()}")
    print(f"command: python -m bench.{module} {' '.join(args)}".rstrip())
    print(f"{label}: {setup}\n")


def verdict(met: bool) -> str:
    """How a target line ends, the same words in every table BENCHMARKS.md quotes."""
    return "MET" if met else "NOT MET"


def bench_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of `python -m bench.<module>`; its help is the module's docstring."""
    return argparse.ArgumentParser(
        prog=f"python -m bench.{module}",
        description=doc,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def run_cli(
    module: str,
    parser: argparse.ArgumentParser,
    argv: Iterable[str] | None,
    config_type: Callable[..., ConfigT],
    describe: Callable[[ConfigT], str],
    run: Callable[[ConfigT], object],
) -> int:
    """A benchmark's `main`: parse, print the header with the command as given, run the config.

    Every option's dest is a field of `config_type`, so the parsed options are its keywords and no
    benchmark copies them over one by one. The header echoes `argv` when it is given (as
    `python -m bench` passes `[]`), so the command line recorded is the one that produced the table.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    config = config_type(**vars(parser.parse_args(arguments)))
    print_header(module, describe(config), arguments)
    run(config)
    return 0
