"""Hostile input (issue 7): the corpus in tests/hostile/ goes through one host at once, valid
requests mixed in; each message gets its specific record, and the host neither crash-loops nor
redelivers.

Everything is sent up front and recorded by the module fixture; the tests then judge one message
each (so a failure names its case) and the run as a whole.
"""

from __future__ import annotations

import io
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from conftest import EmulatorFactory
from hostile.corpus import CORPUS, Hostile
from PIL import Image
from product_stack import Product, start_product

from devtools.services import wait_until

pytestmark = pytest.mark.slow

BY_NAME = {case.name: case for case in CORPUS}
MAX_INPUT_BYTES = 1024  # docs/design.md §5: a rejected record quotes at most 1 KiB
MAX_RECORD_BYTES = 16 * 1024  # a record must not amplify what it rejects
QUOTE_CHARS = 100
# Cases that fail because of a product bug, reported to the lead; strict, so a fix is noticed.
KNOWN_BUGS: dict[str, str] = {}  # case name -> why it is expected to fail (none today)


def _cases(valid: bool) -> list[Any]:
    return [
        pytest.param(
            c.name,
            id=c.name,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[c.name])]
            if c.name in KNOWN_BUGS
            else [],
        )
        for c in CORPUS
        if c.valid == valid
    ]


@dataclass
class Sent:
    case: Hostile
    message_id: str
    text: str
    record: dict[str, Any] = field(default_factory=dict)
    record_bytes: int = 0

    @property
    def location(self) -> str:
        return self.case.record_id or self.message_id


@dataclass
class HostileRun:
    product: Product
    inputs: str
    images: str
    sent: dict[str, Sent]
    calls: list[dict[str, Any]]
    host_log: str


def _png(size: tuple[int, int], mode: str = "RGBA") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (10, 20, 30, 255) if mode == "RGBA" else 0).save(out, "PNG")
    return out.getvalue()


def _wait_record(product: Product, sent: Sent) -> None:
    """The terminal record at the message's location, whichever it is."""
    found: dict[str, Any] = {}

    def present() -> bool:
        for name in ("manifest.json", "error.json"):
            try:
                data = product.container.download_blob(f"{sent.location}/{name}").readall()
            except ResourceNotFoundError:
                continue
            found["record"], found["bytes"] = json.loads(data), len(data)
            return True
        return False

    try:
        wait_until(present, 90, interval=0.2, what=f"a record for {sent.case.name}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n--- host log ---\n{product.host.log_tail(40)}") from None
    sent.record, sent.record_bytes = found["record"], found["bytes"]


@pytest.fixture(scope="module")
def hostile_run(
    azurite_connection_string: str,
    emulator_factory: EmulatorFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HostileRun]:
    emulator = emulator_factory()
    suffix = uuid.uuid4().hex[:10]
    images = f"hostile-img-{suffix}"
    product = start_product(
        connection_string=azurite_connection_string,
        emulator_url=emulator.base_url,
        api_key=emulator.api_key,
        deployment=emulator.deployment,
        queue_name=f"hostile-req-{suffix}",
        container_name=images,
        log_path=tmp_path_factory.mktemp("hostile") / "host.log",
    )
    inputs = product.settings["IMAGE_INPUT_CONTAINERS"]
    try:
        product.upload_input("ok.png", _png((64, 64)))
        product.upload_input("mask.png", _png((64, 64)))
        # Valid requests are spread among the hostile ones, in an order fixed by the seed.
        order = list(CORPUS)
        random.Random(7).shuffle(order)
        sent: dict[str, Sent] = {}
        for case in order:
            text = case.text(inputs, images)
            sent[case.name] = Sent(case, product.queue.send_message(text).id, text)
        for item in sent.values():
            _wait_record(product, item)
        product.wait_until_queue_empty(timeout=60)
        log_path = product.host.log_path
        assert log_path is not None
        yield HostileRun(
            product,
            inputs,
            images,
            sent,
            emulator.requests_log(),
            log_path.read_text(errors="replace"),
        )
    finally:
        product.remove()


def test_corpus_is_big_and_varied() -> None:
    assert len(CORPUS) >= 40
    assert len(BY_NAME) == len(CORPUS), "case names must be unique"
    assert sum(case.valid for case in CORPUS) >= 5
    assert {"empty", "junk_64k", "deep_nesting_array", "json_array", "id_129_characters"} <= set(
        BY_NAME
    )


@pytest.mark.parametrize("name", _cases(valid=False))
def test_hostile_message_gets_its_specific_rejection(hostile_run: HostileRun, name: str) -> None:
    sent = hostile_run.sent[name]
    record, case = sent.record, sent.case
    shown = json.dumps(record, ensure_ascii=False)[:1500]
    assert record.get("schema") == "imagegen.error/1", shown
    assert record["status"] == "rejected", shown
    assert record["error"]["kind"] == "invalid_request", shown
    assert case.field is not None
    assert record["error"]["message"].startswith(case.field), shown
    assert record["id"] == sent.location, shown
    assert record.get("queue_message_id") == sent.message_id, shown
    assert record["attempts"] == [], shown
    quoted = record.get("input")
    assert isinstance(quoted, str), shown
    assert len(quoted.encode("utf-8")) <= MAX_INPUT_BYTES, shown
    if record.get("request") is not None:
        # Refused after validation (an input blob is missing): the validated request is quoted.
        request = {k: v for k, v in record["request"].items() if v is not None}
        assert json.loads(quoted) == request, shown
    else:
        expected = case.expected_quote(hostile_run.inputs, hostile_run.images)
        assert quoted[:QUOTE_CHARS] == expected[:QUOTE_CHARS], shown
    assert sent.record_bytes <= MAX_RECORD_BYTES, f"{sent.record_bytes} bytes: {shown}"
    assert hostile_run.product.read_json(sent.location, "manifest.json") is None


@pytest.mark.parametrize("name", _cases(valid=True))
def test_valid_message_among_them_succeeds(hostile_run: HostileRun, name: str) -> None:
    sent = hostile_run.sent[name]
    record = sent.record
    shown = json.dumps(record, ensure_ascii=False)[:1500]
    assert record["status"] == "succeeded", shown
    assert record["id"] == sent.location, shown
    assert record["request"]["prompt"] == sent.case.prompt, shown
    (image,) = record["images"]
    assert image["blob"].startswith(f"{sent.location}/0."), shown
    calls = [c for c in hostile_run.calls if c["body"].get("prompt") == sent.case.prompt]
    assert len(calls) == 1, "the prompt must reach the service once, unchanged"


def test_no_hostile_message_reaches_the_service(hostile_run: HostileRun) -> None:
    valid_prompts = sorted(str(c.prompt) for c in CORPUS if c.valid)
    assert sorted(str(c["body"].get("prompt")) for c in hostile_run.calls) == valid_prompts


def test_host_survives_and_handles_each_message_once(hostile_run: HostileRun) -> None:
    product, log = hostile_run.product, hostile_run.host_log
    assert product.host.alive(), log[-3000:]
    executions = log.count("Executing 'Functions.process_image_request'")
    failures = log.count("Executed 'Functions.process_image_request' (Failed")
    # No continuations are expected here, so one execution per message means no redelivery.
    assert (executions, failures) == (len(CORPUS), 0), log[-3000:]
    assert "MaxDequeueCount" not in log
    assert "Executing 'Functions.record_poisoned_request'" not in log
    try:
        poisoned = product.poison.get_queue_properties().approximate_message_count
    except ResourceNotFoundError:
        poisoned = 0  # the host creates the poison queue with its first poison message
    assert poisoned == 0
    assert product.queue.get_queue_properties().approximate_message_count == 0
