"""Argument parsing shared by the devtools commands: the help formatter, Azurite's ports, numbers."""

from __future__ import annotations

import argparse

from devtools import azurite


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown (unless None: the help says what omitting it means), descriptions as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def add_port_options(parser: argparse.ArgumentParser) -> None:
    """`--blob-port`, `--queue-port`, `--table-port`: Azurite beside another one on 10000-10002."""
    for service, default in (
        ("blob", azurite.BLOB_PORT),
        ("queue", azurite.QUEUE_PORT),
        ("table", azurite.TABLE_PORT),
    ):
        parser.add_argument(
            f"--{service}-port", type=port, default=default, help=f"Azurite's {service} port"
        )


def ports_of(args: argparse.Namespace) -> azurite.Ports:
    return azurite.Ports(args.blob_port, args.queue_port, args.table_port)


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1..65535, got {text!r}")
    return value


def positive(text: str) -> float:
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def rate(text: str) -> float:
    value = number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value
