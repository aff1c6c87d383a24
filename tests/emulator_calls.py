"""Raw HTTP calls to the image-deployment emulator, for the emulator's own tests."""

from __future__ import annotations

from typing import Any

import requests

API_VERSION = "2025-04-01-preview"
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def url(emulator: Any, endpoint: str = "generations", deployment: str | None = None) -> str:
    name = deployment or emulator.deployment
    return emulator.url(f"/openai/deployments/{name}/images/{endpoint}?api-version={API_VERSION}")


def post(emulator: Any, body: dict[str, Any], deployment: str | None = None, **kw: Any) -> requests.Response:  # fmt: skip
    kw.setdefault("timeout", 30)
    return requests.post(
        url(emulator, deployment=deployment), json=body, headers={"api-key": emulator.api_key}, **kw
    )


def edit(emulator: Any, fields: dict[str, str], deployment: str | None = None) -> requests.Response:
    return requests.post(
        url(emulator, "edits", deployment), data=fields,
        files=[("image", ("in.png", PNG_BYTES, "image/png"))],
        headers={"api-key": emulator.api_key}, timeout=30,
    )  # fmt: skip
