"""`python -m devtools azurite`: run Azurite in the foreground until Ctrl-C or SIGTERM.

In memory unless `--persist DIR`; on other ports with `--blob-port` and the rest (the tests run
their own Azurite beside a shared one this way). Exits 0 when stopped, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devtools import azurite
from devtools.cli import HelpFormatter, add_port_options, ports_of
from devtools.services import ServiceError, stop_on_signals


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devtools", description=__doc__, formatter_class=HelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "azurite", help="Azurite in the foreground", formatter_class=HelpFormatter
    )
    add_port_options(run)
    run.add_argument(
        "--persist", type=Path, metavar="DIR", help="keep data in DIR (omitted: in memory)"
    )
    return parser


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    ports = ports_of(args)
    if azurite.running(ports.blob, ports.queue):
        print(f"Azurite is already listening on {ports.describe()}", file=sys.stderr)
        return 0
    with stop_on_signals():
        try:
            service = azurite.start_on(ports, location=args.persist, log_path=None)
        except (ServiceError, FileNotFoundError) as exc:
            print(f"Azurite did not start: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0  # stopped while starting: `start` already stopped it
        where = f"data in {args.persist}" if args.persist else "in memory"
        print(
            f"Azurite running on {ports.describe()}, {where} (pid {service.pid}); Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        try:
            code = service.process.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            service.stop()
    print(f"Azurite exited on its own with code {code}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
