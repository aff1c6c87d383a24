"""Azurite (the local Azure Storage emulator, pinned in package.json) for tests and the demo."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools.services import REPO_ROOT, Service, port_open, start

HOST = "127.0.0.1"
BLOB_PORT, QUEUE_PORT, TABLE_PORT = 10000, 10001, 10002
# Where `make run` keeps Azurite's data between runs (git-ignored).
DEFAULT_LOCATION = REPO_ROOT / ".azurite"
# What Azurite writes under --location; `reset_location` deletes these and nothing else.
_DATA_NAMES = ("__blobstorage__", "__queuestorage__", "__tablestorage__", "AzuriteConfig")
_DATA_PREFIX = "__azurite_db_"

# Azurite's well-known development account (public, documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def connection_string(
    blob_port: int = BLOB_PORT,
    queue_port: int = QUEUE_PORT,
    table_port: int = TABLE_PORT,
    *,
    account: str = ACCOUNT,
    key: str = ACCOUNT_KEY,
) -> str:
    """`account`/`key`: one of the accounts given to `start_azurite(accounts=...)`."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
        f"BlobEndpoint=http://{HOST}:{blob_port}/{account};"
        f"QueueEndpoint=http://{HOST}:{queue_port}/{account};"
        f"TableEndpoint=http://{HOST}:{table_port}/{account};"
    )


@dataclass(frozen=True, slots=True)
class Ports:
    blob: int = BLOB_PORT
    queue: int = QUEUE_PORT
    table: int = TABLE_PORT

    def default(self) -> bool:
        return self == Ports()

    def describe(self) -> str:
        return f"{HOST}:{self.blob},{self.queue},{self.table} (blob, queue, table)"


def running(blob_port: int = BLOB_PORT, queue_port: int = QUEUE_PORT) -> bool:
    return port_open(HOST, blob_port) and port_open(HOST, queue_port)


def executable() -> str:
    local = REPO_ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if found is None:
        raise FileNotFoundError("azurite is not installed: run `make setup` (npm ci)")
    return found


def start_azurite(
    *,
    blob_port: int = BLOB_PORT,
    queue_port: int = QUEUE_PORT,
    table_port: int = TABLE_PORT,
    location: Path | None = None,
    log_path: Path | None = None,
    timeout: float = 60.0,
    accounts: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> Service:
    """Start Azurite on the given ports; in memory unless `location` asks for on-disk data.

    `accounts` (name -> base64 key) replaces the well-known development account, so a test can use
    a key of its own, one that no public document holds (Azurite's AZURITE_ACCOUNTS)."""
    args = [
        executable(),
        "--silent",
        "--skipApiVersionCheck",
        "--loose",
        "--blobHost", HOST, "--blobPort", str(blob_port),
        "--queueHost", HOST, "--queuePort", str(queue_port),
        "--tableHost", HOST, "--tablePort", str(table_port),
    ]  # fmt: skip
    args += extra_args  # e.g. --oauth basic --cert ... --key ... (HTTPS with OAuth)
    if location is None:
        args.append("--inMemoryPersistence")
    else:
        args += ["--location", str(location)]
    if log_path is None:
        log_path = Path(tempfile.gettempdir()) / f"azurite-{blob_port}.log"
    return start(
        "azurite",
        args,
        ready=lambda: running(blob_port, queue_port) and port_open(HOST, table_port),
        timeout=timeout,
        log_path=log_path,
        env=None
        if accounts is None
        else {"AZURITE_ACCOUNTS": ";".join(f"{name}:{key}" for name, key in accounts.items())},
    )


def start_on(ports: Ports, *, location: Path | None, log_path: Path | None) -> Service:
    return start_azurite(
        blob_port=ports.blob,
        queue_port=ports.queue,
        table_port=ports.table,
        location=location,
        log_path=log_path,
    )


def holds_data(location: Path) -> bool:
    return location.is_dir() and any(_is_data(p) for p in location.iterdir())


def reset_location(location: Path) -> list[Path]:
    """Delete Azurite's files under `location` and return them; other files are left alone.

    Named, not `rmtree(location)`: `--persist ~ --reset` must not empty a home directory.
    """
    if not location.is_dir():
        return []
    removed = []
    for entry in sorted(location.iterdir()):
        if not _is_data(entry):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry)
    return removed


def _is_data(entry: Path) -> bool:
    return entry.name in _DATA_NAMES or entry.name.startswith(_DATA_PREFIX)
