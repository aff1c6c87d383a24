"""Operators' command line: `python -m shared.ops submit|status|fetch|list|report|requeue-poison`.

Works from an operator's shell that has only the storage settings (no AZURE_OPENAI_*), reading
`local.settings.json` in the current directory under the environment, as Core Tools does.
Exit codes (`EXIT_CODES`): 0 done, 1 a request failed (or did not finish in time), 2 usage or
settings, 3 storage unreachable, 4 no such request. Storage errors end in one line on stderr,
never a traceback.

This module parses arguments, says what happened and picks the exit code; what is done to the
blobs and the queue is in `shared.ops.operations`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from shared.client.producer import RequestTimeout
from shared.contract.request import InvalidMessage
from shared.local_settings import FILE_NAME, LocalSettingsError, under_environment
from shared.ops.operations import (
    RequeueOutcome,
    Storage,
    find_requests,
    ids_with_error_record,
    recent_histories,
    record_status,
    requeue_poisoned,
)
from shared.ops.reporting import ERROR, Folder, build_report, format_report, format_verdict
from shared.records.documents import Status
from shared.records.models import StatusDoc, UnreadableRecord
from shared.settings import OperatorSettings, SettingsError
from shared.storage.store import StoreError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND = 0, 1, 2, 3, 4
EXIT_CODES = (
    "Exit codes: 0 done, 1 a request failed (or did not finish in time), 2 usage or settings, "
    "3 storage unreachable, 4 no such request."
)
# `list --failed`: every request that ended without images, whoever refused it.
FAILED_STATUSES = frozenset({Status.FAILED.value, Status.REJECTED.value})
# One quick retry, a second later: an operator at a prompt wants "unreachable" in seconds, not
# the SDK's minutes. The SDK's default policy waits initial_backoff + increment_base ** n, so
# 0 + 1 ** 1 = 1 s, without jitter.
STORAGE_CLIENT = {
    "retry_total": 1,
    "initial_backoff": 0,
    "increment_base": 1,
    "random_jitter_range": 0,
    "connection_timeout": 5,
}
FINISHED = ("succeeded", "failed", "rejected")
SINCE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
SINCE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


# --- settings --------------------------------------------------------------------------------------


def operator_env(environ: Mapping[str, str] | None, cwd: Path) -> dict[str, str]:
    """`local.settings.json` Values (if the file is here) overlaid by the environment."""
    return under_environment(cwd / FILE_NAME, environ)


def parse_since(text: str) -> timedelta:
    """`30m`, `24h`, `7d` (also `s` and `w`) as a timedelta; argparse turns the error into usage."""
    match = SINCE_RE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 24h or 7d, got {text!r}")
    return timedelta(**{SINCE_UNITS[match.group(2)]: float(match.group(1))})


def parse_metadata(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


# --- commands --------------------------------------------------------------------------------------

Command = Callable[[argparse.Namespace, Storage], int]


def cmd_submit(args: argparse.Namespace, storage: Storage) -> int:
    fields = _request_fields(args)
    try:
        request_id = storage.client.submit(fields)
    except InvalidMessage as exc:
        for line in exc.errors:
            _warn(f"invalid request: {line}")
        return EXIT_USAGE
    print(request_id, flush=True)
    if not (args.wait or args.out):
        return EXIT_OK
    try:
        finished = storage.client.wait(
            request_id, timeout=args.timeout, on_progress=_progress, poll_s=args.poll
        )
    except RequestTimeout:
        _warn(f"{request_id}: not finished after {args.timeout:g}s; see `status {request_id}`")
        return EXIT_FAILED
    print(summary(finished.model_dump(mode="json")))
    if args.out:
        # DIR/<id>/: a second submit to the same DIR keeps the first one's images and records.
        _download(storage, request_id, str(Path(args.out) / request_id))
    return EXIT_OK if finished.succeeded else EXIT_FAILED


def _request_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Only the options given: the contract applies its own defaults to the rest."""
    metadata: dict[str, str] = {}
    for key, value in args.metadata or ():
        if key in metadata:
            raise _UsageError(f"--metadata: key {key!r} given twice")
        metadata[key] = value
    fields = {
        "id": args.id,
        "operation": args.operation,
        "prompt": args.prompt,
        "size": args.size,
        "quality": args.quality,
        "n": args.n,
        "output_format": args.output_format,
        "output_compression": args.output_compression,
        "background": args.background,
        "moderation": args.moderation,
        "partial_images": args.partial_images,
        "save_partials": args.save_partials,
        "input_images": args.input_image,
        "mask": args.mask,
        "input_fidelity": args.input_fidelity,
        "user": args.user,
        "metadata": metadata or None,
    }
    return {name: value for name, value in fields.items() if value is not None}


def _progress(status: StatusDoc) -> None:
    parts = [
        status.status.value,
        f"images done {status.images_done}",
        f"attempts {len(status.attempts)}",
    ]
    if status.attempts:
        last = status.attempts[-1]
        parts.append(f"last {last.outcome.value} on {last.deployment}")
        parts.append(f"partials received {last.partials_received}")
    _warn(f"{_clock()} {status.id}: " + " · ".join(parts))


def cmd_status(args: argparse.Namespace, storage: Storage) -> int:
    found = storage.client.status(args.id)
    if found is None:
        _warn(f"no request {args.id!r} in container {storage.settings.images_container}")
        return EXIT_NOT_FOUND
    record = found.model_dump(mode="json")
    print(json.dumps(record, indent=2, ensure_ascii=False) if args.json else summary(record))
    return EXIT_FAILED if record.get("status") in ("failed", "rejected") else EXIT_OK


def cmd_fetch(args: argparse.Namespace, storage: Storage) -> int:
    record = storage.client.status(args.id)
    if record is None:
        _warn(f"no request {args.id!r} in container {storage.settings.images_container}")
        return EXIT_NOT_FOUND
    _download(storage, args.id, args.dir)
    status = record.status
    if status != "succeeded":
        _warn(f"{args.id} is {status}: downloaded what exists so far")
        return EXIT_FAILED
    return EXIT_OK


def _download(storage: Storage, request_id: str, dest: str) -> None:
    for path in storage.client.fetch(request_id, dest):
        print(path)


def cmd_list(args: argparse.Namespace, storage: Storage) -> int:
    found = find_requests(
        storage,
        now=datetime.now(UTC),
        since=args.since,
        statuses=FAILED_STATUSES if args.failed else {args.status} if args.status else None,
        limit=args.limit,
        on_unreadable=_skipped,
    )
    rows = [_row(folder, record) for folder, record in found]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EXIT_OK
    for row in rows:
        print(
            f"{row['updated']}  {row['status']:<9}  images {row['images']:<2}  "
            f"attempts {row['attempts']:<2}  {row['id']}"
            + (f"  {row['detail']}" if row["detail"] else "")
        )
    if not rows:
        _warn("no requests match")
    return EXIT_OK


def _row(folder: Folder, record: dict[str, Any] | None) -> dict[str, Any]:
    record = record or {}
    error = record.get("error") if folder.governing == ERROR else None
    if isinstance(error, dict):
        detail = f"{error.get('kind')}: {error.get('message', '')}"
    else:
        detail = str(record.get("detail") or "")
    images = record.get("images")
    return {
        "id": folder.id,
        "status": record_status(record),
        "updated": folder.updated.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "images": len(images) if isinstance(images, list) else int(record.get("images_done") or 0),
        "attempts": len(record.get("attempts") or []),
        "detail": _one_line(detail),
    }


def cmd_report(args: argparse.Namespace, storage: Storage) -> int:
    now = datetime.now(UTC)
    histories = recent_histories(storage, now=now, since=args.since, on_unreadable=_skipped)
    report = build_report(
        histories,
        since=now - args.since,
        until=now,
        api_version=storage.settings.api_version,
        region=args.region,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        print(format_report(report), end="")
    return EXIT_OK


def cmd_requeue_poison(args: argparse.Namespace, storage: Storage) -> int:
    if bool(args.ids) == bool(args.all):
        raise _UsageError("requeue-poison: give request ids or --all (not both)")
    named = not args.all
    ids = args.ids if named else ids_with_error_record(storage)
    queue = storage.queue.queue_name
    problems = skipped = requeued = 0
    for request_id in ids:
        result = requeue_poisoned(storage, request_id, dry_run=args.dry_run)
        match result.outcome:
            case RequeueOutcome.NO_ERROR_RECORD | RequeueOutcome.NOT_POISONED if not named:
                skipped += 1
            case RequeueOutcome.NO_ERROR_RECORD:
                _warn(f"{request_id}: has no error.json, not a poisoned record; left alone")
                problems += 1
            case RequeueOutcome.NOT_POISONED:
                _warn(
                    f"{request_id}: has error.json kind {result.kind!r}, "
                    "not a poisoned record; left alone"
                )
                problems += 1
            case RequeueOutcome.NO_INPUT:
                _warn(f"{request_id}: the poisoned record keeps no input to re-send; left alone")
                problems += 1
            case RequeueOutcome.LEASED:
                _warn(f"{request_id}: status.json is leased by a running delivery; left alone")
                problems += 1
            case RequeueOutcome.WOULD_RESEND:
                print(f"{request_id}: would re-send {result.body_bytes} bytes to {queue}")
            case RequeueOutcome.RESENT:
                requeued += 1
                where = (
                    ""
                    if result.own_id
                    else f"; the body has no id, so it runs as request {result.message_id}"
                )
                print(f"{request_id}: re-sent to {queue} as message {result.message_id}{where}")
    if not named:
        _warn(f"{requeued} re-sent, {skipped} other error records left alone, {problems} problems")
    return EXIT_FAILED if problems else EXIT_OK


# --- output helpers --------------------------------------------------------------------------------


def summary(record: dict[str, Any]) -> str:
    """One request in a few lines: where it stands, its calls, and its images or error."""
    request_id = record.get("id", "?")
    status = record.get("status", "unknown")
    attempts = record.get("attempts") or []
    images = record.get("images")
    done = len(images) if isinstance(images, list) else int(record.get("images_done") or 0)
    head = f"{request_id}: {status}"
    error = record.get("error")
    if isinstance(error, dict) and error.get("kind"):
        head += f" ({error['kind']})"
    head += f" — {done} image{'s' if done != 1 else ''}, {len(attempts)} call{'s' if len(attempts) != 1 else ''}"
    stamp = record.get("completed_at") or record.get("updated_at")
    if stamp:
        head += f", {'completed' if status in FINISHED else 'updated'} {stamp}"
    lines = [head]
    if attempts:
        last = attempts[-1]
        apim = last.get("apim_request_id")
        lines.append(
            f"  last call: {last.get('outcome')} on {last.get('deployment')}"
            + (f", HTTP {last['http_status']}" if last.get("http_status") else "")
            + (f", apim-request-id {apim}" if apim else "")
        )
    if isinstance(error, dict) and isinstance(error.get("content_filter"), dict):
        lines.append(f"  content filter: {_one_line(format_verdict(error['content_filter']))}")
    if isinstance(error, dict) and error.get("message"):
        lines.append(f"  error: {_one_line(str(error['message']))}")
    elif record.get("detail"):
        lines.append(f"  detail: {_one_line(str(record['detail']))}")
    for image in images if isinstance(images, list) else ():
        lines.append(
            f"  image {image.get('index')}: {image.get('blob')} "
            f"({image.get('width')}x{image.get('height')}, {image.get('bytes')} bytes)"
        )
    return "\n".join(lines)


def _skipped(folder: Folder, exc: StoreError) -> None:
    _warn(f"{folder.id}: skipped, {exc}")


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _clock() -> str:
    return datetime.now(UTC).strftime("%H:%M:%SZ")


def _warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class _UsageError(Exception):
    """A combination of options argparse cannot check by itself."""


def _unreachable_reason(exc: BaseException) -> str:
    text = str(exc)
    for marker, reason in (
        ("refused", "connection refused"),
        ("timed out", "connection timed out"),
        ("Name or service not known", "host name not found"),
        ("nodename nor servname", "host name not found"),
        ("getaddrinfo failed", "host name not found"),
    ):
        if marker in text:
            return reason
    return _one_line(text, 160)


# --- parser and entry point ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared.ops",
        description="Submit image requests, follow them, and report failures for support.",
        epilog=EXIT_CODES,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser(
        "submit", help="validate and enqueue one request; print its id", epilog=EXIT_CODES
    )
    submit.add_argument("--prompt", required=True)
    submit.add_argument("--id")
    submit.add_argument("--operation", help="generate (default) or edit")
    submit.add_argument("--size", help="auto or WxH, e.g. 2048x2048")
    submit.add_argument("--quality", help="low, medium, high, auto")
    submit.add_argument("-n", "--n", type=int)
    submit.add_argument("--output-format", help="png or jpeg")
    submit.add_argument("--output-compression", type=int)
    submit.add_argument("--background", help="auto, opaque, transparent")
    submit.add_argument("--moderation", help="auto or low")
    submit.add_argument("--partial-images", type=int)
    submit.add_argument("--save-partials", action=argparse.BooleanOptionalAction, default=None)
    submit.add_argument(
        "--input-image", action="append", metavar="CONTAINER/NAME", help="repeatable (edit)"
    )
    submit.add_argument("--mask", metavar="CONTAINER/NAME.png")
    submit.add_argument("--input-fidelity", help="low or high (edit)")
    submit.add_argument("--user")
    submit.add_argument(
        "--metadata", action="append", type=parse_metadata, metavar="KEY=VALUE", help="repeatable"
    )
    submit.add_argument("--wait", action="store_true", help="show progress until it finishes")
    submit.add_argument("--timeout", type=float, default=1800.0, help="seconds (default 1800)")
    submit.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    submit.add_argument(
        "--out", metavar="DIR", help="download the results to DIR/<id>/ (implies --wait)"
    )
    submit.set_defaults(run=cmd_submit)

    status = commands.add_parser(
        "status",
        help="where a request stands (exit 1 failed or rejected, 4 no such request)",
        epilog=EXIT_CODES,
    )
    status.add_argument("id")
    status.add_argument("--json", action="store_true", help="the record itself, pretty-printed")
    status.set_defaults(run=cmd_status)

    fetch = commands.add_parser(
        "fetch",
        help="download a request's images and records into DIR (exit 4 no such request)",
        epilog=EXIT_CODES,
    )
    fetch.add_argument("id")
    fetch.add_argument("dir")
    fetch.set_defaults(run=cmd_fetch)

    listing = commands.add_parser("list", help="requests, newest first")
    which = listing.add_mutually_exclusive_group()
    which.add_argument("--status", choices=[s.value for s in Status] + ["unknown"])
    which.add_argument("--failed", action="store_true", help="failed or rejected")
    listing.add_argument("--since", type=parse_since, help="e.g. 30m, 24h, 7d")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=cmd_list)

    report = commands.add_parser("report", help="failed calls by deployment and error, for support")
    report.add_argument("--since", type=parse_since, default=timedelta(hours=24))
    report.add_argument("--region", help="the resource's region, for the ticket header")
    report.add_argument("--json", action="store_true")
    report.set_defaults(run=cmd_report)

    requeue = commands.add_parser("requeue-poison", help="re-send poisoned requests")
    requeue.add_argument("ids", nargs="*", metavar="ID")
    requeue.add_argument("--all", action="store_true", help="every poisoned record")
    requeue.add_argument("--dry-run", action="store_true", help="say what would be re-sent")
    requeue.set_defaults(run=cmd_requeue_poison)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 for --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        env = operator_env(environ, cwd or Path.cwd())
        storage = Storage(OperatorSettings.from_env(env), **STORAGE_CLIENT)
    except (SettingsError, LocalSettingsError) as exc:
        _warn(f"settings: {exc}")
        return EXIT_USAGE
    run: Command = args.run
    try:
        return run(args, storage)
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        _warn(f"error: {exc}")
        return EXIT_USAGE
    except ClientAuthenticationError as exc:
        _warn(f"storage at {storage.endpoint} refused the credentials: {_first_line(exc)}")
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`status ID | head`): not storage's fault, and nothing to say.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stops the interpreter's own flush error
        return EXIT_OK
    except (ServiceRequestError, ServiceResponseError, ConnectionError) as exc:
        _warn(f"storage unreachable at {storage.endpoint}: {_unreachable_reason(exc)}")
        return EXIT_UNREACHABLE
    except HttpResponseError as exc:
        if exc.status_code in (401, 403):  # a wrong account key or a missing role: settings
            _warn(f"storage at {storage.endpoint} refused the credentials: {_first_line(exc)}")
            return EXIT_USAGE
        _warn(f"storage error at {storage.endpoint}: {_first_line(exc)}")
        return EXIT_UNREACHABLE
    except (StoreError, UnreadableRecord, json.JSONDecodeError) as exc:
        _warn(f"unreadable record: {_first_line(exc)}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _first_line(exc: BaseException) -> str:
    return _one_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
