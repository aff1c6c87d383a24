"""status.json, manifest.json and error.json as typed models (docs/design.md §5).

The one definition of the three documents: the worker's builders (`documents.py`) fill these models
and store their JSON, the producer client parses them back, and the JSON Schemas in `schemas/` are
generated from them (`python -m shared.records`). Readers are lenient where writers changed: fields
added later have defaults, so a document written before them still parses; unknown fields are kept,
so a newer writer's additions survive a reader that does not know them yet.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from shared.records.attempts import AttemptRecord, Outcome

MANIFEST_SCHEMA = "imagegen.manifest/1"
ERROR_SCHEMA = "imagegen.error/1"
STATUS_SCHEMA = "imagegen.status/1"


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"


class ErrorKind(StrEnum):
    INVALID_REQUEST = "invalid_request"
    CONTENT_FILTER = "content_filter"
    RETRIES_EXHAUSTED = "retries_exhausted"
    POISONED = "poisoned"
    DEADLINE_EXCEEDED = "deadline_exceeded"  # IMAGE_REQUEST_DEADLINE_S passed before it finished


class UnreadableRecord(ValueError):
    """A stored document is not valid JSON of its kind; the message names the blob and the fields."""


class _Record(BaseModel):
    """Keeps unknown fields, and leaves out the optional fields the writers never wrote as null."""

    model_config = ConfigDict(
        extra="allow", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )
    omit_if_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in self.omit_if_none:
            if data.get(name, 0) is None:
                del data[name]
        return data


class ErrorInfo(_Record):
    """An attempt's `error`: what the service (or our client) said went wrong."""

    omit_if_none = frozenset({"content_filter"})

    type: str | None = None
    code: str | None = None
    message: str = ""
    content_filter: dict[str, Any] | None = Field(
        None, description="The service's content filter results, when moderation refused."
    )


class Attempt(_Record):
    """One HTTP call to the image API; the JSON of `shared.records.attempts.AttemptRecord`."""

    attempt: int = Field(description="Counts the request's calls from 1, over all its images.")
    image_index: int
    deployment: str
    started_at: str = Field(description="ISO 8601 UTC with milliseconds and a Z.")
    elapsed_s: float
    first_event_s: float | None = None
    http_status: int | None = None
    apim_request_id: str | None = None
    x_request_id: str | None = None
    partial_images_sent: int = 0
    partials_received: int = 0
    outcome: Outcome
    error: ErrorInfo | None = None
    retry_after_s: float | None = None
    ratelimit: dict[str, str] = Field(default_factory=dict)
    headers_s: float | None = None
    should_retry: bool | None = Field(
        None, description="The x-should-retry header: true or false when the service said so."
    )

    @classmethod
    def from_record(cls, record: AttemptRecord) -> Attempt:
        return cls.model_validate(record.to_json())

    def to_record(self) -> AttemptRecord:
        return AttemptRecord.from_json(self.model_dump(mode="json"))


class Image(_Record):
    """One finished image: where it is and what its bytes must hash to."""

    index: int = Field(description="0-based position in the request.")
    blob: str = Field(description="The blob's name inside the images container: {id}/{k}.{ext}.")
    content_type: str
    bytes: int
    sha256: str = Field(description="Hex sha256 of the blob's content.")
    width: int
    height: int
    usage: dict[str, Any] | None = None


# The call history every document carries, in the order it is written (`shared.records.history`).
Attempts = Annotated[
    list[Attempt],
    Field(
        default_factory=list,
        description="Every attempt that may have been billed, plus the most recent free ones.",
    ),
]
OutcomeCounts = Annotated[
    dict[str, int],
    Field(default_factory=dict, description="Every call ever made for the request, by outcome."),
]
Calls = Annotated[
    int, Field(0, description="Every call ever made; the next one is number calls + 1.")
]
Request = Annotated[
    dict[str, Any],
    Field(description="The validated request, defaults applied (generation-request.schema.json)."),
]
Metadata = Annotated[
    dict[str, str],
    Field(default_factory=dict, description="The producer's own fields, echoed unchanged."),
]


class _Document(_Record):
    """What the three documents share: `attempts`, `outcome_counts`, `calls` (declared by each, so
    that every document keeps its own field order)."""

    if TYPE_CHECKING:
        attempts: list[Attempt]
        outcome_counts: dict[str, int]
        calls: int

    @model_validator(mode="after")
    def _count_old_documents(self) -> Self:
        # Written before the counts existed: the attempts are all there is.
        if "outcome_counts" not in self.model_fields_set:
            counts: dict[str, int] = {}
            for attempt in self.attempts:
                counts[attempt.outcome.value] = counts.get(attempt.outcome.value, 0) + 1
            self.outcome_counts = dict(sorted(counts.items()))
        if "calls" not in self.model_fields_set:
            numbered = max((a.attempt for a in self.attempts), default=0)
            self.calls = max(numbered, sum(self.outcome_counts.values()))
        return self

    def attempt_records(self) -> list[AttemptRecord]:
        return [a.to_record() for a in self.attempts]


class StatusDoc(_Document):
    """status.json: progress, overwritten as work goes on; never a result."""

    omit_if_none = frozenset({"first_delivery_at", "request_hash", "created_at", "detail"})

    # Added after the first status.json documents were written: those read as version 1.
    schema_: Literal["imagegen.status/1"] = Field(STATUS_SCHEMA, alias="schema")
    id: str
    status: Status
    updated_at: str
    images_done: int = 0
    attempts: Attempts
    outcome_counts: OutcomeCounts
    calls: Calls
    first_delivery_at: str | None = Field(
        None, description="The request's deadline counts from it."
    )
    request_hash: str | None = None
    created_at: str | None = None
    detail: str | None = Field(None, description="Why it waits, or why it ended, when it does.")

    @property
    def finished(self) -> bool:
        return self.status in (Status.SUCCEEDED, Status.FAILED, Status.REJECTED)


class Manifest(_Document):
    """manifest.json: written last and once; every image it lists is in place and final."""

    schema_: Literal["imagegen.manifest/1"] = Field(alias="schema")
    id: str
    status: Literal["succeeded"]
    request: Request
    request_hash: str
    images: list[Image]
    attempts: Attempts
    outcome_counts: OutcomeCounts
    calls: Calls
    created_at: str
    completed_at: str
    metadata: Metadata

    @property
    def succeeded(self) -> bool:
        return True


class Failure(_Record):
    """error.json's `error`: which kind of terminal failure, and why."""

    omit_if_none = frozenset({"content_filter"})

    kind: ErrorKind
    message: str
    content_filter: dict[str, Any] | None = Field(
        None, description="The service's content filter results, for kind content_filter."
    )


class ErrorRecord(_Document):
    """error.json: written instead of a manifest; no manifest will come (docs/downstream.md)."""

    omit_if_none = frozenset({"request_hash", "input", "queue_message_id"})

    schema_: Literal["imagegen.error/1"] = Field(alias="schema")
    id: str
    status: Literal["failed", "rejected"]
    request: Request | None = None
    images: list[Image] = Field(default_factory=list)
    attempts: Attempts
    outcome_counts: OutcomeCounts
    calls: Calls
    created_at: str
    completed_at: str
    metadata: Metadata
    error: Failure
    request_hash: str | None = None
    input: str | None = Field(None, description="An excerpt of the message it refused.")
    queue_message_id: str | None = None

    @property
    def succeeded(self) -> bool:
        return False


Document = StatusDoc | Manifest | ErrorRecord
DOCUMENTS: dict[str, type[StatusDoc] | type[Manifest] | type[ErrorRecord]] = {
    "status.json": StatusDoc,
    "manifest.json": Manifest,
    "error.json": ErrorRecord,
}


def parse_document(name: str, data: bytes | str | dict[str, Any], *, where: str = "") -> Document:
    """The model of a stored `status.json`, `manifest.json` or `error.json`.

    Raises `UnreadableRecord` naming the blob (`where`, else `name`) and every field that is wrong.
    """
    model = DOCUMENTS[name]
    try:
        if isinstance(data, dict):
            return model.model_validate(data)
        return model.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise UnreadableRecord(f"{where or name} is not a valid {name}: {problems}") from None
