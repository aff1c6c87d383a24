"""What each gpt-image model accepts, as values: sizes, transparent backgrounds, input fidelity.

The queue message does not name a model: the deployment it is sent to does (AZURE_OPENAI_MODEL, or
`model` in an AZURE_OPENAI_DEPLOYMENTS entry). With failover a request may go to any deployment, so
the contract checks it against the rules of every configured model and refuses, before any call,
what one of them would refuse with a 400. Each rule names its source; when the service changes, the
rule here changes with it (docs/design.md §4).

Sources:
- OpenAI image generation guide (platform.openai.com/docs/guides/image-generation): the sizes of
  each model, gpt-image-2's flexible sizes, transparent backgrounds.
- Azure AI Foundry model card for gpt-image-2: the long side under 3840 pixels inclusive, no
  transparent background.
- Azure OpenAI REST reference (images/generations, images/edits): `moderation` is a field of
  generations only; `input_fidelity` of edits only.
- OpenAI API reference for images/edits `input_fidelity`: "Supports `high` and `low` on
  gpt-image-1.5; gpt-image-1-mini supports only `low`. For gpt-image-2, omit this parameter."
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_MODEL = "gpt-image-2"  # the ticket's model, and AZURE_OPENAI_MODEL's default
DEFAULT_MODELS: tuple[str, ...] = (DEFAULT_MODEL,)

# gpt-image-2's flexible sizes. OpenAI image generation guide: both sides multiples of 16, the long
# side at most 3 times the short one, between 655,360 and 8,294,400 pixels; the Azure AI Foundry
# model card: the long side at most 3840 px.
SIDE_MULTIPLE = 16
MAX_SIDE = 3840
MAX_RATIO = 3
MIN_PIXELS = 655_360
MAX_PIXELS = 8_294_400  # 3840x2160

# The gpt-image-1 family takes only square, landscape, portrait or auto (OpenAI image generation
# guide; the Azure OpenAI REST reference lists the same values for these models).
FIXED_SIZES: tuple[str, ...] = ("1024x1024", "1536x1024", "1024x1536", "auto")


@dataclass(frozen=True, slots=True)
class ModelRules:
    """One model's rules. `sizes` None means gpt-image-2's flexible sizes within the limits above."""

    name: str
    sizes: tuple[str, ...] | None
    transparent: bool  # `background: transparent` is accepted
    fidelities: tuple[str, ...]  # `input_fidelity` values accepted on edits; () = omit the field


MODELS: dict[str, ModelRules] = {
    # input_fidelity: low and high (OpenAI API reference, images/edits).
    "gpt-image-1": ModelRules("gpt-image-1", FIXED_SIZES, True, ("low", "high")),
    # input_fidelity: "gpt-image-1-mini supports only `low`" (OpenAI API reference, images/edits).
    "gpt-image-1-mini": ModelRules("gpt-image-1-mini", FIXED_SIZES, True, ("low",)),
    "gpt-image-1.5": ModelRules("gpt-image-1.5", FIXED_SIZES, True, ("low", "high")),
    # background: transparent is "in preview" at best for gpt-image-2 (OpenAI image generation
    # guide) and not offered by the Azure AI Foundry model card; input_fidelity: "For gpt-image-2,
    # omit this parameter" (OpenAI API reference, images/edits).
    "gpt-image-2": ModelRules("gpt-image-2", None, False, ()),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def rules_for(models: Iterable[str]) -> tuple[ModelRules, ...]:
    """The rules of each named model, once each, in order; ValueError for a name not known here.

    An unknown model is the caller's configuration error, not the message's: it is never reported
    as a rejected request.
    """
    names = tuple(dict.fromkeys(models))
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise ValueError(
            f"unknown model(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"the contract knows {', '.join(MODEL_NAMES)}"
        )
    return tuple(MODELS[name] for name in names)


def _or_list(values: tuple[str, ...]) -> str:
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


def size_problem(rules: ModelRules, text: str, width: int, height: int) -> str | None:
    """Why `rules.name` refuses the size `text` (already parsed to `width` x `height`), or None."""
    if text == "auto":
        return None
    if rules.sizes is not None:
        if text in rules.sizes:
            return None
        return f"{rules.name} accepts {_or_list(rules.sizes)}; got {text}"
    name, long, short = rules.name, max(width, height), min(width, height)
    if width % SIDE_MULTIPLE or height % SIDE_MULTIPLE:
        return f"{name} needs width and height in multiples of {SIDE_MULTIPLE}; got {text}"
    if long > MAX_SIDE:
        return f"{name} takes sides of at most {MAX_SIDE} pixels; got {text}"
    if long > MAX_RATIO * short:  # integers: a ratio of exactly 3 passes
        return (
            f"{name} takes a long side at most {MAX_RATIO} times the short side; "
            f"got {text} (ratio {long / short:.2f})"
        )
    if not MIN_PIXELS <= width * height <= MAX_PIXELS:
        return (
            f"{name} takes {MIN_PIXELS:,} to {MAX_PIXELS:,} pixels; "
            f"got {text} ({width * height:,} pixels)"
        )
    return None


def background_problem(rules: ModelRules, background: str) -> str | None:
    if background == "transparent" and not rules.transparent:
        return f"{rules.name} does not support 'transparent'; use 'auto' or 'opaque'"
    return None


def fidelity_problem(rules: ModelRules, fidelity: str) -> str | None:
    if not rules.fidelities:
        return f"{rules.name} takes no input_fidelity; omit the field"
    if fidelity not in rules.fidelities:
        return f"{rules.name} accepts {_or_list(rules.fidelities)}; got {fidelity!r}"
    return None


def describe_sizes() -> str:
    """The size rules of every model, for the JSON Schema's description and the README."""
    fixed = [name for name, rules in MODELS.items() if rules.sizes is not None]
    return (
        f"'auto', or 'WIDTHxHEIGHT', as the deployments' models accept: {', '.join(fixed)}: "
        f"{_or_list(FIXED_SIZES)} only; {DEFAULT_MODEL}: both sides multiples of {SIDE_MULTIPLE}, "
        f"at most {MAX_SIDE}, the long side at most {MAX_RATIO} times the short side, "
        f"{MIN_PIXELS:,} to {MAX_PIXELS:,} pixels. With several deployments, the size must suit "
        "every deployment's model."
    )
