"""The local loop as a newcomer meets it: `make run`'s options, state across restarts, no orphans.

The commands run as subprocesses, as from a shell, on an Azurite of their own on free ports (the
shared one on 10000-10002 is never stopped or written to here). "No orphan" is checked from the
outside: after the command is signalled and exits, every pid it said it started is gone and every
port it listened on is free.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient

from devtools import azurite
from devtools.logs import RunLogs
from devtools.services import REPO_ROOT, distinct_free_ports, port_open, wait_until
from shared.ops.cli import main as ops

START_TIMEOUT = 120.0  # two cores shared with other suites: Azurite alone can take a while
PID = re.compile(r"\(pid (\d+)")
EMULATOR_KEY = "local-dev-key"


@dataclass
class Command:
    """A devtools command started as from a shell; its output goes to a file we can poll."""

    argv: list[str]
    env: dict[str, str]
    output: Path
    process: subprocess.Popen[bytes] = field(init=False)
    children: dict[int, bytes] = field(default_factory=dict)  # pid -> /proc cmdline, while up

    def __post_init__(self) -> None:
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *self.argv],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, line: str, timeout: float = START_TIMEOUT) -> None:
        def there() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"exited {self.process.returncode}:\n{self.text()}")
            return line in self.text()

        wait_until(there, timeout, interval=0.1, what=f"{line!r} from {self.argv}")
        for pid in map(int, PID.findall(self.text())):
            self.children[pid] = _cmdline(pid)
        assert self.children, self.text()

    def signal(self, signum: int) -> int:
        self.process.send_signal(signum)  # the command alone, not its group: as `kill PID` does
        return self.process.wait(60)

    def cleanup(self) -> None:
        """After a failed test: stop the command, then any child of ours it left behind."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        for pid in self.survivors():
            os.kill(pid, signal.SIGKILL)

    def survivors(self) -> list[int]:
        return [pid for pid, cmdline in self.children.items() if _cmdline(pid) == cmdline]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


@pytest.fixture
def commands() -> Iterator[list[Command]]:
    started: list[Command] = []
    yield started
    for command in started:
        command.cleanup()


def local_env(**extra: str) -> dict[str, str]:
    """A shell's environment with the settings that decide what the stack starts pinned: a
    developer's own local.settings.json must not send this test to a real deployment."""
    env = {
        **os.environ,
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:8090",
        "AZURE_OPENAI_DEPLOYMENT": "gpt-image-2-1",
        "AZURE_OPENAI_API_KEY": EMULATOR_KEY,
        # Redeliver at once and poll fast, as host.json overrides in app settings do in Azure.
        "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:00",
        "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.200",
    }
    env.update(extra)
    return env


def run_quick(*argv: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=cwd,
        env=local_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- arguments -------------------------------------------------------------------------------------


def test_stack_help_lists_the_options_and_starts_nothing(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    done = run_quick("devtools.stack", "--help", "--log-dir", str(logs))
    assert done.returncode == 0, done.stderr
    for option in ("--time-scale", "--fault-rate", "--persist", "--reset", "--require-key"):
        assert option in done.stdout
    assert "make demo" in done.stdout and "Exit codes" in done.stdout
    assert not logs.exists()  # no service started: each would have made its log here


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["stray"], "unrecognized arguments: stray"),
        (["--time-scale", "0"], "--time-scale: must be > 0"),
        (["--fault-rate", "2"], "--fault-rate: must be between 0 and 1"),
        (["--blob-port", "70000"], "--blob-port: expected a port 1..65535"),
        (["--in-memory", "--persist", "x"], "not allowed with argument"),
    ],
)
def test_stack_refuses_unknown_and_bad_arguments(
    tmp_path: Path, argv: list[str], says: str
) -> None:
    logs = tmp_path / "logs"
    done = run_quick("devtools.stack", *argv, "--log-dir", str(logs))
    assert done.returncode == 2
    assert says in done.stderr and "Traceback" not in done.stderr
    assert not logs.exists()


def test_stack_reset_refuses_an_azurite_it_did_not_start(
    azurite_connection_string: str, tmp_path: Path
) -> None:
    """The shared Azurite on 10000-10002 is running (the session fixture sees to it): --reset
    must not delete its data, and must say so instead of starting anything."""
    logs = tmp_path / "logs"
    done = run_quick("devtools.stack", "--reset", "--log-dir", str(logs))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--reset: an Azurite this command did not start is listening" in done.stderr
    assert not logs.exists()


def test_azurite_command_refuses_unknown_arguments() -> None:
    done = run_quick("devtools", "azurite", "--inMemoryPersistence")
    assert done.returncode == 2
    assert "unrecognized arguments: --inMemoryPersistence" in done.stderr


# --- no orphans ------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_azurite_command_leaves_no_child_when_signalled(
    commands: list[Command], tmp_path: Path, signum: int
) -> None:
    """`make azurite` used to exit on SIGTERM and leave Azurite holding its ports."""
    ports = distinct_free_ports(3)
    argv = ["devtools", "azurite", "--persist", str(tmp_path / "data")]
    for name, port in zip(("--blob-port", "--queue-port", "--table-port"), ports, strict=True):
        argv += [name, str(port)]
    command = Command(argv, local_env(), tmp_path / "azurite.out")
    commands.append(command)
    command.wait_for("Ctrl-C stops it")
    assert all(port_open("127.0.0.1", port) for port in ports)

    assert command.signal(signum) == 0, command.text()
    assert command.survivors() == []
    assert [port for port in ports if port_open("127.0.0.1", port)] == []


# --- make run: wrong key, poison, fix, restart, requeue ---------------------------------------------


@dataclass
class RunStack:
    """`python -m devtools.stack` on its own ports, data dir and log dir."""

    tmp: Path
    commands: list[Command]
    ports: list[int] = field(default_factory=lambda: distinct_free_ports(4))
    runs: int = 0

    @property
    def storage(self) -> str:
        blob, queue, table, _ = self.ports
        return azurite.connection_string(blob, queue, table)

    def start(self, *extra: str, api_key: str = EMULATOR_KEY) -> Command:
        blob, queue, table, emulator = self.ports
        self.runs += 1
        argv = [
            "devtools.stack",
            "--time-scale", "0.01",
            "--payload-scale", "0.01",
            "--blob-port", str(blob), "--queue-port", str(queue), "--table-port", str(table),
            "--emulator-port", str(emulator),
            "--persist", str(self.tmp / "azurite"),
            "--log-dir", str(self.tmp / "logs"),
            *extra,
        ]  # fmt: skip
        env = local_env(AZURE_OPENAI_API_KEY=api_key)
        command = Command(argv, env, self.tmp / f"stack-{self.runs}.out")
        self.commands.append(command)
        command.wait_for("Ctrl-C stops everything")
        return command

    def stop(self, command: Command, signum: int) -> None:
        assert command.signal(signum) == 0, command.text()
        assert "stopped" in command.text()
        assert command.survivors() == [], command.text()
        assert [port for port in self.ports if port_open("127.0.0.1", port)] == []

    def images(self) -> ContainerClient:
        return BlobServiceClient.from_connection_string(self.storage).get_container_client("images")

    def record(self, request_id: str, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.images().download_blob(f"{request_id}/{name}").readall())
        except ResourceNotFoundError:
            return None

    def wait_record(self, request_id: str, name: str, command: Command) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def present() -> bool:
            found.update(self.record(request_id, name) or {})
            return bool(found)

        try:
            wait_until(present, 120, interval=0.2, what=f"{request_id}/{name}")
        except TimeoutError as exc:
            host_log = (self.tmp / "logs" / "host.log").read_text(errors="replace")
            raise AssertionError(f"{exc}\n{command.text()}\n{host_log[-4000:]}") from None
        return found


@pytest.mark.slow
def test_a_wrong_key_poisons_then_a_restart_and_requeue_recover_it(
    commands: list[Command], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = RunStack(tmp_path, commands)
    operator = {"AzureWebJobsStorage": stack.storage}

    # 1. A wrong key, kept: every call gets 401 and the request ends in the poison queue.
    locked_out = stack.start("--require-key", api_key="wrong-key-4f1c")
    said = locked_out.text()
    assert "--require-key: the host keeps the configured AZURE_OPENAI_API_KEY" in said
    assert "it is not the emulator's key" in said
    assert "wrong-key-4f1c" not in said  # a key is never printed
    assert f"export AzureWebJobsStorage='{stack.storage}'" in said
    argv = ["submit", "--prompt", "a red apple, locked out", "--quality", "low", "--id", "loop-1"]
    assert ops(argv, environ=operator, cwd=tmp_path) == 0
    poisoned = stack.wait_record("loop-1", "error.json", locked_out)
    assert poisoned["error"]["kind"] == "poisoned"
    assert {a.get("http_status") for a in poisoned["attempts"]} == {401}
    stack.stop(locked_out, signal.SIGTERM)

    # 2. Key fixed, stack restarted: the record survived in --persist, requeue-poison recovers it.
    fixed = stack.start("--require-key")
    assert "it is the emulator's key" in fixed.text()
    assert stack.record("loop-1", "error.json") is not None
    capsys.readouterr()
    assert ops(["requeue-poison", "--all"], environ=operator, cwd=tmp_path) == 0
    assert capsys.readouterr().out.startswith("loop-1: re-sent to image-requests")
    manifest = stack.wait_record("loop-1", "manifest.json", fixed)
    assert manifest["status"] == "succeeded"
    assert ops(["status", "loop-1"], environ=operator, cwd=tmp_path) == 0
    stack.stop(fixed, signal.SIGINT)

    # One log per service per run; host.log is the latest run's.
    logs = tmp_path / "logs"
    host_logs = sorted(p.name for p in logs.glob("host-*.log"))
    assert len(host_logs) == 2, host_logs
    assert (logs / "host.log").resolve() == (logs / host_logs[-1]).resolve()

    # 3. --reset starts clean; without --require-key, the line says the configured key is not used.
    clean = stack.start("--reset", api_key="another-key-77")
    said = clean.text()
    assert "--reset: deleted Azurite's data in" in said
    assert "the configured AZURE_OPENAI_API_KEY is NOT used" in said
    assert "another-key-77" not in said
    assert stack.record("loop-1", "manifest.json") is None
    stack.stop(clean, signal.SIGTERM)


# --- units: logs per run ---------------------------------------------------------------------------


def test_run_logs_keep_each_run_point_at_the_latest_and_prune(tmp_path: Path) -> None:
    first = RunLogs(tmp_path, stamp="20260507-133000", keep=2).path("host")
    first.write_text("run 1")
    second = RunLogs(tmp_path, stamp="20260507-133000", keep=2).path("host")  # same second
    second.write_text("run 2")
    assert first != second and first.read_text() == "run 1"
    assert (tmp_path / "host.log").read_text() == "run 2"
    third = RunLogs(tmp_path, stamp="20260507-140000", keep=2).path("host")
    assert sorted(p.name for p in tmp_path.glob("host-*.log")) == [second.name, third.name]
    assert (tmp_path / "host.log").resolve() == third.resolve()
    RunLogs(tmp_path, stamp="20260507-140000").path("emulator")
    assert len(list(tmp_path.glob("host-*.log"))) == 2  # another service's logs leave these be


def test_reset_deletes_only_what_azurite_writes(tmp_path: Path) -> None:
    (tmp_path / "__blobstorage__").mkdir()
    (tmp_path / "__blobstorage__" / "extent").write_bytes(b"x")
    (tmp_path / "__azurite_db_queue__.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "__init__.py").write_text("")
    assert azurite.holds_data(tmp_path)
    removed = azurite.reset_location(tmp_path)
    assert sorted(p.name for p in removed) == ["__azurite_db_queue__.json", "__blobstorage__"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["__init__.py", "notes.txt"]
    assert not azurite.holds_data(tmp_path)


# --- other commands' help ---------------------------------------------------------------------------


def test_bench_help_lists_every_benchmark_and_its_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench.__main__ import BENCHMARKS
    from bench.__main__ import main as bench

    assert bench(["--help"]) == 0
    out = capsys.readouterr().out
    for name in BENCHMARKS:
        assert f"## {name}" in out and f"python -m bench.{name}" in out
    assert "--requests" in out and "--sizes" in out and "(default:" in out
    assert bench(["no_such_bench"]) == 2
    assert bench(["quota_use", "end_to_end", "--requests", "3"]) == 2


def test_emulator_help_shows_defaults_and_says_the_images_are_placeholders() -> None:
    from emulators.image_deployment.config import Config, parser

    text = " ".join(parser().format_help().split())
    assert f"(default: {Config().port})" in text
    assert f"(default: {Config().fault_rate})" in text
    assert "(default: random)" in text  # --seed
    assert "synthetic placeholders" in text
