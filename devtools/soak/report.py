"""The counts table `python -m devtools.soak` prints, and the violations under it."""

from __future__ import annotations

from collections import Counter

from devtools.soak.checks import generation_counts, generations
from devtools.soak.run import SoakResult

MAX_LISTED = 12  # per check; the rest are counted


def rows(result: SoakResult) -> list[tuple[str, str]]:
    e, a = result.evidence, result.account
    kinds = Counter(str((doc.get("error") or {}).get("kind")) for doc in e.errors.values())
    failed = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "none"
    calls = ", ".join(f"{k} {v}" for k, v in a.by_outcome.most_common())
    recorded = ", ".join(f"{k} {v}" for k, v in a.recorded_by_outcome.most_common())
    throttled = sum(1 for c in e.calls if c.get("status") == 429)
    scripted = len(result.workload.script) - e.script_left
    image_writes = [
        w for w in e.writes if w.blob.endswith((".png", ".jpg")) and "/partials/" not in w.blob
    ]
    per_blob = Counter(w.blob for w in image_writes if w.maybe_applied)
    kills = e.disruptions.kills
    downtime = sum(o.downtime_s for o in e.disruptions.outages)
    restarts = sum(1 for h in e.hosts if h.incarnation > 1)
    drawn = generations(e, {r.id: r.n for r in result.workload.requests})
    per_image = ", ".join(f"{k}x {v}" for k, v in sorted(generation_counts(drawn).items()))
    named = sum(1 for i in e.images.values() if i.call)
    bounds = ", ".join(
        f"{d} {sum(1 for x in a.excused if x.disruption == d)}/{n}"
        for d, n in sorted(a.in_flight.items())
    )
    return [
        ("requests", str(result.config.requests)),
        ("succeeded (manifest.json)", str(len(e.manifests))),
        ("failed/rejected (error.json) by kind", f"{len(e.errors)}: {failed}"),
        ("poisoned", str(kinds.get("poisoned", 0))),
        ("images stored", str(len(e.images))),
        ("API calls by outcome (emulator)", f"{len(e.calls)}: {calls}"),
        (
            "429s",
            f"{throttled} ({scripted} scripted of {len(result.workload.script)}, "
            f"{max(0, throttled - scripted)} from the quota window)",
        ),
        ("attempts in records by outcome", f"{sum(a.recorded_by_outcome.values())}: {recorded}"),
        (
            "billable calls",
            f"{a.billable_calls}: {a.recorded} recorded, {a.lost_to_kills} lost to "
            f"kills, {a.lost_to_outage} lost to the outage, {len(a.unexplained)} unexplained",
        ),
        (
            "max counted attempts per image",
            f"{a.max_counted_per_image} (cap {result.config.max_attempts})",
        ),
        ("max billable calls per image", f"{a.max_billable_per_image:.1f}"),
        (
            "images by generations (from the bytes)",
            f"{per_image or 'none'}; {named} of {len(e.images)} stored images name their call",
        ),
        ("excused / in flight per disruption", bounds or "none"),
        (
            "kills (SIGKILL of host a)",
            f"{len(kills)}: in flight "
            + ", ".join(
                f"{len(k.in_flight)} (cut {c})" for k, c in zip(kills, a.cut_by_kill, strict=False)
            ),
        ),
        ("host restarts", str(restarts)),
        ("Azurite downtime", f"{downtime:.1f}s"),
        (
            "image blob writes",
            f"{len(image_writes)} to {len(per_blob)} blobs, "
            f"{sum(1 for v in per_blob.values() if v > 1)} blobs written more than once",
        ),
        (
            "host invocations",
            ", ".join(
                f"{h.name}#{h.incarnation} {h.executed_ok} ok/{h.executed_failed} failed"
                + (" (killed)" if h.killed else "")
                for h in e.hosts
            ),
        ),
        ("left in queue / poison queue", f"{e.queue_left} / {e.poison_left}"),
        ("duration", f"{e.duration_s:.0f}s"),
        ("violations", str(len(result.violations))),
    ]


def render(result: SoakResult) -> str:
    table = rows(result)
    width = max(len(k) for k, _ in table)
    lines = [f"{k.ljust(width)}  {v}" for k, v in table]
    lines += [f"note: {n}" for n in result.notes]
    for excused in result.account.excused:
        lines.append(
            f"excused {excused.request_id} {excused.call} ({excused.outcome}): {excused.reason}"
        )
    by_check: dict[str, list[str]] = {}
    for violation in result.violations:
        by_check.setdefault(violation.check, []).append(violation.detail)
    for check, details in by_check.items():
        lines.append(f"VIOLATION {check} ({len(details)}):")
        lines += [f"  {d}" for d in details[:MAX_LISTED]]
        if len(details) > MAX_LISTED:
            lines.append(f"  ... and {len(details) - MAX_LISTED} more")
    lines.append(f"logs and Azurite data: {result.workdir}")
    return "\n".join(lines)
