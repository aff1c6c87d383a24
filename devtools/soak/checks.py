"""The soak's invariants, as pure functions of the evidence: each returns its violations.

Why each check is honest about what it can see:

- Terminal records: every submitted id has manifest.json XOR error.json, and nothing else in the
  container has a record (a stray record means a message was filed under another name).
- Images: Azurite keeps no blob versions, so the blob tap logged every Put Blob with the sha256 of
  its body. An image blob fails if two writes that may have been applied carry different contents,
  if it was written after its request's terminal record was created (the manifest is written last),
  or if it holds something else than the record lists.
- Generations: the emulator writes each call's apim-request-id into the images it draws, so a
  stored image names the call that made it. It must be a call of its own request that succeeded,
  and the one its record lists as that image's success; an image whose record lists two successes
  was generated twice on the record, which only a kill or the outage between the two may explain
  (the call is recorded before its image is stored, so a crash in between costs the image again). `generations` counts, per image, the calls that drew it.
- Writes after the end: once a request's terminal record exists, nothing but its status.json may
  be written under it (no image, no partial, no other record).
- Script: every scripted 429 was served (a request that never met its 429 was not tested).
- Status: once a request has a terminal record, its status.json must say so and hold no lease
  (the run waits out a lock lease before looking).
- Calls against the cap: see `accounting.py`.
- Hosts: an instance we did not kill must still be running (no crash on the outage).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from devtools.soak.accounting import CallAccount
from devtools.soak.blobtap import BlobWrite
from devtools.soak.evidence import IMAGE_BLOB, Evidence
from devtools.soak.observe import call_id
from devtools.soak.workload import Workload

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "rejected"})


@dataclass(frozen=True, slots=True)
class Violation:
    check: str
    detail: str


def check_terminal_records(evidence: Evidence, workload: Workload) -> list[Violation]:
    found: list[Violation] = []
    planned = workload.by_id()
    for request_id in planned:
        has_manifest = request_id in evidence.manifests
        has_error = request_id in evidence.errors
        if has_manifest and has_error:
            found.append(Violation("terminal", f"{request_id}: both manifest.json and error.json"))
        elif not has_manifest and not has_error:
            found.append(Violation("terminal", f"{request_id}: no terminal record"))
    for folder in sorted((set(evidence.manifests) | set(evidence.errors)) - set(planned)):
        doc = evidence.errors.get(folder) or evidence.manifests.get(folder) or {}
        why = (doc.get("error") or {}).get("message", "")
        found.append(Violation("terminal", f"stray record under {folder!r}: {why[:120]}"))
    for request_id, doc in evidence.manifests.items():
        if doc.get("status") != "succeeded" or doc.get("id") != request_id:
            found.append(
                Violation("terminal", f"{request_id}: manifest says status={doc.get('status')!r}")
            )
    return found


def check_expected_outcomes(evidence: Evidence, workload: Workload) -> list[Violation]:
    """What the workload makes certain: refused prompts fail as content_filter, and only they do;
    only images the emulator faults can run out of attempts."""
    found: list[Violation] = []
    for request in workload.requests:
        error = evidence.errors.get(request.id)
        kind = (error or {}).get("error", {}).get("kind") if error else None
        if request.content_filter and kind != "content_filter":
            found.append(Violation("outcome", f"{request.id}: expected content_filter, got {kind}"))
        if not request.content_filter and kind == "content_filter":
            found.append(Violation("outcome", f"{request.id}: content_filter on a clean prompt"))
        if kind == "retries_exhausted" and not request.fault_eligible:
            message = (error or {}).get("error", {}).get("message", "")
            found.append(
                Violation(
                    "outcome",
                    f"{request.id}: retries_exhausted at {request.body['size']}, which the "
                    f"emulator never faults: {message[:160]}",
                )
            )
    return found


def _listed_images(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in doc.get("images") or [] if isinstance(i, dict)]


def check_images(evidence: Evidence, workload: Workload) -> list[Violation]:
    found: list[Violation] = []
    for request_id, doc in [*evidence.manifests.items(), *evidence.errors.items()]:
        listed = _listed_images(doc)
        is_manifest = request_id in evidence.manifests and doc is evidence.manifests[request_id]
        planned = workload.by_id().get(request_id)
        if is_manifest and planned is not None:
            indices = sorted(int(i.get("index", -1)) for i in listed)
            if indices != list(range(planned.n)):
                found.append(
                    Violation(
                        "images", f"{request_id}: manifest lists images {indices}, n={planned.n}"
                    )
                )
        for image in listed:
            name = str(image.get("blob"))
            stored = evidence.images.get(name)
            if stored is None:
                found.append(Violation("images", f"{name}: listed but not stored"))
                continue
            if stored.sha256 != image.get("sha256") or stored.size != image.get("bytes"):
                found.append(
                    Violation(
                        "images",
                        f"{name}: stored sha256 {stored.sha256[:12]} ({stored.size} B), record "
                        f"says {str(image.get('sha256'))[:12]} ({image.get('bytes')} B)",
                    )
                )
            if stored.metadata.get("request_id") != request_id:
                found.append(Violation("images", f"{name}: metadata request_id is wrong"))
    for name in evidence.images:
        match = IMAGE_BLOB.match(name)
        if match is None:
            continue
        request_id = match["id"]
        manifest = evidence.manifests.get(request_id)
        if manifest is not None and name not in {
            str(i.get("blob")) for i in _listed_images(manifest)
        }:
            found.append(Violation("images", f"{name}: stored but not in its manifest"))
    return found


def check_writes(evidence: Evidence, container: str) -> list[Violation]:
    """Every image blob's write history from the tap: one content, nothing after the record."""
    found: list[Violation] = []
    by_blob: dict[str, list[BlobWrite]] = defaultdict(list)
    record_created: dict[str, float] = {}
    for write in evidence.writes:
        if write.container != container:
            continue
        folder, _, rest = write.blob.partition("/")
        if rest in ("manifest.json", "error.json") and write.applied:
            record_created[folder] = min(record_created.get(folder, write.ended), write.ended)
        if IMAGE_BLOB.match(write.blob):
            by_blob[write.blob].append(write)
    for name, writes in sorted(by_blob.items()):
        if any(w.kind != "put_blob" for w in writes):
            found.append(Violation("writes", f"{name}: uploaded in blocks; content not verifiable"))
        contents = {w.sha256 for w in writes if w.maybe_applied}
        if len(contents) > 1:
            found.append(
                Violation("writes", f"{name}: written with {len(contents)} different contents")
            )
    found += _written_after_record(evidence, container, record_created)
    for name in evidence.images:
        if name not in by_blob:
            found.append(Violation("writes", f"{name}: stored, but the tap saw no write of it"))
        elif evidence.images[name].sha256 not in {
            w.sha256 for w in by_blob[name] if w.maybe_applied
        }:
            found.append(Violation("writes", f"{name}: holds content no logged write carried"))
    return found


def _written_after_record(
    evidence: Evidence, container: str, record_created: dict[str, float]
) -> list[Violation]:
    """Any write under a finished request but its status.json (which the end itself rewrites)."""
    found: list[Violation] = []
    for write in sorted(evidence.writes, key=lambda w: w.started):
        folder, _, rest = write.blob.partition("/")
        created = record_created.get(folder)
        if write.container != container or created is None or rest == "status.json":
            continue
        if not write.maybe_applied or write.started <= created:
            continue
        if rest in ("manifest.json", "error.json") and write.sha256 == _record_sha(
            evidence, folder, rest
        ):
            continue  # the same record again (a redelivery repairing it) changes nothing
        found.append(
            Violation(
                "writes", f"{write.blob}: written {write.started - created:.2f}s after its record"
            )
        )
    return found


def _record_sha(evidence: Evidence, folder: str, name: str) -> str:
    first = [w.sha256 for w in evidence.writes if w.blob == f"{folder}/{name}" and w.applied]
    return first[0] if first else ""


def generations(evidence: Evidence, n_by_id: dict[str, int]) -> dict[tuple[str, int], list[str]]:
    """Per image (request, index): the calls that drew it (succeeded at the emulator), attributed
    by the record, else by the stored bytes' embedded id, else to image 0 of a one-image request.
    A call of an n > 1 request that neither names is not attributed."""
    embedded = {
        stored.call: (match["id"], int(match["index"]))
        for name, stored in evidence.images.items()
        if stored.call and (match := IMAGE_BLOB.match(name))
    }
    recorded: dict[str, int] = {}
    for doc in [*evidence.errors.values(), *evidence.manifests.values()]:
        for attempt in doc.get("attempts") or []:
            if isinstance(attempt, dict) and attempt.get("apim_request_id"):
                recorded[str(attempt["apim_request_id"])] = int(attempt.get("image_index") or 0)
    drawn: dict[tuple[str, int], list[str]] = defaultdict(list)
    for call in evidence.calls:
        request_id = call_id(call)
        if request_id is None or call.get("outcome") != "succeeded":
            continue
        key = str(call["apim_request_id"])
        if key in recorded:
            drawn[(request_id, recorded[key])].append(key)
        elif key in embedded and embedded[key][0] == request_id:
            drawn[embedded[key]].append(key)
        elif n_by_id.get(request_id, 1) == 1:
            drawn[(request_id, 0)].append(key)
    return dict(drawn)


def check_generations(evidence: Evidence) -> list[Violation]:
    """Each stored image was drawn by a succeeded call of its request, the one its record lists."""
    found: list[Violation] = []
    outcome = {str(c["apim_request_id"]): c for c in evidence.calls}
    for request_id, doc in [*evidence.manifests.items(), *evidence.errors.items()]:
        successes: dict[int, list[str]] = defaultdict(list)
        for attempt in doc.get("attempts") or []:
            if isinstance(attempt, dict) and attempt.get("outcome") == "succeeded":
                successes[int(attempt.get("image_index") or 0)].append(
                    str(attempt.get("apim_request_id"))
                )
        for index, keys in sorted(successes.items()):
            if len(keys) > 1 and not _remade_after_disruption(evidence, keys):
                found.append(
                    Violation(
                        "generations",
                        f"{request_id} image {index}: generated {len(keys)} times on the record "
                        f"({', '.join(keys)})",
                    )
                )
        for image in _listed_images(doc):
            name, index = str(image.get("blob")), int(image.get("index", -1))
            stored = evidence.images.get(name)
            if stored is None:
                continue  # check_images says so
            call = outcome.get(stored.call or "")
            if stored.call is None:
                found.append(Violation("generations", f"{name}: names no call"))
            elif call is None or call_id(call) != request_id:
                found.append(
                    Violation(
                        "generations", f"{name}: drawn by {stored.call}, not a call of its request"
                    )
                )
            elif call.get("outcome") != "succeeded":
                found.append(
                    Violation(
                        "generations",
                        f"{name}: drawn by {stored.call}, which ended {call.get('outcome')}",
                    )
                )
            elif stored.call not in successes.get(index, []):
                listed = ", ".join(successes.get(index, [])) or "none"
                found.append(
                    Violation(
                        "generations",
                        f"{name}: drawn by {stored.call}, but its record's success for image "
                        f"{index} is {listed}: generated again after it was recorded",
                    )
                )
    return found


def _remade_after_disruption(evidence: Evidence, keys: list[str]) -> bool:
    """Each success but the last was followed, before the next call, by a kill or the outage: the
    product records a call before it stores the image (a manifest never lists an image without
    its call), so a crash in between costs the image once more. Anything else is a second
    generation of an image already made."""
    times = [evidence.call_times.get(key) for key in keys]
    if any(t is None or t.ended is None for t in times):
        return False
    spans = sorted((t.arrived, t.ended) for t in times if t is not None and t.ended is not None)
    moments = [k.at for k in evidence.disruptions.kills]
    outages = [(o.down_at, o.up_at) for o in evidence.disruptions.outages]
    for (_, ended), (arrived, _) in pairwise(spans):
        if not any(ended <= at <= arrived for at in moments) and not any(
            down <= arrived and up >= ended for down, up in outages
        ):
            return False
    return True


def generation_counts(drawn: dict[tuple[str, int], list[str]]) -> Counter[int]:
    """How many images were drawn once, twice, ..."""
    return Counter(len(keys) for keys in drawn.values())


def check_script_served(evidence: Evidence) -> list[Violation]:
    if not evidence.script_left:
        return []
    return [Violation("script", f"{evidence.script_left} scripted 429(s) never served")]


def check_statuses(evidence: Evidence, workload: Workload) -> list[Violation]:
    found: list[Violation] = []
    for request in workload.requests:
        record = evidence.manifests.get(request.id) or evidence.errors.get(request.id)
        if record is None:
            continue
        status = evidence.statuses.get(request.id)
        if status is None:
            continue  # the client's `queued` status is optional for the contract; none is fine
        said = (status.doc or {}).get("status")
        if said not in TERMINAL_STATUSES:
            found.append(
                Violation(
                    "status",
                    f"{request.id}: status.json stays {said!r} although {record.get('status')!r} "
                    f"is recorded (updated_at {(status.doc or {}).get('updated_at')})",
                )
            )
        elif said != record.get("status"):
            found.append(
                Violation(
                    "status", f"{request.id}: status {said!r}, record {record.get('status')!r}"
                )
            )
        if status.lease_state == "leased":
            found.append(Violation("status", f"{request.id}: status.json still leased at the end"))
    return found


def check_calls(account: CallAccount) -> list[Violation]:
    found = [Violation("cap", text) for text in account.over_cap]
    found += [Violation("excused", text) for text in account.over_bound]
    found += [
        Violation("calls", f"call in no record and no disruption: {t}") for t in account.unexplained
    ]
    found += [
        Violation("calls", f"recorded call the emulator never saw: {t}") for t in account.phantom
    ]
    for number, cut in enumerate(account.cut_by_kill, 1):
        if cut == 0:
            found.append(Violation("soak", f"kill {number} cut no call mid-stream"))
    return found


def check_hosts(evidence: Evidence) -> list[Violation]:
    return [
        Violation("hosts", f"host {h.name}#{h.incarnation} exited on its own (code {h.exit_code})")
        for h in evidence.hosts
        if not h.killed and not h.alive_at_end
    ]


def check_drained(evidence: Evidence) -> list[Violation]:
    found = []
    if evidence.queue_left:
        found.append(Violation("drain", f"{evidence.queue_left} message(s) left in the queue"))
    if evidence.poison_left:
        found.append(
            Violation("drain", f"{evidence.poison_left} message(s) left in the poison queue")
        )
    return found
