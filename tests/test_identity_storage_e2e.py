"""Identity-based storage end to end: the product with no storage key at all.

`AzureWebJobsStorage__blobServiceUri` and `__queueServiceUri` point at an Azurite of this module's
own running `--oauth basic` over HTTPS (a self-signed certificate made here with `cryptography`);
the host and the app get their storage tokens from the managed-identity stand-in through the real
`DefaultAzureCredential`. Azurite's basic OAuth checks a token's audience, issuer and times, not its
signature (it cannot know Entra ID's keys), so this proves the product asks for storage's resource
and runs on bearer tokens alone, not that a forged token would be refused.
"""

from __future__ import annotations

import datetime
import ipaddress
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient
from conftest import Emulator
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from managed_identity import ManagedIdentityEndpoint, signed_token
from product_stack import FAST_APP_SETTINGS, HOST_STARTED

from devtools import azurite
from devtools.services import REPO_ROOT, Service, distinct_free_ports, python_module, start
from shared.client.producer import ImageRequestClient

pytestmark = pytest.mark.slow

STORAGE_RESOURCE = "https://storage.azure.com"
ACCOUNT = azurite.ACCOUNT  # Azurite's OAuth serves its accounts; the key is simply never used
SIGNING_KEY = f"storage-token-key-{uuid.uuid4().hex}"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass(frozen=True)
class OAuthStorage:
    blob_uri: str
    queue_uri: str
    cert: Path


class _TestCredential:
    """The test's own side (submitting, reading records): a token for storage, as Entra ID gives."""

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        expires = int(time.time() + 3600)
        audience = scopes[0].removesuffix("/.default")
        return AccessToken(signed_token(SIGNING_KEY, audience, expires), expires)


@pytest.fixture(scope="module")
def oauth_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthStorage]:
    directory = tmp_path_factory.mktemp("oauth-azurite")
    cert, key = _self_signed(directory)
    blob, queue, table = distinct_free_ports(3)
    service = azurite.start_azurite(
        blob_port=blob, queue_port=queue, table_port=table,
        log_path=directory / "azurite.log",
        extra_args=("--oauth", "basic", "--cert", str(cert), "--key", str(key)),
    )  # fmt: skip
    try:
        yield OAuthStorage(
            f"https://127.0.0.1:{blob}/{ACCOUNT}", f"https://127.0.0.1:{queue}/{ACCOUNT}", cert
        )
    finally:
        service.stop()


def test_the_product_runs_on_identity_based_storage(
    oauth_storage: OAuthStorage, emulator: Emulator, tmp_path: Path
) -> None:
    header = f"identity-header-{uuid.uuid4().hex}"
    identity = ManagedIdentityEndpoint("unused", header, signing_key=SIGNING_KEY)
    name = f"idstore-{uuid.uuid4().hex[:10]}"
    settings = {
        "AzureWebJobsStorage": "",  # no connection string anywhere: the service URIs decide
        "AzureWebJobsStorage__blobServiceUri": oauth_storage.blob_uri,
        "AzureWebJobsStorage__queueServiceUri": oauth_storage.queue_uri,
        "IDENTITY_ENDPOINT": identity.url,
        "IDENTITY_HEADER": header,
        # The SDK's HTTP client trusts the test's self-signed certificate, and only it.
        "REQUESTS_CA_BUNDLE": str(oauth_storage.cert),
        "SSL_CERT_FILE": str(oauth_storage.cert),
        "AZURE_OPENAI_ENDPOINT": emulator.base_url,
        "AZURE_OPENAI_DEPLOYMENT": emulator.deployment,
        "AZURE_OPENAI_API_KEY": emulator.api_key,
        "IMAGE_REQUESTS_QUEUE": name,
        "IMAGES_CONTAINER": name,
        "IMAGE_INPUT_CONTAINERS": f"{name}-in",
        "IMAGE_QUOTA_CONTAINER": f"{name}-quota",
        **FAST_APP_SETTINGS,
    }
    verify = str(oauth_storage.cert)
    queues = QueueServiceClient(
        oauth_storage.queue_uri, credential=_TestCredential(), connection_verify=verify
    )
    blobs = BlobServiceClient(
        oauth_storage.blob_uri, credential=_TestCredential(), connection_verify=verify
    )
    queue = queues.get_queue_client(name)
    queue.create_queue()
    log_path = tmp_path / "host.log"
    host: Service | None = None
    try:
        host = start(
            "host",
            python_module("emulators.functions_host", "--app-dir", str(REPO_ROOT)),
            ready=lambda: (
                log_path.exists() and HOST_STARTED in log_path.read_text("utf-8", "replace")
            ),
            env=settings,
            log_path=log_path,
        )
        client = ImageRequestClient(
            queue, blobs.get_container_client(name), input_containers=(f"{name}-in",)
        )
        text = f"identity storage {uuid.uuid4().hex}"
        rid = client.submit({"prompt": text, "size": "1024x1024", "quality": "low"})
        manifest = client.wait(rid, timeout=120, poll_s=0.2).model_dump(mode="json")
    finally:
        if host is not None:
            host.stop()
        identity.stop()
    assert manifest["status"] == "succeeded", manifest
    stored = blobs.get_container_client(name).download_blob(manifest["images"][0]["blob"])
    assert len(stored.readall()) == manifest["images"][0]["bytes"]
    # The host and the app asked for storage's resource, and for nothing else (the key is set).
    assert set(identity.resources) == {STORAGE_RESOURCE}
    assert len(identity.issued) >= 1
