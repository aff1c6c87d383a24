"""`python -m bench [NAME ...]` or `python -m bench NAME [OPTIONS]`: the benchmarks, as tables.

With no name every benchmark runs in turn with its defaults; with names, those. Options after a
single name go to that benchmark (`make bench ARGS="quota_use --requests 20"`); `--help` lists
every benchmark with its options, `NAME --help` one. Each prints its own machine, command and
table, ready to paste into BENCHMARKS.md. Nothing here fails on a missed target: the tables say
MET or NOT MET, and the exit code only reports crashes (2: unknown benchmark or bad options).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bench import end_to_end, failover, memory, pacing, quota_use, sse_decoding


@dataclass(frozen=True, slots=True)
class Benchmark:
    main: Callable[[list[str]], int]
    parser: Callable[[], argparse.ArgumentParser]


BENCHMARKS: dict[str, Benchmark] = {
    "sse_decoding": Benchmark(sse_decoding.main, sse_decoding.parser),
    "end_to_end": Benchmark(end_to_end.main, end_to_end.parser),
    "quota_use": Benchmark(quota_use.main, quota_use.parser),
    "memory": Benchmark(memory.main, memory.parser),
    "pacing": Benchmark(pacing.main, pacing.parser),
    "failover": Benchmark(failover.main, failover.parser),
}
HELP = ("-h", "--help")


def usage() -> str:
    """This module's help, then each benchmark's own: its purpose, options and defaults."""
    parts = [__doc__ or "", f"Benchmarks: {', '.join(BENCHMARKS)}."]
    for name, benchmark in BENCHMARKS.items():
        parts.append(f"\n## {name}\n\n" + benchmark.parser().format_help().rstrip())
    return "\n".join(parts) + "\n"


def main(argv: Iterable[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in HELP:
        print(usage(), end="")
        return 0
    split = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
    names, options = args[:split] or list(BENCHMARKS), args[split:]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    if options and len(names) != 1:
        print(
            "options go to one benchmark: python -m bench NAME [OPTIONS] "
            "(python -m bench --help lists them)",
            file=sys.stderr,
        )
        return 2
    failed = 0
    # Each benchmark echoes its own command line from sys.argv: make it the one that ran.
    sys.argv = sys.argv[:1] + options
    for index, name in enumerate(names):
        if index:
            print()
        print(f"## {name}\n", flush=True)
        try:
            code = BENCHMARKS[name].main(options)
        except SystemExit as exc:  # argparse: NAME --help (0) or a bad option (2)
            return exc.code if isinstance(exc.code, int) else 2
        if code != 0:
            failed += 1
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
