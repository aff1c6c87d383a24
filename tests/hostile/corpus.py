"""The hostile-input corpus of issue 7: queue messages a producer (or an attacker) could send, each
with what the product must make of it.

A case either must be refused (`field` set: error.json with status `rejected`, kind
`invalid_request`, a message starting with `field`) or must succeed (`field` None: manifest.json).
It is data, not a test: tests/test_hostile_input.py sends the whole corpus through one host at once.

Bodies are the queue message text as sent. `bytes` bodies, which a queue cannot carry as they are,
travel base64-encoded (as the Functions output binding sends every message). Raw C0 control
characters other than tab, LF and CR are not in the corpus: a queue message is XML text, and Azurite
accepts a raw NUL on put but then fails every receive of the batch holding it (HTTP 500), a queue
fault outside the app. NUL bytes are therefore sent base64-encoded and as JSON escapes.

The input container and the output container are named per run; bodies say `@INPUTS@` and
`@IMAGES@` and the test puts the names in. The input container holds `ok.png` and `mask.png`.
"""

from __future__ import annotations

import base64
import json
import random
import string
from dataclasses import dataclass
from typing import Any

INPUTS = "@INPUTS@"
IMAGES = "@IMAGES@"
QUEUE_MAX_BYTES = 65536
# Junk without XML's special characters, so that the 64 KiB message is 64 KiB on the wire as well.
_JUNK_ALPHABET = "".join(c for c in string.printable if c not in "<>&'\"\t\n\r\x0b\x0c")


@dataclass(frozen=True)
class Hostile:
    """One message. `field`: the prefix the error message must start with; None: must succeed.

    `record_id`: where the record must land when it is not the queue message id (a message whose own
    `id` is valid is recorded under it). `quoted`: the text the record's `input` must start with, when
    it is not the message text (a base64 body that decodes to an object is quoted decoded).
    `prompt`: for a valid case, the prompt that must reach the service unchanged.
    """

    name: str
    body: str | bytes
    field: str | None
    record_id: str | None = None
    quoted: str | None = None
    prompt: str | None = None

    @property
    def valid(self) -> bool:
        return self.field is None

    def text(self, inputs: str, images: str) -> str:
        """The queue message text, containers filled in."""
        if isinstance(self.body, bytes):
            return base64.b64encode(self.body).decode("ascii")
        return self.body.replace(INPUTS, inputs).replace(IMAGES, images)

    def expected_quote(self, inputs: str, images: str) -> str:
        if self.quoted is not None:
            return self.quoted.replace(INPUTS, inputs).replace(IMAGES, images)
        return self.text(inputs, images).removeprefix("\ufeff")


def _j(**fields: Any) -> str:
    return json.dumps(fields, ensure_ascii=False)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _bad(name: str, field: str, **fields: Any) -> Hostile:
    """A JSON object that breaks the contract in `field`; the prompt is valid unless overridden."""
    return Hostile(name, _j(**({"prompt": f"hostile {name}"} | fields)), field)


def _edit(name: str, field: str, **fields: Any) -> Hostile:
    base = {
        "operation": "edit",
        "prompt": f"hostile {name}",
        "input_images": [f"{INPUTS}/ok.png"],
    }
    return Hostile(name, _j(**(base | fields)), field)


def _ok(name: str, prompt: str, **fields: Any) -> Hostile:
    return Hostile(name, _j(prompt=prompt, quality="low", **fields), None, prompt=prompt)


def _junk(size: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(_JUNK_ALPHABET) for _ in range(size))


FRAMING: tuple[Hostile, ...] = (
    Hostile("not_json_words", "hello, world", "body:"),
    Hostile("not_json_trailing_comma", '{"prompt": "x",}', "body:"),
    Hostile("not_json_single_quotes", "{'prompt': 'x'}", "body:"),
    Hostile("not_json_truncated", '{"prompt": "x"', "body:"),
    Hostile("invalid_base64_character", "eyJwcm9tcHQiOiJ4In0*", "body:"),
    Hostile("invalid_base64_length", "eyJwc", "body:"),
    Hostile("base64_of_not_json", _b64("prompt=x&n=1"), "body:"),
    Hostile("base64_of_array", _b64('[{"prompt": "x"}]'), "body:"),
    Hostile("base64_of_non_utf8", bytes([0xFF, 0xFE, 0x00, 0x80, 0xC3]), "body:"),
    Hostile("base64_of_invalid_object", _b64('{"prompt": "x", "n": -1}'), "n:",
            quoted='{"prompt": "x", "n": -1}'),
    Hostile("json_array", '[{"prompt": "x"}]', "body:"),
    Hostile("json_string", '"a cat"', "body:"),
    Hostile("json_number", "42", "body:"),
    Hostile("json_null", "null", "body:"),
    Hostile("json_true", "true", "body:"),
    Hostile("empty", "", "body:"),
    Hostile("whitespace", " \n\t \r\n", "body:"),
    Hostile("nul_bytes_after_object", b'{"prompt": "x"}\x00\x00\x00', "body:"),
    Hostile("nul_bytes_only", b"\x00" * 64, "body:"),
    Hostile("nul_inside_object", b'{"prompt": "a\x00b"}', "body:"),
    Hostile("junk_64k", _junk(QUEUE_MAX_BYTES, seed=7), "body:"),
    Hostile("junk_64k_base64_alphabet", "QUFB" * (QUEUE_MAX_BYTES // 4), "body:"),
    Hostile("deep_nesting_array", "[" * 60_000, "body:"),
    Hostile("deep_nesting_object", '{"a":' * 10_000 + "1" + "}" * 10_000, "body:"),
    Hostile("deep_nesting_base64", _b64("[" * 40_000), "body:"),
    Hostile("deep_nesting_in_field",
            '{"prompt": "x", "metadata": ' + '{"a": ' * 500 + '"v"' + "}" * 500 + "}",
            'metadata["a"]:'),
    Hostile("duplicate_key", '{"prompt": "x", "prompt": "y"}', "body:"),
    Hostile("nan", '{"prompt": "x", "n": NaN}', "body:"),
    Hostile("infinity_literal", '{"prompt": "x", "n": Infinity}', "body:"),
    Hostile("float_overflow", '{"prompt": "x", "n": 1e400}', "body:"),
    Hostile("integer_of_5000_digits", '{"prompt": "x", "n": ' + "9" * 5000 + "}", "body:"),
    Hostile("lone_surrogate_prompt", '{"prompt": "\\ud800 x"}', "prompt:"),
    Hostile("many_unknown_fields", _j(prompt="x", **{f"f{i:04d}": i for i in range(3000)}),
            "f0000:"),
)  # fmt: skip

IDS: tuple[Hostile, ...] = (
    _bad("id_dotdot_slash", "id:", id="../x"),
    _bad("id_slash", "id:", id="a/b"),
    _bad("id_dot", "id:", id="."),
    _bad("id_dotdot", "id:", id=".."),
    _bad("id_129_characters", "id:", id="a" * 129),
    _bad("id_empty", "id:", id=""),
    _bad("id_leading_hyphen", "id:", id="-x"),
    _bad("id_space", "id:", id="a b"),
    _bad("id_non_ascii", "id:", id="café"),
    _bad("id_backslash", "id:", id="a\\b"),
    _bad("id_newline", "id:", id="a\nb"),
    _bad("id_nul", "id:", id="a\u0000b"),
    _bad("id_url", "id:", id="https://evil.example/x"),
    _bad("id_number", "id:", id=5),
    _bad("id_array", "id:", id=["a"]),
)

INPUT_PATHS: tuple[Hostile, ...] = (
    _edit("input_https_url", "input_images[0]:", input_images=["https://evil.example/a.png"]),
    _edit("input_file_url", "input_images[0]:", input_images=["file:///etc/passwd"]),
    _edit("input_blob_url", "input_images[0]:",
          input_images=[f"https://account.blob.core.windows.net/{INPUTS}/ok.png"]),
    _edit("input_output_container", "input_images[0]:", input_images=[f"{IMAGES}/x/0.png"]),
    _edit("input_host_container", "input_images[0]:",
          input_images=["azure-webjobs-hosts/locks/x"]),
    _edit("input_absolute_path", "input_images[0]:", input_images=["/etc/passwd"]),
    _edit("input_absolute_container_path", "input_images[0]:", input_images=[f"/{INPUTS}/ok.png"]),
    _edit("input_dotdot_segment", "input_images[0]:",
          input_images=[f"{INPUTS}/../{IMAGES}/x.png"]),
    _edit("input_backslash", "input_images[0]:", input_images=[f"{INPUTS}\\..\\ok.png"]),
    _edit("input_second_item_bad", "input_images[1]:",
          input_images=[f"{INPUTS}/ok.png", "../ok.png"]),
    _edit("input_empty_list", "input_images:", input_images=[]),
    _edit("input_17_items", "input_images:", input_images=[f"{INPUTS}/ok.png"] * 17),
    _edit("input_not_a_list", "input_images:", input_images=f"{INPUTS}/ok.png"),
    _edit("input_item_not_a_string", "input_images[0]:", input_images=[1]),
    _edit("input_missing", "input_images:", input_images=None),
    _bad("input_images_on_generate", "input_images:", input_images=[f"{INPUTS}/ok.png"]),
    _edit("input_blob_does_not_exist", "input_images[0]:",
          input_images=[f"{INPUTS}/no-such-image.png"]),
    _edit("mask_blob_does_not_exist", "mask:", mask=f"{INPUTS}/no-such-mask.png"),
    _edit("mask_not_png", "mask:", mask=f"{INPUTS}/mask.jpg"),
    _edit("mask_url", "mask:", mask="https://evil.example/mask.png"),
    _edit("mask_other_container", "mask:", mask=f"{IMAGES}/mask.png"),
    _bad("mask_on_generate", "mask:", mask=f"{INPUTS}/mask.png"),
)  # fmt: skip

NUMBERS: tuple[Hostile, ...] = (
    _bad("n_negative", "n:", n=-1),
    _bad("n_zero", "n:", n=0),
    _bad("n_eleven", "n:", n=11),
    _bad("n_huge", "n:", n=10**30),
    _bad("n_float", "n:", n=2.0),
    _bad("n_string", "n:", n="2"),
    _bad("n_bool", "n:", n=True),
    _bad("partial_images_four", "partial_images:", partial_images=4),
    _bad("partial_images_float", "partial_images:", partial_images=1.5),
    _bad("output_compression_negative", "output_compression:",
         output_format="jpeg", output_compression=-5),
)  # fmt: skip

# A wrong type for every field of the contract.
WRONG_TYPES: tuple[Hostile, ...] = (
    _bad("operation_number", "operation:", operation=1),
    _bad("operation_unknown", "operation:", operation="delete"),
    Hostile("prompt_missing", _j(quality="low"), "prompt:"),
    _bad("prompt_number", "prompt:", prompt=5),
    _bad("prompt_empty", "prompt:", prompt=""),
    _bad("prompt_array", "prompt:", prompt=["a", "cat"]),
    _bad("prompt_too_long_non_ascii", "prompt:", prompt="é" * 32_001),
    _bad("size_number", "size:", size=1024),
    _bad("size_upper_x", "size:", size="1024X1024"),
    _bad("size_huge", "size:", size="99999x99999"),
    _bad("quality_list", "quality:", quality=["high"]),
    _bad("output_format_bool", "output_format:", output_format=True),
    _bad("output_compression_string", "output_compression:",
         output_format="jpeg", output_compression="50"),
    _bad("background_number", "background:", background=0),
    _bad("moderation_bool", "moderation:", moderation=False),
    _bad("partial_images_string", "partial_images:", partial_images="1"),
    _bad("save_partials_string", "save_partials:", save_partials="true"),
    _edit("input_fidelity_number", "input_fidelity:", input_fidelity=1),
    _edit("mask_number", "mask:", mask=5),
    _bad("user_number", "user:", user=5),
    _bad("user_too_long", "user:", user="u" * 257),
    _bad("metadata_string", "metadata:", metadata="x"),
    _bad("metadata_array", "metadata:", metadata=[]),
    _bad("metadata_number_value", 'metadata["a"]:', metadata={"a": 1}),
    _bad("unknown_field_case", "Prompt:", Prompt="y"),
)  # fmt: skip

# Whose own id is valid: the rejection is filed under that id, where its producer looks.
OWN_ID: tuple[Hostile, ...] = (
    Hostile("own_id_negative_n", _j(id="hostile-own-id-n", prompt="x", n=-1), "n:",
            record_id="hostile-own-id-n"),
    Hostile("own_id_bad_size", _j(id="hostile-own-id-size", prompt="x", size="1x1"), "size:",
            record_id="hostile-own-id-size"),
)  # fmt: skip

VALID: tuple[Hostile, ...] = (
    _ok("valid_emoji", "🎨🖌️ a cat 🐈‍⬛ wearing a 👑, in watercolour"),
    _ok("valid_cjk_and_rtl", "一只戴着皇冠的猫 — قطة ترتدي تاجا — חתול עם כתר"),
    _ok("valid_combining_and_zwj", "👩‍👩‍👧‍👦 at a café (e\u0301) under Z̷a̸l̵g̶o̷ skies"),
    _ok("valid_line_separators", "first line\u2028second line\u2029third, with a tab\there"),
    Hostile("valid_escaped_astral", '{"prompt": "\\ud83c\\udfa8 escaped palette", "quality": "low"}',
            None, prompt="🎨 escaped palette"),
    Hostile("valid_bom", "\ufeff" + _j(prompt="a bom-prefixed ☕", quality="low"), None,
            prompt="a bom-prefixed ☕"),
    Hostile("valid_base64_unicode", _b64(_j(prompt="base64 of 🐉 and ß", quality="low")), None,
            prompt="base64 of 🐉 and ß"),
    Hostile("valid_id_128", _j(id="a" * 128, prompt="an id of 128 characters", quality="low"),
            None, record_id="a" * 128, prompt="an id of 128 characters"),
    _ok("valid_nulls_mean_absent", "nulls are absent 🕳️", n=None, size=None, user=None, mask=None),
    Hostile("valid_edit_with_mask",
            _j(operation="edit", prompt="edit ✂️ with a mask", quality="low",
               input_images=[f"{INPUTS}/ok.png"], mask=f"{INPUTS}/mask.png"),
            None, prompt="edit ✂️ with a mask"),
)  # fmt: skip

CORPUS: tuple[Hostile, ...] = (
    *FRAMING,
    *IDS,
    *INPUT_PATHS,
    *NUMBERS,
    *WRONG_TYPES,
    *OWN_ID,
    *VALID,
)
