"""`local.settings.json`: the one reader of its `Values`, for the app's tools, devtools and the host.

Core Tools reads the file's `Values` as app settings and lets the process environment win over
them. Every local reader follows the same rule, so a file that works for `func start` works for
the operator CLI, the host stand-in and the dev stack, and one that does not fails the same way:

- UTF-8, with or without a byte-order mark (editors on Windows write one);
- a missing file is no settings at all, a missing or null `Values` too;
- `Values` must be an object and every value in it a string: JSON `true` or `3` is refused, not
  turned into "True" or "3", because what the app then saw would depend on which reader ran;
- `"IsEncrypted": true` is refused: the values would need the machine key to decrypt.

Standard library only, so the host stand-in can use it without the app's dependencies: it is a
file format both must read identically, not part of the API contract the emulators keep apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

FILE_NAME = "local.settings.json"


class LocalSettingsError(ValueError):
    """The file cannot be used; the message is one line naming the file (and the key, if one)."""


def read_values(path: Path) -> dict[str, str]:
    """The file's `Values`, or {} when the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise LocalSettingsError(f"{path}: not readable ({error})") from None
    try:
        document = json.loads(text)
    except ValueError as error:
        raise LocalSettingsError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(document, dict):
        raise LocalSettingsError(f"{path}: expected a JSON object")
    if document.get("IsEncrypted") is True:
        raise LocalSettingsError(f"{path}: encrypted settings are not supported locally")
    values = document.get("Values")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise LocalSettingsError(f"{path}: 'Values' must be an object")
    for key, value in values.items():
        if not isinstance(value, str):
            # The value's JSON type, not the value: it may be a secret written without quotes.
            raise LocalSettingsError(
                f"{path}: Values.{key} must be a string, got {_json_type(value)} (quote it)"
            )
    return dict(values)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    return "a list" if isinstance(value, list) else "an object"


def under_environment(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The file's `Values` overlaid by `environ` (default: this process's environment): the
    environment wins, as with Core Tools."""
    return {**read_values(path), **(os.environ if environ is None else environ)}
