"""Benchmark 1: decoding realistic gpt-image event streams, the project's decoder against its peers.

A stream is what a deployment sends for one image with three partials: three
`image_generation.partial_image` events and one `image_generation.completed`, each a single `data:`
line of JSON whose `b64_json` holds the base64 of an N MiB image (random bytes: base64 does not care).
A threaded stdlib server on 127.0.0.1 sends it with chunked encoding in 16 KiB writes, flushed, as a
gateway trickles it out. Every row does the same work end to end (HTTP read, SSE parsing, json.loads,
base64 decode of every event) so the times compare; each row's images are checked by sha256 against
the originals, and a row that decodes wrongly gets no time.

Each row runs in a fresh child process: its peak RSS is its own, and a peer that goes quadratic on a
30 MB line is killed at the time limit instead of stalling the run.

    python -m bench.sse_decoding [--sizes 2,8,24] [--repeat 3] [--limit-s 60] [--decoders ...]
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import gc
import io
import json
import pstats
import random
import struct
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

from bench._common import (
    MIB,
    ChildFailed,
    ChildResult,
    ChildTimedOut,
    bench_parser,
    cpu_seconds,
    current_rss_kib,
    emit_result,
    format_table,
    peak_rss_kib,
    print_header,
    run_child,
    verdict,
)

PARTIALS = 3
WRITE_BYTES = 16 * 1024
PROJECT_CHUNK_BYTES = (
    64 * 1024
)  # what shared.azure_openai.image_api reads with; peers get the same iterator
TIME_TARGET_RATIO = 1.3
MEMORY_TARGET_IMAGES = 3
MEMORY_TARGET_EXTRA_MIB = 50
DECODERS = ("floor", "project", "openai", "sseclient-py", "requests-sse", "iter_lines")
DEFAULT_SIZES = (2.0, 8.0, 24.0)
COMPLETED = "image_generation.completed"
PARTIAL = "image_generation.partial_image"


# --- the stream -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageStream:
    """The exact bytes of one response body and the sha256 of each image it carries, in order."""

    body: bytes
    sha256s: tuple[str, ...]
    image_bytes: int


# A PNG signature and IHDR chunk (1536x1024, RGBA): the product only stores a `completed` image whose
# bytes say they are the format asked for; the rest of each image is random, as compressed data is.
PNG_HEAD = (
    b"\x89PNG\r\n\x1a\n"
    + struct.pack(">I4sIIBBBBB", 13, b"IHDR", 1536, 1024, 8, 6, 0, 0, 0)
    + b"\x00\x00\x00\x00"
)


def build_stream(image_bytes: int, seed: int = 0) -> ImageStream:
    """Four events with four different images, so a decoder that repeats or skips one is caught."""
    rng = random.Random(seed)
    events: list[bytes] = []
    hashes: list[str] = []
    for index in range(PARTIALS + 1):
        image = PNG_HEAD + rng.randbytes(max(0, image_bytes - len(PNG_HEAD)))
        hashes.append(sha256(image).hexdigest())
        completed = index == PARTIALS
        payload: dict[str, Any] = {
            "type": COMPLETED if completed else PARTIAL,
            "created_at": 1_760_000_000,
            "size": "1536x1024",
            "quality": "high",
            "background": "opaque",
            "output_format": "png",
            "b64_json": base64.b64encode(image).decode("ascii"),
        }
        if completed:
            payload["usage"] = {"input_tokens": 50, "output_tokens": 6240, "total_tokens": 6290}
        else:
            payload["partial_image_index"] = index
        data = json.dumps(payload, separators=(",", ":"))
        events.append(f"event: {payload['type']}\ndata: {data}\n\n".encode("ascii"))
    return ImageStream(b"".join(events), tuple(hashes), image_bytes)


class _StreamHandler(BaseHTTPRequestHandler):
    """Answers any GET or POST with the server's current body, chunked, 16 KiB per write."""

    protocol_version = "HTTP/1.1"
    server: StreamServer

    def do_GET(self) -> None:
        self._stream()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._stream()

    def _stream(self) -> None:
        body = memoryview(self.server.body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for start in range(0, len(body), WRITE_BYTES):
                piece = body[start : start + WRITE_BYTES]
                self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # The client stopped reading: a killed child, or a decoder done at `completed`.

    def log_message(self, format: str, *args: Any) -> None:
        pass  # One line per request would drown the table.


class StreamServer(ThreadingHTTPServer):
    """Loopback HTTP server in a daemon thread; set `body` before each batch of requests."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StreamHandler)
        self.body = b""
        self._thread = threading.Thread(target=self.serve_forever, name="sse-bench", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def __enter__(self) -> StreamServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(10)


# --- the decoders (run in the child) --------------------------------------------------------------


@dataclass(slots=True)
class Sink:
    """Receives each decoded image; hashes it off the clock and keeps only the digest."""

    sha256s: list[str] = field(default_factory=list)
    hash_s: float = 0.0

    def add(self, image: bytes) -> None:
        start = time.perf_counter()
        self.sha256s.append(sha256(image).hexdigest())
        self.hash_s += time.perf_counter() - start


Decoder = Callable[[str, Sink, float], None]


def _take(data: str | bytes, sink: Sink) -> bool:
    """The per-event work every row does: json, then base64 as `shared.azure_openai.image_api._b64` does.

    Returns True at the completed event, where every client stops reading.
    """
    payload = json.loads(data)
    sink.add(base64.b64decode(payload["b64_json"], validate=True))
    return str(payload["type"]) == COMPLETED


def _take_events(events: Iterable[Any], sink: Sink) -> None:
    """`_take` each event's data until the completed event; an event without data carries no image.

    The peers that parse events (openai, sseclient-py, requests-sse) differ only in how they make
    them, so they share this loop: what differs between their rows is the parser alone.
    """
    for event in events:
        if event.data and _take(event.data, sink):
            return


def _floor() -> Decoder:
    import requests

    def decode(url: str, sink: Sink, timeout_s: float) -> None:
        # The whole body in one read, then no incremental parsing at all. Lines are found with
        # bytes.find and decoded through a memoryview: bytes.split would copy the whole body once
        # more, and a floor should be the least work that still parses.
        with requests.get(url, stream=True, timeout=timeout_s) as response:
            body = response.raw.read()
        view = memoryview(body)
        start = body.find(b"data: ")
        while start >= 0:
            end = body.find(b"\n", start)
            end = len(body) if end < 0 else end
            if _take(str(view[start + 6 : end], "utf-8"), sink):
                return
            start = body.find(b"\ndata: ", end) + 1 or -1

    return decode


def _project() -> Decoder:
    # The product's own path: ImageApi.attempt streams, feeds shared.azure_openai.sse.iter_events with
    # iter_content(64 KiB), json.loads each event and base64-decodes partials and the final image.
    from shared.azure_openai.image_api import ImageApi, ImageCall
    from shared.records.attempts import Outcome
    from shared.settings import DeploymentConfig

    def decode(url: str, sink: Sink, timeout_s: float) -> None:
        api = ImageApi(api_version="bench", connect_timeout_s=10.0, read_timeout_s=timeout_s)
        deployment = DeploymentConfig(
            name="bench", endpoint=url, deployment="bench", api_key="bench-placeholder"
        )
        call = ImageCall(operation="generate", fields={"prompt": "bench"}, partial_images=PARTIALS)
        result = api.attempt(
            deployment,
            call,
            attempt_no=1,
            image_index=0,
            on_partial=lambda _index, image: sink.add(image),
        )
        if result.record.outcome is not Outcome.SUCCEEDED or result.image is None:
            raise RuntimeError(f"attempt ended {result.record.outcome}: {result.record.error}")
        sink.add(result.image)

    return decode


def _openai() -> Decoder:
    import requests
    from openai._streaming import SSEDecoder

    def decode(url: str, sink: Sink, timeout_s: float) -> None:
        with requests.get(url, stream=True, timeout=timeout_s) as response:
            _take_events(SSEDecoder().iter_bytes(response.iter_content(PROJECT_CHUNK_BYTES)), sink)

    return decode


def _sseclient() -> Decoder:
    import requests
    import sseclient

    def decode(url: str, sink: Sink, timeout_s: float) -> None:
        # Same 64 KiB iterator as the project; `SSEClient(response)` as its README shows would
        # iterate the Response in 128-byte chunks, which is only slower.
        # sseclient-py never dispatches an event without data, so `_take_events`' check is moot.
        with requests.get(url, stream=True, timeout=timeout_s) as response:
            client = sseclient.SSEClient(response.iter_content(PROJECT_CHUNK_BYTES))
            _take_events(client.events(), sink)

    return decode


def _requests_sse() -> Decoder:
    from requests_sse import EventSource

    def decode(url: str, sink: Sink, timeout_s: float) -> None:
        # It reads with response.iter_lines() at requests' default chunk size; no knob for it.
        with EventSource(url, timeout=timeout_s, max_connect_retry=0) as source:
            _take_events(source, sink)

    return decode


def _iter_lines() -> Decoder:
    import requests

    def decode(url: str, sink: Sink, timeout_s: float) -> None:
        # requests' own line splitter at its default chunk size, with the least SSE on top.
        with requests.get(url, stream=True, timeout=timeout_s) as response:
            data: list[bytes] = []
            for line in response.iter_lines():
                if line.startswith(b"data:"):
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
                elif not line and data:
                    joined, data = b"\n".join(data), []
                    if _take(joined, sink):
                        return

    return decode


_FACTORIES: dict[str, Callable[[], Decoder]] = {
    "floor": _floor,
    "project": _project,
    "openai": _openai,
    "sseclient-py": _sseclient,
    "requests-sse": _requests_sse,
    "iter_lines": _iter_lines,
}
LABELS = {
    "floor": "floor: read all, find lines, json, base64",
    "project": "project: shared.azure_openai.sse via ImageApi",
    "openai": "openai._streaming.SSEDecoder",
    "sseclient-py": "sseclient-py",
    "requests-sse": "requests-sse (iter_lines)",
    "iter_lines": "requests iter_lines() default",
}


def child_main(name: str, url: str, limit_s: float, profile: bool) -> None:
    """One measurement: import the decoder, take the baseline, decode one stream, report."""
    decode = _FACTORIES[name]()
    sink = Sink()
    gc.collect()
    baseline_kib = current_rss_kib()
    profiler = cProfile.Profile() if profile else None
    if profile:
        tracemalloc.start()  # Python objects only: the gap to RSS is the allocator's retention.
    cpu_start = cpu_seconds()
    start = time.perf_counter()
    if profiler is not None:
        profiler.runcall(decode, url, sink, limit_s)
    else:
        decode(url, sink, limit_s)
    seconds = time.perf_counter() - start - sink.hash_s
    cpu_s = cpu_seconds() - cpu_start - sink.hash_s
    result: dict[str, Any] = {
        "seconds": seconds,
        "cpu_s": cpu_s,
        "baseline_kib": baseline_kib,
        "peak_kib": peak_rss_kib(),
        "sha256s": sink.sha256s,
    }
    if profiler is not None:
        text = io.StringIO()
        traced_peak = tracemalloc.get_traced_memory()[1]
        text.write(
            f"peak of live Python objects (tracemalloc): {traced_peak / MIB:.1f} MiB; "
            f"peak RSS over baseline: {(result['peak_kib'] - baseline_kib) / 1024:.1f} MiB\n"
        )
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
        result["profile"] = text.getvalue()
    emit_result(result)


# --- the parent: rows, table, targets -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    size_mib: float
    decoder: str
    wire_bytes: int
    status: str  # "ok", "over N s", "skipped: ...", "WRONG: ...", "failed: ..."
    seconds: float | None = None
    cpu_s: float | None = None
    peak_mib: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True, slots=True)
class TargetCheck:
    size_mib: float
    ratio: float | None
    peak_mib: float | None
    memory_limit_mib: float

    @property
    def time_met(self) -> bool:
        return self.ratio is not None and self.ratio <= TIME_TARGET_RATIO

    @property
    def memory_met(self) -> bool:
        return self.peak_mib is not None and self.peak_mib <= self.memory_limit_mib


@dataclass(frozen=True, slots=True)
class Config:
    sizes: tuple[float, ...] = DEFAULT_SIZES
    decoders: tuple[str, ...] = DECODERS
    repeat: int = 3
    limit_s: float = 60.0
    seed: int = 0
    profile: bool = False


@dataclass(frozen=True, slots=True)
class Report:
    rows: tuple[Row, ...]
    targets: tuple[TargetCheck, ...]
    profiles: tuple[str, ...] = ()


def measure_row(url: str, name: str, stream: ImageStream, config: Config, size: float) -> Row:
    """Best time of `repeat` fresh children; the largest peak of them, to judge memory honestly."""
    wire = len(stream.body)
    times: list[float] = []
    cpus: list[float] = []
    peaks: list[float] = []
    for _ in range(config.repeat):
        args = [
            "bench.sse_decoding",
            "--child",
            name,
            "--url",
            url,
            "--limit-s",
            str(config.limit_s),
        ]
        outcome = run_child(args, config.limit_s)
        if isinstance(outcome, ChildTimedOut):
            return Row(size, name, wire, f"over {outcome.limit_s:g} s")
        if isinstance(outcome, ChildFailed):
            last = outcome.stderr_tail.strip().splitlines()[-1:] or [f"exit {outcome.returncode}"]
            return Row(size, name, wire, f"failed: {last[0][:80]}")
        got = tuple(outcome.payload["sha256s"])
        if got != stream.sha256s:
            return Row(size, name, wire, f"WRONG: {_mismatch(got, stream.sha256s)}")
        times.append(float(outcome.payload["seconds"]))
        cpus.append(float(outcome.payload["cpu_s"]))
        peaks.append((outcome.payload["peak_kib"] - outcome.payload["baseline_kib"]) / 1024)
    return Row(size, name, wire, "ok", min(times), min(cpus), max(peaks))


def _mismatch(got: Sequence[str], want: Sequence[str]) -> str:
    if len(got) != len(want):
        return f"{len(got)} images decoded, {len(want)} sent"
    bad = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    return f"sha256 differs for image(s) {bad}"


def _profile(url: str, config: Config) -> str:
    outcome = run_child(
        ["bench.sse_decoding", "--child", "project", "--url", url, "--profile"], config.limit_s
    )
    if isinstance(outcome, ChildResult):
        return str(outcome.payload.get("profile", ""))
    return f"profile run did not finish: {outcome}"


def run(config: Config, out: TextIO = sys.stdout) -> Report:
    """Measure every decoder at every size; print the table and the target verdicts to `out`."""
    names = [n for n in DECODERS if n in config.decoders]  # floor first: the others need it
    rows: list[Row] = []
    targets: list[TargetCheck] = []
    profiles: list[str] = []
    over_at: dict[str, float] = {}
    with StreamServer() as server:
        for size in config.sizes:
            stream = build_stream(int(size * MIB), config.seed)
            server.body = stream.body
            for name in names:
                if name in over_at:
                    # It only gets worse with size: every peer that overruns is superlinear.
                    limit = f"{config.limit_s:g}"
                    status = f"skipped: over {limit} s at {over_at[name]:g} MiB"
                    rows.append(Row(size, name, len(stream.body), status))
                    continue
                row = measure_row(server.url, name, stream, config, size)
                if row.status.startswith("over"):
                    over_at[name] = size
                rows.append(row)
                print(f"  {size:g} MiB  {name:<13} {_cell_seconds(row)}", file=sys.stderr)
            target = _target(rows, size)
            if target is not None:
                targets.append(target)
                if config.profile or not (target.time_met and target.memory_met):
                    profile = _profile(server.url, config)
                    profiles.append(
                        f"cProfile of the project's decoder at {size:g} MiB:\n{profile}"
                    )
            server.body = b""
    report = Report(tuple(rows), tuple(targets), tuple(profiles))
    print(render(report), file=out)
    for profile in profiles:
        print(f"\n{profile.rstrip()}", file=out)
    return report


def _target(rows: Sequence[Row], size: float) -> TargetCheck | None:
    by_name = {r.decoder: r for r in rows if r.size_mib == size}
    project = by_name.get("project")
    if project is None:
        return None
    floor = by_name.get("floor")
    ratio = None
    if project.ok and floor is not None and floor.ok and project.seconds and floor.seconds:
        ratio = project.seconds / floor.seconds
    limit = MEMORY_TARGET_IMAGES * size + MEMORY_TARGET_EXTRA_MIB
    return TargetCheck(size, ratio, project.peak_mib, limit)


def _cell_seconds(row: Row) -> str:
    return f"{row.seconds:.3f}" if row.ok and row.seconds is not None else row.status


def render(report: Report) -> str:
    floors = {r.size_mib: r.seconds for r in report.rows if r.decoder == "floor" and r.ok}
    headers = ["image", "decoder", "seconds", "wire MiB/s", "CPU s", "peak RSS MiB", "x floor"]
    cells: list[list[str]] = []
    for r in report.rows:
        ok = r.ok and r.seconds is not None
        floor = floors.get(r.size_mib)
        cells.append(
            [
                f"{r.size_mib:g} MiB",
                LABELS[r.decoder],
                _cell_seconds(r),
                f"{r.wire_bytes / MIB / r.seconds:.0f}" if ok and r.seconds else "-",
                f"{r.cpu_s:.3f}" if ok and r.cpu_s is not None else "-",
                f"{r.peak_mib:.1f}" if ok and r.peak_mib is not None else "-",
                f"{r.seconds / floor:.2f}" if ok and floor and r.seconds else "-",
            ]
        )
    lines = [format_table(headers, cells), ""]
    for t in report.targets:
        ratio = f"{t.ratio:.2f}x" if t.ratio is not None else "n/a"
        peak = f"{t.peak_mib:.1f} MiB" if t.peak_mib is not None else "n/a"
        lines.append(
            f"target at {t.size_mib:g} MiB: time {ratio} of floor (<= {TIME_TARGET_RATIO}x) "
            f"{verdict(t.time_met)}; peak RSS {peak} "
            f"(<= {MEMORY_TARGET_IMAGES} x {t.size_mib:g} + {MEMORY_TARGET_EXTRA_MIB} = "
            f"{t.memory_limit_mib:g} MiB) {verdict(t.memory_met)}"
        )
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------------


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(",") if part.strip())


def _names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in _FACTORIES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown decoder(s) {unknown}; known: {list(DECODERS)}")
    return names


def parser() -> argparse.ArgumentParser:
    parser = bench_parser("sse_decoding", __doc__)
    parser.add_argument(
        "--sizes", type=_floats, default=DEFAULT_SIZES, help="image MiB, e.g. 2,8,24"
    )
    parser.add_argument("--repeat", type=int, default=3, help="best of N fresh children per row")
    parser.add_argument("--limit-s", type=float, default=60.0, help="time limit per child")
    parser.add_argument("--decoders", type=_names, default=DECODERS, help=",".join(DECODERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="cProfile the project's decoder")
    parser.add_argument("--child", choices=DECODERS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = parser().parse_args(None if argv is None else list(argv))
    if args.child:
        child_main(args.child, args.url, args.limit_s, args.profile)
        return 0
    config = Config(
        sizes=args.sizes,
        decoders=args.decoders,
        repeat=max(1, args.repeat),
        limit_s=args.limit_s,
        seed=args.seed,
        profile=args.profile,
    )
    # argv=None: the command echoed is sys.argv's, as `python -m bench` sets it for each benchmark.
    print_header(
        "sse_decoding",
        f"{PARTIALS} partial + 1 completed events, each one data: line with an N MiB "
        f"image in base64; chunked, {WRITE_BYTES // 1024} KiB writes over loopback; "
        f"best of {config.repeat}; peak RSS = the child's VmHWM minus its VmRSS before the request",
        label="stream",
    )
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
