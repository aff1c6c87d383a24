"""The support report: failed and retried calls grouped by deployment and error type.

Pure functions from the request records of docs/design.md §5 to a `Report` value and its text,
so the grouping is tested on dicts and the CLI only fetches blobs and prints. The text is shaped
like a paragraph of an Azure support ticket (docs/design.md §1): who, where, which API
version, then one line per failure type with every apim-request-id support needs to look it up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from shared.records.attempts import AttemptRecord
from shared.records.documents import attempts_from_status

STATUS = "status.json"
MANIFEST = "manifest.json"
ERROR = "error.json"
# A terminal record supersedes status.json; a manifest means the images exist, so it wins.
PRECEDENCE: tuple[str, ...] = (MANIFEST, ERROR, STATUS)


@dataclass(frozen=True, slots=True)
class Folder:
    """One request folder as a blob listing shows it: which records exist, when it last changed."""

    id: str
    records: frozenset[str]
    updated: datetime

    @property
    def governing(self) -> str:
        """The record that says where the request stands (and holds its whole attempt history)."""
        return governing_record(self.records)


def governing_record(names: Iterable[str]) -> str:
    present = set(names)
    for name in PRECEDENCE:
        if name in present:
            return name
    raise ValueError("a request folder without status.json, manifest.json or error.json")


def request_folders(listing: Iterable[tuple[str, datetime]]) -> list[Folder]:
    """Group `(blob name, last modified)` pairs into request folders, newest first.

    Only `{id}/status.json`, `{id}/manifest.json` and `{id}/error.json` count: images, partials and
    anything else in the container are ignored, so a stray blob cannot invent a request.
    """
    records: dict[str, set[str]] = {}
    updated: dict[str, datetime] = {}
    for name, modified in listing:
        folder, sep, leaf = name.partition("/")
        if not sep or not folder or leaf not in PRECEDENCE:
            continue
        records.setdefault(folder, set()).add(leaf)
        if folder not in updated or modified > updated[folder]:
            updated[folder] = modified
    folders = [Folder(id, frozenset(names), updated[id]) for id, names in records.items()]
    return sorted(folders, key=lambda f: (f.updated, f.id), reverse=True)


@dataclass(frozen=True, slots=True)
class RequestHistory:
    """One request's governing record (see `governing_record`), already read from its folder."""

    id: str
    record: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class FailureGroup:
    """Every failed call of one deployment with one outcome and error code."""

    deployment: str
    outcome: str
    code: str | None
    attempts: int
    requests: int
    recovered: int  # failed calls whose image a later call of the same request produced
    first_at: str
    last_at: str
    http_statuses: tuple[int, ...]
    apim_request_ids: tuple[str, ...]
    without_apim_request_id: int  # calls that got no answer (connect errors) carry none
    request_ids: tuple[str, ...]
    example_message: str | None


@dataclass(frozen=True, slots=True)
class DeploymentTotals:
    name: str
    attempts: int
    failed: int


@dataclass(frozen=True, slots=True)
class FailedRequest:
    id: str
    status: str
    kind: str
    message: str
    completed_at: str | None
    content_filter: dict[str, Any] | None = None  # error.json's `error.content_filter`


@dataclass(frozen=True, slots=True)
class Report:
    since: str
    until: str
    api_version: str
    region: str | None
    requests: int
    attempts: int
    failed_attempts: int
    deployments: tuple[DeploymentTotals, ...]
    groups: tuple[FailureGroup, ...]
    failed_requests: tuple[FailedRequest, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def build_report(
    histories: Iterable[RequestHistory],
    *,
    since: datetime,
    until: datetime,
    api_version: str,
    region: str | None = None,
) -> Report:
    """Group the failed calls of `histories` (one entry per request: no call is counted twice)."""
    histories = list(histories)
    calls = [(h.id, a) for h in histories for a in attempts_from_status(dict(h.record))]
    recovered = _recovered(calls)
    buckets: dict[tuple[str, str, str | None], list[tuple[str, AttemptRecord]]] = {}
    totals: dict[str, list[int]] = {}
    for request_id, attempt in calls:
        total = totals.setdefault(attempt.deployment, [0, 0])
        total[0] += 1
        if attempt.succeeded:
            continue
        total[1] += 1
        code = attempt.error.code if attempt.error is not None else None
        key = (attempt.deployment, attempt.outcome.value, code)
        buckets.setdefault(key, []).append((request_id, attempt))
    groups = [_group(key, members, recovered) for key, members in buckets.items()]
    groups.sort(key=lambda g: (g.deployment, -g.attempts, g.outcome, g.code or ""))
    return Report(
        since=_iso(since),
        until=_iso(until),
        api_version=api_version,
        region=region,
        requests=len(histories),
        attempts=len(calls),
        failed_attempts=sum(g.attempts for g in groups),
        deployments=tuple(
            DeploymentTotals(name, counts[0], counts[1]) for name, counts in sorted(totals.items())
        ),
        groups=tuple(groups),
        failed_requests=tuple(_failed_requests(histories)),
    )


def _recovered(calls: list[tuple[str, AttemptRecord]]) -> set[tuple[str, int]]:
    """(request id, attempt number) of failed calls that a later call of the same image made good."""
    succeeded_at: dict[tuple[str, int], int] = {}
    for request_id, attempt in calls:
        if attempt.succeeded:
            key = (request_id, attempt.image_index)
            succeeded_at[key] = max(succeeded_at.get(key, 0), attempt.attempt)
    return {
        (request_id, attempt.attempt)
        for request_id, attempt in calls
        if not attempt.succeeded
        and attempt.attempt < succeeded_at.get((request_id, attempt.image_index), -1)
    }


def _group(
    key: tuple[str, str, str | None],
    members: list[tuple[str, AttemptRecord]],
    recovered: set[tuple[str, int]],
) -> FailureGroup:
    members = sorted(members, key=lambda m: (m[1].started_at, m[0], m[1].attempt))
    apim_ids = [a.apim_request_id for _, a in members if a.apim_request_id]
    messages = [a.error.message for _, a in members if a.error is not None and a.error.message]
    return FailureGroup(
        deployment=key[0],
        outcome=key[1],
        code=key[2],
        attempts=len(members),
        requests=len({request_id for request_id, _ in members}),
        recovered=sum((request_id, a.attempt) in recovered for request_id, a in members),
        first_at=members[0][1].started_at,
        last_at=members[-1][1].started_at,
        http_statuses=tuple(sorted({a.http_status for _, a in members if a.http_status})),
        apim_request_ids=tuple(dict.fromkeys(apim_ids)),
        without_apim_request_id=len(members) - len(apim_ids),
        request_ids=tuple(dict.fromkeys(request_id for request_id, _ in members)),
        example_message=messages[0] if messages else None,
    )


def _failed_requests(histories: list[RequestHistory]) -> Iterable[FailedRequest]:
    for history in histories:
        record = history.record
        status = record.get("status")
        error = record.get("error")
        # Only error.json has an `error` object with a kind; status.json's `failed` is its echo.
        if status in ("failed", "rejected") and isinstance(error, Mapping) and "kind" in error:
            yield FailedRequest(
                id=history.id,
                status=str(status),
                kind=str(error.get("kind")),
                message=str(error.get("message", "")),
                completed_at=record.get("completed_at"),
                content_filter=_verdict_of(error),
            )


def _verdict_of(error: Mapping[str, Any]) -> dict[str, Any] | None:
    verdict = error.get("content_filter")
    return dict(verdict) if isinstance(verdict, Mapping) else None


def format_verdict(verdict: Mapping[str, Any]) -> str:
    """The safety system's verdict in one line: `azure: sexual filtered (high); revised prompt '…'`.

    From error.json's `error.content_filter`, whichever shape the service answered in.
    """
    shape = str(verdict.get("shape") or "unknown")
    parts: list[str] = []
    if shape == "resource_blocked":
        parts.append("the resource is temporarily blocked for content policy")
    categories = verdict.get("categories")
    if isinstance(categories, Mapping):
        filtered = [
            f"{name} filtered" + (f" ({result['severity']})" if result.get("severity") else "")
            for name, result in categories.items()
            if isinstance(result, Mapping) and result.get("filtered") is True
        ]
        parts.append(", ".join(filtered) or "no category marked filtered")
    details = verdict.get("moderation_details")
    if isinstance(details, Mapping):
        stage = details.get("moderation_stage")
        found = details.get("categories")
        named = ", ".join(map(str, found)) if isinstance(found, list) and found else "none named"
        parts.append(f"moderation {stage or 'stage unknown'}: categories {named}")
    if shape == "azure_legacy" and not parts:
        parts.append("no verdict in the answer (contentFilter)")
    revised = verdict.get("revised_prompt")
    if isinstance(revised, str) and revised:
        shown = revised if len(revised) <= 80 else revised[:80] + "…"
        parts.append(f"revised prompt {shown!r}")
    return f"{shape}: " + "; ".join(parts)


# --- text -----------------------------------------------------------------------------------------


def format_report(report: Report) -> str:
    """The report as text to paste into a support ticket; all times UTC."""
    period = f"{_minute(report.since)} to {_minute(report.until)}"
    deployments = ", ".join(
        f"{d.name} ({_count(d.attempts, 'call')}, {d.failed} failed)" for d in report.deployments
    )
    lines = [
        f"Failed and retried image API calls, {period} (UTC)",
        f"- Region: {report.region or 'unknown (fill in)'}",
        f"- Deployment names: {deployments or 'none seen'}",
        f"- API version: {report.api_version}",
        f"- Requests updated in the period: {report.requests}; calls: {report.attempts}, "
        f"failed: {report.failed_attempts}",
    ]
    if not report.groups:
        lines += ["", "No failed calls in this period."]
    deployment = None
    for group in report.groups:
        if group.deployment != deployment:
            deployment = group.deployment
            lines += ["", f"Deployment {deployment}"]
        lines.append(f"- {format_group(group)}")
        if group.example_message:
            lines.append(f"  message: {group.example_message}")
    if report.failed_requests:
        lines += ["", "Requests that failed in the end"]
        for failed in report.failed_requests:
            when = f" at {_minute(failed.completed_at)}" if failed.completed_at else ""
            lines.append(f"- {failed.id}: {failed.status} ({failed.kind}){when}: {failed.message}")
            if failed.content_filter is not None:
                lines.append(f"  content filter: {format_verdict(failed.content_filter)}")
    return "\n".join(lines) + "\n"


def format_group(group: FailureGroup) -> str:
    """`server_error (code: none) — 7 attempts between 2026-05-07T13:30Z and 13:58Z; apim-request-id: a, b`"""
    http = f", HTTP {'/'.join(map(str, group.http_statuses))}" if group.http_statuses else ""
    parts = [
        f"{group.outcome} (code: {group.code or 'none'}{http}) — "
        f"{_count(group.attempts, 'attempt')} {_between(group.first_at, group.last_at)} "
        f"in {_count(group.requests, 'request')}"
    ]
    if group.recovered:
        parts.append(f"{group.recovered} succeeded on retry")
    ids = ", ".join(group.apim_request_ids) or "none"
    parts.append(f"apim-request-id: {ids}")
    if group.without_apim_request_id:
        parts.append(f"{group.without_apim_request_id} without apim-request-id (no response)")
    return "; ".join(parts)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _between(first: str, last: str) -> str:
    start, end = _minute(first), _minute(last)
    if start == end:
        return f"at {start}"
    if start[:10] == end[:10]:
        end = end[11:]  # Same day: the time alone reads like the ticket ("13:30Z and 13:58Z").
    return f"between {start} and {end}"


def _minute(stamp: str) -> str:
    """`2026-05-07T13:46:12.190Z` → `2026-05-07T13:46Z`; anything unparsable is shown as it is."""
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
