"""host.json read the way the host reads it (local.settings.json has its own reader, shared.local_settings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from emulators.functions_host.errors import HostStartupError


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when the file does not exist.

    `utf-8-sig` because editors on Windows save these files with a byte-order mark; anything that is
    not a JSON object is a start-up error naming the file, not a traceback.
    """
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as error:
        raise HostStartupError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(document, dict):
        raise HostStartupError(f"{path}: expected a JSON object")
    return document
