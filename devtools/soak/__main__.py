"""`python -m devtools.soak [--requests N] [--ci] [--seed S] [--workdir DIR]`: exit 0 when every
invariant holds, 1 when one does not, 2 when the soak itself could not run."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from devtools.services import stop_on_signals
from devtools.soak.chaos import SoakAborted
from devtools.soak.config import CI, FULL
from devtools.soak.report import render
from devtools.soak.run import run_soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.soak", description=__doc__)
    parser.add_argument("--ci", action="store_true", help=f"the CI size ({CI.requests} requests)")
    parser.add_argument("--requests", type=int, help=f"how many requests (default {FULL.requests})")
    parser.add_argument("--seed", type=int, help="seed of the workload and the emulator's faults")
    parser.add_argument("--workdir", type=Path, help="logs and Azurite data (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDK logs every HTTP call at INFO
    config = CI if args.ci else FULL
    if args.requests is not None:
        config = config.with_requests(args.requests)
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    try:
        result = run_soak(config, args.workdir)
    except (SoakAborted, TimeoutError, ValueError) as exc:
        print(f"soak: could not run: {exc}", file=sys.stderr)
        return 2
    print(render(result))
    return 0 if result.ok else 1


if __name__ == "__main__":
    with stop_on_signals():  # SIGTERM stops every child as Ctrl-C does
        try:
            sys.exit(main())
        except KeyboardInterrupt:
            sys.exit(130)
