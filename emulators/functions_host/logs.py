"""Logging as Core Tools shows it: `[UTC timestamp] message` on stderr, the app's records included."""

from __future__ import annotations

import logging
import sys
import time


class _UtcFormatter(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class _DropIndexingNoise(logging.Filter):
    """azure-functions warns at indexing that auth levels only apply to HTTP functions; not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Auth level is not applied to non http")


def configure_logging(verbose: bool = False) -> None:
    """Root at INFO so the app's own `logging` calls appear, as they do under the real host."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UtcFormatter("[%(asctime)s] %(message)s"))
    handler.addFilter(_DropIndexingNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # The Storage SDK logs every HTTP request at INFO; the host's console does not show those.
    logging.getLogger("azure").setLevel(logging.WARNING)
    logging.getLogger("functions_host").setLevel(logging.DEBUG if verbose else logging.INFO)
