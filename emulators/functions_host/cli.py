"""Command line: `python -m emulators.functions_host [--app-dir DIR] [--drain] ...`.

Exit codes: 0 after a signal or a completed drain, 2 when the app cannot start (one line on stderr
saying why), 1 when the host itself failed. Failed invocations are normal semantics, not a failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from emulators.functions_host.app_loader import load_app
from emulators.functions_host.app_settings import AppSettings, export_to_environ, load_settings
from emulators.functions_host.blob_listener import (
    DEFAULT_DEAD_LETTER_CONTAINER,
    DEFAULT_SCAN_INTERVAL_S,
    HOST_ID_SETTING,
    BlobOptions,
)
from emulators.functions_host.blob_receipts import host_id_from
from emulators.functions_host.errors import HostStartupError
from emulators.functions_host.eventgrid import DEFAULT_MAX_ATTEMPTS, EventGridRetryPolicy
from emulators.functions_host.host import DEFAULT_LEASE_S, Host, HostOptions, thread_count
from emulators.functions_host.host_config import load_host_config
from emulators.functions_host.logs import configure_logging

log = logging.getLogger("functions_host")

LEASE_ENV = "FUNCTIONS_HOST_LEASE_S"
EXIT_STARTUP = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.functions_host",
        description="Run function_app.py's queue and blob triggers against Storage like the Functions host.",
    )
    parser.add_argument("--app-dir", type=Path, default=Path("."), help="folder of function_app.py")
    parser.add_argument(
        "--drain",
        action="store_true",
        help="exit 0 once every trigger queue is empty (invisible messages too) and nothing runs",
    )
    parser.add_argument(
        "--grace-s",
        type=float,
        default=30.0,
        help="on SIGINT/SIGTERM, wait this long for running invocations",
    )
    parser.add_argument(
        "--lease-s",
        type=int,
        default=None,
        help=f"message visibility while running, renewed at half-time (default ${LEASE_ENV} or {DEFAULT_LEASE_S})",
    )
    parser.add_argument(
        "--blob-scan-interval-s",
        type=float,
        default=DEFAULT_SCAN_INTERVAL_S,
        help="how often blob triggers list their container (Azurite has no Event Grid or logs)",
    )
    parser.add_argument(
        "--eventgrid-time-scale",
        type=float,
        default=1.0,
        help="scale Event Grid's retry schedule and 24 h event time to live (0.01: 10 s -> 0.1 s)",
    )
    parser.add_argument(
        "--eventgrid-max-attempts",
        type=int,
        default=DEFAULT_MAX_ATTEMPTS,
        help=f"Event Grid delivery attempts before the dead letter (1..30, default {DEFAULT_MAX_ATTEMPTS})",
    )
    parser.add_argument(
        "--eventgrid-dead-letter-container",
        default=DEFAULT_DEAD_LETTER_CONTAINER,
        help="container that receives Event Grid's dead-lettered events",
    )
    parser.add_argument("--verbose", action="store_true", help="log renewals and capacity waits")
    return parser.parse_args(argv)


def lease_seconds(args: argparse.Namespace) -> int:
    if args.lease_s is not None:
        return int(args.lease_s)
    raw = os.environ.get(LEASE_ENV, "").strip()
    if not raw:
        return DEFAULT_LEASE_S
    try:
        return int(raw)
    except ValueError:
        raise HostStartupError(
            f"{LEASE_ENV} must be an integer number of seconds, got {raw!r}"
        ) from None


def blob_options(args: argparse.Namespace, settings: AppSettings, app_dir: Path) -> BlobOptions:
    """The host id names receipts and the Event Grid subscription: the setting, else the folder."""
    if args.blob_scan_interval_s < 0.05:
        raise HostStartupError("--blob-scan-interval-s must be at least 0.05")
    try:
        policy = EventGridRetryPolicy(
            args.eventgrid_max_attempts, time_scale=args.eventgrid_time_scale
        )
    except ValueError as error:
        raise HostStartupError(f"Event Grid retry policy: {error}") from None
    return BlobOptions(
        host_id=host_id_from(settings.get(HOST_ID_SETTING) or app_dir.name),
        scan_interval_s=args.blob_scan_interval_s,
        event_grid=policy,
        dead_letter_container=args.eventgrid_dead_letter_container,
    )


def build_host(args: argparse.Namespace) -> Host:
    """Settings, host.json and the app, in the order Core Tools reads them."""
    app_dir = args.app_dir.resolve()
    if not app_dir.is_dir():
        raise HostStartupError(f"--app-dir {app_dir} is not a folder")
    settings = load_settings(app_dir, dict(os.environ))
    export_to_environ(settings, os.environ)  # the app reads its settings from the environment
    config = load_host_config(app_dir, settings.values)
    options = HostOptions(
        lease_s=lease_seconds(args),
        thread_count=thread_count(settings),
        blobs=blob_options(args, settings, app_dir),
    )
    os.chdir(app_dir)  # the worker runs with the app folder as its working directory
    return Host(load_app(app_dir, settings), config, settings, options)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    try:
        host = build_host(args)
    except HostStartupError as error:
        print(f"functions_host: error: {error}", file=sys.stderr)
        return EXIT_STARTUP
    if not host.listeners and not host.blob_listeners:
        log.warning("No queue- or blob-triggered functions found; nothing to run")
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("Second signal: exiting without waiting")
            os._exit(130)
        log.info("Received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    host.start()
    if args.drain:
        host.wait_drained(stop)
    else:
        stop.wait()
    host.shutdown(args.grace_s if not args.drain or stop.is_set() else 0.0)
    return 0


def run() -> None:
    """Entry point: threads that cannot be killed must not keep the process alive after shutdown."""
    try:
        code = main()
    except Exception:
        log.exception("The host failed")
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
