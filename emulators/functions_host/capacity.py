"""Counting limits shared under one condition, so a listener can wait for any slot to free up."""

from __future__ import annotations

import threading


class Slots:
    """`size` slots taken several at a time without blocking; callers hold `changed` or not."""

    def __init__(self, size: int, changed: threading.Condition) -> None:
        self.size = size
        self.used = 0
        self._changed = changed

    def take_up_to(self, wanted: int) -> int:
        with self._changed:
            taken = max(0, min(wanted, self.size - self.used))
            self.used += taken
            return taken

    def give_back(self, count: int) -> None:
        if count <= 0:
            return
        with self._changed:
            self.used -= count
            self._changed.notify_all()
