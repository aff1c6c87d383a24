"""Microsoft Entra ID end to end: the product's real `DefaultAzureCredential` gets signed tokens from
the managed-identity stand-in, and an emulator started with `--entra-key` checks them as the service
does (signature, audience, expiry). So these fail if the product asks for another scope than
`ENTRA_SCOPE`'s resource, keeps a token past its expiry, or is let through with a wrong audience."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Emulator, EmulatorFactory
from managed_identity import ManagedIdentityEndpoint, signed_token
from product_stack import Product, start_product

from devtools.services import wait_until
from shared.azure_openai.image_api import ENTRA_SCOPE, TOKEN_REFRESH_MARGIN_S

ENTRA_KEY = f"entra-test-key-{uuid.uuid4().hex}"
RESOURCE = "https://cognitiveservices.azure.com"
API_VERSION = "2025-04-01-preview"


@pytest.fixture(scope="module")
def checked_emulator(emulator_factory: EmulatorFactory) -> Emulator:
    return emulator_factory(extra_args=("--entra-key", ENTRA_KEY))


@pytest.fixture
def identity_product(
    azurite_connection_string: str,
    checked_emulator: Emulator,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[Callable[..., tuple[Product, ManagedIdentityEndpoint]]]:
    """The product with no API key, on a managed identity whose stand-in signs its tokens."""
    started: list[tuple[Product, ManagedIdentityEndpoint]] = []

    def make(**identity_options: Any) -> tuple[Product, ManagedIdentityEndpoint]:
        header = f"identity-header-{uuid.uuid4().hex}"
        identity = ManagedIdentityEndpoint(
            "unused", header, signing_key=ENTRA_KEY, **identity_options
        )
        product = start_product(
            connection_string=azurite_connection_string,
            emulator_url=checked_emulator.base_url,
            api_key="",
            deployment=checked_emulator.deployment,
            queue_name=unique_name("req"),
            container_name=unique_name("img"),
            log_path=tmp_path / f"host-{len(started)}.log",
            overrides={"IDENTITY_ENDPOINT": identity.url, "IDENTITY_HEADER": header},
        )
        started.append((product, identity))
        return product, identity

    yield make
    for product, identity in started:
        product.host.stop()
        identity.stop()


def _calls(emulator: Emulator, text: str) -> list[dict[str, Any]]:
    return emulator.calls_for(text)


def test_the_product_asks_for_the_scopes_resource_and_the_signed_token_is_accepted(
    identity_product: Callable[..., tuple[Product, ManagedIdentityEndpoint]],
    checked_emulator: Emulator,
) -> None:
    product, identity = identity_product()
    text = f"entra {uuid.uuid4().hex}"
    rid = product.client.submit({"prompt": text, "size": "1024x1024", "quality": "low"})
    manifest = product.wait_terminal(rid, timeout=120)
    assert manifest["status"] == "succeeded", manifest
    # ManagedIdentityCredential asks for the scope's resource: the scope without "/.default".
    assert set(identity.resources) == {ENTRA_SCOPE.removesuffix("/.default")} == {RESOURCE}
    (call,) = _calls(checked_emulator, text)
    assert call["auth"] == "bearer" and call["status"] == 200
    assert call["token_id"] in {token_id for token_id, _ in identity.issued}


def test_short_lived_tokens_are_refreshed_before_they_expire(
    identity_product: Callable[..., tuple[Product, ManagedIdentityEndpoint]],
    checked_emulator: Emulator,
) -> None:
    """Tokens that live 3 s, well inside the product's refresh margin: each call must carry a token
    that had not expired, so the second request, made after the first token's expiry, needs a new
    one (an expired token is refused with 401 and the request would be poisoned)."""
    assert TOKEN_REFRESH_MARGIN_S > 3
    product, identity = identity_product(lifetime_s=3.0)
    first, second = (f"short-lived {k} {uuid.uuid4().hex}" for k in ("a", "b"))
    body = {"size": "1024x1024", "quality": "low"}
    rid = product.client.submit({"prompt": first, **body})
    assert product.wait_terminal(rid, timeout=120)["status"] == "succeeded"
    (call_a,) = _calls(checked_emulator, first)
    expiry = dict(identity.issued)[call_a["token_id"]]
    wait_until(lambda: time.time() > expiry + 0.5, 30, what="the first token to expire")
    rid = product.client.submit({"prompt": second, **body})
    manifest = product.wait_terminal(rid, timeout=120)
    assert manifest["status"] == "succeeded", manifest
    (call_b,) = _calls(checked_emulator, second)
    assert call_b["token_id"] != call_a["token_id"]
    assert dict(identity.issued)[call_b["token_id"]] > expiry
    assert len(identity.issued) >= 2


def test_a_token_for_another_audience_poisons_like_a_bad_key(
    identity_product: Callable[..., tuple[Product, ManagedIdentityEndpoint]],
    checked_emulator: Emulator,
) -> None:
    product, identity = identity_product(audience="https://management.azure.com")
    # The product asked for the right resource; the stand-in handed out a token for another.
    text = f"wrong audience {uuid.uuid4().hex}"
    rid = product.client.submit({"prompt": text, "size": "1024x1024", "quality": "low"})
    record = product.wait_record(rid, "error.json", timeout=120)
    assert (record["status"], record["error"]["kind"]) == ("failed", "poisoned")
    assert {a["outcome"] for a in record["attempts"]} == {"auth_error"}
    calls = _calls(checked_emulator, text)
    assert calls and all(c["status"] == 401 for c in calls)
    assert {c["auth_failure"] for c in calls} == {"audience 'https://management.azure.com'"}
    assert set(identity.resources) == {RESOURCE}


# -- the emulator's check, over HTTP ---------------------------------------------------------------


def _post(emulator: Emulator, token: str) -> requests.Response:
    url = emulator.url(
        f"/openai/deployments/{emulator.deployment}/images/generations?api-version={API_VERSION}"
    )
    body = {"prompt": "tiny", "size": "1024x1024", "quality": "low"}
    return requests.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.mark.parametrize(
    ("make", "status", "failure"),
    [
        (lambda: signed_token(ENTRA_KEY, RESOURCE, time.time() + 60), 200, None),
        (lambda: signed_token(ENTRA_KEY, RESOURCE + "/", time.time() + 60), 200, None),
        (lambda: signed_token(ENTRA_KEY, RESOURCE, time.time() - 1), 401, "expired"),
        (lambda: signed_token("another-key", RESOURCE, time.time() + 60), 401, "bad signature"),
        (
            lambda: signed_token(ENTRA_KEY, "https://storage.azure.com", time.time() + 60),
            401,
            "audience 'https://storage.azure.com'",
        ),
        (lambda: "not-a-jwt", 401, "not a JWT"),
    ],
)
def test_the_emulator_checks_signature_audience_and_expiry(
    checked_emulator: Emulator, make: Callable[[], str], status: int, failure: str | None
) -> None:
    checked_emulator.reset()
    token = make()
    r = _post(checked_emulator, token)
    assert r.status_code == status
    [record] = checked_emulator.requests_log()
    assert record["auth_failure"] == failure
    if status == 401:
        assert r.json()["error"]["code"] == "401"
        assert "audience is incorrect" in r.json()["error"]["message"]
    assert token not in str(record)  # the log names a failure, never the token
