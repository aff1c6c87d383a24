"""Errors the host reports at start-up: one line each, no traceback, exit code 2."""

from __future__ import annotations


class HostStartupError(Exception):
    """The app, its settings or host.json cannot be run; the message is one line saying why."""


class MissingSettingError(HostStartupError):
    """An app setting the app refers to (connection, `%NAME%`) is not defined anywhere."""

    def __init__(self, name: str, needed_for: str) -> None:
        super().__init__(
            f"Missing app setting '{name}' (needed for {needed_for}): define it in the environment "
            "or in local.settings.json Values"
        )
        self.name = name


class MessageDecodeError(ValueError):
    """A queue body is not valid under host.json `messageEncoding`; the invocation fails."""
