"""Start local services as child processes, wait for them on a deadline, stop them by pid.

Each child runs in its own process group, and stopping it signals the group: whatever the child
started itself goes with it. A terminal's Ctrl-C then reaches only the devtools command, which
stops its children in order (the host before the storage it writes to); `stop_on_signals` makes
SIGTERM do the same, so `kill <pid>` or `make` passing on a SIGTERM leaves no orphan behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent


class ServiceError(RuntimeError):
    """A local service did not start or did not become ready in time."""


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def distinct_free_ports(count: int) -> list[int]:
    """Free ports, all different: each stays bound until every one is picked."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_until(
    condition: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = "condition"
) -> None:
    """Poll `condition` until it holds; raise TimeoutError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


@dataclass
class Service:
    """A child process we started; `stop()` ends it (and only it) by its pid."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to its process group, then SIGKILL after `timeout`; returns the exit code."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL to its process group: no grace."""
        if self.alive():
            self._signal_group(signal.SIGKILL)
            self.process.wait(10)

    def _signal_group(self, signum: int) -> None:
        # Only while the leader is unreaped: its pid is then still ours, and so is the group id.
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass


def start(
    name: str,
    args: Sequence[str],
    *,
    ready: Callable[[], bool],
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log_path: Path | None = None,
) -> Service:
    """Start `args`, wait until `ready()` holds, and return the running service.

    Output goes to `log_path` (or is discarded) so a chatty child never blocks on a full pipe.
    """
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        list(args),
        cwd=cwd or REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    service = Service(name, process, log_path)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if not service.alive():
                raise ServiceError(
                    f"{name} exited with code {process.returncode} before it was ready\n"
                    + service.log_tail()
                )
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"{name} was not ready after {timeout:.0f}s\n" + service.log_tail()
                )
            time.sleep(0.05)
    except BaseException:  # not ready, or Ctrl-C / SIGTERM while waiting: nobody else can stop it
        service.kill()
        raise
    return service


class Stopped(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C, so every `finally` and ExitStack stops its children."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM raises `Stopped` (a KeyboardInterrupt), as SIGINT does.

    Without it Python dies on SIGTERM at once and runs no cleanup: the children it started, in
    their own process groups, would keep running and hold their ports. Main thread only.
    """
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    # Python leaves SIGINT ignored when it starts with it ignored (a background job of a shell
    # without job control): Ctrl-C, or `kill -INT`, must still stop the command and its children.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
