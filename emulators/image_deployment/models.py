"""What each model behind a deployment accepts: sizes, transparent backgrounds, input fidelity.

A deployment runs one model (`--model`, or `model=` in a `--deployment` spec), and the service
refuses what that model does not take, so a client that sends gpt-image-2 sizes to a gpt-image-1
deployment sees the 400s it would see in Azure. The rules are values; `validation` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "gpt-image-2"

# gpt-image-2's flexible sizes. OpenAI image generation guide: both sides multiples of 16, the long
# side at most 3 times the short one, between 655,360 and 8,294,400 pixels in all; the Azure AI
# Foundry model card: the long side at most 3840 px.
SIDE_MULTIPLE = 16
MAX_SIDE = 3840
MAX_RATIO = 3
MIN_PIXELS = 655_360
MAX_PIXELS = 8_294_400

# The gpt-image-1 family takes only these four (OpenAI image generation guide: square, landscape,
# portrait or auto), listed in the order of the service's "Supported values are" message.
FIXED_SIZES = ("1024x1024", "1024x1536", "1536x1024", "auto")


@dataclass(frozen=True, slots=True)
class ModelRules:
    name: str
    sizes: tuple[str, ...] | None  # the only sizes taken, or None: any size within the limits
    transparent: bool  # `background: transparent` accepted
    fidelities: tuple[str, ...]  # `input_fidelity` values taken on edits; () = the field is refused


MODELS: dict[str, ModelRules] = {
    # input_fidelity: the openai package's API reference ("Supports `high` and `low` on
    # gpt-image-1.5; gpt-image-1-mini supports only `low`. For gpt-image-2, omit this parameter").
    "gpt-image-1": ModelRules("gpt-image-1", FIXED_SIZES, True, ("low", "high")),
    "gpt-image-1-mini": ModelRules("gpt-image-1-mini", FIXED_SIZES, True, ("low",)),
    "gpt-image-1.5": ModelRules("gpt-image-1.5", FIXED_SIZES, True, ("low", "high")),
    # background: transparent is "in preview" at best for gpt-image-2 (OpenAI image generation
    # guide; the Azure AI Foundry model card does not offer it), so the deployment refuses it.
    "gpt-image-2": ModelRules("gpt-image-2", None, False, ()),
}


def rules_for(model: str) -> ModelRules:
    """The rules of `model`; ValueError names the models there are."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r} (one of {', '.join(MODELS)})")
    return MODELS[model]


def quoted_list(values: tuple[str, ...]) -> str:
    """`'a', 'b', and 'c'`: how the service lists supported values."""
    quoted = [f"'{v}'" for v in values]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])}, and {quoted[-1]}"


def size_problem(rules: ModelRules, text: str, width: int, height: int) -> str | None:
    """The service's message for a size `rules` refuses (`text` as sent), or None."""
    if rules.sizes is not None:
        if text in rules.sizes:
            return None
        return f"Invalid value: '{text}'. Supported values are: {quoted_list(rules.sizes)}."
    if text == "auto":
        return None
    problem = None
    if width % SIDE_MULTIPLE or height % SIDE_MULTIPLE:
        problem = f"Width and height must both be multiples of {SIDE_MULTIPLE}."
    elif max(width, height) > MAX_SIDE:
        problem = f"The long side may be at most {MAX_SIDE} pixels."
    elif max(width, height) > MAX_RATIO * min(width, height):  # integers: ratio exactly 3 passes
        problem = f"The long side may be at most {MAX_RATIO} times the short side."
    elif not MIN_PIXELS <= width * height <= MAX_PIXELS:
        problem = (
            f"The image must have between {MIN_PIXELS:,} and {MAX_PIXELS:,} pixels, "
            f"got {width * height:,}."
        )
    return f"Invalid size '{text}'. {problem}" if problem else None
