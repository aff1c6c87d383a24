"""Units of the image-deployment emulator, without HTTP: config, clock, limiter, timing, plan,
script, validation and images. Time is a fake clock, never slept."""

from __future__ import annotations

import io
import threading
import zlib

import pytest
from PIL import Image

from emulators.image_deployment import config as cfg
from emulators.image_deployment.clock import ScaledClock
from emulators.image_deployment.images import (
    ImageCache,
    ImageKey,
    block_size,
    draw,
    encode,
    target_bytes,
)
from emulators.image_deployment.limiter import client_seconds
from emulators.image_deployment.plan import Answer, Delivery, StepKind, plan
from emulators.image_deployment.script import FaultDice, Outcome, Script, ScriptError, parse_script
from emulators.image_deployment.stamp import (
    STAMP_BITS,
    STAMP_ROWS,
    adler32_combine,
    embedded_id,
    stamp_bits,
    stamp_cell,
)
from emulators.image_deployment.timing import duration_s, schedule
from emulators.image_deployment.validation import (
    ImageRequest,
    InvalidRequest,
    ModerationBlocked,
    Upload,
    validate,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


class FakeMonotonic:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# --- config -------------------------------------------------------------------------------------


def test_defaults_match_the_issue() -> None:
    c = cfg.load([], {})
    assert (c.host, c.port, c.api_key, c.blocked_phrase) == (
        "127.0.0.1", 8090, "local-dev-key", "forbidden-content",
    )  # fmt: skip
    assert (c.time_scale, c.rpm, c.gateway_timeout_s, c.fault_rate, c.payload_scale) == (
        1.0, 10, 60.0, 0.25, 1.0,
    )  # fmt: skip
    assert c.deployments == (cfg.Deployment("gpt-image-2-1", 10, 0.25),)


def test_flags_win_over_env_and_deployments_take_their_own_values() -> None:
    env = {"EMULATOR_RPM": "7", "EMULATOR_FAULT_RATE": "0.5", "EMULATOR_TIME_SCALE": "0.1"}
    c = cfg.load(["--rpm", "3", "--deployment", "a", "--deployment", "b:rpm=9,fault_rate=0"], env)
    assert c.time_scale == 0.1
    assert c.deployments == (cfg.Deployment("a", 3, 0.5), cfg.Deployment("b", 9, 0.0))


def test_env_can_name_several_deployments() -> None:
    c = cfg.load([], {"EMULATOR_DEPLOYMENT": "one:rpm=2;two", "EMULATOR_API_KEY": "k"})
    assert [d.name for d in c.deployments] == ["one", "two"]
    assert c.api_key == "k"


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--time-scale", "0"], "--time-scale"),
        (["--fault-rate", "1.5"], "--fault-rate"),
        (["--rpm", "ten"], "--rpm"),
        (["--port", "70000"], "--port"),
        (["--deployment", "bad name"], "--deployment"),
        (["--deployment", "a:rpm=0"], "--deployment"),
        (["--deployment", "a:speed=3"], "--deployment"),
        (["--deployment", "a", "--deployment", "a"], "--deployment"),
        (["--payload-scale", "nan"], "--payload-scale"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_options_fail_with_one_line_naming_them(argv: list[str], names: str) -> None:
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(argv, {})
    assert names in str(caught.value)
    assert "\n" not in str(caught.value)


def test_runtime_changes_make_a_new_validated_config() -> None:
    start = cfg.load(["--deployment", "a", "--deployment", "b:fault_rate=0.9"], {})
    changed = cfg.replace_options(start, {"fault_rate": 0.0, "rpm": 4})
    assert changed.deployments == (cfg.Deployment("a", 4, 0.0), cfg.Deployment("b", 4, 0.9))
    assert start.fault_rate == 0.25  # the old object is untouched
    for bad in ({"time_scale": 2}, {"fault_rate": "x"}, {"nope": 1}, {"deployment": [3]}):
        with pytest.raises(cfg.ConfigError):
            cfg.replace_options(start, bad)


# --- clock and limiter ----------------------------------------------------------------------------


def test_scaled_clock_converts_both_ways() -> None:
    mono = FakeMonotonic()
    clock = ScaledClock(0.01, mono)
    start = clock.now()
    mono.t += 0.6
    assert clock.now() - start == pytest.approx(60.0)
    assert clock.to_client_s(60.0) == pytest.approx(0.6)
    assert clock.wait_until(clock.now() - 1)  # already due: returns at once
    stop = threading.Event()
    stop.set()
    assert not clock.wait_until(clock.now() + 1000, stop)


def test_client_sees_scaled_retry_after_rounded_up() -> None:
    assert client_seconds(30.0, 1.0) == (30, 30000)
    assert client_seconds(30.0, 0.01) == (1, 300)  # at least 1 whole second
    assert client_seconds(150.0, 0.01) == (2, 1500)
    assert client_seconds(0.0, 0.01) == (1, 1)


# --- timing and plan -----------------------------------------------------------------------------


def test_duration_follows_the_model() -> None:
    assert duration_s(1024, 1024, "low") == pytest.approx(22.0)
    assert duration_s(1024, 1024, "auto") == duration_s(1024, 1024, "medium") == 45.0
    assert duration_s(2048, 2048, "high") == pytest.approx(244.2, abs=0.5)
    assert duration_s(3840, 2160, "high") == pytest.approx(400, abs=5)


def test_partials_first_at_twelve_percent_capped_then_evenly_to_sixty_percent() -> None:
    s = schedule(200.0, 3)
    assert s.partials_at == pytest.approx((24.0, 72.0, 120.0))
    assert s.completed_at == 200.0
    assert schedule(400.0, 1).partials_at == (45.0,)
    assert schedule(400.0, 2).partials_at == pytest.approx((45.0, 240.0))
    assert schedule(50.0, 0).partials_at == ()


def _request(size: str = "2048x2048", quality: str = "high", partials: int = 0, stream: bool = True, endpoint: str = "generations") -> ImageRequest:  # fmt: skip
    w, h = (int(x) for x in size.split("x"))
    return ImageRequest(endpoint, "p", w, h, quality, 1, "png", None, "auto", partials, stream)


def _plan(request: ImageRequest, outcome: Outcome | None = None) -> Answer | Delivery:
    return plan(request, outcome, 60.0, api_version="v", time_scale=0.01)


def test_gateway_408_when_the_first_event_is_after_the_timeout() -> None:
    timed_out = _plan(_request(partials=0))
    assert isinstance(timed_out, Answer) and timed_out.status == 408 and timed_out.at_s == 60.0
    assert timed_out.body == {"error": {"code": "Timeout", "message": "The operation was timeout."}}
    alive = _plan(_request(partials=1))
    assert isinstance(alive, Delivery)
    assert [s.kind for s in alive.steps] == [StepKind.PARTIAL, StepKind.COMPLETED]
    non_streaming = _plan(_request(partials=3, stream=False))
    assert isinstance(non_streaming, Answer) and non_streaming.status == 408


def test_interruptions_fire_where_the_next_event_was_due() -> None:
    request = _request(partials=2)
    normal = _plan(request)
    assert isinstance(normal, Delivery)
    broken = _plan(request, Outcome("server_error", after_partials=1))
    assert isinstance(broken, Delivery) and broken.outcome == "server_error"
    assert [s.kind for s in broken.steps] == [StepKind.PARTIAL, StepKind.ERROR]
    assert broken.steps[1].at_s == normal.steps[1].at_s
    beyond = _plan(request, Outcome("drop", after_partials=9))
    assert isinstance(beyond, Delivery) and beyond.outcome == "dropped"
    assert beyond.steps[-1].at_s == normal.steps[-1].at_s and len(beyond.steps) == 3
    stalled = _plan(request, Outcome("stall", after_partials=1, seconds=400))
    assert isinstance(stalled, Delivery)
    assert stalled.steps[1].at_s == pytest.approx(normal.steps[1].at_s + 400)


def test_scripted_answers() -> None:
    request = _request("1024x1024", "low", 1)
    assert _plan(request, Outcome("http_error", status=503)).status == 503  # type: ignore[union-attr]
    limited = _plan(request, Outcome("rate_limited", retry_after_ms=1500))
    assert isinstance(limited, Answer) and limited.retry_after_s == 1.5
    assert _plan(request, Outcome("content_filter")).status == 400  # type: ignore[union-attr]
    assert _plan(request, Outcome("gateway_timeout")).status == 408  # type: ignore[union-attr]
    slow_quiet = _plan(_request("1024x1024", "low", 0), Outcome("slow", duration_s=300))
    assert isinstance(slow_quiet, Answer) and slow_quiet.status == 408
    slow_alive = _plan(request, Outcome("slow", duration_s=300))
    assert isinstance(slow_alive, Delivery) and slow_alive.steps[-1].at_s == 300


# --- script ----------------------------------------------------------------------------------------


def test_script_takes_the_first_matching_outcome_in_order() -> None:
    script = Script()
    script.extend(
        parse_script(
            [
                {"outcome": "drop", "deployment": "b"},
                {"outcome": "stall", "prompt_contains": "cat"},
                {"outcome": "ok"},
            ]
        )
    )
    assert script.take("a", "a dog").kind == "ok"  # type: ignore[union-attr]
    assert script.take("a", "a cat").kind == "stall"  # type: ignore[union-attr]
    assert script.take("a", "a cat") is None
    assert script.take("b", "x").kind == "drop"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "entry",
    [
        {"outcome": "explode"},
        {"outcome": "http_error", "status": 200},
        {"outcome": "slow"},
        {"outcome": "ok", "after_partials": 1},
        {"outcome": "server_error", "after_partials": "1"},
        "ok",
    ],
)
def test_bad_script_entries_are_refused(entry: object) -> None:
    with pytest.raises(ScriptError):
        parse_script([entry])


def test_random_faults_only_at_2048_and_up() -> None:
    dice = FaultDice(1)
    assert all(dice.roll(1536, 1.0) is None for _ in range(20))
    faults = [dice.roll(2048, 1.0) for _ in range(40)]
    assert all(f is not None and f.kind == "server_error" for f in faults)
    assert {f.after_partials for f in faults if f} == {1, 2}
    assert all(dice.roll(4096, 0.0) is None for _ in range(20))


# --- validation ---------------------------------------------------------------------------------


def test_valid_generation_resolves_defaults() -> None:
    r = validate("generations", {"prompt": "x"})
    assert (r.size, r.quality, r.n, r.output_format, r.partial_images, r.stream) == (
        "1024x1024", "auto", 1, "png", 0, False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({}, "prompt", "missing_required_parameter"),
        ({"prompt": "x" * 32001}, "prompt", "string_above_max_length"),
        ({"prompt": "x", "size": "1000x1000"}, "size", "invalid_value"),
        ({"prompt": "x", "size": "3856x2160"}, "size", "invalid_value"),
        ({"prompt": "x", "size": "3840x1024"}, "size", "invalid_value"),
        ({"prompt": "x", "size": "3840x2400"}, "size", "invalid_value"),
        ({"prompt": "x", "quality": "ultra"}, "quality", "invalid_value"),
        ({"prompt": "x", "n": 11}, "n", "integer_above_max_value"),
        ({"prompt": "x", "n": "2"}, "n", "invalid_type"),
        ({"prompt": "x", "n": True}, "n", "invalid_type"),
        ({"prompt": "x", "output_format": "webp"}, "output_format", "invalid_value"),
        ({"prompt": "x", "output_compression": 50}, "output_compression", "invalid_value"),
        ({"prompt": "x", "output_format": "jpeg", "output_compression": 101}, "output_compression", "integer_above_max_value"),
        ({"prompt": "x", "output_format": "jpeg", "background": "transparent"}, "background", "invalid_value"),
        ({"prompt": "x", "partial_images": 4}, "partial_images", "integer_above_max_value"),
        ({"prompt": "x", "stream": True, "n": 2}, "n", "invalid_value"),
        ({"prompt": "x", "colour": "red"}, "colour", "unknown_parameter"),
    ],
)  # fmt: skip
def test_invalid_generations(body: dict[str, object], param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate("generations", body)
    assert (caught.value.param, caught.value.code) == (param, code)


def test_form_fields_are_converted_and_uploads_checked() -> None:
    fields = {"prompt": "x", "n": "1", "stream": "true", "partial_images": "2"}
    r = validate(
        "edits", fields, [Upload("image[]", "a.png", "image/png", PNG)] * 2, from_form=True
    )
    assert (r.stream, r.partial_images, r.input_images) == (True, 2, 2)
    with pytest.raises(InvalidRequest, match="image"):
        validate("edits", {"prompt": "x"}, [], from_form=True)
    jpeg_mask = Upload("mask", "m.jpg", "image/jpeg", b"\xff\xd8\xff\xe0")
    with pytest.raises(InvalidRequest) as caught:
        validate("edits", {"prompt": "x"}, [Upload("image", "a.png", None, PNG), jpeg_mask], from_form=True)  # fmt: skip
    assert caught.value.param == "mask"


def test_blocked_phrase_is_moderated_case_insensitively() -> None:
    with pytest.raises(ModerationBlocked):
        validate("generations", {"prompt": "a FORBIDDEN-content cat"}, blocked_phrase="forbidden-content")  # fmt: skip


# --- images -----------------------------------------------------------------------------------------


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_full_scale_2048_high_png_is_real_and_at_least_4_mb() -> None:
    data = encode(ImageKey("a red apple", 2048, 2048, "png", "high", False, -1), 1.0)
    assert len(data) >= 4_000_000
    assert _decode(data).size == (2048, 2048)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_payload_scale_shrinks_bytes_never_dimensions(fmt: str) -> None:
    key = ImageKey("x", 1536, 1024, fmt, "high", False, -1)
    big, small = encode(key, 1.0), encode(key, 0.01)
    assert len(small) < len(big) / 3
    assert _decode(big).size == _decode(small).size == (1536, 1024)
    assert _decode(small).format == fmt.upper()


def test_images_differ_by_prompt_and_partials_are_coarser() -> None:
    def pixels(prompt: str, stage: int) -> Image.Image:
        return _decode(encode(ImageKey(prompt, 512, 512, "png", "low", False, stage), 0.01))

    assert pixels("a cat", -1).tobytes() != pixels("a dog", -1).tobytes()
    for stage in (0, 1, 2):
        image = pixels("a cat", stage)
        cell = block_size(ImageKey("a cat", 512, 512, "png", "low", False, stage))
        grid = image.resize((512 // cell, 512 // cell), Image.Resampling.NEAREST)
        assert grid.resize((512, 512), Image.Resampling.NEAREST).tobytes() == image.tobytes()
    final = pixels("a cat", -1)
    grid = final.resize((512 // 8, 512 // 8), Image.Resampling.NEAREST)
    assert grid.resize((512, 512), Image.Resampling.NEAREST).tobytes() != final.tobytes()


def test_transparent_background_has_alpha() -> None:
    image = _decode(encode(ImageKey("x", 256, 256, "png", "low", True, -1), 0.01))
    assert image.mode == "RGBA"
    assert image.getextrema()[3][0] == 0


# --- every call's images carry its id -------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "transparent"), [("png", False), ("png", True), ("jpeg", False)])
def test_each_call_stamps_its_id_into_the_metadata_and_the_top_rows(
    fmt: str, transparent: bool
) -> None:
    cache = ImageCache()
    key = ImageKey("a cat", 1024, 768, fmt, "high", transparent, -1)
    first, second = cache.get(key, 1.0, "call-1"), cache.get(key, 1.0, "call-2")
    assert (embedded_id(first), embedded_id(second)) == ("call-1", "call-2")
    # The modelled size is kept: the stamp comes out of the padding.
    assert len(first) == len(second) == target_bytes(key, 1.0)
    a, b = _decode(first), _decode(second)
    assert a.size == b.size == (1024, 768)
    strip = (0, 0, 1024, STAMP_ROWS)
    assert a.crop(strip).tobytes() != b.crop(strip).tobytes()
    if fmt == "png":  # lossless: below the strip, the picture is the same scene
        below = (0, STAMP_ROWS, 1024, 768)
        assert a.crop(below).tobytes() == b.crop(below).tobytes() == draw(key).crop(below).tobytes()
        cell = stamp_cell(1024)
        bits = [a.getpixel((i * cell, 0))[0] == 255 for i in range(STAMP_BITS)]
        assert bits == stamp_bits("call-1")


def test_unstamped_and_partial_images_decode_and_partials_carry_the_id_too() -> None:
    key = ImageKey("a cat", 512, 512, "png", "low", False, 1)
    assert embedded_id(encode(key, 0.01)) is None
    partial = encode(key, 0.01, "call-9")
    assert embedded_id(partial) == "call-9" and _decode(partial).size == (512, 512)


def test_adler32_combine_matches_zlib() -> None:
    first, second = b"stamp rows" * 7, b"the rest of the picture" * 4099
    combined = adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second))
    assert combined == zlib.adler32(first + second)
