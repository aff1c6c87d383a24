"""The local stack for `make demo` and `make run`: Azurite, the emulator and the host stand-in,
with the downstream sample (samples/downstream) in a second host stand-in beside it.

Each piece is started only if needed (Azurite if nothing listens on its ports; the emulator unless
AZURE_OPENAI_ENDPOINT names a remote deployment) and stopped by its pid on exit, on Ctrl-C and on
SIGTERM alike. `make run` keeps Azurite's data in `.azurite/` so a restart after fixing a setting
finds the poison queue and every record where it left them; `make demo` runs Azurite in memory.

`host_settings`, `start_emulator` and `start_host` are how every stack here (this one, bench/ and
the soak) wires and starts the product, so a new setting or host flag is added in one place.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from devtools import azurite
from devtools.cli import HelpFormatter, add_port_options, ports_of, positive, rate
from devtools.cli import port as port_number
from devtools.downstream import CATALOGUE_CONTAINER, start_downstream
from devtools.logs import RunLogs
from devtools.services import (
    REPO_ROOT,
    Service,
    ServiceError,
    http_ok,
    python_module,
    start,
    stop_on_signals,
)
from devtools.stack_options import (
    EMULATOR_KEY,
    KeyOptions,
    StackError,
    StorageOptions,
    host_key,
    pick_emulator_port,
    start_storage,
)
from shared.local_settings import FILE_NAME, LocalSettingsError, under_environment

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
LOG_DIR = REPO_ROOT / "out" / "logs"
# `make demo` and library callers: Azurite in memory on 10000-10002, the emulator's key given to the host.
IN_MEMORY = StorageOptions()
EMULATOR_KEYS = KeyOptions()

# Host.json overrides as app settings, the way Azure reads them: redeliver at once, poll fast.
FAST_QUEUE_POLLING = {
    "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:00",
    "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.200",
}


def host_settings(
    *,
    storage: str,
    endpoint: str,
    api_key: str,
    deployment: str,
    queue: str,
    container: str,
    quota_container: str | None = None,
) -> dict[str, str]:
    """The settings that wire a host to its storage, deployment, queue and containers.

    Input images live in `<container>-in`; the quota blob in `<container>-quota` unless named, so a
    stack on a shared Azurite keeps its quota to itself. Each stack adds its own tuning on top.
    """
    return {
        "AzureWebJobsStorage": storage,
        "AZURE_OPENAI_ENDPOINT": endpoint,
        "AZURE_OPENAI_DEPLOYMENT": deployment,
        "AZURE_OPENAI_API_KEY": api_key,
        "IMAGE_REQUESTS_QUEUE": queue,
        "IMAGES_CONTAINER": container,
        "IMAGE_INPUT_CONTAINERS": f"{container}-in",
        "IMAGE_QUOTA_CONTAINER": quota_container or f"{container}-quota",
    }


def emulator_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def start_emulator(
    port: int,
    *,
    api_key: str,
    deployment: str,
    log_path: Path,
    args: Sequence[str] = (),
    timeout: float = 60.0,
) -> Service:
    """The image deployment emulator on `port`, ready once its health endpoint answers."""
    health = emulator_url(port) + "/_emulator/health"
    command = python_module(
        "emulators.image_deployment",
        "--port", str(port),
        "--api-key", api_key,
        "--deployment", deployment,
        *args,
    )  # fmt: skip
    return start(
        "emulator", command, ready=lambda: http_ok(health), log_path=log_path, timeout=timeout
    )


def start_host(
    settings: Mapping[str, str],
    log_path: Path,
    *host_args: str,
    name: str = "host",
    ready: Callable[[], bool] = lambda: True,
) -> Service:
    """function_app.py in the host stand-in, with `settings` as its app settings."""
    command = python_module("emulators.functions_host", "--app-dir", str(REPO_ROOT), *host_args)
    return start(name, command, ready=ready, env=dict(settings), log_path=log_path)


def app_settings(app_dir: Path = REPO_ROOT) -> dict[str, str]:
    """local.settings.json (or the example) Values under the process environment, as Core Tools."""
    path = app_dir / FILE_NAME
    if not path.exists():
        path = app_dir / "local.settings.example.json"
    return under_environment(path, os.environ)


def uses_remote_deployment(settings: Mapping[str, str]) -> bool:
    endpoint = settings.get("AZURE_OPENAI_ENDPOINT", "")
    host = urlsplit(endpoint).hostname
    return bool(endpoint) and host not in LOCAL_HOSTS


@dataclass
class Stack:
    settings: dict[str, str]
    services: list[Service] = field(default_factory=list)
    emulator_url: str | None = None
    log_dir: Path = LOG_DIR
    host: Service | None = None
    downstream: Service | None = None


@contextmanager
def local_stack(
    *,
    time_scale: float,
    fault_rate: float,
    payload_scale: float = 1.0,
    storage: StorageOptions = IN_MEMORY,
    keys: KeyOptions = EMULATOR_KEYS,
    emulator_port: int | None = None,
    log_dir: Path = LOG_DIR,
) -> Iterator[Stack]:
    """Start what is missing; yield the settings the app runs with; stop what we started.

    `emulator_port` None: 8090, or a free port when 8090 is taken. Raises StackError before
    anything starts when the options cannot hold (e.g. `reset` with an Azurite not ours).
    """
    settings = app_settings()
    stack = Stack(settings=settings, log_dir=log_dir)
    logs = RunLogs(log_dir)
    remote = uses_remote_deployment(settings)
    # Which key the host gets and which port the emulator takes are decided (and said) first.
    api_key = None if remote else host_key(settings, keys)
    port = None if remote else pick_emulator_port(emulator_port)
    with ExitStack() as cleanup:

        def keep(service: Service) -> Service:
            cleanup.callback(service.stop)
            stack.services.append(service)
            return service

        start_storage(settings, storage, logs, keep)
        if port is None or api_key is None:
            print(f"using the deployment at {settings['AZURE_OPENAI_ENDPOINT']} (no emulator)")
        else:
            clock = ("--time-scale", str(time_scale), "--fault-rate", str(fault_rate))
            emulator = keep(
                start_emulator(
                    port,
                    api_key=keys.emulator_key,
                    deployment=settings.get("AZURE_OPENAI_DEPLOYMENT", "gpt-image-2-1"),
                    log_path=logs.path("emulator"),
                    args=(*clock, "--payload-scale", str(payload_scale)),
                )
            )
            stack.emulator_url = emulator_url(port)
            settings.update(AZURE_OPENAI_ENDPOINT=stack.emulator_url, AZURE_OPENAI_API_KEY=api_key)
            print(
                f"started the emulator on {stack.emulator_url} (pid {emulator.pid}, "
                f"clock x{time_scale:g}, fault rate {fault_rate:g})"
            )
        downstream_log = logs.path("downstream")
        stack.downstream = keep(start_downstream(settings, downstream_log))
        print(
            f"started the downstream sample (samples/downstream) in a second host stand-in "
            f"(pid {stack.downstream.pid}): each manifest.json -> thumbnails and an index line in "
            f"{CATALOGUE_CONTAINER}/; log: {downstream_log}"
        )
        host_log = logs.path("host")
        stack.host = keep(start_host(settings, host_log))
        print(
            f"started the Functions host stand-in (pid {stack.host.pid}); log: {host_log} "
            f"({log_dir / 'host.log'} is the latest run's)"
        )
        yield stack


RUN_DESCRIPTION = """\
`make run` (ARGS="..." passes these options): Azurite, the emulator (unless
AZURE_OPENAI_ENDPOINT is remote) and the Functions host stand-in running function_app.py, in the
foreground until Ctrl-C or SIGTERM, which stop all three. Settings: local.settings.json under the
environment. `make demo` is the same stack for three requests of its own (Azurite in memory,
clock x0.15, some faults), then it stops; `make run` waits for yours, real time, no faults.

Practise a wrong key: AZURE_OPENAI_API_KEY=wrong make run ARGS=--require-key
"""

# --- make run ------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.stack",
        description=RUN_DESCRIPTION,
        epilog="Exit codes: 0 stopped by Ctrl-C or SIGTERM, 1 a service failed, 2 bad arguments "
        "or settings.",
        formatter_class=HelpFormatter,
    )
    emulator = parser.add_argument_group("the emulator")
    emulator.add_argument(
        "--time-scale", type=positive, default=1.0, help="emulator clock: 0.1 runs 245 s in 24.5 s"
    )
    emulator.add_argument(
        "--fault-rate", type=rate, default=0.0, help="random mid-stream server_error rate, 0..1"
    )
    emulator.add_argument(
        "--payload-scale", type=positive, default=1.0, help="image byte sizes relative to Azure's"
    )
    emulator.add_argument(
        "--emulator-port", type=port_number, help="its port (omitted: 8090, or a free one if taken)"
    )
    emulator.add_argument(
        "--require-key",
        action="store_true",
        help="keep the configured AZURE_OPENAI_API_KEY instead of giving the host the emulator's "
        "key: a wrong key gets 401, then poison (to practise requeue-poison)",
    )
    emulator.add_argument(
        "--emulator-key", default=EMULATOR_KEY, help="the key the emulator accepts"
    )
    storage = parser.add_argument_group(
        "Azurite (when AzureWebJobsStorage=UseDevelopmentStorage=true)"
    )
    where = storage.add_mutually_exclusive_group()
    where.add_argument(
        "--persist",
        type=Path,
        metavar="DIR",
        default=azurite.DEFAULT_LOCATION,
        help="keep Azurite's data in DIR, so a restart finds the queues and records",
    )
    where.add_argument("--in-memory", action="store_true", help="Azurite in memory: gone on exit")
    storage.add_argument(
        "--reset", action="store_true", help="delete Azurite's data in the --persist DIR first"
    )
    add_port_options(storage)
    parser.add_argument("--log-dir", type=Path, default=LOG_DIR, help="<service>-<time>.log files")
    return parser


def serve(args: argparse.Namespace) -> int:
    """The stack in the foreground until the host exits (1) or a signal stops it (raised)."""
    if args.in_memory and args.reset:
        raise StackError("--reset deletes on-disk data; with --in-memory there is none")
    storage = StorageOptions(
        ports=ports_of(args), location=None if args.in_memory else args.persist, reset=args.reset
    )
    with local_stack(
        time_scale=args.time_scale,
        fault_rate=args.fault_rate,
        payload_scale=args.payload_scale,
        storage=storage,
        keys=KeyOptions(emulator_key=args.emulator_key, require=args.require_key),
        emulator_port=args.emulator_port,
        log_dir=args.log_dir,
    ) as stack:
        host = stack.host
        assert host is not None
        print(
            "running; submit with `python -m shared.ops submit ...`; Ctrl-C stops everything",
            flush=True,
        )
        host.process.wait()
        print(
            f"the host exited with code {host.process.returncode}:\n{host.log_tail()}",
            file=sys.stderr,
        )
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """`make run`: parse (argparse exits 2 on unknown arguments, 0 on --help), then serve."""
    args = parser().parse_args(argv)
    with stop_on_signals():
        try:
            return serve(args)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: every child is stopped on the way out
            print("\nstopped", flush=True)
            return 0
        except (StackError, LocalSettingsError) as exc:
            print(f"make run: {exc}", file=sys.stderr)
            return 2
        except (ServiceError, FileNotFoundError) as exc:
            print(f"make run: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
