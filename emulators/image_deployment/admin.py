"""The control API under /_emulator/, apart from the service's routes: health, script, log, reset,
and the runtime options (a whole new validated Config is swapped in)."""

from __future__ import annotations

import json
from typing import Any

from .api import State
from .config import ConfigError, replace_options
from .script import ScriptError, parse_script

Reply = tuple[int, Any]


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as error:
        raise ScriptError(f"body is not JSON: {error}") from None


def handle(state: State, method: str, path: str, body: bytes) -> Reply:
    if method == "GET" and path == "/_emulator/health":
        return 200, {"status": "ok"}
    if method == "GET" and path == "/_emulator/requests":
        return 200, {"requests": state.log.records()}
    if method == "POST" and path == "/_emulator/reset":
        state.reset()
        return 200, {"reset": True}
    if path == "/_emulator/script":
        if method == "GET":
            return 200, {"pending": [o.describe() for o in state.script.pending()]}
        if method == "POST":
            try:
                outcomes = parse_script(_json_body(body))
            except ScriptError as error:
                return 400, {"error": {"code": "invalid_script", "message": str(error)}}
            return 200, {"pending": state.script.extend(outcomes)}
    if path == "/_emulator/config":
        if method == "GET":
            return 200, state.config.get().public()
        if method == "POST":
            try:
                changes = _json_body(body)
                if not isinstance(changes, dict):
                    raise ConfigError("expected a JSON object of options")
                state.config.swap(replace_options(state.config.get(), changes))
            except (ConfigError, ScriptError) as error:
                return 400, {"error": {"code": "invalid_config", "message": str(error)}}
            return 200, state.config.get().public()
    return 404, {"error": {"code": "404", "message": f"no control route {method} {path}"}}
