"""The downstream sample (samples/downstream) under the host stand-in, against real Azurite.

Manifests and images are written with the Storage SDK in the product's layout (`{id}/{k}.png`,
`{id}/status.json`, `{id}/manifest.json` last), which isolates the sample from the generator.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerClient
from PIL import Image
from product_stack import Product

from devtools.services import REPO_ROOT, Service, python_module, start, wait_until

SAMPLE = REPO_ROOT / "samples" / "downstream"
FAST = ("--blob-scan-interval-s", "0.2", "--eventgrid-time-scale", "0.1", "--lease-s", "10")


class Downstream:
    def __init__(
        self,
        tmp_path: Path,
        connection_string: str,
        unique: Callable[[str], str],
        images_container: str | None = None,  # the product's, when the product writes the images
    ) -> None:
        self.tmp_path = tmp_path
        self.blobs = BlobServiceClient.from_connection_string(connection_string)
        self.images: ContainerClient = self.blobs.get_container_client(
            images_container or unique("img")
        )
        with contextlib.suppress(ResourceExistsError):
            self.images.create_container()
        self.catalogue_name = unique("cat")
        self.catalogue = self.blobs.get_container_client(self.catalogue_name)
        self.catalogue.create_container()
        self.app_dir = tmp_path / "downstream"
        shutil.copytree(SAMPLE, self.app_dir)
        values = {
            "AzureWebJobsStorage": connection_string,
            "IMAGES_CONTAINER": self.images.container_name,
            "CATALOGUE_CONTAINER": self.catalogue_name,
            "AzureFunctionsWebHost__hostid": unique("ds"),
        }
        (self.app_dir / "local.settings.json").write_text(json.dumps({"Values": values}))
        self.services: list[Service] = []

    def start_host(self) -> Service:
        log = self.tmp_path / f"downstream-{len(self.services)}.log"
        service = start(
            "downstream",
            python_module("emulators.functions_host", "--app-dir", str(self.app_dir), *FAST),
            ready=lambda: log.exists() and "Host started" in log.read_text(errors="replace"),
            timeout=30,
            log_path=log,
        )
        self.services.append(service)
        return service

    def request(self, request_id: str, count: int = 2, corrupt: bool = False) -> None:
        """What the generator leaves: images, status.json, then manifest.json."""
        images = []
        for k in range(count):
            out = io.BytesIO()
            Image.new("RGB", (320 + k, 200), (k * 40, 90, 200)).save(out, "PNG")
            data = out.getvalue()
            name = f"{request_id}/{k}.png"
            stored = data[: len(data) // 2] if corrupt and k == count - 1 else data
            self.images.upload_blob(name, stored, overwrite=True)
            images.append({"index": k, "blob": name, "sha256": hashlib.sha256(data).hexdigest(),
                           "bytes": len(data), "content_type": "image/png", "width": 320 + k,
                           "height": 200})  # fmt: skip
        self.images.upload_blob(
            f"{request_id}/status.json", b'{"status":"running"}', overwrite=True
        )
        manifest = {"schema": "imagegen.manifest/1", "id": request_id, "status": "succeeded",
                    "images": images, "completed_at": "2025-01-01T00:00:00Z"}  # fmt: skip
        self.images.upload_blob(f"{request_id}/manifest.json", json.dumps(manifest).encode())

    def index(self) -> list[dict[str, object]]:
        try:
            text = self.catalogue.download_blob("index.jsonl").readall().decode()
        except Exception:
            return []
        return [json.loads(line) for line in text.splitlines() if line]

    def names(self, prefix: str) -> list[str]:
        return sorted(b.name for b in self.catalogue.list_blobs(name_starts_with=prefix))


@pytest.fixture
def downstream(
    tmp_path: Path, azurite_connection_string: str, unique_name: Callable[[str], str]
) -> Iterator[Downstream]:
    d = Downstream(tmp_path, azurite_connection_string, unique_name)
    yield d
    for service in d.services:
        service.kill()


def log_of(service: Service) -> str:
    assert service.log_path is not None
    return service.log_path.read_text(errors="replace")


def _assert_catalogued_once(d: Downstream, ids: list[str]) -> None:
    index = d.index()
    assert sorted(str(line["id"]) for line in index) == sorted(ids)  # each exactly once
    for request_id in ids:
        assert d.names(f"thumbnails/{request_id}/") == [
            f"thumbnails/{request_id}/0.jpg",
            f"thumbnails/{request_id}/1.jpg",
        ]
    with Image.open(
        io.BytesIO(d.catalogue.download_blob(f"thumbnails/{ids[0]}/0.jpg").readall())
    ) as t:
        assert t.format == "JPEG" and max(t.size) <= 256


def test_n_requests_catalogued_once_across_a_restart(downstream: Downstream) -> None:
    d = downstream
    ids = [f"req-{i}" for i in range(6)]
    first = d.start_host()
    for request_id in ids[:3]:
        d.request(request_id)
    wait_until(lambda: len(d.index()) >= 1, 60, what="the first index line")
    first.stop()
    for request_id in ids[3:]:
        d.request(request_id)  # written while the downstream host is down
    second = d.start_host()
    wait_until(lambda: len(d.index()) >= len(ids), 90, what="every request indexed")
    wait_until(
        lambda: d.names("markers/") == sorted(f"markers/{i}" for i in ids), 10, what="markers"
    )
    _assert_catalogued_once(d, ids)
    logs = log_of(first) + log_of(second)
    assert "status.json" not in logs and ".png" not in logs  # nothing else fired
    assert d.names("dead-letter/") == []


def test_a_failed_delivery_is_retried_and_indexed_once(downstream: Downstream) -> None:
    d = downstream
    index = d.catalogue.get_blob_client("index.jsonl")
    index.create_append_blob()
    lease = index.acquire_lease(lease_duration=-1)  # the first append fails: 412 lease id missing
    host = d.start_host()
    d.request("flaky")
    d.request("steady")
    wait_until(lambda: "Executed 'Functions.catalogue_manifest' (Failed" in log_of(host), 60,
               what="a failed delivery")  # fmt: skip
    lease.break_lease(lease_break_period=0)
    wait_until(lambda: len(d.index()) >= 2, 60, what="both requests indexed after the retry")
    _assert_catalogued_once(d, ["flaky", "steady"])
    assert "retrying in" in log_of(host)


def test_a_corrupted_image_ends_in_the_dead_letter_only(downstream: Downstream) -> None:
    d = downstream
    host = d.start_host()
    d.request("broken", corrupt=True)
    d.request("fine")
    wait_until(
        lambda: d.names("dead-letter/") == ["dead-letter/broken.json"], 60, what="dead letter"
    )
    wait_until(lambda: len(d.index()) >= 1, 60, what="the good request")
    letter = json.loads(d.catalogue.download_blob("dead-letter/broken.json").readall())
    assert (
        letter["id"] == "broken" and "image 1" in letter["reason"] and "sha256" in letter["reason"]
    )
    assert [line["id"] for line in d.index()] == ["fine"]
    assert d.names("thumbnails/broken/") == [] and d.names("markers/broken") == []
    assert "Succeeded" in log_of(host)


def test_the_products_own_requests_are_catalogued_once_across_a_restart(
    tmp_path: Path,
    azurite_connection_string: str,
    unique_name: Callable[[str], str],
    product: Product,
) -> None:
    """The generator and the sample together: what the product writes is what the sample reads."""
    d = Downstream(
        tmp_path, azurite_connection_string, unique_name, product.container.container_name
    )
    try:
        first = d.start_host()  # subscribed before any manifest: Event Grid sends only new blobs
        request = {"prompt": "a lighthouse at dusk", "size": "1024x640", "quality": "low", "n": 2}
        ids = [product.client.submit(request) for _ in range(2)]
        wait_until(lambda: len(d.index()) >= 1, 90, what="the first index line")
        first.stop()
        ids += [product.client.submit(request) for _ in range(2)]  # while the sample is down
        for request_id in ids:
            assert product.wait_terminal(request_id, timeout=90)["status"] == "succeeded"
        second = d.start_host()
        wait_until(lambda: len(d.index()) >= len(ids), 90, what="every request indexed")
        _assert_catalogued_once(d, ids)
        for line in d.index():
            manifest = product.read_json(str(line["id"]), "manifest.json")
            assert manifest is not None and manifest["status"] == "succeeded"
        assert d.names("dead-letter/") == []
        assert "status.json" not in log_of(first) + log_of(second)
    finally:
        for service in d.services:
            service.kill()
