"""Shared fixtures: a real Azurite for the session and the emulator on a free port.

Azurite is started only if nothing listens on 10000-10002 already, and stopped only if we started it.
The emulator runs with a scaled clock so a 245 s generation takes a few seconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from product_stack import Product, start_product

from devtools import azurite
from devtools.services import Service, free_port, http_ok, python_module, start

EMULATOR_KEY = "test-emulator-key"
TIME_SCALE = 0.01


@pytest.fixture(scope="session")
def azurite_connection_string(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    service: Service | None = None
    if not azurite.running():
        log = tmp_path_factory.mktemp("azurite") / "azurite.log"
        service = azurite.start_azurite(log_path=log)
    try:
        yield azurite.connection_string()
    finally:
        if service is not None:
            service.stop()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Queue and container names unique to the test, so tests never see each other's data."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


@dataclass
class Emulator:
    """A running image-deployment emulator and the settings a client needs to call it."""

    service: Service
    base_url: str
    api_key: str
    deployment: str
    time_scale: float

    def url(self, path: str) -> str:
        return self.base_url + path

    def script(self, *outcomes: dict[str, object]) -> None:
        r = requests.post(self.url("/_emulator/script"), json=list(outcomes), timeout=5)
        r.raise_for_status()

    def requests_log(self) -> list[dict[str, Any]]:
        r = requests.get(self.url("/_emulator/requests"), timeout=5)
        r.raise_for_status()
        body = r.json()
        return body["requests"] if isinstance(body, dict) else body

    def calls_for(self, text: str) -> list[dict[str, Any]]:
        """The logged calls whose prompt contains `text` (tests make prompts unique), in arrival order."""
        return [r for r in self.requests_log() if text in str(r["body"].get("prompt", ""))]

    def reset(self) -> None:
        requests.post(self.url("/_emulator/reset"), timeout=5).raise_for_status()


EmulatorFactory = Callable[..., Emulator]


@pytest.fixture(scope="session")
def emulator_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorFactory]:
    """Start emulators with the given options (`--name value` pairs); all stop at session end."""
    started: list[Service] = []

    def make(
        *,
        time_scale: float = TIME_SCALE,
        fault_rate: float = 0.0,
        payload_scale: float = 0.01,
        deployment: str = "gpt-image-2-1",
        extra_args: tuple[str, ...] = (),
    ) -> Emulator:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log: Path = tmp_path_factory.mktemp("emulator") / "emulator.log"
        args = python_module(
            "emulators.image_deployment",
            "--port", str(port),
            "--api-key", EMULATOR_KEY,
            "--time-scale", str(time_scale),
            "--fault-rate", str(fault_rate),
            "--payload-scale", str(payload_scale),
            "--seed", "1234",
            *(() if "--deployment" in extra_args else ("--deployment", deployment)),
            *extra_args,
        )  # fmt: skip
        service = start(
            "emulator", args, ready=lambda: http_ok(base + "/_emulator/health"), log_path=log
        )
        started.append(service)
        return Emulator(service, base, EMULATOR_KEY, deployment, time_scale)

    yield make
    for service in started:
        service.stop()


@pytest.fixture(scope="session")
def _shared_emulator(emulator_factory: EmulatorFactory) -> Emulator:
    return emulator_factory()


@pytest.fixture
def emulator(_shared_emulator: Emulator) -> Emulator:
    """The session's emulator (no random faults, clock x0.01), reset before each test."""
    _shared_emulator.reset()
    return _shared_emulator


@pytest.fixture(scope="session")
def _sliding_emulator(emulator_factory: EmulatorFactory) -> Emulator:
    return emulator_factory(extra_args=("--rate-model", "sliding"))


@pytest.fixture
def sliding_emulator(_sliding_emulator: Emulator) -> Emulator:
    """Like `emulator`, with the older sliding 60 s rate window (its headers carry a reset time)."""
    _sliding_emulator.reset()
    return _sliding_emulator


@pytest.fixture
def product_factory(
    azurite_connection_string: str,
    emulator: Emulator,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[Callable[..., Product]]:
    """Start function_app.py in the host stand-in on a fresh queue and container."""
    products: list[Product] = []

    def make(overrides: dict[str, str] | None = None, api_key: str | None = None) -> Product:
        product = start_product(
            connection_string=azurite_connection_string,
            emulator_url=emulator.base_url,
            api_key=api_key or emulator.api_key,
            deployment=emulator.deployment,
            queue_name=unique_name("req"),
            container_name=unique_name("img"),
            log_path=tmp_path / f"host-{len(products)}.log",
            overrides=overrides,
        )
        products.append(product)
        return product

    yield make
    for product in products:
        product.host.stop()


@pytest.fixture
def product(product_factory: Callable[..., Product]) -> Product:
    return product_factory()
