"""The per-model rules of the contract (shared/contract/models.py): every edge, for every model."""

from __future__ import annotations

from typing import Any

import pytest

from shared.contract.models import FIXED_SIZES, MODEL_NAMES, MODELS, rules_for
from shared.contract.request import InvalidMessage, json_schema, parse_message, validate_request
from shared.settings import IMAGE_MODELS

FIXED = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5")
EDIT = {"operation": "edit", "input_images": ["inputs/a.png"]}


def refused(model: str | tuple[str, ...], **fields: Any) -> str:
    models = (model,) if isinstance(model, str) else model
    with pytest.raises(InvalidMessage) as info:
        validate_request({"prompt": "x", **fields}, models=models)
    assert len(info.value.errors) == 1, info.value.errors
    return info.value.errors[0]


def accepted(model: str | tuple[str, ...], **fields: Any) -> None:
    models = (model,) if isinstance(model, str) else model
    request = validate_request({"prompt": "x", **fields}, models=models)
    for name, value in fields.items():
        assert getattr(request, name) == value


def test_the_contract_knows_every_model_settings_accept() -> None:
    # The contract may not import settings: the two lists must be kept equal by hand.
    assert set(MODEL_NAMES) == set(IMAGE_MODELS)


def test_an_unknown_or_missing_model_is_a_configuration_error_not_a_rejection() -> None:
    with pytest.raises(ValueError, match="gpt-image-9") as info:
        validate_request({"prompt": "x"}, models=("gpt-image-9",))
    assert not isinstance(info.value, InvalidMessage)
    with pytest.raises(ValueError, match="none given"):
        validate_request({"prompt": "x"}, models=())
    assert [r.name for r in rules_for(["gpt-image-2", "gpt-image-1", "gpt-image-2"])] == [
        "gpt-image-2",
        "gpt-image-1",
    ]


# --- gpt-image-2: flexible sizes -----------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        "auto",
        "1024x640",  # exactly 655,360 pixels
        "640x1024",
        "3840x2160",  # exactly 8,294,400 pixels, and a 3840 side
        "2160x3840",
        "3840x1280",  # ratio exactly 3, with a 3840 side
        "1280x3840",
        "1488x496",  # ratio exactly 3 (738,048 pixels)
        "1024x1024",
        "1536x1024",
        "1024x1536",
        "2048x2048",
        "2880x2880",  # 8,294,400 pixels, square
    ],
)
def test_gpt_image_2_accepts(size: str) -> None:
    accepted("gpt-image-2", size=size)


@pytest.mark.parametrize(
    ("size", "message"),
    [
        # one multiple of 16 short of 655,360 pixels
        ("1024x624", "gpt-image-2 takes 655,360 to 8,294,400 pixels; got 1024x624 (638,976 pixels)"),
        ("1008x640", "gpt-image-2 takes 655,360 to 8,294,400 pixels; got 1008x640 (645,120 pixels)"),
        # one step past 8,294,400 pixels
        ("3840x2176", "gpt-image-2 takes 655,360 to 8,294,400 pixels; got 3840x2176 (8,355,840 pixels)"),
        ("2896x2880", "gpt-image-2 takes 655,360 to 8,294,400 pixels; got 2896x2880 (8,340,480 pixels)"),
        ("16x16", "gpt-image-2 takes 655,360 to 8,294,400 pixels; got 16x16 (256 pixels)"),
        ("1024x512", "gpt-image-2 takes 655,360 to 8,294,400 pixels; got 1024x512 (524,288 pixels)"),
        # a ratio just over 3
        ("3840x1264", "gpt-image-2 takes a long side at most 3 times the short side; got 3840x1264 (ratio 3.04)"),
        ("1504x496", "gpt-image-2 takes a long side at most 3 times the short side; got 1504x496 (ratio 3.03)"),
        # sides not multiples of 16
        ("1032x1024", "gpt-image-2 needs width and height in multiples of 16; got 1032x1024"),
        ("1024x1000", "gpt-image-2 needs width and height in multiples of 16; got 1024x1000"),
        # 3856 is the first multiple of 16 past 3840: refused before any model rule
        ("3856x1536", "each side must be 16..3840 pixels, got 3856x1536"),
        ("1536x3856", "each side must be 16..3840 pixels, got 1536x3856"),
    ],
)  # fmt: skip
def test_gpt_image_2_refuses(size: str, message: str) -> None:
    assert refused("gpt-image-2", size=size) == f"size: {message}"


# --- the gpt-image-1 family: four sizes ----------------------------------------------------------


@pytest.mark.parametrize("model", FIXED)
@pytest.mark.parametrize("size", FIXED_SIZES)
def test_the_gpt_image_1_family_accepts_its_four_sizes(model: str, size: str) -> None:
    accepted(model, size=size)


@pytest.mark.parametrize("model", FIXED)
@pytest.mark.parametrize("size", ["2048x2048", "1024x640", "3840x2160", "1536x1536", "1008x1024"])
def test_the_gpt_image_1_family_refuses_every_other_size(model: str, size: str) -> None:
    assert refused(model, size=size) == (
        f"size: {model} accepts 1024x1024, 1536x1024, 1024x1536 or auto; got {size}"
    )


def test_with_several_models_a_size_must_suit_every_one() -> None:
    both = ("gpt-image-2", "gpt-image-1")
    accepted(both, size="1536x1024")
    assert refused(both, size="2048x2048") == (
        "size: gpt-image-1 accepts 1024x1024, 1536x1024, 1024x1536 or auto; got 2048x2048"
    )
    # Each model that refuses says why, in the order the deployments were given.
    assert refused(both, size="1024x512") == (
        "size: gpt-image-2 takes 655,360 to 8,294,400 pixels; got 1024x512 (524,288 pixels); "
        "gpt-image-1 accepts 1024x1024, 1536x1024, 1024x1536 or auto; got 1024x512"
    )


# --- background, input_fidelity, moderation ------------------------------------------------------


def test_gpt_image_2_refuses_a_transparent_background() -> None:
    assert refused("gpt-image-2", background="transparent") == (
        "background: gpt-image-2 does not support 'transparent'; use 'auto' or 'opaque'"
    )
    for background in ("auto", "opaque"):
        accepted("gpt-image-2", background=background)


@pytest.mark.parametrize("model", FIXED)
def test_the_gpt_image_1_family_takes_a_transparent_background(model: str) -> None:
    accepted(model, background="transparent")
    assert refused((model, "gpt-image-2"), background="transparent").startswith(
        "background: gpt-image-2 does not support"
    )


@pytest.mark.parametrize("fidelity", ["low", "high"])
def test_gpt_image_2_takes_no_input_fidelity(fidelity: str) -> None:
    assert refused("gpt-image-2", **EDIT, input_fidelity=fidelity) == (
        "input_fidelity: gpt-image-2 takes no input_fidelity; omit the field"
    )
    accepted("gpt-image-2", **EDIT)


@pytest.mark.parametrize(
    ("model", "takes"),
    [("gpt-image-1", ("low", "high")), ("gpt-image-1.5", ("low", "high")),
     ("gpt-image-1-mini", ("low",))],
)  # fmt: skip
def test_input_fidelity_per_model(model: str, takes: tuple[str, ...]) -> None:
    assert MODELS[model].fidelities == takes
    for fidelity in ("low", "high"):
        if fidelity in takes:
            accepted(model, **EDIT, input_fidelity=fidelity)
        else:
            assert refused(model, **EDIT, input_fidelity=fidelity) == (
                f"input_fidelity: {model} accepts low; got 'high'"
            )


def test_input_fidelity_on_a_generate_is_refused_whatever_the_model() -> None:
    assert refused("gpt-image-1", input_fidelity="low") == (
        "input_fidelity: only allowed when operation is 'edit' (operation is 'generate')"
    )


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_moderation_other_than_auto_is_refused_on_an_edit(model: str) -> None:
    assert refused(model, **EDIT, moderation="low") == (
        "moderation: /images/edits takes no moderation: only 'auto' (the default) is accepted "
        "on an edit, got 'low'"
    )
    accepted(model, **EDIT, moderation="auto")
    accepted(model, moderation="low")  # generations take it


def test_parse_message_applies_the_models_given() -> None:
    body = '{"prompt": "x", "size": "2048x2048"}'
    assert parse_message(body, message_id="m").size == "2048x2048"  # gpt-image-2 by default
    with pytest.raises(InvalidMessage, match="size: gpt-image-1 accepts"):
        parse_message(body, message_id="m", models=("gpt-image-1",))


def test_a_gpt_image_1_edit_with_fidelity_round_trips() -> None:
    models = ("gpt-image-1",)
    data = {"prompt": "x", "id": "r", **EDIT, "input_fidelity": "high", "background": "transparent"}
    request = validate_request(data, models=models)
    assert parse_message(request.to_message(), message_id="m", models=models) == request


def test_the_schema_describes_the_rules_of_each_model() -> None:
    props = json_schema()["properties"]
    size = props["size"]["description"]
    for text in ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2", "655,360",
                 "8,294,400", "3840", "multiples of 16", "1536x1024"):  # fmt: skip
        assert text in size, text
    assert "gpt-image-2 does not" in props["background"]["description"]
    assert "gpt-image-2 none" in props["input_fidelity"]["description"]
    assert "'generate' only" in props["moderation"]["description"]
