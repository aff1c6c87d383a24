"""The local stack for `make demo` and `make run`: Azurite, the emulator and the host stand-in.

Each piece is started only if needed (Azurite if nothing listens; the emulator unless
AZURE_OPENAI_ENDPOINT names a remote deployment) and stopped by its pid on exit.

`host_settings`, `start_emulator` and `start_host` are how every stack here (this one, bench/ and
the soak) wires and starts the product, so a new setting or host flag is added in one place.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from devtools import azurite
from devtools.services import (
    REPO_ROOT,
    Service,
    free_port,
    http_ok,
    port_open,
    python_module,
    start,
)
from shared.local_settings import FILE_NAME, under_environment

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
EMULATOR_KEY = "local-dev-key"
DEFAULT_EMULATOR_PORT = 8090

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
    log_dir: Path = REPO_ROOT / "out" / "logs"


@contextmanager
def local_stack(
    *,
    time_scale: float,
    fault_rate: float,
    payload_scale: float = 1.0,
) -> Iterator[Stack]:
    """Start what is missing; yield the settings the app runs with; stop what we started."""
    settings = app_settings()
    stack = Stack(settings=settings)
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as cleanup:
        if (
            settings.get("AzureWebJobsStorage", "").replace(" ", "").lower()
            == "usedevelopmentstorage=true"
        ):
            if not azurite.running():
                service = azurite.start_azurite(log_path=stack.log_dir / "azurite.log")
                cleanup.callback(service.stop)
                stack.services.append(service)
                print(f"started Azurite (pid {service.pid})")
            else:
                print("using the Azurite already listening on 127.0.0.1:10000-10002")
        if uses_remote_deployment(settings):
            print(f"using the deployment at {settings['AZURE_OPENAI_ENDPOINT']} (no emulator)")
        else:
            port = (
                DEFAULT_EMULATOR_PORT
                if not port_open("127.0.0.1", DEFAULT_EMULATOR_PORT)
                else free_port()
            )
            url = emulator_url(port)
            emulator = start_emulator(
                port,
                api_key=EMULATOR_KEY,
                deployment=settings.get("AZURE_OPENAI_DEPLOYMENT", "gpt-image-2-1"),
                log_path=stack.log_dir / "emulator.log",
                args=(
                    "--time-scale", str(time_scale),
                    "--fault-rate", str(fault_rate),
                    "--payload-scale", str(payload_scale),
                ),
            )  # fmt: skip
            cleanup.callback(emulator.stop)
            stack.services.append(emulator)
            stack.emulator_url = url
            settings.update(AZURE_OPENAI_ENDPOINT=url, AZURE_OPENAI_API_KEY=EMULATOR_KEY)
            print(
                f"started the emulator on {url} (pid {emulator.pid}, clock x{time_scale}, fault rate {fault_rate})"
            )
        host = start_host(settings, stack.log_dir / "host.log")
        cleanup.callback(host.stop)
        stack.services.append(host)
        print(
            f"started the Functions host stand-in (pid {host.pid}); log: {stack.log_dir / 'host.log'}"
        )
        yield stack


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    """`make run`: the stack in the foreground until Ctrl-C (real-time clock, no random faults)."""
    import signal
    import sys

    # SIGTERM stops the stack as Ctrl-C does: every child is stopped by its pid on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        with local_stack(time_scale=1.0, fault_rate=0.0) as stack:
            host = stack.services[-1]
            print("running; submit with `python -m shared.ops submit ...`; Ctrl-C stops everything")
            host.process.wait()
            print(
                f"the host exited with code {host.process.returncode}:\n{host.log_tail()}",
                file=sys.stderr,
            )
            return 1
    except KeyboardInterrupt:
        print("\nstopped")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
