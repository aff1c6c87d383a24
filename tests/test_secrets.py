"""Secrets (issues 7 and 15): the API key, bearer tokens, the storage account key, every connection
string and SAS signature never appear in logs, blobs, blob metadata, records, queues or the
emulator's request log and process log.

Storage is an Azurite of this module's own with an account whose key is random (AZURITE_ACCOUNTS):
Azurite's well-known key is public, so only a key no document holds shows a leak. Each host also
gets a second, unused storage setting (a connection string with another random key, and one with a
SAS token) of the kind an app would log if it logged its settings.

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
import secrets
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

from devtools import azurite
from devtools.services import distinct_free_ports

pytestmark = pytest.mark.slow

RUN = uuid.uuid4().hex
API_KEY = f"sk-apikey-{RUN[:16]}"
WRONG_KEY = f"sk-wrongkey-{RUN[16:32]}"
TOKEN = f"eyJ0eXAiOiJKV1Qi.fake-entra-{uuid.uuid4().hex}.sig"
IDENTITY_HEADER = f"identity-header-{uuid.uuid4().hex}"


def _account_key() -> str:
    """A storage account key (64 random bytes, base64) that starts with 16 letters or digits, so
    its needle survives URL-encoding."""
    while True:
        key = base64.b64encode(secrets.token_bytes(64)).decode()
        if re.match(r"[A-Za-z0-9]{16}", key):
            return key


STORAGE_ACCOUNT = f"sec{RUN[:12]}"
STORAGE_KEY = _account_key()
UNUSED_KEY = _account_key()
SAS_SIG = _account_key()[:43] + "="
UNUSED_STORAGE = {
    # Never used by the app: a leak of settings, not of a client, is what would show them.
    "ArchiveStorage": (
        f"DefaultEndpointsProtocol=https;AccountName=archive{RUN[:8]};AccountKey={UNUSED_KEY};"
        "EndpointSuffix=core.windows.net"
    ),
    "ArchiveStorageSas": (
        f"BlobEndpoint=https://archive{RUN[:8]}.blob.core.windows.net;SharedAccessSignature="
        f"sv=2022-11-02&ss=b&srt=sco&sp=rl&se=2030-01-01T00:00:00Z&spr=https&sig={SAS_SIG}"
    ),
}
SECRETS = {
    "api key": API_KEY,
    "wrong api key": WRONG_KEY,
    "bearer token": TOKEN,
    "identity header": IDENTITY_HEADER,
    "storage account key": STORAGE_KEY,
    "unused storage key": UNUSED_KEY,
    "sas signature": SAS_SIG,
}
BEARER_RE = re.compile(rb"(?i)bearer\s+[A-Za-z0-9._~+/=-]{8,}")
# Any connection string's secret part, any SAS signature: not only the ones this module planted.
CREDENTIAL_RE = re.compile(
    rb"(?i)(AccountKey=[A-Za-z0-9+/]{20,}|SharedAccessSignature=\S{8,}|[?&;]sig=[A-Za-z0-9%+/=]{16,})"
)


def needles(secret: str) -> list[bytes]:
    """12 characters of the secret's random part (a truncated or re-prefixed copy holds them too)
    and base64 of the whole secret. A hex run is the random part of the made-up secrets; a storage
    key or signature is random throughout (its first 16 characters are letters and digits)."""
    runs = re.findall(r"[0-9a-f]{16,}", secret)
    random_part = max(runs, key=len) if runs else secret[:16]
    return [random_part[:12].encode(), base64.b64encode(secret.encode())]


def leaks(exposure: Exposure, secret: str) -> list[str]:
    """The places that hold `secret` (or a cut-short or base64 copy of it)."""
    return sorted({place for place, data in exposure.places for n in needles(secret) if n in data})


@dataclass
class Exposure:
    """Every place a secret could leak to, as (place, bytes), and what the runs produced."""

    places: list[tuple[str, bytes]] = field(default_factory=list)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    products: list[Product] = field(default_factory=list)
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
        overrides={**UNUSED_STORAGE, **settings},
    )


def _request(prompt: str, **more: Any) -> dict[str, Any]:
    return {"prompt": prompt, "size": "1024x1024", "quality": "low", **more}


@pytest.fixture(scope="module")
def secret_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An Azurite of this module's own whose one account has a random key: its connection string."""
    blob, queue, table = distinct_free_ports(3)
    service = azurite.start_azurite(
        blob_port=blob, queue_port=queue, table_port=table,
        log_path=tmp_path_factory.mktemp("azurite") / "azurite.log",
        accounts={STORAGE_ACCOUNT: STORAGE_KEY},
    )  # fmt: skip
    try:
        yield azurite.connection_string(
            blob, queue, table, account=STORAGE_ACCOUNT, key=STORAGE_KEY
        )
    finally:
        service.stop()


@pytest.fixture(scope="module")
def exposure(
    secret_storage: str,
    emulator_factory: EmulatorFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Exposure]:
    azurite_connection_string = secret_storage
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
            AZURE_OPENAI_API_KEY="",  # absent: Microsoft Entra ID (docs/design.md §8)
            IDENTITY_ENDPOINT=identity.url,
            IDENTITY_HEADER=IDENTITY_HEADER,
        )
        products += [keyed, wrong, entra]
        result.products = products
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
    found = leaks(exposure, SECRETS[secret])
    assert found == [], f"the {secret} leaked into: {found}"


def test_no_bearer_token_of_any_kind_is_written(exposure: Exposure) -> None:
    found = [
        (place, match.group()[:14] + "…")
        for place, data in exposure.places
        for match in BEARER_RE.finditer(data)
    ]
    assert found == []


def test_no_connection_string_or_sas_signature_of_any_kind_is_written(exposure: Exposure) -> None:
    found = [
        (place, match.group()[:16] + "…")
        for place, data in exposure.places
        for match in CREDENTIAL_RE.finditer(data)
    ]
    assert found == []


def test_the_search_finds_a_planted_storage_key(exposure: Exposure) -> None:
    """Planted where the search looks (a blob's metadata, a blob's body), the key is found.
    (Not in a queue: the product reads its poison queue too, and would act on the message.)"""
    keyed = exposure.products[0]
    name = f"planted-{uuid.uuid4().hex[:8]}.txt"
    inputs = keyed.blobs.get_container_client(keyed.settings["IMAGE_INPUT_CONTAINERS"])
    keyed.container.upload_blob(name, b"nothing here", metadata={"note": f"key={STORAGE_KEY}"})
    inputs.upload_blob(name, f"AccountKey={STORAGE_KEY}".encode())
    try:
        planted = Exposure()
        _collect_storage(keyed, "keyed", planted)
        assert leaks(planted, STORAGE_KEY) == sorted(
            [
                f"keyed: blob {keyed.container.container_name}/{name} (metadata)",
                f"keyed: blob {inputs.container_name}/{name}",
            ]
        )
        assert any(CREDENTIAL_RE.search(data) for _, data in planted.places)
    finally:
        keyed.container.delete_blob(name)
        inputs.delete_blob(name)


def test_needles_find_what_they_should() -> None:
    """The search itself can fail: a secret, cut short or re-encoded, is found."""
    for secret in SECRETS.values():
        haystacks = [
            f"key={secret[:-2]}...".encode(),
            f'{{"auth": "{base64.b64encode(secret.encode()).decode()}"}}'.encode(),
        ]
        assert all(any(n in h for n in needles(secret)) for h in haystacks)
    assert BEARER_RE.search(b"Authorization: Bearer abcdefgh.ijk")
    for planted in UNUSED_STORAGE.values():
        assert CREDENTIAL_RE.search(planted.encode())
    assert CREDENTIAL_RE.search(f"https://a.blob.core.windows.net/c/b?sv=1&sig={SAS_SIG}".encode())
