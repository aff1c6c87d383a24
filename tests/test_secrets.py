"""Secrets (issue 7): the API key and bearer tokens never appear in logs, blobs, records, queues or the
emulator's request log.

Three hosts run real requests against one emulator that knows a distinctive key: one with that key
(a success, an edit, a 429, a content-filter failure, a run out of retries, a rejected message), one
with a wrong key (401, poisoned), and one with no key at all, which takes the Microsoft Entra ID path:
`DefaultAzureCredential` finds an App Service managed identity endpoint (IDENTITY_ENDPOINT and
IDENTITY_HEADER, as Azure Functions sets them), served here by a stand-in that hands out a
distinctive token. Then everything those runs left behind is searched for every secret: the hex
part of each alone, so a cut-short or prefixed copy is found too, and base64 of each whole.
"""

from __future__ import annotations

import base64
import io
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from conftest import Emulator, EmulatorFactory
from managed_identity import ManagedIdentityEndpoint
from PIL import Image
from product_stack import Product, start_product

pytestmark = pytest.mark.slow

RUN = uuid.uuid4().hex
API_KEY = f"sk-apikey-{RUN[:16]}"
WRONG_KEY = f"sk-wrongkey-{RUN[16:32]}"
TOKEN = f"eyJ0eXAiOiJKV1Qi.fake-entra-{uuid.uuid4().hex}.sig"
IDENTITY_HEADER = f"identity-header-{uuid.uuid4().hex}"
SECRETS = {
    "api key": API_KEY,
    "wrong api key": WRONG_KEY,
    "bearer token": TOKEN,
    "identity header": IDENTITY_HEADER,
}
BEARER_RE = re.compile(rb"(?i)bearer\s+[A-Za-z0-9._~+/=-]{8,}")


def needles(secret: str) -> list[bytes]:
    """12 characters of the secret's random part (a truncated or re-prefixed copy holds them too)
    and base64 of the whole secret."""
    random_part = max(re.findall(r"[0-9a-f]{16,}", secret), key=len)
    return [random_part[:12].encode(), base64.b64encode(secret.encode())]


@dataclass
class Exposure:
    """Every place a secret could leak to, as (place, bytes), and what the runs produced."""

    places: list[tuple[str, bytes]] = field(default_factory=list)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    identity_calls: int = 0

    def add(self, place: str, data: bytes | str) -> None:
        self.places.append((place, data.encode("utf-8") if isinstance(data, str) else data))


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (64, 64), "purple").save(out, "PNG")
    return out.getvalue()


def _collect_storage(product: Product, label: str, exposure: Exposure) -> None:
    containers = [
        product.container.container_name,
        product.settings["IMAGE_INPUT_CONTAINERS"],
        product.settings["IMAGE_QUOTA_CONTAINER"],
    ]
    for name in containers:
        client = product.blobs.get_container_client(name)
        try:
            blobs = list(client.list_blobs(include=["metadata"]))
        except ResourceNotFoundError:
            continue
        for blob in blobs:
            where = f"{label}: blob {name}/{blob.name}"
            exposure.add(f"{where} (name)", blob.name)
            exposure.add(f"{where} (metadata)", json.dumps(blob.metadata or {}))
            exposure.add(where, client.download_blob(blob.name).readall())
    for queue in (product.queue, product.poison):
        try:
            for message in queue.peek_messages(max_messages=32):
                exposure.add(f"{label}: queue {queue.queue_name}", str(message.content))
        except ResourceNotFoundError:
            continue
    log_path = product.host.log_path
    assert log_path is not None
    exposure.add(f"{label}: host log", log_path.read_bytes())


def _start(
    connection_string: str, emulator: Emulator, tmp: Path, label: str, **settings: str
) -> Product:
    suffix = uuid.uuid4().hex[:10]
    api_key = settings.pop("api_key")
    return start_product(
        connection_string=connection_string,
        emulator_url=emulator.base_url,
        api_key=api_key,
        deployment=emulator.deployment,
        queue_name=f"sec-req-{suffix}",
        container_name=f"sec-img-{suffix}",
        log_path=tmp / f"host-{label}.log",
        overrides=settings,
    )


def _request(prompt: str, **more: Any) -> dict[str, Any]:
    return {"prompt": prompt, "size": "1024x1024", "quality": "low", **more}


@pytest.fixture(scope="module")
def exposure(
    azurite_connection_string: str,
    emulator_factory: EmulatorFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Exposure]:
    emulator = emulator_factory(extra_args=("--api-key", API_KEY))
    tmp = tmp_path_factory.mktemp("secrets")
    identity = ManagedIdentityEndpoint(TOKEN, IDENTITY_HEADER)
    products: list[Product] = []
    result = Exposure()
    try:
        keyed = _start(azurite_connection_string, emulator, tmp, "keyed", api_key=API_KEY)
        wrong = _start(azurite_connection_string, emulator, tmp, "wrong-key", api_key=WRONG_KEY)
        entra = _start(
            azurite_connection_string,
            emulator,
            tmp,
            "entra",
            api_key="",
            AZURE_OPENAI_API_KEY="",  # absent: Microsoft Entra ID (DESIGN.md section 8)
            IDENTITY_ENDPOINT=identity.url,
            IDENTITY_HEADER=IDENTITY_HEADER,
        )
        products += [keyed, wrong, entra]
        source = keyed.upload_input("source.png", _png())

        tag = uuid.uuid4().hex[:8]
        prompts = {name: f"secrets {name} {tag}" for name in (
            "success", "edit", "throttled", "filtered", "exhausted", "wrong key", "entra",
        )}  # fmt: skip
        emulator.script(
            {"outcome": "rate_limited", "retry_after_ms": 20_000,
             "prompt_contains": prompts["throttled"]},
            {"outcome": "content_filter", "prompt_contains": prompts["filtered"]},
            *[{"outcome": "http_error", "status": 500, "prompt_contains": prompts["exhausted"]}] * 4,
            {"outcome": "drop", "after_partials": 1, "prompt_contains": prompts["entra"]},
        )  # fmt: skip
        ids: dict[str, tuple[Product, str]] = {
            "success": (keyed, keyed.client.submit(_request(prompts["success"]))),
            "edit": (keyed, keyed.client.submit(_request(
                prompts["edit"], operation="edit",
                input_images=[source],
            ))),
            "throttled": (keyed, keyed.client.submit(_request(prompts["throttled"]))),
            "filtered": (keyed, keyed.client.submit(_request(prompts["filtered"]))),
            "exhausted": (keyed, keyed.client.submit(_request(prompts["exhausted"]))),
            "rejected": (keyed, keyed.send_raw('{"prompt": "secrets rejected", "n": "many"}')),
            "wrong key": (wrong, wrong.client.submit(_request(prompts["wrong key"]))),
            "entra": (entra, entra.client.submit(_request(prompts["entra"]))),
        }  # fmt: skip
        for name, (product, request_id) in ids.items():
            result.records[name] = product.wait_terminal(request_id, timeout=90)
        for product in products:
            product.wait_until_queue_empty(timeout=30)
        result.calls = emulator.requests_log()
        result.identity_calls = len(identity.calls)
        for label, product in zip(("keyed", "wrong-key", "entra"), products, strict=True):
            _collect_storage(product, label, result)
        result.add("emulator: GET /_emulator/requests", json.dumps(result.calls))
        assert emulator.service.log_path is not None
        result.add("emulator: process log", emulator.service.log_path.read_bytes())
        yield result
    finally:
        identity.stop()
        for product in products:
            product.remove()


def test_the_runs_exercised_every_path(exposure: Exposure) -> None:
    """The search below means something only if the secrets were really used."""
    outcome = {name: (r["status"], (r.get("error") or {}).get("kind")) for name, r in exposure.records.items()}  # fmt: skip
    assert outcome == {
        "success": ("succeeded", None),
        "edit": ("succeeded", None),
        "throttled": ("succeeded", None),
        "filtered": ("failed", "content_filter"),
        "exhausted": ("failed", "retries_exhausted"),
        "rejected": ("rejected", "invalid_request"),
        "wrong key": ("failed", "poisoned"),
        "entra": ("succeeded", None),
    }
    auth = {(c["auth"], c["status"]) for c in exposure.calls}
    assert ("api-key", 200) in auth and ("api-key", 401) in auth and ("bearer", 200) in auth
    assert exposure.identity_calls >= 1, "the Entra ID path never asked for a token"
    assert len(exposure.places) > 20


@pytest.mark.parametrize("secret", list(SECRETS), ids=list(SECRETS))
def test_secret_appears_nowhere(exposure: Exposure, secret: str) -> None:
    found = [
        place
        for place, data in exposure.places
        for needle in needles(SECRETS[secret])
        if needle in data
    ]
    assert found == [], f"the {secret} leaked into: {sorted(set(found))}"


def test_no_bearer_token_of_any_kind_is_written(exposure: Exposure) -> None:
    found = [
        (place, match.group()[:14] + "…")
        for place, data in exposure.places
        for match in BEARER_RE.finditer(data)
    ]
    assert found == []


def test_needles_find_what_they_should() -> None:
    """The search itself can fail: a secret, cut short or re-encoded, is found."""
    for secret in SECRETS.values():
        haystacks = [
            f"key={secret[:-2]}...".encode(),
            f'{{"auth": "{base64.b64encode(secret.encode()).decode()}"}}'.encode(),
        ]
        assert all(any(n in h for n in needles(secret)) for h in haystacks)
    assert BEARER_RE.search(b"Authorization: Bearer abcdefgh.ijk")
