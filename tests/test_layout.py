"""The package layout's rules (docs/design.md §3), checked on the source so a new import cannot
quietly tie a layer to one it must not know."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parent.parent / "shared"

# package -> the shared packages it must never import
FORBIDDEN: dict[str, set[str]] = {
    # The wire reports what happened; it never decides what to do next.
    "azure_openai": {"policy", "worker", "storage", "ops", "client", "telemetry"},
    # Pure policy: no I/O layer below it.
    "policy": {"azure_openai", "storage", "worker", "ops", "client", "telemetry"},
    # Producers vendor the client and the contract: nothing of the worker may come along.
    "client": {"worker", "policy", "azure_openai", "storage", "ops", "settings"},
    "contract": {"worker", "policy", "azure_openai", "storage", "ops", "client", "records"},
    "records": {"worker", "policy", "azure_openai", "storage", "ops", "client", "contract"},
    # Operators' tools work beside a running app, never through its wiring.
    "ops": {"worker"},
    # Telemetry observes what the worker and the store report; it decides and fetches nothing.
    "telemetry": {"worker", "policy", "azure_openai", "storage", "ops", "client"},
}


# The settings reader, and the overlay of local.settings.json under the environment (as Core Tools).
ENVIRONMENT_READERS = {"settings.py", "local_settings.py"}


def _shared_imports(path: Path) -> set[str]:
    """Top-level `shared` subpackages (or modules) a file imports, including TYPE_CHECKING ones."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "shared":
                names = [f"shared.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "shared" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_may(package: str) -> None:
    offending = {
        str(path.relative_to(SHARED.parent)): sorted(_shared_imports(path) & FORBIDDEN[package])
        for path in sorted((SHARED / package).rglob("*.py"))
    }
    assert {k: v for k, v in offending.items() if v} == {}


def test_only_settings_reads_the_environment() -> None:
    readers = []
    for path in sorted(SHARED.rglob("*.py")):
        if path.parent == SHARED and path.name in ENVIRONMENT_READERS:
            continue
        text = path.read_text(encoding="utf-8")
        if "os.environ" in text or "os.getenv" in text:
            readers.append(str(path.relative_to(SHARED.parent)))
    assert readers == []


def test_layout_rules_name_real_packages() -> None:
    packages = {p.name for p in SHARED.iterdir() if (p / "__init__.py").exists()}
    assert set(FORBIDDEN) <= packages
    for forbidden in FORBIDDEN.values():
        assert forbidden - {"settings"} <= packages
