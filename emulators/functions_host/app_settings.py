"""App settings as Core Tools assembles them: local.settings.json `Values` under the environment.

The worker reads its settings from the process environment, so the merged values are also written
into `os.environ` (without overwriting what the environment already says) before the app is imported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from emulators.functions_host.errors import HostStartupError, MissingSettingError
from emulators.functions_host.json_file import read_json_object

LOCAL_SETTINGS_FILE = "local.settings.json"
_PERCENT_NAME = re.compile(r"%([^%]+)%")


@dataclass(frozen=True, slots=True)
class AppSettings:
    """The merged settings; the environment wins over local.settings.json."""

    values: Mapping[str, str]

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def require(self, name: str, needed_for: str) -> str:
        value = self.values.get(name)
        if value is None or value == "":
            raise MissingSettingError(name, needed_for)
        return value

    def resolve(self, template: str, needed_for: str) -> str:
        """Replace every `%NAME%` with that setting, as the host does for binding expressions."""
        return _PERCENT_NAME.sub(lambda m: self.require(m.group(1), needed_for), template)


def read_local_settings(app_dir: Path) -> dict[str, str]:
    """`Values` of local.settings.json, or nothing when the file does not exist."""
    path = app_dir / LOCAL_SETTINGS_FILE
    document = read_json_object(path)
    if document is None:
        return {}
    if document.get("IsEncrypted") is True:
        raise HostStartupError(f"{path}: encrypted settings are not supported locally")
    values = document.get("Values") or {}
    if not isinstance(values, dict):
        raise HostStartupError(f"{path}: 'Values' must be an object")
    bad = [k for k, v in values.items() if not isinstance(v, str)]
    if bad:
        raise HostStartupError(f"{path}: Values.{bad[0]} must be a string")
    return dict(values)


def load_settings(app_dir: Path, environ: Mapping[str, str]) -> AppSettings:
    return AppSettings(MappingProxyType({**read_local_settings(app_dir), **environ}))


def export_to_environ(settings: AppSettings, environ: MutableMapping[str, str]) -> None:
    """Make local.settings.json values visible to the app the way the worker's environment does."""
    for name, value in settings.values.items():
        environ.setdefault(name, value)
