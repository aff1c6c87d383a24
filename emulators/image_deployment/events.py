"""What the service says: SSE frames, JSON results and Azure-style error bodies.

Field names and messages copy the real API (and the ticket), because clients parse them.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from .validation import ImageRequest

REGION = "Sweden Central"
TIMEOUT_BODY = {"error": {"code": "Timeout", "message": "The operation was timeout."}}
# Output tokens of one 1024² image by quality; they grow with pixels.
_OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160}
TOKENS_PER_PARTIAL = 100
TOKENS_PER_INPUT_IMAGE = 388


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _prefix(request: ImageRequest) -> str:
    return "image_edit" if request.endpoint == "edits" else "image_generation"


def usage(request: ImageRequest, partials: int, images: int = 1) -> dict[str, Any]:
    text = max(1, math.ceil(len(request.prompt) / 4))
    image_in = TOKENS_PER_INPUT_IMAGE * request.input_images
    per_image = (
        _OUTPUT_TOKENS[request.reported_quality] * request.width * request.height / 1_048_576
    )
    output = images * (math.ceil(per_image) + TOKENS_PER_PARTIAL * partials)
    return {
        "input_tokens": text + image_in,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image_in},
        "output_tokens": output,
        "total_tokens": text + image_in + output,
    }


def _described(request: ImageRequest, b64: str | None, created_at: int) -> dict[str, Any]:
    image = {} if b64 is None else {"b64_json": b64}  # None: the scripted `no_image`
    return {
        **image,
        "created_at": created_at,
        "size": request.size,
        "quality": request.reported_quality,
        "background": request.reported_background,
        "output_format": request.output_format,
    }


def partial_event(request: ImageRequest, b64: str, index: int | str, created_at: int) -> bytes:
    """`index` is a string only for the scripted `bad_partial_index`."""
    name = f"{_prefix(request)}.partial_image"
    data = {"type": name, **_described(request, b64, created_at), "partial_image_index": index}
    return sse(name, data)


def completed_event(
    request: ImageRequest, b64: str | None, created_at: int, partials: int
) -> bytes:
    name = f"{_prefix(request)}.completed"
    data = {"type": name, **_described(request, b64, created_at), "usage": usage(request, partials)}
    return sse(name, data)


def server_error(request: ImageRequest) -> dict[str, Any]:
    """The nested error object of the ticket; edits carry the more specific variant."""
    if request.endpoint == "edits":
        return {
            "type": "image_generation_server_error",
            "code": "image_generation_failed",
            "message": "Image generation failed",
            "param": None,
        }
    return {
        "type": "server_error",
        "code": None,
        "message": "An error occurred while processing the request.",
        "param": None,
    }


def error_event(request: ImageRequest, sequence_number: int) -> bytes:
    data = {"type": "error", "error": server_error(request), "sequence_number": sequence_number}
    return sse("error", data)


def json_result(
    request: ImageRequest, images_b64: list[str | None], created: int
) -> dict[str, Any]:
    return {
        "created": created,
        "data": [{} if b64 is None else {"b64_json": b64} for b64 in images_b64],
        "background": request.reported_background,
        "output_format": request.output_format,
        "quality": request.reported_quality,
        "size": request.size,
        "usage": usage(request, 0, len(images_b64)),
    }


def invalid_request(message: str, code: str | None, param: str | None) -> dict[str, Any]:
    return {
        "error": {"type": "invalid_request_error", "code": code, "message": message, "param": param}
    }


_MODERATED = (
    "Your request was rejected by the safety system. If you believe this is an error, contact us "
    "at help.openai.com and include the request ID."
)
_AZURE_FILTERED = (
    "Your request was rejected as a result of our safety system. Your prompt may contain text that "
    "is not allowed by our safety system."
)
# Azure's image docs: a flagged prompt "failed as a result of our safety system".
_LEGACY_FILTERED = "Your task failed as a result of our safety system."
CATEGORIES = ("hate", "self_harm", "sexual", "violence")


def moderation_blocked(message: str = _MODERATED, category: str | None = None) -> dict[str, Any]:
    """OpenAI's refusal: `moderation_details` names the stage and the (coarse) categories."""
    return {
        "error": {
            "type": "image_generation_user_error",
            "code": "moderation_blocked",
            "message": message,
            "param": None,
            "moderation_details": {
                "moderation_stage": "input",
                "categories": [] if category is None else [category],
            },
        }
    }


def content_filter_results(category: str, severity: str) -> dict[str, Any]:
    """Azure's verdict: every category with its severity, the jailbreak shield with `detected`."""
    results: dict[str, Any] = {
        c: {"filtered": c == category, "severity": severity if c == category else "safe"}
        for c in CATEGORIES
    }
    return results | {"jailbreak": {"filtered": False, "detected": False}}


def content_filter(
    shape: str = "azure", category: str = "sexual", severity: str = "high", prompt: str = ""
) -> dict[str, Any]:
    """A 400 refusal of the prompt in one of the three shapes clients meet (see `script`)."""
    if shape == "openai":
        return moderation_blocked(category=category)
    if shape == "azure_legacy":
        # Older deployments (the DALL-E era image API): camelCase code, status in the body.
        return {
            "created": int(time.time()),
            "error": {"code": "contentFilter", "message": _LEGACY_FILTERED, "status": 400},
        }
    return {
        "error": {
            "type": "invalid_request_error",
            "code": "content_policy_violation",
            "message": _AZURE_FILTERED,
            "param": None,
            # `inner_error`, not the chat API's `innererror`.
            "inner_error": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_results": content_filter_results(category, severity),
                "revised_prompt": prompt,
            },
        }
    }


_BLOCKED = {
    "content_policy": "Your resource has been temporarily blocked because we detected behavior "
    "that may violate our content policy. For more details on Azure OpenAI service content "
    "policy, please visit https://aka.ms/aoaicodeofconduct",
    "unusual_behavior": "Your resource has been temporarily blocked because we detected unusual "
    "behavior.",
}


def resource_blocked(reason: str) -> dict[str, Any]:
    """Azure's 403 when abuse monitoring blocks the resource: not a bad key."""
    return {"error": {"code": "Forbidden", "message": _BLOCKED[reason]}}


def unauthorized() -> dict[str, Any]:
    return {
        "error": {
            "code": "401",
            "message": "Access denied due to invalid subscription key or wrong API endpoint. Make "
            "sure to provide a valid key for an active subscription and use a correct regional API "
            "endpoint for your resource.",
        }
    }


def unauthorized_token() -> dict[str, Any]:
    """What the service answers a bearer token that is invalid, for another audience or expired."""
    return {
        "error": {
            "code": "401",
            "message": "Unauthorized. Access token is missing, invalid, audience is incorrect "
            "(https://cognitiveservices.azure.com), or have expired.",
        }
    }


def deployment_not_found() -> dict[str, Any]:
    return {
        "error": {
            "code": "DeploymentNotFound",
            "message": "The API deployment for this resource does not exist. If you created the "
            "deployment within the last 5 minutes, please wait a moment and try again.",
        }
    }


def resource_not_found() -> dict[str, Any]:
    return {"error": {"code": "404", "message": "Resource not found"}}


def rate_limited(endpoint: str, api_version: str, retry_after_s: int) -> dict[str, Any]:
    operation = "Images_Edit" if endpoint == "edits" else "Images_Generations"
    return {
        "error": {
            "code": "429",
            "message": f"Requests to the {operation} Operation under Azure OpenAI API version "
            f"{api_version} have exceeded call rate limit of your current AIServices S0 pricing "
            f"tier. Please retry after {retry_after_s} second{'s' if retry_after_s != 1 else ''}. "
            "Please contact Azure support service if you would like to further increase the "
            "default rate limit.",
        }
    }


_HTTP_CODES = {
    500: ("InternalServerError", "The server had an error while processing your request."),
    502: ("BadGateway", "Bad gateway."),
    503: ("ServiceUnavailable", "The service is temporarily unable to process your request."),
    504: ("GatewayTimeout", "The gateway did not receive a response in time."),
}


def http_error(status: int) -> dict[str, Any]:
    if status == 408:
        return TIMEOUT_BODY
    code, message = _HTTP_CODES.get(status, (str(status), f"HTTP {status} (scripted)."))
    return {"error": {"code": code, "message": message}}
