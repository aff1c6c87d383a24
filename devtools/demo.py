"""`make demo`: the main job end to end on local defaults, in about a minute.

Starts what is missing (Azurite, the emulator with a scaled clock and some faults, the host
stand-in running function_app.py, and the downstream sample in a second one), enqueues three
requests that meet the ticket's failures, shows progress, copies the results to ./out/<id>/ and
prints a table, then what the downstream sample catalogued for each. Exits 1 if a request failed
or a succeeded one was not catalogued.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any

import requests

from devtools.downstream import (
    INDEX_BLOB,
    catalogue_container,
    catalogue_report,
    wait_catalogued,
)
from devtools.services import REPO_ROOT, stop_on_signals
from devtools.stack import local_stack
from shared.client.producer import ErrorRecord, ImageRequestClient, Manifest

PROMPT_JPEG = "a lighthouse at dusk, watercolour"


def demo_requests(run: str) -> list[dict[str, Any]]:
    return [
        {
            "id": f"demo-{run}-small",
            "prompt": "a red apple on a white background",
            "size": "1024x1024",
            "quality": "low",
        },
        {
            "id": f"demo-{run}-large",
            "prompt": "a red apple on a white background, studio light",
            "size": "2048x2048",
            "quality": "high",
            "partial_images": 0,  # The ticket's 408 case: the app sends at least one anyway.
        },
        {
            "id": f"demo-{run}-jpeg",
            "prompt": PROMPT_JPEG,
            "size": "1536x1024",
            "quality": "medium",
            "output_format": "jpeg",
            "output_compression": 85,
            "metadata": {"source": "make demo"},
        },
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument(
        "--time-scale", type=float, default=0.15, help="emulator clock (0.15: 245 s -> 37 s)"
    )
    parser.add_argument(
        "--fault-rate", type=float, default=0.2, help="random mid-stream server_error rate"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for all requests"
    )
    parser.add_argument(
        "--catalogue-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the downstream sample to catalogue the succeeded requests",
    )
    args = parser.parse_args(argv)

    started = time.monotonic()
    with local_stack(time_scale=args.time_scale, fault_rate=args.fault_rate) as stack:
        settings = stack.settings
        client = ImageRequestClient.from_connection_string(
            settings["AzureWebJobsStorage"],
            settings.get("IMAGE_REQUESTS_QUEUE", "image-requests"),
            settings.get("IMAGES_CONTAINER", "images"),
        )
        if stack.emulator_url:
            scripted = [
                {"outcome": "server_error", "after_partials": 1, "prompt_contains": PROMPT_JPEG}
            ]
            requests.post(
                stack.emulator_url + "/_emulator/script", json=scripted, timeout=5
            ).raise_for_status()
            print(f"scripted a mid-stream server_error for the jpeg request: {scripted[0]}")
        run = uuid.uuid4().hex[:6]
        ids = [client.submit(r) for r in demo_requests(run)]
        print("enqueued: " + ", ".join(ids))
        results = watch(client, ids, timeout=args.timeout, started=started)
        for request_id in ids:
            client.fetch(request_id, REPO_ROOT / "out" / request_id)
        succeeded = [i for i in ids if results[i].get("status") == "succeeded"]
        catalogue = catalogue_container(settings)
        lines = wait_catalogued(catalogue, succeeded, timeout=args.catalogue_timeout)
        catalogued = catalogue_report(catalogue, ids, lines)
    print()
    print(table(ids, results))
    print(f"\ndownstream sample (catalogue/{INDEX_BLOB} and thumbnails):")
    print("\n".join(f"  {line}" for line in catalogued))
    print(f"\nresults in {REPO_ROOT / 'out'}/<id>/; total {time.monotonic() - started:.1f}s")
    failed = [i for i in ids if i not in succeeded]
    if failed:
        print(f"not succeeded: {', '.join(failed)}", file=sys.stderr)
    missing = [i for i in succeeded if i not in lines]
    if missing:
        print(f"not catalogued downstream: {', '.join(missing)}", file=sys.stderr)
    return 1 if failed or missing else 0


def watch(
    client: ImageRequestClient, ids: list[str], *, timeout: float, started: float
) -> dict[str, dict[str, Any]]:
    """Poll every request until each has a terminal record; print a line whenever one changes."""
    results: dict[str, dict[str, Any]] = {}
    seen: dict[str, tuple[Any, ...]] = {}
    deadline = time.monotonic() + timeout
    while len(results) < len(ids) and time.monotonic() < deadline:
        for request_id in ids:
            if request_id in results:
                continue
            found = client.status(request_id)
            record = found.model_dump(mode="json") if found is not None else {"status": "unknown"}
            attempts = record.get("attempts", [])
            last = attempts[-1] if attempts else {}
            marker = (record.get("status"), record.get("images_done"), len(attempts))
            if marker != seen.get(request_id):
                seen[request_id] = marker
                print(
                    f"[{time.monotonic() - started:6.1f}s] {request_id}: {record.get('status')}"
                    + (f", attempt {len(attempts)}: {last.get('outcome')}" if last else "")
                    + (f" after {last.get('partials_received', 0)} partial(s)" if last else "")
                )
            if isinstance(found, Manifest | ErrorRecord):
                results[request_id] = record
        time.sleep(0.5)
    for request_id in ids:
        if request_id not in results:
            print(f"{request_id} did not finish within {timeout:.0f}s", file=sys.stderr)
            results[request_id] = {"status": "timed out", "attempts": []}
    return results


def table(ids: list[str], results: dict[str, dict[str, Any]]) -> str:
    rows = [("id", "size", "attempts", "apim-request-ids", "seconds", "outcome")]
    for request_id in ids:
        record = results[request_id]
        attempts = record.get("attempts", [])
        seconds = sum(float(a.get("elapsed_s") or 0) for a in attempts)
        outcomes = ",".join(a.get("outcome", "?") for a in attempts)
        rows.append(
            (
                request_id,
                str((record.get("request") or {}).get("size", "?")),
                f"{len(attempts)} ({outcomes})",
                " ".join(str(a.get("apim_request_id")) for a in attempts) or "-",
                f"{seconds:.1f}",
                str(record.get("status"))
                + (f": {record['error']['kind']}" if record.get("error") else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    with stop_on_signals():  # SIGTERM stops every child as Ctrl-C does
        try:
            sys.exit(main())
        except KeyboardInterrupt:
            sys.exit(130)
