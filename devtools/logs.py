"""One log file per service per run, so a restart never overwrites the run before it.

`out/logs/host-20260507-133000.log` is that run's host log and `out/logs/host.log` a symlink to
the newest, so `tail -f out/logs/host.log` keeps working. The oldest runs beyond `KEEP` are
deleted: a loop of restarts must not fill the disk.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

KEEP = 10
_STAMP = "%Y%m%d-%H%M%S"


@dataclass(frozen=True, slots=True)
class RunLogs:
    """Where this run's logs go: `<dir>/<service>-<stamp>.log`."""

    directory: Path
    stamp: str = field(default_factory=lambda: datetime.now().strftime(_STAMP))
    keep: int = KEEP

    def path(self, service: str) -> Path:
        """A new file for `service` this run, `<service>.log` pointing at it, old runs pruned."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{service}-{self.stamp}.log"
        suffix = 1
        while path.exists():  # two runs within one second
            suffix += 1
            path = self.directory / f"{service}-{self.stamp}-{suffix}.log"
        path.touch()
        _point_latest(self.directory / f"{service}.log", path)
        _prune(self.directory, service, self.keep)
        return path


def _point_latest(link: Path, target: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        link.unlink()  # a symlink, or the single overwritten file of earlier versions
    try:
        link.symlink_to(target.name)
    except OSError:  # a file system without symlinks: the stamped name is printed anyway
        pass


def _prune(directory: Path, service: str, keep: int) -> None:
    pattern = re.compile(rf"^{re.escape(service)}-\d{{8}}-\d{{6}}(-\d+)?\.log$")
    runs = sorted(
        (p for p in directory.iterdir() if pattern.match(p.name)),
        key=lambda p: (p.stat().st_mtime_ns, p.name),
    )
    for old in runs[:-keep] if keep > 0 else ():
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
