"""App settings as Core Tools assembles them: local.settings.json `Values` under the environment.

The worker reads its settings from the process environment, so the merged values are also written
into `os.environ` (without overwriting what the environment already says) before the app is imported.

The file is read by `shared.local_settings`, the one reader the operator CLI and the dev stack use
too: it is the file's format, which every local reader must take alike, not the API contract the
emulators keep apart from the product. That module uses the standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from emulators.functions_host.errors import HostStartupError, MissingSettingError
from shared.local_settings import FILE_NAME, LocalSettingsError, under_environment

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


def load_settings(app_dir: Path, environ: Mapping[str, str]) -> AppSettings:
    """local.settings.json `Values` under `environ`, read by the app's own reader of that file."""
    try:
        return AppSettings(MappingProxyType(under_environment(app_dir / FILE_NAME, environ)))
    except LocalSettingsError as error:
        raise HostStartupError(str(error)) from None


def export_to_environ(settings: AppSettings, environ: MutableMapping[str, str]) -> None:
    """Make local.settings.json values visible to the app the way the worker's environment does."""
    for name, value in settings.values.items():
        environ.setdefault(name, value)
