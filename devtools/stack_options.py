"""What `make run`'s storage and key options mean, decided before (or as) each piece starts.

Apart from `devtools.stack`, which wires and starts the pieces: here is only what Azurite's
location and ports, `--reset` and `--require-key` ask for, and the line each prints so a run
never does something other than what it was given without saying so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devtools import azurite
from devtools.logs import RunLogs
from devtools.services import Service, free_port, port_open

EMULATOR_KEY = "local-dev-key"
DEFAULT_EMULATOR_PORT = 8090


class StackError(RuntimeError):
    """What was asked cannot be done as asked; one line, the command exits 2."""


@dataclass(frozen=True, slots=True)
class StorageOptions:
    """Azurite's ports and data: in memory unless `location`; `reset` empties `location` first."""

    ports: azurite.Ports = field(default_factory=azurite.Ports)
    location: Path | None = None
    reset: bool = False


@dataclass(frozen=True, slots=True)
class KeyOptions:
    """The key the emulator requires, and whether the host keeps the configured one.

    By default the host is given the emulator's key, whatever is configured, so a local run just
    works. `require` keeps the configured AZURE_OPENAI_API_KEY: a wrong one then gets 401, as
    Azure answers, and the path to the poison queue and back can be practised.
    """

    emulator_key: str = EMULATOR_KEY
    require: bool = False


def start_storage(
    settings: dict[str, str],
    options: StorageOptions,
    logs: RunLogs,
    keep: Callable[[Service], Service],
) -> None:
    """Azurite, when the app is set to use development storage; reused if already listening."""
    ports = options.ports
    if settings.get("AzureWebJobsStorage", "").replace(" ", "").lower() != (
        "usedevelopmentstorage=true"
    ):
        if options.reset or not ports.default():
            raise StackError(
                "--reset and the port options are for Azurite, but AzureWebJobsStorage names "
                "other storage (set it to UseDevelopmentStorage=true to use Azurite)"
            )
        print("using the storage AzureWebJobsStorage names (no Azurite)")
        return
    if not ports.default():
        # UseDevelopmentStorage=true means 10000-10002: name the ports for the host instead.
        settings["AzureWebJobsStorage"] = azurite.connection_string(
            ports.blob, ports.queue, ports.table
        )
    if azurite.running(ports.blob, ports.queue):
        if options.reset:
            raise StackError(
                f"--reset: an Azurite this command did not start is listening on "
                f"{ports.describe()}; its data is not ours to delete (stop it, or drop --reset)"
            )
        print(f"using the Azurite already listening on {ports.describe()} (and its data)")
    else:
        location = options.location
        if location is not None:
            if location.exists() and not location.is_dir():
                raise StackError(f"--persist: {location} exists and is not a directory")
            if options.reset:
                removed = azurite.reset_location(location)
                print(f"--reset: deleted Azurite's data in {location} ({len(removed)} entries)")
            location.mkdir(parents=True, exist_ok=True)
        service = keep(azurite.start_on(ports, location=location, log_path=logs.path("azurite")))
        kept = (
            f"data in {location}, kept across runs (--reset starts clean)"
            if location
            else "in memory"
        )
        print(f"started Azurite on {ports.describe()} (pid {service.pid}), {kept}")
    if not ports.default():
        print(
            "for python -m shared.ops and az in another shell: export "
            f"AzureWebJobsStorage='{settings['AzureWebJobsStorage']}'"
        )


def pick_emulator_port(asked: int | None) -> int:
    if asked is None:
        return (
            DEFAULT_EMULATOR_PORT
            if not port_open("127.0.0.1", DEFAULT_EMULATOR_PORT)
            else free_port()
        )
    if port_open("127.0.0.1", asked):
        raise StackError(f"--emulator-port: something already listens on 127.0.0.1:{asked}")
    return asked


def host_key(settings: Mapping[str, str], keys: KeyOptions) -> str:
    """The key the host sends the emulator, saying so when it is not the configured one.

    Never prints a key: only whether the configured one is used.
    """
    configured = settings.get("AZURE_OPENAI_API_KEY", "")
    if keys.require:
        if not configured:
            raise StackError(
                "--require-key: no AZURE_OPENAI_API_KEY is configured (local.settings.json or "
                "the environment) for the host to keep"
            )
        verdict = (
            "it is the emulator's key"
            if configured == keys.emulator_key
            else "it is not the emulator's key, so every call gets 401 and the request ends in "
            "the poison queue"
        )
        print(f"--require-key: the host keeps the configured AZURE_OPENAI_API_KEY; {verdict}")
        return configured
    if not configured:
        print("no AZURE_OPENAI_API_KEY is configured: the host is given the emulator's key")
    elif configured != keys.emulator_key:
        print(
            "the configured AZURE_OPENAI_API_KEY is NOT used: the host is given the emulator's "
            "key instead (--require-key keeps the configured one, and a wrong one then gets 401)"
        )
    return keys.emulator_key
