"""A blob trigger's `path`: container, then a blob name pattern with `{parameter}` binding expressions.

The host resolves `%Setting%` first (app settings), then matches each blob name against the rest.
As in the WebJobs blob path template, a parameter matches any non-empty text, slashes included
(`images/{name}/manifest.json` binds `name` to `a/b` for `images/a/b/manifest.json`), greedily,
and the values become the trigger's binding data. The container part takes no parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from emulators.functions_host.app_settings import AppSettings
from emulators.functions_host.errors import HostStartupError

_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CONTAINER = re.compile(r"^(?:\$root|[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9])$")


@dataclass(frozen=True, slots=True)
class BlobPathPattern:
    """`container/pattern` of a blob trigger, with `%Setting%` already resolved."""

    container: str
    pattern: str
    regex: re.Pattern[str]
    parameters: tuple[str, ...]

    @property
    def prefix(self) -> str:
        """The literal start of the blob name, to list only blobs that can match."""
        first = self.pattern.find("{")
        return self.pattern if first < 0 else self.pattern[:first]

    def match(self, blob_name: str) -> dict[str, str] | None:
        """The binding data (`{name}` values) when `blob_name` matches, else None."""
        found = self.regex.fullmatch(blob_name)
        return None if found is None else found.groupdict()

    def __str__(self) -> str:
        return f"{self.container}/{self.pattern}"


def parse_blob_path(path: str, where: str) -> BlobPathPattern:
    """Split `container/pattern`; a path without a blob part matches every blob of the container."""
    container, _, pattern = path.strip().lstrip("/").partition("/")
    if "{" in container or "}" in container:
        raise HostStartupError(f"{where}: the container {container!r} cannot hold a {{parameter}}")
    if not _CONTAINER.match(container):
        raise HostStartupError(f"{where}: invalid container name {container!r}")
    pattern = pattern or "{blob}"
    names: list[str] = []
    regex = ""
    position = 0
    for found in _PARAMETER.finditer(pattern):
        name = found.group(1)
        if name in names:
            raise HostStartupError(f"{where}: parameter {{{name}}} appears twice in {path!r}")
        names.append(name)
        regex += re.escape(pattern[position : found.start()]) + f"(?P<{name}>.+)"
        position = found.end()
    regex += re.escape(pattern[position:])
    literal = _PARAMETER.sub("", pattern)
    if "{" in literal or "}" in literal:
        raise HostStartupError(f"{where}: unbalanced or invalid {{parameter}} in {path!r}")
    return BlobPathPattern(container, pattern, re.compile(regex), tuple(names))


def resolve_blob_path(path: str, settings: AppSettings, where: str) -> BlobPathPattern:
    """`%Setting%` from the app settings, then the pattern."""
    return parse_blob_path(settings.resolve(path, where), where)
