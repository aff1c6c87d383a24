"""The local stack for `make demo` and `make run`: Azurite, the emulator and the host stand-in.

Each piece is started only if needed (Azurite if nothing listens; the emulator unless
AZURE_OPENAI_ENDPOINT names a remote deployment) and stopped by its pid on exit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
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

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
EMULATOR_KEY = "local-dev-key"
DEFAULT_EMULATOR_PORT = 8090


def app_settings(app_dir: Path = REPO_ROOT) -> dict[str, str]:
    """local.settings.json (or the example) Values under the process environment, as Core Tools."""
    values: dict[str, str] = {}
    for name in ("local.settings.json", "local.settings.example.json"):
        path = app_dir / name
        if path.exists():
            values = {k: str(v) for k, v in json.loads(path.read_text()).get("Values", {}).items()}
            break
    return {**values, **os.environ}


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
    host_args: tuple[str, ...] = (),
    start_host: bool = True,
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
            url = f"http://127.0.0.1:{port}"
            emulator = start(
                "emulator",
                python_module(
                    "emulators.image_deployment",
                    "--port",
                    str(port),
                    "--api-key",
                    EMULATOR_KEY,
                    "--deployment",
                    settings.get("AZURE_OPENAI_DEPLOYMENT", "gpt-image-2-1"),
                    "--time-scale",
                    str(time_scale),
                    "--fault-rate",
                    str(fault_rate),
                    "--payload-scale",
                    str(payload_scale),
                ),
                ready=lambda: http_ok(url + "/_emulator/health"),
                log_path=stack.log_dir / "emulator.log",
            )
            cleanup.callback(emulator.stop)
            stack.services.append(emulator)
            stack.emulator_url = url
            settings.update(AZURE_OPENAI_ENDPOINT=url, AZURE_OPENAI_API_KEY=EMULATOR_KEY)
            print(
                f"started the emulator on {url} (pid {emulator.pid}, clock x{time_scale}, fault rate {fault_rate})"
            )
        if start_host:
            host = start(
                "host",
                python_module("emulators.functions_host", "--app-dir", str(REPO_ROOT), *host_args),
                ready=lambda: True,
                env=settings,
                log_path=stack.log_dir / "host.log",
            )
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
            print("running; submit with `python -m shared.cli submit ...`; Ctrl-C stops everything")
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
