"""Units of the emulator's per-model rules, the options that pick a model, and the scripted outcomes
that vary a stream (fewer or late partials, bad payloads, content-filter shapes). No HTTP."""

from __future__ import annotations

import pytest

from emulators.image_deployment import config as cfg
from emulators.image_deployment import events
from emulators.image_deployment.plan import Answer, Delivery, StepKind, plan
from emulators.image_deployment.script import Outcome, ScriptError, parse_script
from emulators.image_deployment.validation import ImageRequest, InvalidRequest, Upload, validate

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
FAMILY_1 = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5")
FIXED_MESSAGE = (
    "Invalid value: '{}'. Supported values are: '1024x1024', '1024x1536', '1536x1024', and 'auto'."
)


def refusal(body: dict[str, object], model: str = "gpt-image-2", endpoint: str = "generations") -> InvalidRequest:  # fmt: skip
    uploads = [Upload("image", "a.png", "image/png", PNG)] if endpoint == "edits" else []
    with pytest.raises(InvalidRequest) as caught:
        validate(endpoint, body, uploads, model=model)
    return caught.value


def accepted(body: dict[str, object], model: str = "gpt-image-2", endpoint: str = "generations") -> ImageRequest:  # fmt: skip
    uploads = [Upload("image", "a.png", "image/png", PNG)] if endpoint == "edits" else []
    return validate(endpoint, body, uploads, model=model)


# --- gpt-image-2 sizes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        "1024x640",  # 655,360 pixels: the least
        "640x1024",
        "3840x2160",  # 8,294,400 pixels: the most, and the long side at its limit
        "2160x3840",
        "3840x1280",  # ratio exactly 3
        "1008x3024",  # ratio exactly 3 the other way
        "1024x1024", "1536x1024", "2048x2048", "auto",
    ],
)  # fmt: skip
def test_gpt_image_2_accepts_sizes_at_its_limits(size: str) -> None:
    request = accepted({"prompt": "x", "size": size})
    assert request.size == ("1024x1024" if size == "auto" else size)


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        ("1008x640", "between 655,360 and 8,294,400 pixels, got 645,120"),
        ("16x16", "between 655,360 and 8,294,400 pixels, got 256"),
        ("3840x2176", "between 655,360 and 8,294,400 pixels, got 8,355,840"),
        ("2896x2896", "got 8,386,816"),
        ("3856x1296", "The long side may be at most 3840 pixels."),
        ("1296x3856", "The long side may be at most 3840 pixels."),
        ("3840x1264", "The long side may be at most 3 times the short side."),
        ("1024x3088", "The long side may be at most 3 times the short side."),
        ("1000x1000", "multiples of 16"),
        ("1024x1000", "multiples of 16"),
        ("1025x1024", "multiples of 16"),
        ("1024x", "Use 'auto' or WIDTHxHEIGHT."),
    ],
)
def test_gpt_image_2_refuses_sizes_past_its_limits(size: str, reason: str) -> None:
    error = refusal({"prompt": "x", "size": size})
    assert (error.param, error.code) == ("size", "invalid_value")
    assert error.message.startswith(f"Invalid size '{size}'.") and reason in error.message


# --- the gpt-image-1 family -------------------------------------------------------------------------


@pytest.mark.parametrize("model", FAMILY_1)
def test_gpt_image_1_family_takes_only_four_sizes(model: str) -> None:
    for size in ("1024x1024", "1536x1024", "1024x1536", "auto"):
        assert accepted({"prompt": "x", "size": size}, model).width in (1024, 1536)
    for size in ("2048x2048", "1024x640", "1536x1536", "3840x2160", "1024X1024"):
        error = refusal({"prompt": "x", "size": size}, model)
        assert (error.param, error.code, error.message) == (
            "size", "invalid_value", FIXED_MESSAGE.format(size),
        )  # fmt: skip


def test_transparent_background_is_refused_by_gpt_image_2_only() -> None:
    body = {"prompt": "x", "background": "transparent"}
    error = refusal(body)
    assert (error.param, error.code) == ("background", "unsupported_value")
    assert "'gpt-image-2'" in error.message and "'auto', and 'opaque'" in error.message
    for model in FAMILY_1:
        assert accepted(body, model).background == "transparent"
    assert accepted({"prompt": "x", "background": "opaque"}).background == "opaque"


def test_input_fidelity_follows_the_model() -> None:
    error = refusal({"prompt": "x", "input_fidelity": "low"}, endpoint="edits")
    assert (error.param, error.code) == ("input_fidelity", "unsupported_parameter")
    assert accepted({"prompt": "x", "input_fidelity": None}, endpoint="edits").input_images == 1
    mini = refusal({"prompt": "x", "input_fidelity": "high"}, "gpt-image-1-mini", "edits")
    assert (mini.param, mini.code) == ("input_fidelity", "unsupported_value")
    assert accepted({"prompt": "x", "input_fidelity": "low"}, "gpt-image-1-mini", "edits")
    for model in ("gpt-image-1", "gpt-image-1.5"):
        assert accepted({"prompt": "x", "input_fidelity": "high"}, model, "edits")
    # Generations never take it, whatever the model.
    assert refusal({"prompt": "x", "input_fidelity": "low"}, "gpt-image-1").code == (
        "unknown_parameter"
    )


@pytest.mark.parametrize("model", ["gpt-image-2", *FAMILY_1])
@pytest.mark.parametrize("endpoint", ["generations", "edits"])
def test_response_format_is_an_unknown_parameter_as_on_azure(model: str, endpoint: str) -> None:
    error = refusal({"prompt": "x", "response_format": "b64_json"}, model, endpoint)
    assert (error.param, error.code, error.message) == (
        "response_format", "unknown_parameter", "Unknown parameter: 'response_format'.",
    )  # fmt: skip


def test_moderation_is_taken_by_generations_not_by_edits() -> None:
    assert accepted({"prompt": "x", "moderation": "low"})
    error = refusal({"prompt": "x", "moderation": "low"}, endpoint="edits")
    assert (error.param, error.code) == ("moderation", "unknown_parameter")


def test_webp_is_refused_on_every_model() -> None:
    for model in ("gpt-image-2", *FAMILY_1):
        error = refusal({"prompt": "x", "output_format": "webp"}, model)
        assert (error.param, error.code) == ("output_format", "invalid_value")


# --- the model as an option ----------------------------------------------------------------------


def test_model_defaults_to_gpt_image_2_and_deployments_may_name_their_own() -> None:
    assert cfg.load([], {}).deployments[0].model == "gpt-image-2"
    c = cfg.load(
        ["--model", "gpt-image-1", "--deployment", "a", "--deployment", "b:model=gpt-image-1.5"],
        {},
    )
    assert [(d.name, d.model) for d in c.deployments] == [("a", "gpt-image-1"), ("b", "gpt-image-1.5")]  # fmt: skip
    env = cfg.load([], {"EMULATOR_MODEL": "gpt-image-1-mini", "EMULATOR_DEPLOYMENT": "x y:model=gpt-image-2"})  # fmt: skip
    assert [d.model for d in env.deployments] == ["gpt-image-1-mini", "gpt-image-2"]
    shown = c.public()
    assert shown["model"] == "gpt-image-1"
    assert [d["model"] for d in shown["deployments"]] == ["gpt-image-1", "gpt-image-1.5"]


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["--model", "dall-e-3"], "--model"),
        (["--deployment", "a:model=gpt-image-9"], "--deployment"),
    ],
)
def test_an_unknown_model_is_one_line_naming_the_option(argv: list[str], name: str) -> None:
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(argv, {})
    text = str(caught.value)
    assert name in text and "gpt-image-1-mini" in text and "\n" not in text


def test_runtime_model_change_moves_the_deployments_that_follow_it() -> None:
    start = cfg.load(["--deployment", "a", "--deployment", "b:model=gpt-image-1.5"], {})
    changed = cfg.replace_options(start, {"model": "gpt-image-1"})
    assert [d.model for d in changed.deployments] == ["gpt-image-1", "gpt-image-1.5"]
    own = cfg.replace_options(start, {"deployments": ["a:model=gpt-image-1-mini"]})
    assert [(d.name, d.model) for d in own.deployments] == [("a", "gpt-image-1-mini")]
    with pytest.raises(cfg.ConfigError):
        cfg.replace_options(start, {"model": "gpt-image-3"})


# --- scripted outcomes: parsing ------------------------------------------------------------------


def test_new_outcomes_parse_with_their_defaults() -> None:
    filtered, blocked, fewer, late, bad, index = parse_script(
        [
            {"outcome": "content_filter"},
            {"outcome": "resource_blocked"},
            {"outcome": "fewer_partials", "partials": 1},
            {"outcome": "late_first_partial", "seconds": 70},
            {"outcome": "bad_completed", "payload": "not_an_image"},
            {"outcome": "bad_partial_index"},
        ]
    )
    assert (filtered.shape, filtered.category, filtered.severity) == ("azure", "sexual", "high")
    assert blocked.reason == "content_policy"
    assert fewer.partials == 1 and late.seconds == 70 and bad.payload == "not_an_image"
    assert index.describe() == {"outcome": "bad_partial_index"}
    assert filtered.describe() == {
        "outcome": "content_filter", "shape": "azure", "category": "sexual", "severity": "high",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"outcome": "content_filter", "shape": "aws"}, "shape must be one of"),
        ({"outcome": "content_filter", "category": "jailbreak"}, "category must be one of"),
        ({"outcome": "content_filter", "partials": 1}, "does not take partials"),
        ({"outcome": "resource_blocked", "reason": "bad key"}, "reason must be one of"),
        ({"outcome": "fewer_partials", "partials": 4}, "between 0 and 3"),
        ({"outcome": "fewer_partials", "partials": "1"}, "must be a number"),
        ({"outcome": "late_first_partial"}, "needs seconds"),
        ({"outcome": "bad_completed"}, "needs payload"),
        ({"outcome": "bad_completed", "payload": "gif"}, "payload must be one of"),
        ({"outcome": "bad_partial_index", "payload": "no_image"}, "does not take payload"),
    ],
)
def test_bad_new_outcomes_are_refused_naming_the_field(entry: dict[str, object], says: str) -> None:
    with pytest.raises(ScriptError, match=says):
        parse_script([entry])


# --- scripted outcomes: plans ----------------------------------------------------------------------


def _request(size: str = "1024x1024", quality: str = "low", partials: int = 3, stream: bool = True) -> ImageRequest:  # fmt: skip
    w, h = (int(x) for x in size.split("x"))
    return ImageRequest("generations", "p", w, h, quality, 1, "png", None, "auto", partials, stream)


def _plan(request: ImageRequest, outcome: Outcome | None = None) -> Answer | Delivery:
    return plan(request, outcome, 60.0, api_version="v", time_scale=0.01)


def test_fewer_partials_then_completed_when_it_was_due() -> None:
    normal = _plan(_request())
    fewer = _plan(_request(), Outcome("fewer_partials", partials=1))
    assert isinstance(normal, Delivery) and isinstance(fewer, Delivery)
    assert [s.kind for s in fewer.steps] == [StepKind.PARTIAL, StepKind.COMPLETED]
    assert fewer.steps[0] == normal.steps[0] and fewer.steps[-1] == normal.steps[-1]
    assert (fewer.partials, fewer.outcome) == (1, "succeeded")
    none = _plan(_request(), Outcome("fewer_partials", partials=0))
    assert isinstance(none, Delivery) and [s.kind for s in none.steps] == [StepKind.COMPLETED]


def test_fewer_partials_of_a_long_image_meets_the_gateway() -> None:
    answer = _plan(_request("2048x2048", "high"), Outcome("fewer_partials", partials=0))
    assert isinstance(answer, Answer) and (answer.status, answer.at_s) == (408, 60.0)


def test_late_first_partial_shifts_the_stream_and_past_60_s_is_a_408() -> None:
    normal = _plan(_request(partials=2))
    late = _plan(_request(partials=2), Outcome("late_first_partial", seconds=50))
    assert isinstance(normal, Delivery) and isinstance(late, Delivery)
    assert late.steps[0].at_s == 50
    delay = 50 - normal.steps[0].at_s
    assert [s.at_s for s in late.steps] == pytest.approx([s.at_s + delay for s in normal.steps])
    early = _plan(_request(partials=2), Outcome("late_first_partial", seconds=1))
    assert early == normal  # already later than that
    timed_out = _plan(_request(partials=2), Outcome("late_first_partial", seconds=61))
    assert isinstance(timed_out, Answer) and timed_out.status == 408 and timed_out.at_s == 60


def test_bad_payload_outcomes_mark_the_step_and_the_outcome() -> None:
    bad = _plan(_request(partials=1), Outcome("bad_completed", payload="no_image"))
    assert isinstance(bad, Delivery) and bad.outcome == "bad_completed"
    assert [s.tamper for s in bad.steps] == [None, "no_image"]
    index = _plan(_request(partials=2), Outcome("bad_partial_index"))
    assert isinstance(index, Delivery) and index.outcome == "bad_partial_index"
    assert [s.tamper for s in index.steps] == ["bad_index", None, None]
    no_partials = _plan(_request(partials=0, stream=False), Outcome("bad_partial_index"))
    assert isinstance(no_partials, Delivery) and no_partials.outcome == "succeeded"


def test_content_filter_shapes_and_the_403() -> None:
    request = _request()
    azure = _plan(request, Outcome("content_filter", category="violence", severity="medium"))
    assert isinstance(azure, Answer) and azure.status == 400
    inner = azure.body["error"]["inner_error"]
    assert inner["content_filter_results"]["violence"] == {"filtered": True, "severity": "medium"}
    assert inner["content_filter_results"]["sexual"] == {"filtered": False, "severity": "safe"}
    assert inner["revised_prompt"] == "p"
    legacy = _plan(request, Outcome("content_filter", shape="azure_legacy"))
    assert isinstance(legacy, Answer) and legacy.body["error"]["code"] == "contentFilter"
    openai = _plan(request, Outcome("content_filter", shape="openai", category="hate"))
    assert isinstance(openai, Answer)
    assert openai.body["error"]["moderation_details"]["categories"] == ["hate"]
    blocked = _plan(request, Outcome("resource_blocked", reason="unusual_behavior"))
    assert isinstance(blocked, Answer) and blocked.status == 403
    assert blocked.body == events.resource_blocked("unusual_behavior")
    assert blocked.outcome == "resource_blocked"
