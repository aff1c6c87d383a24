"""`python -m bench [NAME ...]`: every benchmark in turn with its defaults (or the named ones).

Each prints its own machine, command and table, ready to paste into BENCHMARKS.md. Nothing here
fails on a missed target: the tables say MET or NOT MET, and the exit code only reports crashes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from bench import end_to_end, failover, memory, quota_use, sse_decoding

BENCHMARKS: dict[str, Callable[[list[str]], int]] = {
    "sse_decoding": sse_decoding.main,
    "end_to_end": end_to_end.main,
    "quota_use": quota_use.main,
    "memory": memory.main,
    "failover": failover.main,
}


def main(argv: Iterable[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv) or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = 0
    # Each benchmark echoes its own command line from sys.argv: make it the defaults' one.
    sys.argv = sys.argv[:1]
    for index, name in enumerate(names):
        if index:
            print()
        print(f"## {name}\n", flush=True)
        if BENCHMARKS[name]([]) != 0:
            failed += 1
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
